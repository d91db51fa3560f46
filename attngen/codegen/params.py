"""Kernel parameters: the runtime arguments every kernel may take, and each kernel's own share of them.

The runtime (``attngen/runtime/attention.py``, ``_Attention.args``) builds one set of named arguments
per call: tensors (q, k, v, o, lse, the backward's buffers, tile lists, inputs and their gradients),
their strides and the sizes. A kernel's signature starts with the ones its body reads, in the order
below (:func:`shared`), then its own positional extras, then constexprs; the runtime binds each
kernel by these names (``launch._bind``), so a kernel that reads no dq takes no ``DQ`` or its strides.
"""

from __future__ import annotations

import ast
import collections

from .plan import Plan


def shared(plan: Plan) -> list[str]:
    """Every runtime argument a kernel of ``plan`` may read, in signature order."""
    p = ["Q", "stride_qb", "stride_qh", "stride_qm", "stride_qd",
         "K", "stride_kb", "stride_kh", "stride_kn", "stride_kd",
         "V", "stride_vb", "stride_vh", "stride_vn", "stride_vd",
         "O", "OR", "DO", "DOR", "stride_ob", "stride_oh", "stride_om", "stride_od",
         "LSE", "DELTA", "DLSE", "SBL", "SBG", "AGG", "DAGG", "ACC", "TL", "TLC", "CU_Q", "CU_K", "BT", "stride_btb",
         "BT_PAGES", "OP", "MP", "LP",
         "DQ", "stride_dqb", "stride_dqh", "stride_dqm", "stride_dqd",
         "DK", "stride_dkb", "stride_dkh", "stride_dkn", "stride_dkd",
         "DVAL", "stride_dvb", "stride_dvh", "stride_dvn", "stride_dvd"]
    for d in plan.attn.inputs:
        if d.dims is None:
            p += [f"x_{d.name}", f"d{d.name}_ptr"]
        else:
            n = len(d.dims)
            p += [f"{d.name}_ptr", *(f"{d.name}_s{i}" for i in range(n)),
                  f"d{d.name}_ptr", *(f"d{d.name}_s{i}" for i in range(n))]
    return p + ["B", "H", "HK", "M", "N", "M_MAX", "N_MAX", "TQ", "SPLITS", "scale"]


def wrapped(names: list[str]) -> str:
    """Parameters a few to a line (lines of about 90 columns), for a signature's text."""
    lines, line = [], []
    for name in names:
        line.append(name)
        if len(", ".join(line)) > 80:
            lines.append(", ".join(line))
            line = []
    if line:
        lines.append(", ".join(line))
    return ",\n    ".join(lines)


def lean(text: str, names: list[str]) -> str:
    """``text`` (one template's rendering: kernels whose signatures start with ``wrapped(names)``) with
    each kernel taking only the ``names`` its body reads. A float the prelude pins to fp32
    (``x = tl.cast(x, tl.float32)``) and nothing else reads goes, with its cast."""
    block = f"    {wrapped(names)},\n"
    lines = text.split("\n")
    # the kernels from the last up, so that earlier line numbers stay valid
    defs = [n for n in ast.parse(text).body if isinstance(n, ast.FunctionDef)]
    for fn in reversed(defs):
        start, end = fn.lineno - 1, fn.end_lineno
        if block not in "\n".join(lines[start:end]):
            continue
        reads = collections.Counter(n.id for stmt in fn.body for n in ast.walk(stmt)
                                    if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Load))
        idle = [stmt for stmt in fn.body if _pin(stmt) and reads[_pin(stmt)] == 1]
        for stmt in reversed(idle):  # from the last up, as above
            del lines[stmt.lineno - 1:stmt.end_lineno]
            end -= stmt.end_lineno - stmt.lineno + 1
            reads[_pin(stmt)] = 0
        own = [n for n in names if reads[n]]
        part = "\n".join(lines[start:end]).replace(block, f"    {wrapped(own)},\n" if own else "", 1)
        lines[start:end] = part.split("\n")
    return "\n".join(lines)


def _pin(stmt: ast.stmt) -> str | None:
    """``x`` where ``stmt`` is ``x = tl.cast(x, ...)``."""
    if (isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name)
            and isinstance(stmt.value, ast.Call) and ast.unparse(stmt.value.func) == "tl.cast" and stmt.value.args
            and isinstance(stmt.value.args[0], ast.Name) and stmt.value.args[0].id == stmt.targets[0].id):
        return stmt.targets[0].id
    return None

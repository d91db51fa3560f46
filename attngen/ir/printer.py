"""Stable text form of the IR (used by ``attngen show --ir`` and golden tests).

Binary operations are fully parenthesized so the text is unambiguous; casts print
as ``float(x)``; vector types are shown on stage lines.
"""

from __future__ import annotations

from . import nodes as ir


def _num(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        if v == float("inf"):
            return "inf"
        if v == float("-inf"):
            return "-inf"
        return repr(v)
    return str(v)


def expr_str(e: ir.Expr) -> str:
    if isinstance(e, ir.Const):
        return _num(e.value)
    if isinstance(e, (ir.Sym, ir.Row, ir.Param)):
        return e.name
    if isinstance(e, ir.Load):
        if not e.indices:  # a whole 1-d tensor used as a row
            return e.name
        return f"{e.name}[{', '.join(expr_str(x) for x in e.indices)}]"
    if isinstance(e, ir.Unary):
        return f"(not {expr_str(e.x)})" if e.op == "not" else f"(-{expr_str(e.x)})"
    if isinstance(e, ir.Binary):
        return f"({expr_str(e.a)} {ir.OP_TEXT[e.op]} {expr_str(e.b)})"
    if isinstance(e, ir.Call):
        args = [expr_str(a) for a in e.args]
        if e.fn == "rope":
            args[2] = f"base={args[2]}"
        return f"{e.fn.removeprefix('row_')}({', '.join(args)})"  # row_sum(x) is written sum(x)
    if isinstance(e, ir.Cast):
        return f"{e.ty.kind}({expr_str(e.x)})"
    if isinstance(e, ir.Slice):
        return f"{expr_str(e.x)}[{e.lo}:{e.hi}]"
    if isinstance(e, ir.Agg):
        return "rowcount()" if e.kind == "count" else f"row{e.kind}({expr_str(e.x)})"
    if isinstance(e, ir.Scan):
        return f"suffixsum({expr_str(e.x)})"
    raise TypeError(f"not an IR expression: {e!r}")


def band_text(lo: int | None, hi: int | None) -> str:
    """A band as a reader writes it: ``0 <= i - j``, ``0 <= i - j <= 1023``."""
    return " ".join(x for x in (f"{lo} <=" if lo is not None else "", "i - j", f"<= {hi}" if hi is not None else "")
                    if x)


def attention_str(a: ir.Attention) -> str:
    lines = [f"attention {a.name} {{"]
    for d in a.inputs:
        dims = "" if d.dims is None else "[" + ", ".join(str(x) for x in d.dims) + "]"
        lines.append(f"  input {d.name}: {d.dtype}{dims}")
    for k, v in a.consts:
        lines.append(f"  const {k} = {_num(v)}")
    for st in ("q", "k", "score", "mask"):
        e = getattr(a, st)
        if e is not None:
            lines.append(f"  {st}: {e.ty} = {expr_str(e)}")
    if a.select is not None:
        s = a.select
        parts = [str(s.k), f"by={expr_str(s.by)}"]
        if s.block is not None:
            parts.append(f"block={s.block}")
        if s.keep is not None:
            parts.append(f"keep={expr_str(s.keep)}")
        if s.share:
            parts.append("share=group")
        lines.append(f"  select = topk({', '.join(parts)})")
        if s.kmean_of is not None:
            lines.append(f"  select.kmean = block mean of {expr_str(s.kmean_of)}")
        if s.lowered:
            lines.append("  select.lowered = the selection kernels write _sel; the mask reads it")
    sink = f"(sink={expr_str(a.norm.sink)})" if a.norm.sink is not None else ""
    lines.append(f"  norm = {a.norm.kind}{sink}")
    for st in ("weights", "out"):
        e = getattr(a, st)
        if e is not None:
            lines.append(f"  {st}: {e.ty} = {expr_str(e)}")
    if a.score2 is not None:
        lines.append(f"  score2 = {expr_str(a.score2)}")
    if a.scaled_dot is not None:
        sd = a.scaled_dot
        lines.append(f"  scaled_dot = {expr_str(sd.dot)} * {expr_str(sd.factor2)} (base 2), "
                     f"* scale * {_num(sd.literal)} (natural)")
    if a.tiles is not None:
        lines.append(f"  tiles.any = {expr_str(a.tiles.any)}")
        lines.append(f"  tiles.all = {expr_str(a.tiles.all)}")
        if a.tiles.band is not None:
            lines.append(f"  tiles.band = {band_text(*a.tiles.band)}")
    lines.append("}")
    return "\n".join(lines)

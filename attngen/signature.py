"""Call-time validation of the reference backend: the generated modules' checks (runtime/checks.py),
one set of rules for both backends, plus what only the IR knows.

:func:`bind` checks the tensors of one call against an attention's implicit and
declared inputs and returns the sizes every backend needs::

    q: [B, H, M, D]    k: [B, HK, N, D]    v: [B, HK, N, DV]    (H divisible by HK)

The reference also takes float64 (its golden) and any device. Wrong Python types and dtypes,
missing or unexpected keyword inputs raise ``TypeError``; wrong shapes, sizes and devices raise
``ValueError``. Every message names the attention, the tensor and, for shapes, the dimension.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

import torch

from .ir import nodes as ir
from .ir.printer import expr_str
from .runtime.checks import _TORCH_DTYPES as TORCH_DTYPES
from .runtime.checks import _check_inputs, _check_qkv, _check_scale, _check_shape

SIZE_NAMES = ("B", "H", "HK", "M", "N", "D", "DV")
__all__ = ["TORCH_DTYPES", "SIZE_NAMES", "Bound", "bind", "check_input_shape", "decls"]


@dataclass
class Bound:
    """One validated call: the q/k/v tensors, their sizes, the scale and the inputs.

    ``inputs`` holds every declared input: tensors as given, scalar inputs as a
    Python float, or as the 0-d tensor the caller passed (so it can get a gradient).
    """

    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    sizes: dict[str, int]
    scale: float
    inputs: dict[str, Union[torch.Tensor, float]]


def check_input_shape(fn: str, d: ir.InputDecl, t: torch.Tensor, sizes: Mapping[str, int]) -> None:
    """Raise ValueError unless tensor ``t`` has the shape declared for input ``d`` (``fn``: the
    attention, for the message)."""
    _check_shape(fn, d.name, d.dtype, d.dims, t, sizes)


def decls(a: ir.Attention) -> dict[str, tuple[str, tuple | None]]:
    """The public inputs' declarations, name -> (dtype, dims): what a generated module's checks take."""
    return {d.name: (d.dtype, d.dims) for d in a.public_inputs}


def bind(a: ir.Attention, q, k, v, inputs: Mapping[str, object] | None = None, scale=None, *,
         allow_float64: bool = False, return_lse: bool = False) -> Bound:
    """Validate one call of attention ``a``; see the module docstring for the rules.

    ``allow_float64`` admits float64 q/k/v and float inputs (the reference backend).
    ``return_lse`` is checked against the norm: only softmax norms have a log-sum-exp.
    """
    sizes = _check_qkv(a.name, q, k, v, float64=allow_float64)
    if not isinstance(return_lse, bool):
        raise TypeError(f"{a.name}: return_lse must be True or False, got {return_lse!r}")
    if return_lse and not a.is_softmax:
        raise ValueError(f"{a.name}: return_lse=True needs a softmax norm; attention '{a.name}' uses "
                         f"norm = {a.norm.kind}, which has no row log-sum-exp")
    given = dict(inputs or {})
    _check_inputs(a.name, decls(a), given, sizes, q.device, float64=allow_float64)
    _check_vector_lengths(a, sizes)
    bound = {n: x if isinstance(x, torch.Tensor) else float(x) for n, x in given.items()}
    return Bound(q, k, v, sizes, _check_scale(a.name, scale, sizes["D"]), bound)


def _check_vector_lengths(a: ir.Attention, sizes: Mapping[str, int]) -> None:
    """Row vectors of an integer length (a row of an input) against a size name (q: D),
    and rope() rows, which must have an even length.

    The IR accepts ``dot(qi[b, i], q)`` with ``qi: bf16[B, M, 64]`` because D is only
    known now; here D must be 64.
    """
    def value(length: str) -> int:
        return int(length) if length.isdigit() else sizes[length]

    def show(length: str) -> str:
        return length if length.isdigit() else f"{length}={sizes[length]}"

    for stage, e in a.exprs():
        for node in ir.walk(e):
            if isinstance(node, ir.Slice) and value(node.x.ty.length) < node.hi:
                raise ValueError(f"{stage} stage, {expr_str(node)}: the slice runs past its row's "
                                 f"{show(node.x.ty.length)} lanes")
            if isinstance(node, ir.Call) and node.fn == "rope" and value(node.ty.length) % 2:
                raise ValueError(f"{stage} stage, {expr_str(node)}: rotate-half RoPE needs an even row length, "
                                 f"got {show(node.ty.length)}")
            joined = isinstance(node, ir.Call) and node.fn == "concat"  # rows of any two lengths
            parts = [] if joined else [(c, expr_str(c)) for c in ir.children(node) if c.ty.is_vec]
            if isinstance(node, ir.Cast) and node.ty.is_vec:
                parts.append((node, f"the row the {stage} stage must give"))
            for (x, xs), (y, ys) in zip(parts, parts[1:]):
                if value(x.ty.length) != value(y.ty.length):
                    raise ValueError(f"{stage} stage, {expr_str(node)}: {xs} has length {show(x.ty.length)} "
                                     f"but {ys} has length {show(y.ty.length)}")

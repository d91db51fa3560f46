"""Softmax scores in base 2: ``score2 = log2(e) * score``, the factor folded into constants.

Why: ``exp(x)`` is ``exp2(x * log2(e))`` on the GPU, one multiply per pair more than ``exp2``.
The softmax kernels keep their running max and sums in base 2 (``exp2(score2 - m2)``), and the
factor is distributed through the score's sums into a literal or a program-level factor
(``dot(q, k) * scale`` becomes ``dot(q, k) * (scale * 1.4427)``, which the code generator
hoists), so each pair pays for no extra multiply. The lse returned is converted back once per row.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..ir import nodes as ir
from ..ir.types import FLOAT
from .fold_constants import _fold

LOG2E = 1.0 / math.log(2.0)
_PER_PAIR = ("i", "j", "m", "score", "p")


def _per_program(e: ir.Expr) -> bool:
    """Same value for every pair of a program (sizes, scale, b, h, scalar inputs, loads of them)."""
    return not any(isinstance(n, ir.Row) or (isinstance(n, ir.Sym) and n.name in _PER_PAIR) for n in ir.walk(e))


def _times(e: ir.Expr, c: float) -> ir.Expr:
    """``c * e`` with ``c`` pushed into sums and onto a literal or per-program factor."""
    if isinstance(e, ir.Binary) and e.op in ("add", "sub") and e.ty == FLOAT:
        return replace(e, a=_times(e.a, c), b=_times(e.b, c))
    if isinstance(e, ir.Unary) and e.op == "neg":
        return replace(e, x=_times(e.x, c))
    if isinstance(e, ir.Binary) and e.op in ("mul", "div") and e.ty == FLOAT:
        for side in ("b", "a") if e.op == "mul" else ("a",):
            x = getattr(e, side)
            if x.ty == FLOAT and (_per_program(x) or isinstance(x, ir.Binary) and x.op in ("mul", "add", "sub")):
                return replace(e, **{side: _times(x, c)})
    if isinstance(e, ir.Const):
        return ir.Const(e.value * c, FLOAT, e.span)
    return ir.transform(ir.Binary("mul", e, ir.Const(c, FLOAT), FLOAT), _fold)


def run(a: ir.Attention) -> ir.Attention:
    if a.norm.kind != "softmax":
        return a
    return replace(a, score2=ir.transform(_times(a.score, LOG2E), _fold))

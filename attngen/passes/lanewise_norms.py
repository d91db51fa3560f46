"""``l2norm`` and ``rmsnorm`` of a pair row (one that mixes the query and the key side) written out.

Why: the kernels evaluate a pair row lane by lane, a loop over its lanes of [BLOCK_M, BLOCK_N]
tiles (codegen/lanes.py), never as a [BLOCK_M, BLOCK_N, D] block; a norm of such a row is then a
pair scalar of its own loop: ``x / max(norm(x), 1e-6)`` and ``x * rsqrt(mean(x * x) + 1e-6) * w``,
the same functions the reference computes.
"""

from __future__ import annotations

from ..ir import nodes as ir
from ..ir.axes import is_pair_row
from ..ir.types import FLOAT


def _written_out(e: ir.Expr) -> ir.Expr:
    if not (isinstance(e, ir.Call) and e.fn in ("l2norm", "rmsnorm") and is_pair_row(e)):
        return e
    x, eps = e.args[0], ir.Const(1e-6, FLOAT)
    if e.fn == "l2norm":
        return ir.Binary("div", x, ir.Call("max", (ir.Call("norm", (x,), FLOAT), eps), FLOAT), e.ty, e.span)
    ms = ir.Call("row_mean", (ir.Binary("mul", x, x, x.ty),), FLOAT)
    r = ir.Call("rsqrt", (ir.Binary("add", ms, eps, FLOAT),), FLOAT)
    return ir.Binary("mul", ir.Binary("mul", x, r, e.ty), e.args[1], e.ty, e.span)


def run(a: ir.Attention) -> ir.Attention:
    return a.replace_exprs(lambda stage, e: ir.transform(e, _written_out))

"""A softmax score that is ``dot(q, k)`` times the scale and positive literals, factored out.

Why: the forward then keeps the raw dot per pair, takes the tile's running max before scaling and
exponentiates ``dot * factor2 - m`` as one FMA: a multiply per pair fewer. The backward's
block-sparse dk/dv kernel uses the natural-log factor to write dq as ``ds @ k * factor``. Both
factors are read off the stages here, once: ``factor2`` from ``score2`` (base 2, after
exp2_scores), the natural literal from ``score``. A positive factor is needed; for a negative
scale the module passes -q and -scale, which give the same scores (runtime/attention.py).

Only when q and scale are read nowhere else (no mask, selection by q, sink, weights or out stage
names them) and out has no row aggregate (an aggregate of p follows the statistics pass, which
exponentiates the scaled score): the kernels then never need the scaled score itself.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir import nodes as ir
from ..ir.types import FLOAT


def _factors(e: ir.Expr) -> list[ir.Expr]:
    out, stack = [], [e]
    while stack:
        x = stack.pop()
        if isinstance(x, ir.Binary) and x.op == "mul":
            stack += [x.a, x.b]
        else:
            out.append(x)
    return out


def _split(e: ir.Expr) -> tuple[ir.Call, ir.Sym, float] | None:
    """(the dot, scale, the literals' product) when ``e`` is a product of one dot(q_raw, ...), scale
    and positive literals; else None."""
    factors = _factors(e)
    dots = [f for f in factors if isinstance(f, ir.Call) and f.fn == "dot"]
    scales = [f for f in factors if isinstance(f, ir.Sym) and f.name == "scale"]
    consts = [f for f in factors if isinstance(f, ir.Const)]
    literal = 1.0
    for c in consts:
        literal *= c.value
    if (len(dots) != 1 or len(scales) != 1 or len(factors) != 2 + len(consts) or not literal > 0
            or not (isinstance(dots[0].args[0], ir.Row) and dots[0].args[0].name == "q_raw")):
        return None
    return dots[0], scales[0], literal


def run(a: ir.Attention) -> ir.Attention:
    # a selection's own kernels compute by and keep apart; the ones this factors see the lowered mask
    if (a.score2 is None or a.weights is not None
            or any(ir.uses(x, "q", "q_raw", "scale") for x in (a.mask, a.out, a.norm.sink))
            or (a.out is not None and any(isinstance(n, ir.Agg) for n in ir.walk(a.out)))):
        return a
    base2, natural = _split(a.score2), _split(a.score)
    if base2 is None or natural is None:
        return a
    dot, scale, literal2 = base2
    factor2 = ir.Binary("mul", scale, ir.Const(literal2, FLOAT), FLOAT)
    return replace(a, scaled_dot=ir.ScaledDot(dot, factor2, natural[2]))

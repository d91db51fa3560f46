"""The kernel plan of one attention: prologue substitution and the flags templates use.

After substitution the IR has raw rows only: ``q_raw`` / ``k_raw`` are the loaded rows,
and every other stage sees the prologue expression in place of ``q`` / ``k``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..ir import nodes as ir
from ..ir.types import FLOAT, vec
from . import select
from .analysis import CodegenError, is_pair_row
from .lanes import is_lane_reduction


def _substitute(a: ir.Attention) -> ir.Attention:
    q_raw, k_raw = ir.Row("q_raw", vec("D")), ir.Row("k_raw", vec("D"))
    to_raw = {"q": q_raw, "k": k_raw}

    def raw(e):
        return to_raw.get(e.name, e) if isinstance(e, ir.Row) else e

    q = ir.transform(a.q, raw) if a.q is not None else q_raw
    k = ir.transform(a.k, raw) if a.k is not None else k_raw
    rows = {"q": q, "k": k}

    def use(e):
        return rows.get(e.name, e) if isinstance(e, ir.Row) else e

    out = replace(a, q=None, k=None)
    out = out.replace_exprs(lambda stage, e: ir.transform(e, use))
    # the mask and the selection name the score's value: the kernels compute it there in place
    score = out.score

    def with_score(stage, e):
        if stage not in ("mask", "select.by", "select.keep"):
            return e
        return ir.transform(e, lambda n: score if isinstance(n, ir.Sym) and n.name == "score" else n)

    return out.replace_exprs(with_score).replace_exprs(lambda stage, e: ir.transform(e, _lanewise_norm))


def _lanewise_norm(e: ir.Expr) -> ir.Expr:
    """l2norm and rmsnorm of a pair row written out lane by lane, as the kernels evaluate pair rows
    (``emit.LaneEmitter``): x / max(norm(x), 1e-6) and x * rsqrt(mean(x * x) + 1e-6) * w, the
    reductions being pair scalars of their own loops over the lanes."""
    if not (isinstance(e, ir.Call) and e.fn in ("l2norm", "rmsnorm") and is_pair_row(e)):
        return e
    x, eps = e.args[0], ir.Const(1e-6, FLOAT)
    if e.fn == "l2norm":
        return ir.Binary("div", x, ir.Call("max", (ir.Call("norm", (x,), FLOAT), eps), FLOAT), e.ty, e.span)
    ms = ir.Call("row_mean", (ir.Binary("mul", x, x, x.ty),), FLOAT)
    r = ir.Call("rsqrt", (ir.Binary("add", ms, eps, FLOAT),), FLOAT)
    return ir.Binary("mul", ir.Binary("mul", x, r, e.ty), e.args[1], e.ty, e.span)


@dataclass(frozen=True)
class Plan:
    attn: ir.Attention  # substituted IR (a block selection folded into the mask)
    source: ir.Attention  # as given to the code generator
    select_code: "select.SelectCode | select.TopkCode | None" = None  # the selection kernels' statements
    select: ir.Select | None = None
    unlowered: ir.Attention | None = None  # a selection: the substituted IR before lowering, without select

    @property
    def norm(self) -> str:
        return self.attn.norm.kind

    @property
    def row_stat(self) -> bool:
        """Norms whose forward keeps a per-row statistic (lse or row sum)."""
        return self.norm in ("softmax", "sum")

    @property
    def two_pass(self) -> bool:
        """Weights of a row-normalized p need the final statistic before any weight."""
        return self.attn.weights is not None and self.row_stat

    @property
    def delta_loop(self) -> bool:
        """delta = sum_j p dp needs a key loop when a weights stage sits between p and o, and for
        stick-breaking, whose ds subtracts running sums from delta (so delta must be fp32-exact,
        not rebuilt from the low-precision o)."""
        return (self.attn.weights is not None and self.norm in ("softmax", "sum")) or self.norm == "stickbreaking"

    @property
    def needs_delta(self) -> bool:
        return self.norm in ("softmax", "sum", "stickbreaking")

    @property
    def float_inputs(self) -> list[ir.InputDecl]:
        return [d for d in self.attn.inputs if d.is_float]

    def wants_grad(self, e: ir.Expr) -> bool:
        if isinstance(e, ir.Row):
            return e.name in ("q_raw", "k_raw", "o")
        if isinstance(e, (ir.Load, ir.Param)):
            return self.attn.input(e.name).is_float
        return False

    def _exprs(self):
        """Every expression some kernel evaluates: the attention's, and the selection's (which
        lowering took out of the attention)."""
        yield from (e for _, e in self.attn.exprs())
        if self.select is not None:
            yield from (e for e in (self.select.by, self.select.keep) if e is not None)

    @property
    def vec_lengths(self) -> list[str]:
        """Every vector length the kernels need offsets for: D, DV and literal row lengths."""
        out = ["D", "DV"]
        for e in self._exprs():
            for n in ir.walk(e):
                if n.ty.is_vec and n.ty.length not in out:
                    if not n.ty.length.isdigit() and n.ty.length not in ("D", "DV"):
                        raise CodegenError(f"rows of length {n.ty.length} are not supported in kernels "
                                           "(use D, DV or an integer length)", n.span)
                    out.append(n.ty.length)
        return out

    @property
    def pair_rows(self) -> bool:
        """Some kernel reduces a pair row lane by lane (lanes.py: the slow path)."""
        return any(is_lane_reduction(n) for e in self._exprs() for n in ir.walk(e))

    @property
    def sliced_sizes(self) -> dict[str, int]:
        """The least D or DV a call needs: the end of the furthest slice of a row of that length."""
        out: dict[str, int] = {}
        for e in self._exprs():
            for n in ir.walk(e):
                if isinstance(n, ir.Slice) and not n.x.ty.length.isdigit():
                    out[n.x.ty.length] = max(out.get(n.x.ty.length, 0), n.hi)
        return out

    @property
    def rope_lengths(self) -> list[str]:
        out = []
        for e in self._exprs():
            for n in ir.walk(e):
                if isinstance(n, ir.Call) and n.fn == "rope" and n.ty.length not in out:
                    out.append(n.ty.length)
        return out


def make_plan(a: ir.Attention) -> Plan:
    sub = _substitute(a)
    if sub.select is None:
        return Plan(sub, a)
    if sub.select.block is None:
        return Plan(select.lower(sub), a, select.topk_code(sub), sub.select, replace(sub, select=None))
    k_row = ir.transform(a.k, lambda e: ir.Row("k_raw", vec("D")) if isinstance(e, ir.Row) else e) \
        if a.k is not None else ir.Row("k_raw", vec("D"))
    return Plan(select.lower(sub), a, select.select_code(sub, k_row), sub.select, replace(sub, select=None))

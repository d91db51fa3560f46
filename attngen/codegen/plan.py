"""The kernel plan of one attention: the pipeline's IR (prologue substituted, a selection lowered
into the mask), the selection kernels' statements, and the flags templates use."""

from __future__ import annotations

import functools
from dataclasses import dataclass

from ..ir import nodes as ir
from . import aggregates, linear, scans, select, tables
from .analysis import CodegenError
from .lanes import is_lane_reduction


@dataclass(frozen=True)
class Plan:
    attn: ir.Attention  # after the whole pipeline
    select_code: "select.SelectCode | select.TopkCode | None" = None  # the selection kernels' statements

    @property
    def select(self) -> ir.Select | None:
        return self.attn.select

    @property
    def norm(self) -> str:
        return self.attn.norm.kind

    @property
    def row_stat(self) -> bool:
        """Norms whose forward keeps a per-row statistic (lse or row sum)."""
        return self.norm in ("softmax", "sum")

    @property
    def two_pass(self) -> bool:
        """Weights of a row-normalized p (or an aggregate of it) need the final statistic before any weight."""
        return (self.attn.weights is not None or aggregates.reads_p(self.attn)) and self.row_stat

    @functools.cached_property
    def linear(self) -> "linear.Linear | None":
        """Weights linear in pair terms: the one-pass forward and a pre kernel without key loops."""
        return linear.of(self.attn)[0]

    @functools.cached_property
    def fused(self) -> bool:
        """Aggregates only the out stage reads: the forward's own loop takes them (linear.fused)."""
        return linear.fused(self.attn)

    @property
    def delta_loop(self) -> bool:
        """delta = sum_j p dp needs a key loop when a weights stage sits between p and o, and for
        stick-breaking, whose ds subtracts running sums from delta (so delta must be fp32-exact,
        not rebuilt from the low-precision o)."""
        return ((self.attn.weights is not None or aggregates.reads_p(self.attn)) and self.norm in ("softmax", "sum")
                or self.norm == "stickbreaking")

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
        """Every expression some kernel evaluates (the selection's among them)."""
        yield from (e for _, e in self.attn.exprs())

    @property
    def vec_lengths(self) -> list[str]:
        """Every vector length the kernels need offsets for: D, DV and literal row lengths (and the rows
        of a table dot's table: tables.py)."""
        out = ["D", "DV"]
        decls = {d.name: d for d in self.attn.inputs}
        for e in self._exprs():
            for n in ir.walk(e):
                if tables.match(n, decls) is not None and str(tables.rows_of(n, decls)) not in out:
                    out.append(str(tables.rows_of(n, decls)))
                if n.ty.is_vec and n.ty.length not in out:
                    if not n.ty.length.isdigit() and n.ty.length not in ("D", "DV"):
                        raise CodegenError(f"rows of length {n.ty.length} are not supported in kernels "
                                           "(use D, DV or an integer length)", n.span)
                    out.append(n.ty.length)
        return out

    @property
    def pair_rows(self) -> bool:
        """Some kernel reduces a pair row lane by lane (lanes.py: the slow path)."""
        decls = {d.name: d for d in self.attn.inputs}
        return any(is_lane_reduction(n, decls) for e in self._exprs() for n in ir.walk(e))

    @functools.cached_property
    def table_dots(self) -> bool:
        """Some score dots a query row with a table row picked per pair (tables.py)."""
        decls = {d.name: d for d in self.attn.inputs}
        return any(tables.match(n, decls) is not None for e in self._exprs() for n in ir.walk(e))

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
    """``a``: the pipeline's output (passes/pipeline.py)."""
    aggregates.refuse(a)
    scans.refuse(a)
    if a.select is None:
        return Plan(a)
    own = select.unselected(a)
    return Plan(a, select.topk_code(own) if a.select.block is None else select.select_code(own))

"""The pre kernel's loops over the keys for the row aggregates' adjoints (aggregates.py has the
forward passes, the stores and the dq and dk/dv kernels' seeds)."""

from __future__ import annotations

from ..ir import nodes as ir
from . import aggregates
from .aggregates import AGG
from .analysis import COL, axes, is_pair
from .autodiff import Differentiator, GradSinks
from .blocks import Blocks, frontier
from .emit import Emitter, KernelEnv
from .plan import Plan


def adjoints(em: Emitter, env: KernelEnv, plan: Plan, bl: Blocks, to_dagg, dagg: dict) -> list[dict]:
    """The pre kernel's loops over the keys for the aggregates' adjoints. The first ('agg_wb'): dw = do . v_j
    through the weights to every value that reads an aggregate, summed over the keys, then down to the
    aggregates ('agg_dpost'). Then one per nesting level L > 1, from the outermost ('aggb_tile{L}'): the
    level's adjoints, complete now, seed its arguments, down to the aggregates inside them. Returns the
    nested loops' records for the template; ``bl.vars['dagg_regs']``: each adjoint's register."""
    a = plan.attn
    aggs = aggregates.of(a)
    after = aggregates.after(a)

    def loop(seeds, tile: str, init: str, post: str, guard: str | None) -> bool:
        """Whether any adjoint reaches an aggregate (else the loop is left out)."""
        known = set(em.memo)
        acc: dict = {}
        update, flush = frontier(acc, bl, init, "acc_a")
        env.level_of = lambda ax: tile if COL in ax else after if AGG in ax else "outer"
        Differentiator(em, lambda n: False).backprop(
            seeds, "pair", tile, lambda n: not is_pair(n), lambda n, g, shape, f: update(n, g, shape, tile, f),
            GradSinks(lambda *args: None), want_child=lambda c: is_pair(c) or AGG in axes(c), pair_guard=guard)
        flush()
        em.forget(known, bl.stmts_names(tile))  # the loop's pair values: later loops compute their own
        env.level_of = lambda ax: post
        post_seeds = {n: [(f"{name} * {factor}" if factor else name, shape)]
                      for n, (name, shape, factor) in acc.items()}
        Differentiator(em, lambda n: False).backprop(post_seeds, "pair", post, lambda n: isinstance(n, ir.Agg),
                                                     to_dagg, GradSinks(lambda *args: None))
        return bool(acc)

    if a.weights is not None and any(isinstance(n, ir.Agg) for n in ir.walk(a.weights)):
        bl.vars["agg_loop"] = "1"
        loop({a.weights: [("tl.where(allowed, dw, 0.0)", "pair")]}, "agg_wb", "agg_dinit", "agg_dpost", "allowed")
    regs: dict = {}
    nested = []
    for lv in range(len(aggs.levels), 1, -1):
        names = {k: f"aggb_{k}{lv}" for k in ("before", "init", "tile", "post")}
        for n in names.values():
            bl.stmts[n] = []
        level = {n: f"dagg{aggs.grad_col[n]}" for n in aggs.levels[lv - 1]}
        for n, reg in level.items():
            bl.stmts[names["before"]].append(f"{reg} = {aggregates.adjoint_total(aggs, n, dagg)}")
        if loop(aggregates.argument_seeds(em, env, "pair", level), names["tile"], names["init"], names["post"],
                "allowed"):
            regs.update(level)
            nested.append(dict(names, level=lv))
        # else no gradient reaches the aggregates inside (a comparison, say): no loop
    bl.vars["dagg_regs"] = regs
    return nested


def registers(aggs: aggregates.Aggregates, bl: Blocks, dagg: dict) -> dict:
    """Every aggregate's adjoint in a register ('agg_final', after the loops; the nested loops made their
    levels' already): the stores and delta's loop read them."""
    regs = dict(bl.vars.get("dagg_regs", {}))
    bl.stmts["agg_final"] = [f"dagg{aggs.grad_col[n]} = {aggregates.adjoint_total(aggs, n, dagg)}"
                             for n in aggs.all if n not in regs and n not in aggs.total.values()]
    regs.update({n: f"dagg{aggs.grad_col[n]}" for n in aggs.all if n not in aggs.total.values()})
    return regs

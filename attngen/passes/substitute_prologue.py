"""Prologue substitution: every stage reads the loaded rows ``q_raw`` / ``k_raw``, the prologue inlined.

Why: the kernels load raw rows and compute a prologue value where a stage uses it (hoisted per row or
per key), so after this pass the IR says what they compute: ``dot(q, k)`` under ``q = rmsnorm(q, g)``
becomes ``dot(rmsnorm(q_raw, g), k_raw)``. The mask and the selection name the score's value; the
kernels compute it there in place, so ``score`` in them becomes its expression. A block selection
averages the prologue'd keys: its ``kmean_of`` keeps k's prologue for the kernel that takes the means.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir import nodes as ir
from ..ir.types import vec

_SCORE_NAMED = ("mask", "select.by", "select.keep")


def run(a: ir.Attention) -> ir.Attention:
    q_raw, k_raw = ir.Row("q_raw", vec("D")), ir.Row("k_raw", vec("D"))
    to_raw = {"q": q_raw, "k": k_raw}

    def raw(e):
        return to_raw.get(e.name, e) if isinstance(e, ir.Row) else e

    rows = {"q": ir.transform(a.q, raw) if a.q is not None else q_raw,
            "k": ir.transform(a.k, raw) if a.k is not None else k_raw}

    def use(e):
        return rows.get(e.name, e) if isinstance(e, ir.Row) else e

    out = replace(a, q=None, k=None).replace_exprs(lambda stage, e: ir.transform(e, use))
    if out.select is not None and out.select.block is not None:
        out = replace(out, select=replace(out.select, kmean_of=rows["k"]))
    score = out.score

    def with_score(stage, e):
        if stage not in _SCORE_NAMED:
            return e
        return ir.transform(e, lambda n: score if isinstance(n, ir.Sym) and n.name == "score" else n)

    return out.replace_exprs(with_score)

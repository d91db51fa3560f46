"""The optimizer pipeline: an ordered list of passes, ``verify()`` after each.

Each pass is one module with a ``run(ir.Attention) -> ir.Attention`` function.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from ..ir import nodes as ir
from ..ir.verify import verify
from . import exp2_scores, fold_constants, lanewise_norms, lower_select, mask_tiles, scaled_dot, substitute_prologue


@dataclass(frozen=True)
class Pass:
    name: str
    run: Callable[[ir.Attention], ir.Attention]
    why: str


PASSES: list[Pass] = [
    Pass("fold_constants", fold_constants.run, "consts are inlined: fold literal arithmetic once, not per tile"),
    Pass("exp2_scores", exp2_scores.run, "softmax in base 2 with log2(e) folded into the score's factors"),
    Pass("substitute_prologue", substitute_prologue.run,
         "kernels load raw rows: inline the prologue where stages read q and k, the score where masks name it"),
    Pass("lanewise_norms", lanewise_norms.run, "a pair row is evaluated lane by lane: its norms become pair scalars"),
    Pass("lower_select", lower_select.run, "the selection kernels' choice becomes a mask term, so every kernel runs it"),
    Pass("scaled_dot", scaled_dot.run, "a scaled dot is exponentiated as one FMA: factor it out of the score once"),
    Pass("mask_tiles", mask_tiles.run, "bound the mask per tile so kernels skip empty tiles and unmask full ones"),
]


def pass_names() -> list[str]:
    return [p.name for p in PASSES]


def run_pipeline(a: ir.Attention, stop_after: str | None = "all") -> ir.Attention:
    """Run the passes in order; stop after ``stop_after`` ('all' runs every pass, None none)."""
    if stop_after not in (None, "all") and stop_after not in pass_names():
        raise ValueError(f"unknown pass '{stop_after}'; passes are: {', '.join(pass_names())}")
    if stop_after is None:
        return a
    for p in PASSES:
        a = verify(p.run(a))
        if p.name == stop_after:
            break
    return a

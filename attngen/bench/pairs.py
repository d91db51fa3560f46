"""Allowed (b, h, m, j) pairs of an attention's mask on the actual inputs, for FLOP counts.

The mask is evaluated with the reference's expression evaluator on the inputs' device,
a block of query rows at a time, so that at most ``budget`` pairs exist at once (a
16k x 16k mask over B x H is never materialized). A mask that does not read b (or h,
hk) is evaluated for b = 0 (h = 0) only and counted B (H) times. A mask that reads the
score or the q/k rows gets them from the prologue and score stages on the same rows.
"""

from __future__ import annotations

from typing import Mapping, Union

import torch

from ..ir import nodes as ir
from ..reference.context import Context
from ..reference.exprs import as_grid, evaluate, prepare_inputs
from ..signature import bind

#: pairs evaluated at once (a few bytes each, per intermediate)
BUDGET = 1 << 24


@torch.no_grad()
def allowed_pairs(a: ir.Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                  inputs: Mapping[str, Union[torch.Tensor, float]], scale: float | None = None,
                  budget: int = BUDGET) -> int:
    """How many of the B·H·M·N pairs ``a``'s mask allows (select is not counted).

    q [B, H, M, D], k [B, HK, N, D], v [B, HK, N, DV]; ``inputs``: the keyword inputs.
    """
    bound = bind(a, q, k, v, inputs, scale, allow_float64=True)
    B, H, M, N = (bound.sizes[x] for x in ("B", "H", "M", "N"))
    if a.mask is None:
        return B * H * M * N
    data = any(n.ty.is_vec for n in ir.walk(a.mask)) or ir.uses(a.mask, "score")
    per_b = data or ir.uses(a.mask, "b")
    per_h = data or ir.uses(a.mask, "h", "hk")
    dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
    first = torch.zeros(1, dtype=torch.long)
    ctx = Context.make(bound.sizes, prepare_inputs(bound.inputs, dtype, q.device), dtype, q.device, bound.scale,
                       batch=None if per_b else first, heads=None if per_h else first)
    if data:
        _prologue(a, ctx, q.to(dtype), k.to(dtype))
    nb, nh = ctx.syms["b"].shape[0], ctx.syms["h"].shape[1]
    step = max(1, budget // (nb * nh * N))
    total = 0
    for lo in range(0, M, step):
        m = ctx.syms["m"][:, :, lo:lo + step]
        syms = {"m": m, "i": m + (N - M)}
        rows = {"q": ctx.q_rows[:, :, lo:lo + step, None, :], "k": ctx.k_rows[:, :, None, :, :]} if data else None
        shape = (nb, nh, m.shape[2], N)
        if ir.uses(a.mask, "score"):
            syms["score"] = as_grid(evaluate(a.score, ctx.env(rows, **syms)), shape)
        total += int(as_grid(evaluate(a.mask, ctx.env(rows, **syms)), shape).sum())
    return total * (B // nb) * (H // nh)


def _prologue(a: ir.Attention, ctx: Context, q: torch.Tensor, k: torch.Tensor) -> None:
    """Set ``ctx.q_rows`` q' [B, H, M, D] and ``ctx.k_rows`` k' [B, H, N, D] (k expanded to query heads)."""
    B, H, M, D = q.shape
    N = k.shape[2]
    k = k.index_select(1, ctx.syms["hk"].flatten())
    if a.q is not None:
        q = as_grid(evaluate(a.q, ctx.env({"q": q[:, :, :, None, :]})), (B, H, M, 1, D)).squeeze(3)
    if a.k is not None:
        k = as_grid(evaluate(a.k, ctx.env({"k": k[:, :, None, :, :]})), (B, H, 1, N, D)).squeeze(2)
    ctx.q_rows, ctx.k_rows = q, k

"""Allowed (b, h, m, j) pairs of an attention's mask on the actual inputs, for FLOP counts;
the key rows they read, for bandwidth; and the pairs of packed sequences.

The mask is evaluated with the reference's expression evaluator on the inputs' device,
a block of query rows at a time, so that at most ``budget`` pairs exist at once (a
16k x 16k mask over B x H is never materialized). A mask that does not read b (or h,
hk) is evaluated for b = 0 (h = 0) only and counted B (H) times. A mask that reads the
score or the q/k rows gets them from the prologue and score stages on the same rows.

    allowed_pairs  (b, h, m, j) pairs the mask allows: FLOPs are 2 (D + DV) per pair forward
    allowed_keys   (b, hk, j) key rows some pair of the group allows: the bytes of K and V a
                   decoding step must read at the least are keys x (D + DV) x element size
    varlen_pairs   allowed_pairs of each packed sequence, summed
"""

from __future__ import annotations

from typing import Mapping, Union

import torch

from ..ir import nodes as ir
from ..reference.context import Context
from ..reference.exprs import as_grid, evaluate, prepare_inputs
from ..reference.interpreter import apply_prologue
from ..reference.varlen import cut_to_sequence
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
    grids = _MaskGrids(a, q, k, v, inputs, scale, budget)
    if grids.full:
        return grids.B * grids.H * grids.M * grids.N
    total = sum(int(grid.sum()) for grid in grids)
    return total * grids.b_repeat * grids.h_repeat


@torch.no_grad()
def allowed_keys(a: ir.Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 inputs: Mapping[str, Union[torch.Tensor, float]], scale: float | None = None,
                 budget: int = BUDGET) -> int:
    """How many of the B·HK·N (b, hk, j) key rows some query row of some head of the group may
    attend to: the keys (and values) an implementation has to read at the least, for bandwidth.

    Same arguments as :func:`allowed_pairs`. A key is counted once per (b, hk), however many
    of the group's H/HK heads and M query rows allow it.
    """
    grids = _MaskGrids(a, q, k, v, inputs, scale, budget)
    if grids.full:
        return grids.B * grids.HK * grids.N
    seen = None  # [nb, heads, N]: allowed for some query row so far
    for grid in grids:
        rows = grid.any(dim=2)
        seen = rows if seen is None else seen | rows
    nb, nh = seen.shape[:2]
    if nh > 1:  # per head: a key counts for a group when one of its heads allows it
        seen = seen.view(nb, grids.HK, nh // grids.HK, grids.N).any(dim=2)
        return int(seen.sum()) * grids.b_repeat
    return int(seen.sum()) * grids.b_repeat * grids.HK


class _MaskGrids:
    """The mask of one call as boolean grids [nb, nh, rows, N], a block of query rows at a time
    (iterate), with at most ``budget`` pairs in one. nb = 1 when the mask does not read b (count
    it ``b_repeat`` = B times), nh = 1 when it does not read h or hk (``h_repeat`` = H times).
    ``full``: no mask at all (nothing to iterate)."""

    def __init__(self, a, q, k, v, inputs, scale, budget):
        bound = bind(a, q, k, v, inputs, scale, allow_float64=True)
        self.a, self.budget = a, budget
        self.B, self.H, self.HK, self.M, self.N = (bound.sizes[x] for x in ("B", "H", "HK", "M", "N"))
        self.full = a.mask is None
        if self.full:
            return
        self.data = any(n.ty.is_vec for n in ir.walk(a.mask)) or ir.uses(a.mask, "score")
        per_b = self.data or ir.uses(a.mask, "b")
        per_h = self.data or ir.uses(a.mask, "h", "hk")
        dtype = torch.float64 if q.dtype == torch.float64 else torch.float32
        first = torch.zeros(1, dtype=torch.long)
        self.ctx = Context.make(bound.sizes, prepare_inputs(bound.inputs, dtype, q.device), dtype, q.device,
                                bound.scale, batch=None if per_b else first, heads=None if per_h else first)
        if self.data:
            apply_prologue(a, self.ctx, q.to(dtype), k.to(dtype))
        nb, nh = self.ctx.syms["b"].shape[0], self.ctx.syms["h"].shape[1]
        self.b_repeat, self.h_repeat = self.B // nb, self.H // nh

    def __iter__(self):
        a, ctx, N, M = self.a, self.ctx, self.N, self.M
        nb, nh = ctx.syms["b"].shape[0], ctx.syms["h"].shape[1]
        step = max(1, self.budget // (nb * nh * N))
        for lo in range(0, M, step):
            m = ctx.syms["m"][:, :, lo:lo + step]
            syms = {"m": m, "i": m + (N - M)}
            rows = {"q": ctx.q_rows[:, :, lo:lo + step, None, :], "k": ctx.k_rows[:, :, None, :, :]} \
                if self.data else None
            shape = (nb, nh, m.shape[2], N)
            if ir.uses(a.mask, "score"):
                syms["score"] = as_grid(evaluate(a.score, ctx.env(rows, **syms)), shape)
            yield as_grid(evaluate(a.mask, ctx.env(rows, **syms)), shape).bool()


def varlen_pairs(a: ir.Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                 inputs: Mapping[str, Union[torch.Tensor, float]], cu_q: list[int], cu_k: list[int],
                 scale: float | None = None, budget: int = BUDGET) -> int:
    """Allowed pairs of a packed call, summed over its sequences: q [TQ, H, D], k [TK, HK, D],
    v [TK, HK, DV]; sequence b holds query rows cu_q[b]:cu_q[b + 1] and keys cu_k[b]:cu_k[b + 1]
    (host lists). Each sequence is counted as its own batch of one, with positions counted from
    its start and its inputs cut as the kernels and the reference cut them (a dim named B indexed
    by the sequence, dims named M and N cut to its lengths)."""
    decls = {d.name: d.dims for d in a.inputs}
    total = 0
    for b, (q0, q1, k0, k1) in enumerate(zip(cu_q, cu_q[1:], cu_k, cu_k[1:])):
        if q1 == q0:
            continue
        qs, ks, vs = (t[lo:hi].permute(1, 0, 2)[None] for t, lo, hi in ((q, q0, q1), (k, k0, k1), (v, k0, k1)))
        xs = {n: cut_to_sequence(x, decls.get(n), b, q1 - q0, k1 - k0) for n, x in inputs.items()}
        total += allowed_pairs(a, qs, ks, vs, xs, scale, budget)
    return total



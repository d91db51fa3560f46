"""The select stage: token and block top-k over the allowed pairs.

Selection is an index choice, made under ``torch.no_grad``: no gradient flows
through ``by``. Ranking: larger ``by`` first, ties to the smaller key (block) index,
NaN ranks last. ``keep`` entries are in whenever allowed and do not count in K; a
row with fewer than K candidates keeps them all.

``share = group`` (decision): one selection per GQA group. The group ranks keys
(blocks) by the SUM of ``by`` over the group's H/HK heads; candidates are keys
(blocks) allowed for at least one head of the group, ``keep`` entries are those kept
for at least one head, and each head then keeps the group's selection intersected
with its own allowed pairs.
"""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from ..ir import nodes as ir
from .context import Context
from .exprs import as_grid, evaluate


@torch.no_grad()
def selected(sel: ir.Select, ctx: Context, allowed: torch.Tensor,
             extra: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """Keys chosen per (b, h, i): bool [B, H, M, N] (not yet intersected with ``allowed``).

    ``allowed``: the mask stage [B, H, M, N]; ``extra``: further names for ``by``
    (the score).
    """
    keep, top, group = _choice(sel, ctx, allowed, extra)
    chosen = keep | top
    chosen = chosen.repeat_interleave(group, dim=1) if group > 1 else chosen
    if sel.block is None:
        return chosen
    return chosen.repeat_interleave(sel.block, dim=-1)[..., :ctx.pair_shape[3]]


@torch.no_grad()
def lowered_input(sel: ir.Select, heads: int | str, ctx: Context, allowed: torch.Tensor,
                  extra: Mapping[str, torch.Tensor]) -> torch.Tensor:
    """The selection as the kernels hand it to a lowered mask (passes/lower_select.py), ``_sel``:
    block top-k, the chosen blocks bool [B, HS, M, NB]; token top-k, the top-K keys beside keep=,
    int32 [B, HS, M, K], ascending, -1 after the last. HS: a group's (``share``), a head's, or one
    for all heads (``heads`` 1: the choice is the same for every head)."""
    keep, top, _ = _choice(sel, ctx, allowed, extra)
    if sel.block is not None:
        return keep | top
    top = top[:, :1] if heads == 1 else top
    N = top.shape[-1]
    keys = torch.where(top, torch.arange(N, device=top.device), N)
    keys = torch.sort(keys, dim=-1).values[..., :sel.k]
    keys = torch.nn.functional.pad(keys, (0, sel.k - keys.shape[-1]), value=N)
    return torch.where(keys < N, keys, -1).to(torch.int32)


def _choice(sel: ir.Select, ctx: Context, allowed: torch.Tensor,
            extra: Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor, int]:
    """(keep, top, group): keep= and the top K of the other candidates, bool [B, H / group, M, X]
    (X: N keys, or NB blocks), and the heads a choice serves."""
    group = ctx.sizes["H"] // ctx.sizes["HK"] if sel.share else 1
    shape = ctx.pair_shape
    if sel.block is None:
        env = ctx.env(ctx.pair_rows(), **extra)
        by = as_grid(evaluate(sel.by, env), shape)
        keep = as_grid(evaluate(sel.keep, env), shape) & allowed if sel.keep is not None else None
        return (*_choose(by, allowed, keep, sel.k, group), group)
    bs, N = sel.block, shape[3]
    nb = -(-N // bs)
    pad = nb * bs - N
    blocks = shape[:3] + (nb,)
    allowed_blocks = F.pad(allowed, (0, pad)).view(*shape[:3], nb, bs).any(-1)
    k = F.pad(_key_rows(sel, ctx), (0, 0, 0, pad)).view(shape[0], shape[1], nb, bs, -1)
    counts = (N - torch.arange(nb, device=ctx.device) * bs).clamp(max=bs)  # the last block may be short
    kmean = k.sum(3) / counts.to(k.dtype)[:, None]
    jb = torch.arange(nb, device=ctx.device).view(1, 1, 1, nb)
    q = ctx.q_rows[:, :, :, None, :]
    env = ctx.env({"q": q, "q_raw": ctx.q_raw[:, :, :, None, :], "kmean": kmean[:, :, None]}, jb=jb)
    by = as_grid(evaluate(sel.by, env), blocks)
    keep = as_grid(evaluate(sel.keep, env), blocks) & allowed_blocks if sel.keep is not None else None
    return (*_choose(by, allowed_blocks, keep, sel.k, group), group)


def _key_rows(sel: ir.Select, ctx: Context) -> torch.Tensor:
    """The key rows whose block means ``kmean`` is, [B, H, N, D]: k' (the IR as written), or ``kmean_of``
    of the loaded rows (after substitute_prologue, which inlines k's prologue)."""
    if sel.kmean_of is None:
        return ctx.k_rows
    k = ctx.k_raw[:, :, None]
    return as_grid(evaluate(sel.kmean_of, ctx.env({"k_raw": k})), k.shape).squeeze(2)


def _choose(by: torch.Tensor, allowed: torch.Tensor, keep: torch.Tensor | None, K: int,
            group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep, top) [B, H / group, M, X] bool: ``keep`` and the top K of the other allowed entries."""
    if keep is None:
        keep = torch.zeros_like(allowed)
    if group > 1:
        B, H, M, X = by.shape
        by = by.view(B, H // group, group, M, X).sum(2)
        allowed = allowed.reshape(B, H // group, group, M, X).any(2)
        keep = keep.reshape(B, H // group, group, M, X).any(2)
    return keep, top_k(by, allowed & ~keep, K)


def top_k(by: torch.Tensor, cand: torch.Tensor, K: int) -> torch.Tensor:
    """The K candidates with the largest ``by`` along the last dim (ties: smaller index).

    Two stable sorts: by value, then candidates before the rest, so the candidate
    order is (value desc, index asc) even among equal or infinite values.
    """
    neg_inf = torch.full((), float("-inf"), dtype=by.dtype, device=by.device)
    key = torch.where(cand & ~torch.isnan(by), by, neg_inf)
    order = torch.sort(key, dim=-1, descending=True, stable=True).indices
    cand_first = torch.sort(cand.gather(-1, order).to(torch.uint8), dim=-1, descending=True, stable=True).indices
    order = order.gather(-1, cand_first)
    rank = torch.empty_like(order).scatter_(-1, order, torch.arange(order.shape[-1], device=by.device)
                                            .expand_as(order).contiguous())
    return cand & (rank < K)

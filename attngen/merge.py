"""Merging attention over disjoint key sets by their log-sum-exp, as ring, Star and split-KV attention do.

An attention's softmax over keys K = K1 ∪ K2 (disjoint) is the mix of its results over K1 and K2,
each weighed by exp(lse_part - lse) with lse = logaddexp(lse_1, lse_2). The lse that
``return_lse=True`` gives is differentiable on both backends, so a merged result trains: every
gradient reaches q, k, v and the inputs of each part.
"""

from __future__ import annotations

from typing import Sequence

import torch


def merge_by_lse(parts: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> tuple[torch.Tensor, torch.Tensor]:
    """``[(o [B, H, M, DV], lse [B, H, M]), ...]`` over disjoint key sets -> ``(o, lse)`` over their union.

    The mix is taken in float32 (float64 for float64 parts) and o returned in the parts' dtype. A row
    that no part allows any key (lse -inf everywhere) gets o = 0 and lse = -inf, as one call over the
    union would give.
    """
    if not parts:
        raise ValueError("merge_by_lse needs at least one (o, lse) pair")
    for n, (o, lse) in enumerate(parts):
        if o.shape[:-1] != lse.shape or o.shape != parts[0][0].shape:
            raise ValueError(f"merge_by_lse: part {n} has o {tuple(o.shape)} and lse {tuple(lse.shape)}; every o "
                             f"must be {tuple(parts[0][0].shape)} and its lse that shape without the last dim")
    acc = torch.promote_types(parts[0][0].dtype, torch.float32)
    lses = torch.stack([lse.to(acc) for _, lse in parts])  # [P, B, H, M]
    lse = torch.logsumexp(lses, dim=0)
    empty = lse == -float("inf")
    weights = torch.where(empty, 0.0, torch.exp(lses - torch.where(empty, 0.0, lse)))  # [P, B, H, M]
    o = sum(w.unsqueeze(-1) * o_p.to(acc) for w, (o_p, _) in zip(weights, parts))
    return o.to(parts[0][0].dtype), lse

"""The norm stage on materialized scores: ``p`` from ``score`` over the kept pairs.

All functions take ``s`` [B, H, M, N] (values outside ``kept`` are arbitrary but
finite) and ``kept`` [B, H, M, N] bool, and return ``p`` that is exactly 0 outside
``kept``. Every reduction is guarded with ``torch.where`` so that a row without a
kept key gives p = 0 and finite gradients, never NaN; a NaN among a row's kept
scores makes that row's p (and lse) NaN.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..ir import nodes as ir


def _zero(s: torch.Tensor) -> torch.Tensor:
    return torch.zeros((), dtype=s.dtype, device=s.device)


def normalize(norm: ir.Norm, s: torch.Tensor, kept: torch.Tensor,
              sink: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(p, lse)``; lse [B, H, M] for softmax norms, else None. ``sink``: [B, H, M] logits."""
    if norm.kind == "softmax":
        return softmax(s, kept, sink)
    if norm.kind == "sum":
        return _sum(s, kept), None
    if norm.kind == "stickbreaking":
        return stickbreaking(s, kept), None
    elementwise = {"sigmoid": torch.sigmoid, "relu": torch.relu, "relu2": lambda x: torch.relu(x).square(),
                   "none": lambda x: x}[norm.kind]
    return torch.where(kept, elementwise(s), _zero(s)), None


def softmax(s: torch.Tensor, kept: torch.Tensor,
            sink: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Row softmax over kept keys, ``exp(sink)`` added to the denominator.

    The row max is detached: the result does not depend on it, and a constant
    shift keeps ties in the max out of the gradient. Empty rows have lse = -inf
    (= sink with a sink).
    """
    neg_inf = torch.full((), float("-inf"), dtype=s.dtype, device=s.device)
    if s.shape[-1] == 0:  # no keys at all (N = 0): every row is empty
        mx = neg_inf.expand(s.shape[:-1])
    else:
        mx = torch.where(kept, s, neg_inf).amax(-1).detach()  # NaN where a kept score is NaN
    if sink is not None:
        mx = torch.maximum(mx, sink.detach())
    mx = torch.where(torch.isfinite(mx), mx, _zero(s))[..., None]
    e = torch.where(kept, torch.exp(torch.where(kept, s, mx) - mx), _zero(s))
    denom = e.sum(-1, keepdim=True)
    if sink is not None:
        denom = denom + torch.exp(sink[..., None] - mx)
    empty = denom == 0  # not NaN: a row that reads a NaN gets NaN in p and lse
    safe = torch.where(empty, torch.ones_like(denom), denom)
    p = e / safe
    lse = torch.where(empty, neg_inf, mx + torch.log(safe)).squeeze(-1)
    return p, lse


def _sum(s: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """p = s / (row sum of s over kept keys); 0 where that sum is 0."""
    sk = torch.where(kept, s, _zero(s))
    total = sk.sum(-1, keepdim=True)
    nonzero = total != 0
    return torch.where(nonzero, sk / torch.where(nonzero, total, torch.ones_like(total)), _zero(s))


def stickbreaking(s: torch.Tensor, kept: torch.Tensor) -> torch.Tensor:
    """w_j = β_j · Π over kept j' > j of (1 − β_j'), β = sigmoid(s), in log space."""
    log_rest = torch.where(kept, F.logsigmoid(-s), _zero(s))  # log(1 - β), 0 off the kept keys
    # sum over j' > j: a reversed cumulative sum shifted by one key (exact, no cancellation)
    shifted = torch.cat([log_rest[..., 1:], torch.zeros_like(log_rest[..., :1])], dim=-1)
    after = shifted.flip(-1).cumsum(-1).flip(-1)
    logw = torch.where(kept, F.logsigmoid(s) + after, _zero(s))
    return torch.where(kept, torch.exp(logw), _zero(s))

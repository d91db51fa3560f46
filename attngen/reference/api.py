"""``attngen.load(..., backend="reference")``: the interpreter behind the common call signature."""

from __future__ import annotations

import torch

from ..ir import nodes as ir
from ..signature import bind
from .interpreter import run
from .varlen import run_packed, run_paged


class ReferenceAttention:
    """Callable reference for one attention: ``fn(q, k, v, *, scale=None, return_lse=False, **inputs)``.

    q [B, H, M, D], k [B, HK, N, D], v [B, HK, N, DV] → o [B, H, M, DV] (and lse
    [B, H, M] with ``return_lse``). Accepts float64 besides fp16/bf16/fp32 and any device.
    Packed sequences (``cu_seqlens_q=...``) and paged caches (``block_table=...``): see
    :mod:`attngen.reference.varlen`; the reference always checks a block table (``validate`` is
    accepted for the common signature).
    """

    def __init__(self, attention: ir.Attention):
        self.attention = attention
        self.name = attention.name

    def __call__(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale=None,
                 return_lse: bool = False, cu_seqlens_q=None, cu_seqlens_k=None, max_seqlen_q=None,
                 max_seqlen_k=None, block_table=None, seqlens_k=None, validate: bool = True, **inputs):
        if block_table is not None or seqlens_k is not None:
            return run_paged(self.attention, self, q, k, v, inputs, block_table, seqlens_k, return_lse, scale=scale)
        if cu_seqlens_q is not None or cu_seqlens_k is not None:
            return run_packed(self.attention, self, q, k, v, inputs, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                              max_seqlen_k, return_lse, scale=scale)
        bound = bind(self.attention, q, k, v, inputs, scale, allow_float64=True, return_lse=return_lse)
        return run(self.attention, bound, return_lse)

    def __repr__(self) -> str:
        return f"ReferenceAttention({self.name!r})"

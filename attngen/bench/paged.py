"""A paged KV cache holding the same keys and values as a contiguous one, for the decode benchmark.

Sequence b's keys j live in page ``block_table[b, j // page_size]`` at row ``j % page_size``
(the layout attngen's paged calls read: caches [pages, page_size, HK, D]). The pages of all
sequences are shuffled at random, so no sequence's pages follow each other in memory and
reading a sequence jumps from page to page as a real cache's allocator leaves it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class PagedCache:
    k: torch.Tensor  # [pages, page_size, HK, D]
    v: torch.Tensor  # [pages, page_size, HK, DV]
    block_table: torch.Tensor  # int32 [B, pages per sequence]
    seqlens_k: torch.Tensor  # int32 [B], every sequence's full length N

    @property
    def page_size(self) -> int:
        return self.k.shape[1]


def paged_cache(k: torch.Tensor, v: torch.Tensor, page_size: int, gen: torch.Generator) -> PagedCache:
    """The keys k [B, HK, N, D] and values v [B, HK, N, DV] in shuffled pages of ``page_size`` rows.

    N must be a multiple of ``page_size`` (every page full, so inputs sized N fit both layouts).
    ``gen``: a generator on k's device, for the shuffle.
    """
    B, HK, N, _ = k.shape
    if N % page_size:
        raise ValueError(f"cache length {N} is not a multiple of the page size {page_size}")
    per_seq = N // page_size
    order = torch.randperm(B * per_seq, generator=gen, device=k.device)  # page of (b, p) -> order[b * per_seq + p]

    def scatter(x: torch.Tensor) -> torch.Tensor:
        pages = x.detach().reshape(B, HK, per_seq, page_size, x.shape[3]).permute(0, 2, 3, 1, 4)
        out = torch.empty((B * per_seq, page_size, HK, x.shape[3]), dtype=x.dtype, device=x.device)
        out[order] = pages.reshape(B * per_seq, page_size, HK, x.shape[3])
        return out

    return PagedCache(scatter(k), scatter(v), order.view(B, per_seq).to(torch.int32),
                      torch.full((B,), N, dtype=torch.int32, device=k.device))

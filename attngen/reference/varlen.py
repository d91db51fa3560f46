"""Packed variable-length calls and paged caches for the reference: each sequence as a batch of one.

q [TQ, H, D], k [TK, HK, D], v [TK, HK, DV]; sequence b holds query rows
cu_seqlens_q[b]:cu_seqlens_q[b + 1] and keys cu_seqlens_k[b]:cu_seqlens_k[b + 1]. Inputs
with a dim named B are indexed by the sequence; dims named M / N are sized for the longest
sequence (max_seqlen_q / max_seqlen_k) and cut to each sequence's length.
Returns o [TQ, H, DV] (and lse [H, TQ]), like the kernels.
"""

from __future__ import annotations

from typing import Callable, Mapping

import torch

from ..ir import nodes as ir


def cut_to_sequence(x, dims, b: int, m: int, n: int):
    """Input ``x`` (declared ``dims``) for sequence ``b`` of ``m`` query rows and ``n`` keys."""
    if not isinstance(x, torch.Tensor) or dims is None:
        return x
    index = tuple(slice(b, b + 1) if d == "B" else slice(0, m) if d == "M" else slice(0, n) if d == "N"
                  else slice(None) for d in dims)
    return x[index]


def run_packed(a: ir.Attention, dense: Callable, q, k, v, inputs: Mapping, cu_q, cu_k, max_q, max_k,
               return_lse: bool, **kw):
    """``dense(q4, k4, v4, return_lse=..., **inputs)`` on each sequence, results packed again."""
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"{a.name}: with cu_seqlens, q, k and v must be packed [T, heads, dim]")
    starts_q, starts_k = cu_q.tolist(), cu_k.tolist()
    if len(starts_q) != len(starts_k) or len(starts_q) < 2:
        raise ValueError(f"{a.name}: cu_seqlens_q and cu_seqlens_k must list the same sequences")
    lens_q = [e - s for s, e in zip(starts_q, starts_q[1:])]
    lens_k = [e - s for s, e in zip(starts_k, starts_k[1:])]
    if max_q is None or max_k is None or max_q < max(lens_q) or max_k < max(lens_k):
        raise ValueError(f"{a.name}: max_seqlen_q / max_seqlen_k must cover the longest sequences")
    decls = {d.name: d.dims for d in a.inputs}
    outs, lses = [], []
    for b, (m, n) in enumerate(zip(lens_q, lens_k)):
        if m == 0:
            continue
        qs, ks, vs = (t[s:s + ln].permute(1, 0, 2)[None] for t, s, ln in
                      ((q, starts_q[b], m), (k, starts_k[b], n), (v, starts_k[b], n)))
        xs = {nm: cut_to_sequence(x, decls.get(nm), b, m, n) for nm, x in inputs.items()}
        res = dense(qs, ks, vs, return_lse=return_lse, **xs, **kw)
        o, lse = res if return_lse else (res, None)
        outs.append(o[0].permute(1, 0, 2))
        if return_lse:
            lses.append(lse[0])
    o = torch.cat(outs, 0) if outs else q.new_zeros(0, q.shape[1], v.shape[2])
    return (o, torch.cat(lses, 1)) if return_lse else o


def run_paged(a: ir.Attention, dense: Callable, q, k_cache, v_cache, inputs: Mapping, table, lengths,
              return_lse: bool, **kw):
    """``dense`` on each sequence's keys gathered from a paged cache: q [B, H, M, D], caches
    [pages, page_size, HK, D], table [B, max_pages], lengths [B]; o [B, H, M, DV] (lse [B, H, M])."""
    page = k_cache.shape[1]
    decls = {d.name: d.dims for d in a.inputs}
    outs, lses = [], []
    for b, n in enumerate(lengths.tolist()):
        pages = table[b, :-(-n // page)].long()
        ks, vs = (c[pages].reshape(-1, *c.shape[2:])[:n].permute(1, 0, 2)[None] for c in (k_cache, v_cache))
        xs = {nm: cut_to_sequence(x, decls.get(nm), b, q.shape[2], n) for nm, x in inputs.items()}
        res = dense(q[b:b + 1], ks, vs, return_lse=return_lse, **xs, **kw)
        o, lse = res if return_lse else (res, None)
        outs.append(o)
        lses.append(lse)
    o = torch.cat(outs)
    return (o, torch.cat(lses)) if return_lse else o

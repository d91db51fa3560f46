"""Host code of select stages: choosing blocks (block top-k) or keys (token top-k), and the forward
and backward over the chosen blocks or listed keys alone.

``at`` is the attention's :class:`~attngen.runtime.attention._Attention`; ``at.sel`` its plan:

- ``block``: keys per block (block top-k), or 0 (token top-k); ``k``: how many are kept;
- ``share``: one choice per GQA group (else per head); ``heads``: "H", "HK" or "1", the heads a
  choice is made for; ``max_blocks``: the most blocks a row may have;
- ``gather`` / ``gather_bwd``: the block-sparse forward / backward run (else the dense kernels
  with the choice in the mask); ``chunk_tiles``, ``key_tile``: their row chunks and key tile;
  ``dq_factor``: the dk/dv kernel writes dq too;
- ``listed``: the listed forward runs (token top-k); ``per_head``: its lists are per head.

Shipped: the generated module embeds this file verbatim (after its imports).
"""

import collections

import torch

from .launch import _bind, _cdiv, _empty, _launch, _no_grads, _pow2


def _select_args(at, q, k, xs, sizes, common, scale, sel):
    """The selection kernels' arguments (the call's inputs, the selection as the internal one) and flags."""
    gxs = _no_grads(xs, q)
    xs = dict(xs, **{at.sel_name: sel})
    gxs[at.sel_name] = sel
    args = at.args(q, k, k, q, q, q, q, q, q, q, q, q, q, (q, q), q, k, k, xs, gxs, sizes, scale)
    flags = dict(common, **at.flags(sizes, heads=1))
    return args, flags


def _select_tiles(nb, block_d):
    """The select kernel's tiles for NB blocks a row: (NBP, rows a program, DC, warps). Rows: as many as
    keep their [rows, NBP] keys and flags in registers, for fewer reloads of the block means; DC: the
    slice of D a dot(q, kmean) step takes, at least 16 (tl.dot's K; 8 crashed at 1024 blocks, 64k keys)."""
    nbp = max(16, _pow2(nb))
    rows = min(64, max(16, 16384 // nbp))
    return nbp, rows, min(block_d, max(16, 8192 // nbp)), 8 if rows * nbp >= 8192 else 4


def _choose(at, q, k, xs, sizes, common, scale, counts=False):
    """Block top-k: the blocks each row keeps, SEL [B, heads, M, NB] bool, from the mean key of every
    block (kmean) and the select kernel; with ``counts``, also the chosen blocks per row and per block
    of each row tile: (SEL, TC, NSEL, the tile's rows). Token top-k: the keys each row keeps beside
    keep=, SEL [B, heads, M, K] int32, ascending, -1 after the last (extra memory O(M·K)).
    q [B, H, M, D], k [B, HK, N, D]."""
    s, kernels = at.sel, at.kernels
    B, H, HK, M, N = (sizes[x] for x in ("B", "H", "HK", "M", "N"))
    if not s["block"]:
        heads = 1 if s["heads"] == "1" else sizes[s["heads"]]
        sel = _empty((B, heads, M, s["k"]), q.device, torch.int32)
        args, flags = _select_args(at, q, k, xs, sizes, common, scale, sel)
        # the interpreter runs fewer, larger tiles faster; on a GPU rows come 16 a program so that there are
        # enough programs to fill it (M / 16 per selection head)
        block_m, block_n, warps = (64, 64, 4) if q.device.type == "cpu" else (16, 32, 4)
        topk = kernels["topk"]
        topk[(_cdiv(M, block_m), B * heads)](*_bind(topk, args), BLOCK_M=block_m, BLOCK_N=block_n, TOPK=s["k"],
                                             num_warps=warps, **flags)
        return sel
    bs = s["block"]
    nb = _cdiv(N, bs)
    if nb > s["max_blocks"]:
        raise ValueError(f"{at.name}: block selection in the kernels handles up to {s['max_blocks']} blocks per "
                         f"row, this call has {nb} (N={N}); use backend='reference'")
    nbp, rows, dc, warps = _select_tiles(nb, common["BLOCK_D"])
    heads = HK if s["share"] else H
    km = torch.zeros((B * HK * nbp, common["BLOCK_D"]), device=q.device, dtype=torch.float32)
    sel = _empty((B, heads, M, nb), q.device, torch.bool)
    tiles = _cdiv(M, rows)
    tc = _empty((B * heads, tiles, nb) if counts else (1,), q.device, torch.int32)
    n_sel = _empty((B * heads, M) if counts else (1,), q.device, torch.int32)
    args, flags = _select_args(at, q, k, xs, sizes, common, scale, sel)
    block_n = 16 if q.device.type == "cpu" else 64
    kmean, select = kernels["kmean"], kernels["select"]
    kmean[(nb, B * HK)](*_bind(kmean, args), km, nb, BLOCK_M=16, BLOCK_N=block_n, NBP=nbp, BS=bs, **flags)
    select[(tiles, B * heads)](*_bind(select, args), km, sel, tc, n_sel, nb, BLOCK_M=rows, BLOCK_N=block_n, NBP=nbp,
                               BS=bs, TOPK=s["k"], SHARE=s["share"], DC=dc, COUNTS=counts, num_warps=warps, **flags)
    return (sel, tc, n_sel, rows) if counts else sel


def _listed_forward(at, q, k, v, xs, sizes, scale, common):
    """The forward over each row's listed keys (the selection): o [B, H, M, DV], lse [B, H, M]; see the
    listed kernel. The tiles of its rows are one head each, or the heads of a KV head."""
    B, H, M, DV = sizes["B"], sizes["H"], sizes["M"], sizes["DV"]
    hpp = 1 if at.sel["per_head"] else H // sizes["HK"]
    o = _empty((B, H, M, DV), q.device, q.dtype)
    stat = _empty((B, H, M), q.device, torch.float32)
    gxs = _no_grads(xs, q)
    args = at.args(q, k, v, o, o, o, o, stat, stat, stat, stat, q, q, (q, q), q, k, v, xs, gxs, sizes, scale)
    listed = at.kernels["listed"]
    listed[(M, B * H // hpp)](*_bind(listed, args), **common, **at.flags(sizes), BLOCK_M=max(16, _pow2(hpp)),
                              BLOCK_N=16 if q.device.type == "cpu" else 64, num_warps=4, num_stages=2)
    return o, stat


class _Gathered(collections.namedtuple("_Gathered", "chunks rows starts counts hs nb rows_m")):
    """The forward's entries, which the block-sparse backward walks again: chunks [C, 3] int32 (group,
    first entry, rows: up to chunk_tiles * rows_m), rows [E] int32, starts and counts [B * HS * NB] int32
    (each (b, hs, kb) group's entries), hs, nb, rows_m (the kernels' row tile)."""


def _gather_forward(at, q, k, v, xs, tc, n_sel, tile_rows, sizes, scale, common):
    """The block-sparse forward: o [B, H, M, DV], lse [B, H, M] and the entries (_Gathered) from the chosen
    blocks alone (the selection, bool [B, HS, M, NB]; tc, n_sel: the select kernel's counts over its row
    tiles of tile_rows); see the place, attend and merge kernels."""
    s, kernels = at.sel, at.kernels
    B, H, M, DV = sizes["B"], sizes["H"], sizes["M"], sizes["DV"]
    sel = xs[at.sel_name]
    HS, NB = sel.shape[1], sel.shape[3]
    rows_m = 16 if q.device.type == "cpu" else 64
    per_chunk = rows_m * s["chunk_tiles"]  # rows a program takes, rows_m at a time
    # entries (b, hs, kb, m) grouped by key block, rows ascending: a row tile's first entry of a block comes
    # after every earlier group's and the earlier tiles' entries of this one
    flat = tc.transpose(1, 2).reshape(-1)  # [(b, hs), kb, tile]
    ends = torch.cumsum(flat, 0)
    tstart = ends - flat
    counts = tc.sum(1).view(-1)  # [G]: each (b, hs, kb) group's entries
    starts = tstart.view(B * HS, NB, -1)[:, :, 0].reshape(-1)
    n_chunks = (counts + per_chunk - 1) // per_chunk
    chunk_end = torch.cumsum(n_chunks, 0)
    # the call's one wait for the GPU: the buffers are sized by these
    n_ent, n_chk, ns = torch.stack([ends[-1], chunk_end[-1], n_sel.max().to(ends.dtype)]).tolist()
    ns = max(1, ns)  # slots a row needs at the most (the call checks made M > 0)
    if n_ent >= 2 ** 31:
        raise ValueError(f"{at.name}: {n_ent} chosen (row, block) pairs, over the block-sparse kernels' 2^31; "
                         "split the batch")
    rows = _empty((max(1, n_ent),), q.device, torch.int32)
    slots = _empty((max(1, n_ent),), q.device, torch.int32)
    if n_ent > 0:
        nbp = max(16, _pow2(NB))
        kernels["place"][(tc.shape[1], B * HS)](sel, tstart.to(torch.int32), rows, slots, M, NB, NBP=nbp,
                                                BLOCK_M=tile_rows, num_warps=8 if tile_rows * nbp >= 8192 else 4)
    chunk_grp = torch.repeat_interleave(torch.arange(B * HS * NB, device=q.device), n_chunks, output_size=n_chk)
    within = torch.arange(n_chk, device=q.device) - (chunk_end - n_chunks)[chunk_grp]
    first = starts[chunk_grp] + within * per_chunk
    chunks = torch.stack([chunk_grp, first, torch.clamp(counts[chunk_grp] - within * per_chunk, max=per_chunk)], 1)
    chunks = chunks.to(torch.int32).contiguous()
    n_sel = n_sel.view(B, HS, M)
    po = _empty((B, H, M, ns, common["BLOCK_DV"]), q.device, q.dtype)  # normalized: bf16 halves the traffic
    pl = _empty((B, H, M, ns), q.device, torch.float32)
    o = _empty((B, H, M, DV), q.device, q.dtype)
    stat = _empty((B, H, M), q.device, torch.float32)
    gxs = _no_grads(xs, q)
    args = at.args(q, k, v, o, o, o, o, stat, stat, stat, stat, q, q, (q, q), q, k, v, xs, gxs, sizes, scale)
    if chunks.shape[0] > 0:
        kernels["attend"][(chunks.shape[0], H // HS)](
            *_bind(kernels["attend"], args), chunks, rows, slots, po, pl, ns, NB, HS, **common, **at.flags(sizes),
            BLOCK_M=rows_m, BLOCK_N=s["key_tile"], BS=s["block"], num_warps=4, num_stages=2)
    kernels["merge"][(_cdiv(M, 16), B * H)](po, pl, n_sel, o, stat, *o.stride(), H, M, ns, HS, DV=DV, BLOCK_M=16,
                                            BLOCK_DV=common["BLOCK_DV"])
    gathered = _Gathered(chunks, rows, starts.to(torch.int32), counts.to(torch.int32), HS, NB, rows_m)
    return o, stat, gathered


def _gather_backward(at, g, q, k, v, o, do, stat, delta, dq, dk, dv, xs, sizes, scale, common, cfg, dlse=None):
    """The block-sparse backward over the forward's entries g: delta, then each row's dq from each block it
    chose, added into a float32 buffer (atomically: the order of the additions varies, so dq may differ in
    its last bits between runs), and dk/dv per key tile and query head from the rows that chose its block
    (summed over a GQA group). cfg: the delta kernel's tiles (and LSE_GRAD); dlse: lse's gradient, or None."""
    s, kernels = at.sel, at.kernels
    B, H, HK, M, N = (sizes[x] for x in ("B", "H", "HK", "M", "N"))
    flags = at.flags(sizes)
    gxs = _no_grads(xs, q)
    # the dk/dv kernel runs a program per query head: with GQA each writes its head's share of dk / dv in
    # float32, summed over the group at the end (no other kernel here writes dk or dv)
    G = H // HK
    dkh, dvh = (dk, dv) if G == 1 else (torch.empty((B, H) + t.shape[2:], device=q.device, dtype=torch.float32)
                                        for t in (dk, dv))
    args = at.args(q, k, v, o, o, do, do, stat, delta, q, q, q, q, (q, q), dq, dkh, dvh, xs, gxs, sizes, scale,
                   dlse=dlse)
    _launch(kernels["bwd_pre"], lambda c: (_cdiv(M, c["BLOCK_M"]), B * H), lambda c: args, cfg,
            **common, **flags)
    dqa = torch.zeros((B, H, M, common["BLOCK_D"]), device=q.device, dtype=torch.float32)
    bs = s["block"]
    if s["dq_factor"]:
        keys = bs  # the whole block: the dk/dv kernel adds the rows' dq from it too
    else:
        if g.chunks.shape[0] > 0:
            kernels["attend_dq"][(g.chunks.shape[0], H // g.hs)](
                *_bind(kernels["attend_dq"], args), g.chunks, g.rows, dqa, g.nb, g.hs, **common, **flags,
                BLOCK_M=g.rows_m, BLOCK_N=s["key_tile"], BS=bs, num_warps=8, num_stages=2)  # 4 warps spill: the dq tile and its operands outgrow 128 threads
        keys = min(32 if q.device.type == "cpu" else 64, bs & -bs)  # divides the block
    # every head's blocks run together (the fast grid axis), its first (longest: the rows choosing a block grow
    # towards the start, as a causal row chooses among the blocks before it) first
    dkdv = kernels["attend_dkdv"]
    dkdv[(_cdiv(N, keys), B * H)](*_bind(dkdv, args), g.starts, g.counts, g.rows, dqa, g.nb, g.hs, **common, **flags,
                                  BLOCK_M=g.rows_m, BLOCK_N=keys, BS=bs, num_warps=8, num_stages=2)  # 4 warps spill (sm_90a offline)
    dq.copy_(dqa[..., :sizes["D"]])
    if G > 1:
        for t, per_head in ((dk, dkh), (dv, dvh)):
            t.copy_(per_head.view(B, HK, G, *per_head.shape[2:]).sum(2))

"""MoBA block top-k attention, key-block-major: one program per (key block, chunk of the rows that chose it).

Semantics (causal, per (b, h, query row i)): q [B, H, S, D], k, v [B, HK, S, D] bf16, head h reads kv head
h // (H // HK). Key block jb holds keys jb*BLOCK .. jb*BLOCK+BLOCK-1; kmean[jb] is their float32 mean. Row i keeps
its own block ib = i // BLOCK (keys j <= i) and the TOPK blocks jb < ib with the largest q_i . kmean[jb] (ties to
the smaller jb; all of them when there are fewer). o = softmax(q k^T / sqrt(D)) v over the kept keys; lse is the
natural-log float32 [B, H, S]. A row's list has KSEL = TOPK + 1 slots.

Forward stages (--bench times each alone):
  kmean    the means as three bf16 parts [3, B, HK, NB, D], hi + mid + lo = the float32 mean to ~2^-27, so that
           select's bf16 tensor-core dots (exact products) give float32-accurate scores.
  select   a program per BM_SEL rows of one (b, h) (BM_SEL divides BLOCK: the rows share ib): scores [BM_SEL, W]
           by tl.dot over D chunks (the whole row stays in registers), top-TOPK by bisection on order-preserving
           int32 keys -> lists [B, H, S, KSEL] int32, ascending, own block last, -1 padding.
  inverse  torch, no host sync: a stable sort of the off-diagonal (row, slot) entries by (b*H+h, kb) (rows stay
           ascending in a group), group bounds by searchsorted, a chunk table (b*H+h, kb, offset, rows) of at most
           RPP = BM*CPP rows a chunk, sized by a host-side upper bound (spare chunks have 0 rows).
  attend   a program per chunk: the block's k, v loaded once, its rows' q gathered BM at a time, a softmax over
           the whole block (kb < ib: no masks) -> partial (o, lse) into the row's slot for kb, so no atomics. The
           own blocks (causal) come from a second kernel over contiguous rows.
  merge    per row, the slots combined exactly by their lse -> o bf16, lse.
Cost: the partials are KSEL times the size of o (4.3 GB in bf16 at S = 32k, H = 16), written once and read once:
the largest memory traffic of the forward. They are bf16 by default: that halves it, and adds one bf16 rounding
of each o_s, which the lse-weighted (convex) merge does not amplify (on the check shapes the o error is the same
with float32 partials: it comes from p's bf16 rounding before p v, as in flash attention). --bench times both.
Backward: delta = rowsum(do * o); a program per (b, hk, kb) walks the entries for kb of each head of the group,
then their own-block rows, keeping dk, dv in registers; dq by float32 atomics, or into per-slot partials that the
merge kernel sums unweighted.

  python .ci/sparse_experiment.py --check            # vs float64 torch (CPU: sets TRITON_INTERPRET=1 itself)
  python .ci/sparse_experiment.py --bench            # GPU: stage times vs dense SDPA (also $OUT/sparse_exp.txt)
  python .ci/sparse_experiment.py --bench --seq 16384 --hk 4   # a part of it (one call stays under 10 minutes)
  python .ci/sparse_experiment.py --bench --smoke    # the bench code path, tiny, on CPU
"""
import argparse
import math
import os
import sys
import time

import torch

if not torch.cuda.is_available():  # triton reads this when the kernels below are decorated
    os.environ["TRITON_INTERPRET"] = "1"
import triton  # noqa: E402
import triton.language as tl  # noqa: E402

INTERP = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")
LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
INT_MIN = tl.constexpr(-2147483648)


@triton.jit
def _dot(a, b):
    # the triton 3.9 interpreter multiplies bf16 tiles as their uint16 bit patterns; float32 there is exact
    if INTERP:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        c = tl.dot(a, b)
    return c


@triton.jit
def _kmean_kernel(K, KP, S, NB, part_stride, D: tl.constexpr, BLOCK: tl.constexpr):
    jb = tl.program_id(0)
    kvh = tl.program_id(1).to(tl.int64)
    j = jb * BLOCK + tl.arange(0, BLOCK)
    d = tl.arange(0, D)
    k = tl.load(K + (kvh * S + j[:, None]) * D + d[None, :], mask=j[:, None] < S, other=0.0).to(tl.float32)
    mean = tl.sum(k, 0) / tl.minimum(S - jb * BLOCK, BLOCK).to(tl.float32)
    hi = mean.to(tl.bfloat16)
    r = mean - hi.to(tl.float32)  # exact: hi holds mean's leading bits
    mid = r.to(tl.bfloat16)
    out = KP + (kvh * NB + jb) * D + d
    tl.store(out, hi)
    tl.store(out + part_stride, mid)
    tl.store(out + 2 * part_stride, (r - mid.to(tl.float32)).to(tl.bfloat16))


@triton.jit
def _select_tile(Q, KP, LIST, bh, kvh, m0, ib, S, NB, part_stride, TOPK: tl.constexpr, KSELP: tl.constexpr,
                 D: tl.constexpr, DC: tl.constexpr, BM: tl.constexpr, W: tl.constexpr):
    """Rows m0 .. m0+BM-1 of head bh, all in block ib < W: pick their blocks and write their lists."""
    rows = m0 + tl.arange(0, BM)
    rm = rows < S
    cols = tl.arange(0, W)
    cand = cols < ib
    sel = rm[:, None] & cand[None, :]
    if ib > TOPK:
        by = tl.zeros([BM, W], dtype=tl.float32)
        for d0 in range(0, D, DC):
            dc = d0 + tl.arange(0, DC)
            q = tl.load(Q + (bh * S + rows[:, None]) * D + dc[None, :], mask=rm[:, None], other=0.0)
            kp = KP + (kvh * NB + cols[:, None]) * D + dc[None, :]
            for part in tl.static_range(3):
                by += _dot(q, tl.trans(tl.load(kp + part * part_stride, mask=cand[:, None], other=0.0)))
        # Top-k by bisection, not tl.sort: sorting W = 512 keys is 45 bitonic stages on keys that must carry jb
        # too (int64, for the ties); this is at most 31 compare-and-count passes on int32 keys, and a tile stops
        # once each row has exactly TOPK keys at or above its threshold (17 passes on average on random data
        # at NB 256 / 512, TOPK 15 / 31).
        bits = by.to(tl.int32, bitcast=True)
        key = bits ^ ((bits >> 31) & 0x7FFFFFFF)  # monotone in the float: negatives get magnitude bits flipped
        key = tl.where(cand[None, :], key, INT_MIN)  # below every finite score
        # T = the largest t with count(key >= t) >= TOPK, fixed bit by bit from the sign down
        c0 = tl.sum((key >= 0).to(tl.int32), 1)
        T = tl.where(c0 >= TOPK, 0, INT_MIN)
        cnt = tl.where(rm, tl.where(c0 >= TOPK, c0, W), TOPK)  # count(key >= T); rows past S hold nothing up
        step = tl.full([], 1 << 30, tl.int32)
        for _ in range(31):
            if tl.max(cnt, 0) > TOPK:
                c = tl.sum((key >= (T + step)[:, None]).to(tl.int32), 1)
                T = tl.where(c >= TOPK, T + step, T)
                cnt = tl.where(c >= TOPK, c, cnt)
            step = step // 2
        above = key > T[:, None]
        tie = key == T[:, None]  # equal scores: the first (smaller jb) ones fill the remaining places
        need = TOPK - tl.sum(above.to(tl.int32), 1)
        sel = rm[:, None] & (above | (tie & (tl.cumsum(tie.to(tl.int32), 1) <= need[:, None])))
    out = LIST + (bh * S + rows) * (TOPK + 1)
    tl.store(out[:, None] + tl.cumsum(sel.to(tl.int32), 1) - 1, tl.broadcast_to(cols[None, :], (BM, W)), mask=sel)
    n_sel = tl.minimum(ib, TOPK)
    slot = tl.arange(0, KSELP)
    tail = tl.broadcast_to(tl.where(slot == n_sel, ib, -1)[None, :], (BM, KSELP))
    tl.store(out[:, None] + slot[None, :], tail, mask=rm[:, None] & (slot[None, :] >= n_sel) & (slot[None, :] <= TOPK))


@triton.jit
def _select_kernel(Q, KP, LIST, S, NB, H, HK, part_stride, TOPK: tl.constexpr, KSELP: tl.constexpr,
                   D: tl.constexpr, DC: tl.constexpr, BM: tl.constexpr, BLOCK: tl.constexpr, NBP: tl.constexpr):
    m0 = (tl.num_programs(0) - 1 - tl.program_id(0)) * BM  # later rows (more candidates) first
    bh = tl.program_id(1).to(tl.int64)
    kvh = (bh // H) * HK + (bh % H) // (H // HK)
    ib = m0 // BLOCK
    # the score tile only as wide as the candidates need: 0.69 of the full width on average
    if NBP >= 64:
        if ib > NBP // 2:
            _select_tile(Q, KP, LIST, bh, kvh, m0, ib, S, NB, part_stride, TOPK, KSELP, D, DC, BM, NBP)
        elif ib > NBP // 4:
            _select_tile(Q, KP, LIST, bh, kvh, m0, ib, S, NB, part_stride, TOPK, KSELP, D, DC, BM, NBP // 2)
        else:
            _select_tile(Q, KP, LIST, bh, kvh, m0, ib, S, NB, part_stride, TOPK, KSELP, D, DC, BM, NBP // 4)
    else:
        _select_tile(Q, KP, LIST, bh, kvh, m0, ib, S, NB, part_stride, TOPK, KSELP, D, DC, BM, NBP)


@triton.jit
def _partial(s, v, qk_scale):
    """Softmax of unscaled scores s [rows, BLOCK] (masked keys -inf) against v: (p v / l float32, natural lse)."""
    m = tl.max(s, 1)
    p = tl.exp2((s - m[:, None]) * qk_scale)
    l = tl.sum(p, 1)
    return _dot(p.to(v.dtype), v) / l[:, None], (m * qk_scale + tl.log2(l)) * LN2


@triton.jit
def _attend_kernel(Q, K, V, IDX, TAB, PO, PL, S, H, HK, qk_scale, TOPK, D: tl.constexpr,
                   BLOCK: tl.constexpr, BM: tl.constexpr):
    c = tl.program_id(0)
    rows = tl.load(TAB + 4 * c + 3)
    if rows > 0:
        bh = tl.load(TAB + 4 * c).to(tl.int64)
        kb = tl.load(TAB + 4 * c + 1)
        off = tl.load(TAB + 4 * c + 2).to(tl.int64)
        kvh = (bh // H) * HK + (bh % H) // (H // HK)
        d = tl.arange(0, D)
        kv = (kvh * S + kb * BLOCK + tl.arange(0, BLOCK)[:, None]) * D + d[None, :]
        k = tl.load(K + kv)  # kb < every row's own block: a whole block, wholly before the rows
        v = tl.load(V + kv)
        for r0 in range(0, rows, BM):
            r = r0 + tl.arange(0, BM)
            rm = r < rows
            e = tl.load(IDX + off + r, mask=rm, other=0)  # ((b*H + h)*S + i)*KSEL + slot
            q = tl.load(Q + (e // (TOPK + 1))[:, None] * D + d[None, :], mask=rm[:, None], other=0.0)
            o, lse = _partial(_dot(q, tl.trans(k)), v, qk_scale)
            tl.store(PO + e[:, None] * D + d[None, :], o.to(PO.dtype.element_ty), mask=rm[:, None])
            tl.store(PL + e, lse, mask=rm)


@triton.jit
def _attend_own_kernel(Q, K, V, PO, PL, S, H, HK, qk_scale, TOPK, D: tl.constexpr,
                       BLOCK: tl.constexpr):
    ib = tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    kvh = (bh // H) * HK + (bh % H) // (H // HK)
    i = ib * BLOCK + tl.arange(0, BLOCK)  # rows and keys alike
    ok = i[:, None] < S
    d = tl.arange(0, D)
    q = tl.load(Q + (bh * S + i)[:, None] * D + d[None, :], mask=ok, other=0.0)
    kv = (kvh * S + i)[:, None] * D + d[None, :]
    k = tl.load(K + kv, mask=ok, other=0.0)
    v = tl.load(V + kv, mask=ok, other=0.0)
    o, lse = _partial(tl.where(i[None, :] <= i[:, None], _dot(q, tl.trans(k)), float("-inf")), v, qk_scale)
    e = (bh * S + i) * (TOPK + 1) + tl.minimum(ib, TOPK)  # the own block is the last slot of the list
    tl.store(PO + e[:, None] * D + d[None, :], o.to(PO.dtype.element_ty), mask=ok)
    tl.store(PL + e, lse, mask=i < S)


@triton.jit
def _merge_kernel(PO, PL, O, LSE, S, TOPK, D: tl.constexpr, BLOCK: tl.constexpr,
                  BM: tl.constexpr, WEIGHTED: tl.constexpr):
    """o = sum over a row's slots of exp(lse_s - lse) o_s (WEIGHTED), else the plain sum (dq's partials)."""
    m0 = tl.program_id(0) * BM
    bh = tl.program_id(1).to(tl.int64)
    rows = m0 + tl.arange(0, BM)
    rm = rows < S
    d = tl.arange(0, D)
    e0 = (bh * S + rows) * (TOPK + 1)
    nval = tl.minimum(m0 // BLOCK, TOPK) + 1  # slots filled, the same for all rows (BM divides BLOCK)
    acc = tl.zeros([BM, D], dtype=tl.float32)
    if WEIGHTED:
        mx = tl.full([BM], float("-inf"), tl.float32)
        for s in range(0, nval):
            mx = tl.maximum(mx, tl.load(PL + e0 + s, mask=rm, other=0.0))
        wsum = tl.zeros([BM], dtype=tl.float32)
    for s in range(0, nval):
        x = tl.load(PO + (e0 + s)[:, None] * D + d[None, :], mask=rm[:, None], other=0.0).to(tl.float32)
        if WEIGHTED:
            w = tl.exp2((tl.load(PL + e0 + s, mask=rm, other=0.0) - mx) * LOG2E)
            wsum += w
            x = x * w[:, None]
        acc += x
    if WEIGHTED:
        acc = acc / wsum[:, None]
        tl.store(LSE + bh * S + rows, mx + tl.log(wsum), mask=rm)
    tl.store(O + (bh * S + rows)[:, None] * D + d[None, :], acc.to(O.dtype.element_ty), mask=rm[:, None])


@triton.jit
def _bwd_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, e, rm, kj, qk_scale, sm_scale, TOPK,
              D: tl.constexpr, OWN: tl.constexpr, ATOMIC: tl.constexpr):
    """Rows of entries e [rows] against one key block (kj its key positions; OWN: rows are kj too, causal)."""
    qrow = e // (TOPK + 1)
    d = tl.arange(0, D)
    qo = qrow[:, None] * D + d[None, :]
    q = tl.load(Q + qo, mask=rm[:, None], other=0.0)  # masked rows: q = do = 0, so they add nothing
    do = tl.load(DO + qo, mask=rm[:, None], other=0.0)
    lse2 = tl.load(LSE + qrow, mask=rm, other=0.0) * LOG2E
    delta = tl.load(DELTA + qrow, mask=rm, other=0.0)
    p = tl.exp2(_dot(q, tl.trans(k)) * qk_scale - lse2[:, None])
    if OWN:
        p = tl.where(kj[None, :] <= kj[:, None], p, 0.0)
    dv += _dot(tl.trans(p.to(k.dtype)), do)
    ds = p * (_dot(do, tl.trans(v)) - delta[:, None])
    dk += _dot(tl.trans(ds.to(k.dtype)), q)
    dq = _dot(ds.to(k.dtype), k) * sm_scale
    if ATOMIC:
        tl.atomic_add(DQ + qo, dq, mask=rm[:, None], sem="relaxed")
    else:  # the row's slot for this block
        tl.store(DQ + e[:, None] * D + d[None, :], dq.to(DQ.dtype.element_ty), mask=rm[:, None])
    return dk, dv


@triton.jit
def _bwd_kernel(Q, K, V, DO, LSE, DELTA, IDX, BOUNDS, DK, DV, DQ, S, H, HK, NB, qk_scale, sm_scale,
                TOPK, D: tl.constexpr, BLOCK: tl.constexpr, BM: tl.constexpr, ATOMIC: tl.constexpr):
    kvh = tl.program_id(0).to(tl.int64)
    kb = tl.program_id(1)  # the slow grid axis: early blocks, chosen by the most rows, start first
    G = H // HK
    kj = kb * BLOCK + tl.arange(0, BLOCK)
    d = tl.arange(0, D)
    kv = (kvh * S + kj)[:, None] * D + d[None, :]
    k = tl.load(K + kv, mask=kj[:, None] < S, other=0.0)
    v = tl.load(V + kv, mask=kj[:, None] < S, other=0.0)
    dk = tl.zeros([BLOCK, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK, D], dtype=tl.float32)
    for hh in range(0, G):
        bh = (kvh // HK) * H + (kvh % HK) * G + hh
        lo = tl.load(BOUNDS + bh * NB + kb)
        hi = tl.load(BOUNDS + bh * NB + kb + 1)
        for r0 in range(lo, hi, BM):
            r = r0 + tl.arange(0, BM)
            rm = r < hi
            e = tl.load(IDX + r, mask=rm, other=0)
            dk, dv = _bwd_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, e, rm, kj, qk_scale, sm_scale, TOPK, D,
                               False, ATOMIC)
        e = (bh * S + kj) * (TOPK + 1) + tl.minimum(kb, TOPK)  # block kb's own rows
        dk, dv = _bwd_tile(dk, dv, k, v, Q, DO, LSE, DELTA, DQ, e, kj < S, kj, qk_scale, sm_scale, TOPK, D,
                           True, ATOMIC)
    tl.store(DK + kv, (dk * sm_scale).to(DK.dtype.element_ty), mask=kj[:, None] < S)
    tl.store(DV + kv, dv.to(DV.dtype.element_ty), mask=kj[:, None] < S)


# ---------------------------------------------------------------------------------------- launches
# select cfg (BM_SEL, DC, warps, stages); attend cfg (BM, CPP, warps, stages); backward cfg (BM, warps, stages)
def kmean_parts(k, block):
    """[B, HK, S, D] -> the block means as bf16 parts [3, B, HK, NB, D] (hi + mid + lo)."""
    B, HK, S, D = k.shape
    NB = triton.cdiv(S, block)
    kp = torch.empty(3, B, HK, NB, D, device=k.device, dtype=torch.bfloat16)
    _kmean_kernel[(NB, B * HK)](k, kp, S, NB, kp.stride(0), D=D, BLOCK=block)
    return kp


def select_blocks(q, kp, block, topk, cfg):
    """q [B, H, S, D], kp from kmean_parts -> lists [B, H, S, TOPK+1] int32."""
    B, H, S, D = q.shape
    bm, dc, w, st = cfg
    assert block % bm == 0 and D % dc == 0
    NB = kp.shape[3]
    lists = torch.empty(B, H, S, topk + 1, device=q.device, dtype=torch.int32)
    _select_kernel[(triton.cdiv(S, bm), B * H)](
        q, kp, lists, S, NB, H, kp.shape[2], kp.stride(0), TOPK=topk, KSELP=triton.next_power_of_2(topk + 1), D=D,
        DC=dc, BM=bm, BLOCK=block, NBP=max(16, triton.next_power_of_2(NB)), num_warps=w, num_stages=st)
    return lists


def offdiag_per_head(S, block, topk):
    """(row, earlier block) pairs a head keeps: every row keeps min(ib, TOPK) of them."""
    return sum(min(ib, topk) * min(block, S - ib * block) for ib in range(triton.cdiv(S, block)))


def inverse_lists(lists, block, rpp):
    """lists [B, H, S, KSEL] -> (idx: entries sorted by (b*H+h, kb) [B*H*S*KSEL] int64, bounds [B*H*NB+1] int64
    (group g's entries are idx[bounds[g]:bounds[g+1]]), tab: chunks (b*H+h, kb, offset, rows) [n, 4] int32)."""
    B, H, S, KSEL = lists.shape
    assert lists.numel() < 2 ** 31, "the chunk table's offsets are int32"
    NB, BH, dev = triton.cdiv(S, block), B * H, lists.device
    G = BH * NB
    kdt = torch.int16 if G < 2 ** 15 else torch.int32  # fewer radix passes
    own = (torch.arange(S, device=dev, dtype=torch.int32) // block).view(1, S, 1)
    lv = lists.view(BH, S, KSEL)
    base = (torch.arange(BH, device=dev, dtype=torch.int32) * NB).view(BH, 1, 1)
    g = torch.where((lv >= 0) & (lv != own), lv + base, G)  # own blocks go to a last, unused group
    gs, idx = torch.sort(g.to(kdt).view(-1), stable=True)  # stable: (bh, i, slot) order kept inside a group
    bounds = torch.searchsorted(gs, torch.arange(G + 1, device=dev, dtype=kdt))
    counts = bounds[1:] - bounds[:-1]
    nch = (counts + rpp - 1) // rpp
    cend = torch.cumsum(nch, 0)
    c = torch.arange(BH * offdiag_per_head(S, block, KSEL - 1) // rpp + G, device=dev)  # >= sum(nch)
    grp = torch.searchsorted(cend, c, right=True)
    live = grp < G
    grp = grp.clamp_(max=G - 1)
    j = c - (cend[grp] - nch[grp])
    rows = torch.where(live, torch.clamp(counts[grp] - j * rpp, max=rpp), 0)
    tab = torch.stack([grp // NB, grp % NB, bounds[grp] + j * rpp, rows], 1).to(torch.int32)
    return idx, bounds, tab


def attend(q, k, v, idx, tab, block, topk, cfg, pdtype):
    """Partials of every (row, slot): po [B*H*S*KSEL, D] pdtype, pl (natural lse) [B*H*S*KSEL] float32."""
    B, H, S, D = q.shape
    HK, n = k.shape[1], B * H * S * (topk + 1)
    bm, _, w, st = cfg
    po = torch.empty(n, D, device=q.device, dtype=pdtype)
    pl = torch.empty(n, device=q.device, dtype=torch.float32)
    qk_scale = D ** -0.5 * 1.4426950408889634
    _attend_kernel[(tab.shape[0],)](q, k, v, idx, tab, po, pl, S, H, HK, qk_scale, TOPK=topk, D=D, BLOCK=block,
                                    BM=bm, num_warps=w, num_stages=st)
    _attend_own_kernel[(triton.cdiv(S, block), B * H)](q, k, v, po, pl, S, H, HK, qk_scale, TOPK=topk, D=D,
                                                       BLOCK=block, num_warps=4 if block <= 64 else 8)
    return po, pl


def merge(po, pl, q, block, topk, weighted=True):
    """Slots -> o [B, H, S, D] (q's dtype) and lse [B, H, S] float32 (WEIGHTED), or their plain sum."""
    B, H, S, D = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(B, H, S, device=q.device, dtype=torch.float32)
    bm = min(64, block)
    _merge_kernel[(triton.cdiv(S, bm), B * H)](po, pl, o, lse, S, TOPK=topk, D=D, BLOCK=block, BM=bm,
                                               WEIGHTED=weighted, num_warps=4)
    return o, lse


def forward(q, k, v, block, topk, sel_cfg, att_cfg, pdtype):
    """The five stages: (o, lse, state for the backward)."""
    lists = select_blocks(q, kmean_parts(k, block), block, topk, sel_cfg)
    idx, bounds, tab = inverse_lists(lists, block, att_cfg[0] * att_cfg[1])
    o, lse = merge(*attend(q, k, v, idx, tab, block, topk, att_cfg, pdtype), q, block, topk)
    return o, lse, (lists, idx, bounds)


def backward(q, k, v, o, lse, do, state, block, topk, cfg, atomic, pdtype=torch.bfloat16):
    """dq, dk, dv; dq by float32 atomics (atomic) or through per-slot partials of pdtype."""
    B, H, S, D = q.shape
    HK, NB = k.shape[1], triton.cdiv(S, block)
    _, idx, bounds = state
    delta = (do.float() * o.float()).sum(-1)
    dk, dv = torch.empty_like(k), torch.empty_like(v)
    if atomic:
        dqa = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
    else:
        dqa = torch.empty(B * H * S * (topk + 1), D, device=q.device, dtype=pdtype)
    bm, w, st = cfg
    _bwd_kernel[(B * HK, NB)](q, k, v, do, lse, delta, idx, bounds, dk, dv, dqa, S, H, HK, NB,
                              D ** -0.5 * 1.4426950408889634, D ** -0.5, TOPK=topk, D=D, BLOCK=block, BM=bm,
                              ATOMIC=atomic, num_warps=w, num_stages=st)
    dq = dqa.to(q.dtype) if atomic else merge(dqa, lse, q, block, topk, weighted=False)[0]
    return dq, dk, dv


# ---------------------------------------------------------------------------------------- check
def ref_select(q, k, block, topk):
    """float64 truth: scores by [B, H, S, NB] (-inf off the candidates) and the kept blocks [B, H, S, NB] bool."""
    B, H, S, D = q.shape
    HK, NB = k.shape[1], triton.cdiv(S, block)
    kd = torch.nn.functional.pad(k.double(), (0, 0, 0, NB * block - S)).view(B, HK, NB, block, D)
    jb = torch.arange(NB, device=q.device)
    kmean = kd.sum(3) / (S - jb * block).clamp(max=block)[:, None]
    ib = torch.arange(S, device=q.device)[:, None] // block
    by = (q.double() @ kmean.repeat_interleave(H // HK, 1).transpose(-1, -2)).masked_fill(jb >= ib, -math.inf)
    top = torch.sort(by, dim=-1, descending=True, stable=True).indices[..., :topk]  # stable: ties to the smaller jb
    keep = torch.zeros_like(by, dtype=torch.bool).scatter_(-1, top, True) & (jb < ib)
    return kmean, by, keep | (jb == ib)


def lists_of(keep, topk):
    """kept blocks [..., NB] bool -> the list layout [..., TOPK+1]: ascending, -1 padding."""
    NB = keep.shape[-1]
    x = torch.where(keep, torch.arange(NB, device=keep.device), NB).sort(-1).values
    x = torch.nn.functional.pad(x, (0, max(0, topk + 1 - NB)), value=NB)[..., :topk + 1]
    return torch.where(x < NB, x, -1).int()


def ref_attention(q, k, v, keep, block, do):
    """float64 attention over the kept blocks (causal in the own block): o, lse, dq, dk, dv."""
    S, G = q.shape[2], q.shape[1] // k.shape[1]
    qd, kd, vd = (x.double().requires_grad_() for x in (q, k, v))
    i = torch.arange(S, device=q.device)
    allowed = keep[..., i // block] & (i[None, :] <= i[:, None])
    s = (qd @ kd.repeat_interleave(G, 1).transpose(-1, -2) * q.shape[3] ** -0.5).masked_fill(~allowed, -math.inf)
    o = torch.softmax(s, -1) @ vd.repeat_interleave(G, 1)
    return (o.detach(), torch.logsumexp(s, -1).detach(), *torch.autograd.grad(o, (qd, kd, vd), do.double()))


def check_case(dev, dtype, ties, B, H, HK, S, D, block, topk, sel_cfg, att_cfg, pdtype, atomic, bwd_cfg):
    """One shape against float64 torch: (passed, a line). ties: every third key block a copy of block 1, so
    scores tie exactly and the lists must match the reference's (smaller jb first) row for row."""
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(B, h, S, D, device=dev).to(dtype) for h in (H, HK, HK, H))
    if ties:
        for jb in range(3, S // block, 3):
            k[:, :, jb * block:(jb + 1) * block] = k[:, :, block:2 * block]
    kmean, by, keep = ref_select(q, k, block, topk)
    kp = kmean_parts(k, block).double()
    kmean_err = ((kp.sum(0) - kmean).abs().max() / kmean.abs().max()).item()
    o, lse, state = forward(q, k, v, block, topk, sel_cfg, att_cfg, pdtype)
    lists = state[0]
    # a row that differs from the reference must still be a top-k within float32 noise (a near-tie)
    differs = (lists_of(keep, topk) != lists).any(-1)
    kept = torch.zeros(*keep.shape[:-1], keep.shape[-1] + 1, device=dev, dtype=torch.bool)
    kept = kept.scatter_(-1, torch.where(lists >= 0, lists, keep.shape[-1]).long(), True)[..., :-1]
    finite = torch.isfinite(by)
    tie_tol = 1e-5 * by[finite].abs().max().item()
    lo = torch.where(kept & finite, by, math.inf).amin(-1)
    hi = torch.where(~kept & finite, by, -math.inf).amax(-1)
    valid = (lists == lists_of(kept, topk)).all(-1) & (kept.sum(-1) == keep.sum(-1)) & (lo >= hi - tie_tol)
    n_diff, n_bad = differs.sum().item(), (~valid).sum().item()
    ro, rlse, *rgrads = ref_attention(q, k, v, kept, block, do)
    o_err = (o.double() - ro).abs().max().item()
    o_floor = (ro.to(torch.bfloat16).double() - ro).abs().max().item()  # the output's own rounding
    lse_err = (lse.double() - rlse).abs().max().item()
    grads = backward(q, k, v, o, lse, do, state, block, topk, bwd_cfg, atomic, pdtype)
    g_err = [((g.double() - r).abs().max() / r.abs().max()).item() for g, r in zip(grads, rgrads)]
    tol = 3e-2 if dtype == torch.bfloat16 else 1e-5  # float32 inputs: exact dots on the interpreter
    ok = (n_bad == 0 and (n_diff == 0 or not ties) and kmean_err < 1e-6 and o_err < tol and lse_err < 1e-4
          and max(g_err) < tol and all(torch.isfinite(x).all() for x in (o, lse, *grads)))
    return ok, (f"{str(dtype)[6:]}{' ties' if ties else ''} B={B} H={H} HK={HK} S={S} D={D} BLOCK={block} "
                f"TOPK={topk} att{att_cfg[:2]} {str(pdtype)[6:]} partials, dq {'atomic' if atomic else 'slots'}: "
                f"lists {n_diff} rows differ, {n_bad} not a top-k | kmean {kmean_err:.0e} | o {o_err:.1e} (bf16 "
                f"rounding {o_floor:.1e}) lse {lse_err:.1e} | rel dq {g_err[0]:.1e} dk {g_err[1]:.1e} dv "
                f"{g_err[2]:.1e}  {'ok' if ok else 'FAIL'}")


BF16, F32 = torch.bfloat16, torch.float32
CHECK_CASES = [  # dtype, ties, B, H, HK, S, D, BLOCK, TOPK, select cfg, attend cfg, partials, dq atomic, bwd cfg
    (BF16, False, 1, 2, 1, 200, 32, 16, 2, (16, 32, 4, 1), (16, 2, 4, 1), BF16, True, (16, 4, 1)),
    (BF16, False, 2, 4, 2, 200, 32, 32, 3, (16, 16, 4, 1), (32, 1, 4, 1), F32, False, (32, 4, 1)),
    (BF16, True, 1, 2, 2, 600, 32, 16, 5, (16, 32, 4, 1), (16, 4, 4, 1), BF16, False, (16, 4, 1)),
    (F32, False, 1, 4, 2, 200, 32, 16, 2, (16, 32, 4, 1), (16, 2, 4, 1), F32, True, (16, 4, 1)),
    (F32, True, 1, 2, 1, 600, 32, 16, 5, (16, 32, 4, 1), (32, 2, 4, 1), F32, False, (16, 4, 1)),
]


def run_check():
    """Tolerances: lists exact, or (random data only) a top-k within 1e-5 of the largest score (a near-tie);
    kmean parts 1e-6 relative; lse 1e-4 absolute; o absolute and dq, dk, dv relative to their largest magnitude
    3e-2 (bf16) or 1e-5 (float32 inputs, CPU only: the GPU's dots take bf16)."""
    dev = "cuda" if torch.cuda.is_available() else "cpu"
    n_fail = 0
    for c in CHECK_CASES:
        if dev == "cuda" and c[0] == F32:
            continue
        ok, line = check_case(dev, *c)
        print(line, flush=True)
        n_fail += not ok
    print("all passed" if not n_fail else f"{n_fail} FAILED")
    return n_fail == 0


# ---------------------------------------------------------------------------------------- bench
SELECT_CFGS = [(16, 32, 4, 1), (16, 32, 4, 2), (32, 32, 8, 1), (64, 32, 8, 1)]  # more rows: fewer kmean re-reads
ATTEND_CFGS = [(64, 1, 4, 1), (64, 4, 4, 2), (64, 4, 4, 3), (128, 1, 8, 1), (128, 2, 8, 2), (128, 2, 4, 2)]
BWD_CFGS = [(64, 4, 2), (64, 4, 3), (64, 8, 2), (128, 8, 2)]


def make_timer(smoke):
    if not smoke:
        from triton.testing import do_bench
        return lambda fn: do_bench(fn, warmup=10, rep=50, return_mode="median")

    def wall(fn):  # CPU smoke run: one warm call, one timed call
        fn()
        t = time.perf_counter()
        fn()
        return (time.perf_counter() - t) * 1e3
    return wall


def failed(log, label, e):
    log(f"  {label} failed: {type(e).__name__}: {str(e).splitlines()[0][:120] if str(e) else ''}")


def best_of(timer, label, cfgs, run, log):
    """(ms, cfg) of the fastest run(cfg); a config that fails (OutOfResources, ...) is logged and skipped."""
    best = None
    for c in cfgs:
        try:
            ms = timer(lambda: run(c))
        except Exception as e:  # noqa: BLE001
            failed(log, f"{label} {c}", e)
            continue
        log(f"  {label} {c}: {ms:.3f} ms")
        if best is None or ms < best[0]:
            best = (ms, c)
    return best


def bench_shape(log, timer, dev, B, H, HK, S, D, block, topk, cfgs):
    """Stage times of the sparse forward and backward at one shape, dense SDPA beside them; a table."""
    torch.manual_seed(0)
    q, k, v, do = (torch.randn(B, h, S, D, device=dev, dtype=BF16) for h in (H, HK, HK, H))
    own = sum(n * (n + 1) // 2 for n in (min(block, S - s) for s in range(0, S, block)))
    kept = B * H * (offdiag_per_head(S, block, topk) * block + own)
    log(f"\n== B={B} H={H} HK={HK} S={S} D={D} BLOCK={block} TOPK={topk}: kept / causal pairs "
        f"{kept / (B * H * S * (S + 1) // 2):.4f} ==")
    rows = []  # (stage, ms, note); the first five are the forward's stages
    kp = kmean_parts(k, block)
    rows.append(("kmean", timer(lambda: kmean_parts(k, block)), ""))
    sel = best_of(timer, "select", cfgs[0], lambda c: select_blocks(q, kp, block, topk, c), log)
    lists = select_blocks(q, kp, block, topk, sel[1])
    inv = {}  # rows a chunk -> (ms, (idx, bounds, tab))

    def inverse(c):
        rpp = c[0] * c[1]
        if rpp not in inv:
            inv[rpp] = (timer(lambda: inverse_lists(lists, block, rpp)), inverse_lists(lists, block, rpp))
            log(f"  inverse lists, {rpp} rows a chunk: {inv[rpp][0]:.3f} ms")
        return inv[rpp][1]
    for c in cfgs[1]:  # built (and timed) before the attend sweep, not inside its timings
        inverse(c)
    att = best_of(timer, "attend", cfgs[1], lambda c: attend(q, k, v, *inverse(c)[::2], block, topk, c, BF16), log)
    ac = att[1]
    idx, bounds, tab = inverse(ac)
    rows += [("select", sel[0], f"cfg {sel[1]}"),
             ("inverse lists", inv[ac[0] * ac[1]][0], f"{bounds[-1].item() / 1e6:.1f} M entries, {len(tab)} chunks"),
             ("attend", att[0], f"cfg {ac}, {4 * kept * D / att[0] / 1e9:.0f} TFLOP/s on the kept pairs")]
    for pd in (BF16, F32):
        po, pl = attend(q, k, v, idx, tab, block, topk, ac, pd)
        rows.append((f"merge, {str(pd)[6:]} partials", timer(lambda: merge(po, pl, q, block, topk)),
                     f"partials {(po.numel() * po.element_size() + pl.numel() * 4) / 1e9:.2f} GB"))
        del po, pl
    rows.append(("attend, float32 partials", timer(lambda: attend(q, k, v, idx, tab, block, topk, ac, F32)), ""))
    fwd = timer(lambda: forward(q, k, v, block, topk, sel[1], ac, BF16))
    rows.append(("forward, one call", fwd, f"stage sum {sum(r[1] for r in rows[:5]):.3f} (bf16 partials)"))
    o, lse, state = forward(q, k, v, block, topk, sel[1], ac, BF16)
    bwd = {}
    for atomic in (True, False):
        name = "backward, dq " + ("atomics" if atomic else "slots")
        b = best_of(timer, name, cfgs[2], lambda c: backward(q, k, v, o, lse, do, state, block, topk, c, atomic), log)
        if b:
            bwd[name] = b[0]
            rows.append((name, b[0], f"cfg {b[1]}"))
    fb = fwd + min(bwd.values()) if bwd else None
    if fb:
        rows.append(("forward + backward", fb, ""))
    from torch.nn.attention import SDPBackend, sdpa_kernel
    G = H // HK  # dense baseline with the kv heads expanded: the same FLOPs
    qd, kd, vd = (x.clone().requires_grad_() for x in (q, k.repeat_interleave(G, 1), v.repeat_interleave(G, 1)))
    for name in ("FLASH_ATTENTION", "CUDNN_ATTENTION"):
        def sdpa(backend=getattr(SDPBackend, name)):
            with sdpa_kernel(backend):
                return torch.nn.functional.scaled_dot_product_attention(qd, kd, vd, is_causal=True)
        try:
            dfwd, dfb = timer(sdpa), timer(lambda: torch.autograd.grad(sdpa(), (qd, kd, vd), do))
        except Exception as e:  # noqa: BLE001
            failed(log, f"dense {name}", e)
            continue
        label = "dense " + name.split("_")[0].lower()
        rows.append((label + " fwd", dfwd, f"speedup (dense / sparse) {dfwd / fwd:.2f}"))
        rows.append((label + " fwd+bwd", dfb, f"speedup {dfb / fb:.2f}" if fb else ""))
    log(f"  {'stage':26s} {'ms':>8s}  notes")
    for name, ms, note in rows:
        log(f"  {name:26s} {ms:8.3f}  {note}")


def run_bench(smoke, seqs, hks):
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    dev = "cpu" if smoke else "cuda"
    timer = make_timer(smoke)
    log(f"torch {torch.__version__}, triton {triton.__version__}, "
        f"{torch.cuda.get_device_name() if dev == 'cuda' else 'cpu (smoke)'}")
    if smoke:
        H, D, hks, shapes, chk = 2, 64, (2, 1), [(512, 3)], 256
        cfgs = ([SELECT_CFGS[0]], [(64, 1, 4, 1), (64, 2, 4, 1)], [BWD_CFGS[0]])
    else:
        H, D, shapes, chk = 16, 128, [(S, S // 1024 - 1) for S in seqs], 2048
        cfgs = (SELECT_CFGS, ATTEND_CFGS, BWD_CFGS)
    for HK in hks:
        # every config against float64 at a small shape first (partial dtype and dq mode alternating)
        for i, ac in enumerate(cfgs[1]):
            try:
                _, line = check_case(dev, BF16, False, 1, H, HK, chk, D, 64, 3, cfgs[0][i % len(cfgs[0])], ac,
                                     (BF16, F32)[i % 2], i % 2 == 0, cfgs[2][i % len(cfgs[2])])
                log(f"check: {line}")  # (a failure is marked FAIL; the timings still run)
            except Exception as e:  # noqa: BLE001
                failed(log, f"check {ac}", e)
        for S, topk in shapes:
            try:
                bench_shape(log, timer, dev, 1, H, HK, S, D, 64, topk, cfgs)
            except Exception as e:  # noqa: BLE001
                failed(log, f"S={S} HK={HK}", e)
            if dev == "cuda":
                torch.cuda.empty_cache()
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "sparse_exp.txt"), "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="correctness vs float64 torch (CPU interpreter or GPU)")
    ap.add_argument("--bench", action="store_true", help="GPU stage timings vs dense SDPA")
    ap.add_argument("--smoke", action="store_true", help="with --bench: tiny shapes on CPU (interpreter)")
    ap.add_argument("--seq", default="16384,32768", help="with --bench: sequence lengths (TOPK = S // 1024 - 1)")
    ap.add_argument("--hk", default="16,4", help="with --bench: kv head counts (H = 16)")
    a = ap.parse_args()
    if not (a.check or a.bench):
        ap.error("give --check and/or --bench")
    if a.check and not run_check():
        sys.exit(1)
    if a.bench:
        run_bench(a.smoke, [int(x) for x in a.seq.split(",")], [int(x) for x in a.hk.split(",")])

"""Triton helpers every generated kernel may call: activations, floor division and modulo on
tiles, rotary embeddings, the split-KV merge and the tile-list scans.

Shipped: the generated module embeds this file verbatim (after its imports), so the kernels find
these functions among their globals; nothing here depends on a spec.
"""

import os

import triton
import triton.language as tl

LOG2E = tl.constexpr(1.4426950408889634)
LN2 = tl.constexpr(0.6931471805599453)
# inline PTX does not run under the interpreter
_INTERPRET = tl.constexpr(os.environ.get("TRITON_INTERPRET") == "1")


@triton.jit
def _tanh(x, DOT_DTYPE: tl.constexpr):
    # one MUFU instruction for fp16/bf16 inputs (its ~5e-4 relative error is below their rounding);
    # 1 - 2 / (e^{2x} + 1) otherwise, which saturates to +-1 without overflow
    if DOT_DTYPE != tl.float32 and not _INTERPRET:
        return tl.inline_asm_elementwise("tanh.approx.f32 $0, $1;", "=r,r", [x], dtype=tl.float32, is_pure=True,
                                         pack=1)
    else:
        return 1.0 - 2.0 / (tl.exp(2.0 * x) + 1.0)


@triton.jit
def _sigmoid(x, DOT_DTYPE: tl.constexpr):
    # 0.5 tanh(x/2) + 0.5: one MUFU instruction instead of an exp and a reciprocal (fp16/bf16)
    if DOT_DTYPE != tl.float32 and not _INTERPRET:
        return 0.5 * _tanh(0.5 * x, DOT_DTYPE) + 0.5
    else:
        return tl.sigmoid(x)


@triton.jit
def _floordiv(a, b):
    # Python (floor) semantics whatever the backend's integer division rounds to; x // 0 is 0
    nz = b != 0
    d = tl.where(nz, b, 1)
    q = a // d
    r = a - q * d
    return tl.where(nz, tl.where((r != 0) & ((r < 0) != (d < 0)), q - 1, q), 0)


@triton.jit
def _mod(a, b):
    # Python (floor) semantics; x % 0 is 0
    nz = b != 0
    d = tl.where(nz, b, 1)
    r = a - (a // d) * d
    return tl.where(nz, tl.where((r != 0) & ((r < 0) != (d < 0)), r + d, r), 0)


@triton.jit
def _floordiv_f(a, b):
    return tl.floor(a / b)


@triton.jit
def _mod_f(a, b):
    return a - b * tl.floor(a / b)


@triton.jit
def _softplus(x):
    # log(1 + e^x) without overflow
    return tl.maximum(x, 0.0) + tl.log(1.0 + tl.exp(-tl.abs(x)))


@triton.jit
def _rope_perm(offs, L):
    # rotate-half partner column of each column; padding columns map to themselves
    half = L // 2
    return tl.where(offs < half, offs + half, tl.where(offs < L, offs - half, offs))


@triton.jit
def _rope_sign(offs, L):
    return tl.where(offs < L // 2, -1.0, 1.0)


@triton.jit
def _rope_inv_freq(offs, L, LOG2_BASE):
    # base^(-2t/L) for t = column mod L/2
    half = L // 2
    t = tl.where(offs < half, offs, offs - half).to(tl.float32)
    return tl.exp2(-(2.0 * t / L) * LOG2_BASE)


@triton.jit
def _rope_rot(x, offs, L):
    # rotate-half of register rows x [R, BL]: each column takes its partner column, signed
    idx = tl.broadcast_to(_rope_perm(offs, L)[None, :], x.shape)
    return tl.gather(x, idx, 1) * _rope_sign(offs, L)[None, :]


@triton.jit
def _lanes_of(offs, valid, BLOCK_X: tl.constexpr):
    # [BLOCK_S, BLOCK_X] of 0/1: row t picks lane offs[t] of a BLOCK_X-wide row, none where not valid. A
    # slice of a computed row is x @ trans(this) and a slice's gradient g @ this: exact in float32
    return tl.where((tl.arange(0, BLOCK_X)[None, :] == offs[:, None]) & valid[:, None], 1.0, 0.0)


@triton.jit
def _merge_splits(OP, MP, LP, O, LSE, stride_ob, stride_oh, stride_om, stride_od, H, M, SPLITS,
                  NORM: tl.constexpr, DV: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_DV: tl.constexpr):
    # program: one (b, h): combine the SPLITS partial results of the split-KV forward exactly, by the
    # base-2 running max and sums (softmax), the row sums (sum) or plainly (elementwise norms)
    pid_bh = tl.program_id(0)
    rows = tl.arange(0, BLOCK_M)
    cols = tl.arange(0, BLOCK_DV)
    acc = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)
    m = tl.zeros([BLOCK_M], dtype=tl.float32) - float("inf")
    for s in range(0, SPLITS):
        if NORM == "softmax":
            m = tl.maximum(m, tl.load(MP + (pid_bh * SPLITS + s) * BLOCK_M + rows))
    m_safe = tl.where(m == -float("inf"), 0.0, m)
    l = tl.zeros([BLOCK_M], dtype=tl.float32)
    for s in range(0, SPLITS):
        part = (pid_bh * SPLITS + s) * BLOCK_M + rows
        a = tl.load(OP + part[:, None] * BLOCK_DV + cols[None, :])
        if NORM == "softmax":
            w = tl.exp2(tl.load(MP + part) - m_safe)
            acc += a * w[:, None]
            l += tl.load(LP + part) * w
        elif NORM == "sum":
            acc += a
            l += tl.load(LP + part)
        else:
            acc += a
    if NORM == "softmax":
        o = tl.where(l[:, None] != 0, acc / tl.where(l != 0, l, 1.0)[:, None], 0.0)
        stat = tl.where(l != 0, (m + tl.log2(l)) * LN2, -float("inf"))
    elif NORM == "sum":
        o = tl.where(l[:, None] != 0, acc / tl.where(l != 0, l, 1.0)[:, None], 0.0)
        stat = l
    else:
        o = acc
        stat = tl.zeros([BLOCK_M], dtype=tl.float32)
    b = pid_bh // H
    h = pid_bh % H
    ptrs = b.to(tl.int64) * stride_ob + h.to(tl.int64) * stride_oh + rows[:, None] * stride_om + cols[None, :] * stride_od
    tl.store(O + ptrs, o.to(O.dtype.element_ty), mask=(rows[:, None] < M) & (cols[None, :] < DV))
    tl.store(LSE + pid_bh.to(tl.int64) * M + rows, stat, mask=rows < M)


@triton.jit
def _tiles_by_key(CLS, TLC, M_MAX, N_MAX, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCAN: tl.constexpr):
    # program: key tile pid_n of one (b, head slot): the lists of partial and full query tiles, from the
    # classes [rows, query tiles, key tiles] the classification kernel wrote (laid out for the longest
    # sequence; class 2 only where the query tile has every row)
    pid_n = tl.program_id(0)
    pid_bh = tl.program_id(1)
    m_tiles = tl.cdiv(M_MAX, BLOCK_M)
    n_tiles = tl.cdiv(N_MAX, BLOCK_N)
    row = (pid_bh.to(tl.int64) * n_tiles + pid_n) * (2 + 2 * m_tiles)
    n_part = m_tiles * 0
    n_full = m_tiles * 0
    for c0 in range(0, m_tiles, SCAN):
        tt = c0 + tl.arange(0, SCAN)
        live = tt < m_tiles
        cls = tl.load(CLS + (pid_bh.to(tl.int64) * m_tiles + tt) * n_tiles + pid_n, mask=live, other=0)
        full = cls == 2
        part = (cls != 0) ^ full  # full implies cls != 0
        tl.store(TLC + row + 2 + n_part + tl.cumsum(part.to(tl.int32), axis=0) - 1, tt, mask=part)
        tl.store(TLC + row + 2 + m_tiles + n_full + tl.cumsum(full.to(tl.int32), axis=0) - 1, tt, mask=full)
        n_part += tl.sum(part.to(tl.int32), axis=0)
        n_full += tl.sum(full.to(tl.int32), axis=0)
    tl.store(TLC + row, n_part)
    tl.store(TLC + row + 1, n_full)


@triton.jit
def _in_list(row, stride, start_n, j_c, rmask, L: tl.constexpr, LOG: tl.constexpr, BLOCK_M: tl.constexpr,
             BLOCK_N: tl.constexpr):
    # which keys j_c [1, BLOCK_N] of the tile at start_n each row's list holds: [BLOCK_M, BLOCK_N] bool.
    # row [BLOCK_M, 1]: pointers to ascending lists of L keys, -1 after the last (token top-k). A
    # binary search (LOG = bit length of L steps) counts each row's entries below start_n; the
    # tile's keys can only be the next BLOCK_N entries, gathered into one bit word per 64 keys
    first = tl.zeros([BLOCK_M, 1], dtype=tl.int32)
    for t in tl.static_range(LOG):
        nxt = first + (1 << (LOG - 1 - t))
        e = tl.load(row + (nxt - 1) * stride, mask=rmask & (nxt <= L), other=-1)
        first = tl.where((nxt <= L) & (e >= 0) & (e < start_n), nxt, first)
    at = first + tl.arange(0, BLOCK_N)[None, :]
    e = tl.load(row + at * stride, mask=rmask & (at < L), other=-1)
    off = e - start_n
    hit = (e >= 0) & (off < BLOCK_N)
    col = j_c - start_n
    inside = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.int1)
    for w in tl.static_range((BLOCK_N + 63) // 64):
        bit = tl.full([BLOCK_M, BLOCK_N], 1, tl.int64) << (off & 63).to(tl.int64)
        word = tl.sum(tl.where(hit & ((off >> 6) == w), bit, 0), axis=1)[:, None]  # distinct bits: the sum is an or
        inside = inside | (((col >> 6) == w) & (((word >> (col & 63).to(tl.int64)) & 1) != 0))
    return inside

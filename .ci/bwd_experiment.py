"""Causal softmax attention backward: where the time goes, and two alternative designs.

Layout q, k, v, o, do = [B, H, S, D] contiguous, H = HK, bf16, D = 128 in the benchmark. lse is the
natural-log row statistic [B, H, S] float32 (what attngen's forward returns with return_lse=True).

  Variant T: preprocess (delta = rowsum(dO * O)); dq kernel per query tile (attngen's orientation);
             dk/dv kernel per key tile in the transposed orientation (qT [D, BLOCK_M] loaded through
             transposed pointers, tiles [BLOCK_N, BLOCK_M], no register transposes of p / ds).
  Variant A: the dk/dv kernel of T also computes dq_partial = dsT^T k and atomically adds it into a
             float32 dq buffer; a small kernel scales it to bf16. 5 matmuls a tile pair, no dq kernel.

  TRITON_INTERPRET=1 python .ci/bwd_experiment.py --test      # CPU correctness vs a float32 reference
  python .ci/bwd_experiment.py --bench                        # GPU timing table (also $OUT/bwd_exp.txt)
  TRITON_INTERPRET=1 python .ci/bwd_experiment.py --bench --smoke   # the bench code path, tiny, on CPU
"""
import argparse
import math
import os
import sys
import time

import torch
import triton
import triton.language as tl

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOG2E = 1.4426950408889634
# The triton 3.9 interpreter's tl.dot multiplies bf16 tiles as their uint16 bit patterns; under it,
# _dot multiplies the same bf16 values in float32 (exact products, float32 sums, as on the GPU).
INTERP = tl.constexpr(os.environ.get("TRITON_INTERPRET", "0") == "1")


@triton.jit
def _dot(a, b):
    if INTERP:
        c = tl.dot(a.to(tl.float32), b.to(tl.float32))
    else:
        c = tl.dot(a, b)
    return c


@triton.jit
def _ld(ptrs, mask, EVEN: tl.constexpr):
    if EVEN:
        x = tl.load(ptrs)
    else:
        x = tl.load(ptrs, mask=mask, other=0.0)
    return x


@triton.jit
def _pre_kernel(O, DO, DELTA, S, D: tl.constexpr, BLOCK_M: tl.constexpr):
    bh = tl.program_id(1).to(tl.int64)
    offs_m = tl.program_id(0) * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    ptrs = bh * S * D + offs_m[:, None] * D + offs_d[None, :]
    rows = offs_m[:, None] < S
    o = tl.load(O + ptrs, mask=rows, other=0.0).to(tl.float32)
    do = tl.load(DO + ptrs, mask=rows, other=0.0).to(tl.float32)
    tl.store(DELTA + bh * S + offs_m, tl.sum(o * do, axis=1), mask=offs_m < S)


@triton.jit
def _dq_inner(dq, q, do, lse2, delta, K, V, base, offs_m, lo, hi, S, qk_scale,
              D: tl.constexpr, BLOCK_N: tl.constexpr, MASK: tl.constexpr, EVEN: tl.constexpr):
    offs_d = tl.arange(0, D)
    for start_n in range(lo, hi, BLOCK_N):
        offs_n = start_n + tl.arange(0, BLOCK_N)
        kv = base + offs_n[:, None] * D + offs_d[None, :]
        if MASK:
            k = _ld(K + kv, offs_n[:, None] < S, EVEN)
            v = _ld(V + kv, offs_n[:, None] < S, EVEN)
        else:  # full tiles lie wholly before the query tile, so never past S
            k = tl.load(K + kv)
            v = tl.load(V + kv)
        s = _dot(q, tl.trans(k))  # [BLOCK_M, BLOCK_N]
        p = tl.exp2(s * qk_scale - lse2[:, None])
        if MASK:
            p = tl.where(offs_n[None, :] <= offs_m[:, None], p, 0.0)
        dp = _dot(do, tl.trans(v))
        ds = p * (dp - delta[:, None])
        dq += _dot(ds.to(k.dtype), k)
    return dq


@triton.jit
def _dq_kernel(Q, K, V, DO, LSE, DELTA, DQ, S, sm_scale,
               D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, EVEN: tl.constexpr):
    # one program: BLOCK_M query rows of one (b, h); the last (heaviest) query tiles start first
    pid_m = tl.num_programs(0) - 1 - tl.program_id(0)
    bh = tl.program_id(1).to(tl.int64)
    base = bh * S * D
    start_m = pid_m * BLOCK_M
    offs_m = start_m + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    rows = offs_m < S
    qo = base + offs_m[:, None] * D + offs_d[None, :]
    q = _ld(Q + qo, rows[:, None], EVEN)
    do = _ld(DO + qo, rows[:, None], EVEN)
    lse2 = _ld(LSE + bh * S + offs_m, rows, EVEN) * 1.4426950408889634
    delta = _ld(DELTA + bh * S + offs_m, rows, EVEN)
    qk_scale = sm_scale * 1.4426950408889634
    dq = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    full_end = ((start_m + 1) // BLOCK_N) * BLOCK_N  # key tiles wholly at or before the first row
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, base, offs_m, 0, full_end, S, qk_scale, D, BLOCK_N, False, EVEN)
    hi = tl.minimum(start_m + BLOCK_M, S)
    dq = _dq_inner(dq, q, do, lse2, delta, K, V, base, offs_m, full_end, hi, S, qk_scale, D, BLOCK_N, True, EVEN)
    tl.store(DQ + qo, (dq * sm_scale).to(DQ.dtype.element_ty), mask=rows[:, None])


@triton.jit
def _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, DQA, base, row0, offs_n, lo, hi, S, qk_scale,
                D: tl.constexpr, BLOCK_M: tl.constexpr, MASK: tl.constexpr, ATOMIC: tl.constexpr,
                EVEN: tl.constexpr):
    offs_d = tl.arange(0, D)
    for start_m in range(lo, hi, BLOCK_M):
        offs_m = start_m + tl.arange(0, BLOCK_M)
        rows = offs_m < S
        qT = _ld(Q + base + offs_m[None, :] * D + offs_d[:, None], rows[None, :], EVEN)  # [D, BLOCK_M]
        do = _ld(DO + base + offs_m[:, None] * D + offs_d[None, :], rows[:, None], EVEN)  # [BLOCK_M, D]
        lse2 = _ld(LSE + row0 + offs_m, rows, EVEN) * 1.4426950408889634
        delta = _ld(DELTA + row0 + offs_m, rows, EVEN)
        qkT = _dot(k, qT)  # [BLOCK_N, BLOCK_M]
        pT = tl.exp2(qkT * qk_scale - lse2[None, :])
        if MASK:
            pT = tl.where(offs_n[:, None] <= offs_m[None, :], pT, 0.0)
        dv += _dot(pT.to(k.dtype), do)
        dpT = _dot(v, tl.trans(do))  # [BLOCK_N, BLOCK_M]
        dsT = (pT * (dpT - delta[None, :])).to(k.dtype)
        dk += _dot(dsT, tl.trans(qT))
        if ATOMIC:
            dq = _dot(tl.trans(dsT), k)  # [BLOCK_M, D]
            tl.atomic_add(DQA + base + offs_m[:, None] * D + offs_d[None, :], dq, mask=rows[:, None], sem="relaxed")
    return dk, dv


@triton.jit
def _dkdv_kernel(Q, K, V, DO, LSE, DELTA, DK, DV, DQA, S, sm_scale,
                 D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, ATOMIC: tl.constexpr,
                 EVEN: tl.constexpr):
    # one program: BLOCK_N keys of one (b, h); loops over the query tiles at or after them
    start_n = tl.program_id(0) * BLOCK_N
    bh = tl.program_id(1).to(tl.int64)
    base = bh * S * D
    offs_n = start_n + tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, D)
    kv = base + offs_n[:, None] * D + offs_d[None, :]
    k = _ld(K + kv, offs_n[:, None] < S, EVEN)
    v = _ld(V + kv, offs_n[:, None] < S, EVEN)
    qk_scale = sm_scale * 1.4426950408889634
    dk = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, D], dtype=tl.float32)
    lo = (start_n // BLOCK_M) * BLOCK_M  # first query tile reaching key start_n
    mid = ((start_n + BLOCK_N - 1 + BLOCK_M - 1) // BLOCK_M) * BLOCK_M  # first tile whose rows see all keys
    dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, DQA, base, bh * S, offs_n, lo, tl.minimum(mid, S), S,
                         qk_scale, D, BLOCK_M, True, ATOMIC, EVEN)
    # full tiles: no causal mask (a partial last tile reads zeros past S, which add nothing)
    dk, dv = _dkdv_inner(dk, dv, k, v, Q, DO, LSE, DELTA, DQA, base, bh * S, offs_n, mid, S, S,
                         qk_scale, D, BLOCK_M, False, ATOMIC, EVEN)
    tl.store(DK + kv, (dk * sm_scale).to(DK.dtype.element_ty), mask=offs_n[:, None] < S)
    tl.store(DV + kv, dv.to(DV.dtype.element_ty), mask=offs_n[:, None] < S)


@triton.jit
def _cvt_kernel(X, Y, n, scale, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    tl.store(Y + offs, (tl.load(X + offs, mask=m, other=0.0) * scale).to(Y.dtype.element_ty), mask=m)


# ---------------------------------------------------------------------------------------- launches
# dq config: (BLOCK_M, BLOCK_N, warps, stages); dk/dv config: (BLOCK_N, BLOCK_M, warps, stages)
def launch_pre(o, do, delta, bm=64):
    B, H, S, D = o.shape
    _pre_kernel[(triton.cdiv(S, bm), B * H)](o, do, delta, S, D=D, BLOCK_M=bm)


def launch_dq(q, k, v, do, lse, delta, dq, scale, cfg):
    B, H, S, D = q.shape
    bm, bn, w, st = cfg
    _dq_kernel[(triton.cdiv(S, bm), B * H)](q, k, v, do, lse, delta, dq, S, scale, D=D, BLOCK_M=bm, BLOCK_N=bn,
                                           EVEN=S % bm == 0 and S % bn == 0, num_warps=w, num_stages=st)


def launch_dkdv(q, k, v, do, lse, delta, dk, dv, dqa, scale, cfg, atomic):
    B, H, S, D = q.shape
    bn, bm, w, st = cfg
    _dkdv_kernel[(triton.cdiv(S, bn), B * H)](q, k, v, do, lse, delta, dk, dv, dqa, S, scale, D=D, BLOCK_M=bm,
                                             BLOCK_N=bn, ATOMIC=atomic, EVEN=S % bm == 0 and S % bn == 0,
                                             num_warps=w, num_stages=st)


def launch_cvt(dqa, dq, scale, block=1024):
    n = dqa.numel()
    _cvt_kernel[(triton.cdiv(n, block),)](dqa, dq, n, scale, BLOCK=block)


def _check_layout(*ts):
    for t in ts:
        assert t.is_contiguous() and t.shape == ts[0].shape, "contiguous [B, H, S, D] tensors expected"


def backward_T(q, k, v, o, do, lse, scale, dq_cfg, dkdv_cfg):
    _check_layout(q, k, v, o, do)
    delta = torch.empty(lse.shape, device=q.device, dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    launch_pre(o, do, delta)
    launch_dq(q, k, v, do, lse, delta, dq, scale, dq_cfg)
    launch_dkdv(q, k, v, do, lse, delta, dk, dv, dk, scale, dkdv_cfg, False)  # dk stands in for the unused DQA
    return dq, dk, dv


def backward_A(q, k, v, o, do, lse, scale, dkdv_cfg):
    _check_layout(q, k, v, o, do)
    delta = torch.empty(lse.shape, device=q.device, dtype=torch.float32)
    dqa = torch.zeros(q.shape, device=q.device, dtype=torch.float32)
    dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
    launch_pre(o, do, delta)
    launch_dkdv(q, k, v, do, lse, delta, dk, dv, dqa, scale, dkdv_cfg, True)
    launch_cvt(dqa, dq, scale)
    return dq, dk, dv


# ---------------------------------------------------------------------------------------- test
def reference(q, k, v, do, scale):
    """float32 causal attention on the (bf16-valued) inputs: o, natural-log lse, dq, dk, dv."""
    qf, kf, vf = (x.float().requires_grad_() for x in (q, k, v))
    S = q.shape[2]
    s = (qf @ kf.transpose(-1, -2)) * scale
    s = s.masked_fill(~torch.ones(S, S, dtype=torch.bool, device=q.device).tril(), float("-inf"))
    lse = torch.logsumexp(s, dim=-1)
    o = torch.softmax(s, dim=-1) @ vf
    dq, dk, dv = torch.autograd.grad(o, (qf, kf, vf), do.float())
    return o.detach(), lse.detach(), dq, dk, dv


def run_test():
    torch.manual_seed(0)
    B, H, D = 2, 3, 128
    scale = 1.0 / math.sqrt(D)
    cases = [("T", (32, 32, 4, 1), (32, 32, 4, 1)), ("T", (16, 32, 4, 1), (32, 16, 4, 1)),
             ("T", (32, 16, 4, 1), (16, 32, 4, 1)), ("A", None, (32, 32, 4, 1)), ("A", None, (32, 16, 4, 1)),
             ("A", None, (16, 32, 4, 1))]
    failed = 0
    # float32 inputs check the indexing and masks tightly (CPU only: dots are exact there); bf16 is the real case
    for dtype, S in ((torch.float32, 67), (torch.float32, 128), (torch.bfloat16, 67), (torch.bfloat16, 128)):
        tol = 1e-4 if dtype == torch.float32 else 2e-2
        q, k, v, do = (torch.randn(B, H, S, D).to(dtype) for _ in range(4))
        o, lse, *want = reference(q, k, v, do, scale)
        o = o.to(dtype).contiguous()
        for name, dq_cfg, dkdv_cfg in cases:
            if name == "T":
                got = backward_T(q, k, v, o, do, lse.contiguous(), scale, dq_cfg, dkdv_cfg)
            else:
                got = backward_A(q, k, v, o, do, lse.contiguous(), scale, dkdv_cfg)
            errs = [((g.float() - w).abs().max() / w.abs().max()).item() for g, w in zip(got, want)]
            ok = all(e < tol for e in errs) and all(torch.isfinite(g).all() for g in got)
            failed += not ok
            print(f"{str(dtype)[6:]:8s} S={S:4d} {name} dq{dq_cfg[:2] if dq_cfg else '-'} dkdv{dkdv_cfg[:2]}: rel max err "
                  f"dq {errs[0]:.2e} dk {errs[1]:.2e} dv {errs[2]:.2e}  {'ok' if ok else 'FAIL'}")
    print(f"{4 * len(cases) - failed} passed, {failed} failed")
    return failed == 0


# ---------------------------------------------------------------------------------------- bench
DQ_CFGS = [(128, 64, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3), (128, 32, 4, 3)]
DKDV_CFGS = [(128, 64, 8, 2), (128, 64, 8, 3), (128, 64, 4, 3), (64, 64, 4, 2), (64, 64, 4, 3),
             (128, 32, 4, 3), (128, 32, 8, 3), (128, 32, 4, 5)]


def cfg_name(c):
    return f"{c[0]}x{c[1]} w{c[2]} s{c[3]}"


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


def time_autograd(timer, fn, ins, do):
    """(fwd ms, bwd ms timed alone with retain_graph, fwd+bwd ms, grads) of an autograd attention."""
    out = fn()
    grads = torch.autograd.grad(out, ins, do, retain_graph=True)
    fwd = timer(fn)
    bwd = timer(lambda: torch.autograd.grad(out, ins, do, retain_graph=True))
    fb = timer(lambda: torch.autograd.grad(fn(), ins, do))
    return fwd, bwd, fb, grads


def best_of(timer, label, cfgs, run, log):
    """Time run(cfg) for each config; OutOfResources (or any launch failure) skips a config."""
    best = None
    for c in cfgs:
        try:
            ms = timer(lambda: run(c))
        except Exception as e:  # noqa: BLE001 (OutOfResources, compile errors on a config)
            log(f"  {label} {cfg_name(c):16s} skipped: {type(e).__name__}: {str(e).splitlines()[0][:80]}")
            continue
        log(f"  {label} {cfg_name(c):16s} {ms:8.3f} ms")
        if best is None or ms < best[0]:
            best = (ms, c)
    return best


def maxdiff(a, b):
    return "/".join(f"{(x.float() - y.float()).abs().max().item():.1e}" for x, y in zip(a, b))


def run_bench(smoke):
    import attngen
    lines = []

    def log(s=""):
        print(s, flush=True)
        lines.append(s)

    dev = "cpu" if smoke else "cuda"
    dtype = torch.float32 if smoke else torch.bfloat16  # (the interpreter's bf16 dots are broken, see _dot)
    shapes, H, D = ([(1, 64)], 2, 128) if smoke else ([(4, 4096), (1, 16384)], 16, 128)
    dq_cfgs = [(32, 32, 4, 1)] if smoke else DQ_CFGS
    dkdv_cfgs = [(32, 32, 4, 1), (32, 16, 4, 1)] if smoke else DKDV_CFGS
    timer = make_timer(smoke)
    f = attngen.load(os.path.join(ROOT, "examples/causal_gqa.attn"))
    log(f"torch {torch.__version__}, triton {triton.__version__}, "
        f"{torch.cuda.get_device_name() if dev == 'cuda' else 'cpu (smoke)'}")
    summary = []
    for B, S in shapes:
        torch.manual_seed(0)
        scale = 1.0 / math.sqrt(D)
        q, k, v, do = (torch.randn(B, H, S, D, device=dev, dtype=dtype) for _ in range(4))
        ins = tuple(x.clone().requires_grad_() for x in (q, k, v))
        flops = 2.5 * 4 * B * H * S * S * D / 2
        log(f"\n== B={B} H={H} S={S} D={D} {str(dtype)[6:]} causal; bwd FLOPs {flops / 1e12:.2f} T ==")
        rows = {}  # name -> (fwd, bwd, fwd+bwd, note)

        fwd, bwd, fb, g_ref = time_autograd(timer, lambda: f(*ins), ins, do)
        rows["attngen"] = (fwd, bwd, fb, "autotuned")
        o, lse = f(*(x.detach() for x in ins), return_lse=True)
        o, lse = o.contiguous(), lse.contiguous()

        # variant T, kernel by kernel
        delta = torch.empty(lse.shape, device=dev, dtype=torch.float32)
        dq, dk, dv = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)
        dqa = torch.zeros(q.shape, device=dev, dtype=torch.float32)
        t_pre = timer(lambda: launch_pre(o, do, delta))
        log(f"  preprocess (delta)          {t_pre:8.3f} ms")
        bdq = best_of(timer, "T dq  ", dq_cfgs, lambda c: launch_dq(q, k, v, do, lse, delta, dq, scale, c), log)
        bkv = best_of(timer, "T dkdv", dkdv_cfgs,
                      lambda c: launch_dkdv(q, k, v, do, lse, delta, dk, dv, dk, scale, c, False), log)
        if bdq and bkv:
            e2e = timer(lambda: backward_T(q, k, v, o, do, lse, scale, bdq[1], bkv[1]))
            rows["T"] = (None, e2e, None, f"pre {t_pre:.3f} + dq {bdq[0]:.3f} [{cfg_name(bdq[1])}] + dkdv "
                                          f"{bkv[0]:.3f} [{cfg_name(bkv[1])}] = {t_pre + bdq[0] + bkv[0]:.3f}")
            gT = backward_T(q, k, v, o, do, lse, scale, bdq[1], bkv[1])
        # variant A
        t_zero = timer(lambda: dqa.zero_())
        t_cvt = timer(lambda: launch_cvt(dqa, dq, scale))
        log(f"  A zero dq32 {t_zero:.3f} ms, convert {t_cvt:.3f} ms")
        bka = best_of(timer, "A dkdv", dkdv_cfgs,
                      lambda c: launch_dkdv(q, k, v, do, lse, delta, dk, dv, dqa, scale, c, True), log)
        if bka:
            e2e = timer(lambda: backward_A(q, k, v, o, do, lse, scale, bka[1]))
            rows["A"] = (None, e2e, None, f"pre {t_pre:.3f} + zero {t_zero:.3f} + dkdv+atomic {bka[0]:.3f} "
                                          f"[{cfg_name(bka[1])}] + cvt {t_cvt:.3f}")
            gA = backward_A(q, k, v, o, do, lse, scale, bka[1])

        # peers
        try:
            from torch.nn.attention.flex_attention import create_block_mask, flex_attention
            flex = torch.compile(flex_attention, dynamic=False)
            bm = create_block_mask(lambda b, h, qi, ki: qi >= ki, None, None, S, S, device=dev)
            rows["flex"] = (*time_autograd(timer, lambda: flex(*ins, block_mask=bm), ins, do)[:3], "")
        except Exception as e:  # noqa: BLE001
            log(f"  flex failed: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}")
        try:
            from torch.nn.attention import SDPBackend, sdpa_kernel

            def cudnn():
                with sdpa_kernel(SDPBackend.CUDNN_ATTENTION):
                    return torch.nn.functional.scaled_dot_product_attention(*ins, is_causal=True)
            fwd, bwd, fb, g_cud = time_autograd(timer, cudnn, ins, do)
            rows["cudnn"] = (fwd, bwd, fb, "")
        except Exception as e:  # noqa: BLE001
            g_cud = None
            log(f"  cudnn failed: {type(e).__name__}: {str(e).splitlines()[0][:100] if str(e) else ''}")

        log("  grad max |diff| dq/dk/dv: "
            + (f"T vs attngen {maxdiff(gT, g_ref)}; " if "T" in rows else "")
            + (f"A vs attngen {maxdiff(gA, g_ref)}; " if "A" in rows else "")
            + (f"attngen vs cudnn {maxdiff(g_ref, g_cud)}" if g_cud is not None else "")
            + f" (max |dq| {g_ref[0].abs().max().item():.2f})")
        tfl = {n: flops / r[1] / 1e9 for n, r in rows.items()}
        log(f"  {'method':8s} {'fwd ms':>8s} {'bwd ms':>8s} {'fb-fwd':>8s} {'bwd TF/s':>8s} {'vs flex':>7s} "
            f"{'vs cudnn':>8s}  notes")
        for n, (fwd, bwd, fb, note) in rows.items():
            vs = [f"{tfl[n] / tfl[p]:.2f}" if p in tfl else "-" for p in ("flex", "cudnn")]
            fmt = lambda x: f"{x:8.3f}" if x is not None else f"{'-':>8s}"  # noqa: E731
            diff = fmt(fb - fwd) if fb is not None else fmt(None)
            log(f"  {n:8s} {fmt(fwd)} {bwd:8.3f} {diff} {tfl[n]:8.1f} {vs[0]:>7s} {vs[1]:>8s}  {note}")
        summary.append((B, S, tfl))
        del ins, g_ref
    log("\nbwd TF/s summary: " + "; ".join(
        f"B={B} S={S}: " + ", ".join(f"{n} {t:.0f}" for n, t in tfl.items()) for B, S, tfl in summary))
    if os.environ.get("OUT"):
        with open(os.path.join(os.environ["OUT"], "bwd_exp.txt"), "w") as fh:
            fh.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--test", action="store_true", help="correctness vs a float32 torch reference")
    ap.add_argument("--bench", action="store_true", help="GPU timing (H100)")
    ap.add_argument("--smoke", action="store_true", help="with --bench: tiny shapes on CPU (interpreter)")
    a = ap.parse_args()
    if not (a.test or a.bench):
        ap.error("give --test and/or --bench")
    if a.test and not run_test():
        sys.exit(1)
    if a.bench:
        run_bench(a.smoke)

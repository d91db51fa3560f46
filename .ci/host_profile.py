"""Where a cached decoding call spends its host time (GPU; run by `.ci/gpu host`).

For a plain causal decode step (B = 32, H = 32, HK = 8, D = 128, cache 8192, bf16, under no_grad)
on a contiguous and a paged cache: the host time per call issued back to back, the host time of one
call started with the GPU idle, the kernels' time replayed from a CUDA graph, and a cProfile of the
back-to-back calls. Writes host_profile.txt under $OUT.
"""

import cProfile
import io
import os
import pstats
import statistics
import time

import torch
from triton.testing import do_bench

import attngen
from attngen.bench.paged import paged_cache

B, H, HK, D, N = 32, 32, 8, 128, 8192
out = open(os.path.join(os.environ.get("OUT", "."), "host_profile.txt"), "w")


def say(text):
    print(text, flush=True)
    out.write(text + "\n")


def back_to_back_us(f, calls=500):
    for _ in range(20):
        f()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        f()
    elapsed = time.perf_counter() - start
    torch.cuda.synchronize()
    return elapsed / calls * 1e6


def idle_us(f, calls=50):
    times = []
    for _ in range(calls):
        torch.cuda.synchronize()
        start = time.perf_counter()
        f()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e6


def graph_ms(f):
    f()
    torch.cuda.synchronize()
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        f()
    return do_bench(g.replay, return_mode="median")


fn = attngen.load("examples/causal_gqa.attn")
q = torch.randn(B, H, 1, D, device="cuda", dtype=torch.bfloat16)
k = torch.randn(B, HK, N, D, device="cuda", dtype=torch.bfloat16)
v = torch.randn_like(k)
cache = paged_cache(k, v, 16, torch.Generator(device="cuda").manual_seed(0))
calls = {"contiguous": lambda: fn(q, k, v),
         "paged 16": lambda: fn(q, cache.k, cache.v, block_table=cache.block_table, seqlens_k=cache.seqlens_k,
                                validate=False)}
with torch.no_grad():
    for name, f in calls.items():
        say(f"{name}: back to back {back_to_back_us(f):.1f} us/call, idle GPU {idle_us(f):.1f} us/call, "
            f"kernels (graph) {graph_ms(f) * 1e3:.1f} us")
        prof = cProfile.Profile()
        prof.enable()
        for _ in range(300):
            f()
        prof.disable()
        torch.cuda.synchronize()
        text = io.StringIO()
        pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(20)
        say(text.getvalue())

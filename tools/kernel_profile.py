"""Where one attention's call spends its GPU time, kernel by kernel (run by `.ci/gpu bwd` and `.ci/gpu sparse-prof`).

B sequences of S tokens, H heads (HK KV heads), head dim D, bf16, random inputs: the average GPU time per
call of every kernel (torch ops included) over 5 calls from torch.profiler, the forward and the backward
apart, and the host waits (device-to-host copies) per call. Appends to kernel_prof.txt under $OUT (or .).
Without a GPU (TRITON_INTERPRET=1) it runs the same calls on the CPU: a smoke run, with no kernel times.

  python tools/kernel_profile.py examples/causal_gqa.attn --batch 4 --seq 4096
  python tools/kernel_profile.py examples/moba.attn -D BLOCK=64 -D TOPK=15 --seq 16384
"""
import argparse
import os

import torch
from torch.profiler import ProfilerActivity, profile

import attngen
from attngen.bench.inputs import make_inputs


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("spec")
    ap.add_argument("-D", dest="consts", action="append", default=[], help="NAME=VALUE")
    ap.add_argument("--seq", type=int, default=16384)
    ap.add_argument("--batch", type=int, default=1)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--kv-heads", type=int, default=16)
    ap.add_argument("--no-backward", action="store_true")
    args = ap.parse_args(argv)
    consts = {k: int(v) for k, v in (c.split("=") for c in args.consts)}
    fn = attngen.load(args.spec, consts=consts)
    B, S, H, HK, D = args.batch, args.seq, args.heads, args.kv_heads, args.dim
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # CPU (TRITON_INTERPRET=1): a smoke run of the script
    gen = torch.Generator(device=dev).manual_seed(0)
    q = torch.randn(B, H, S, D, device=dev, dtype=torch.bfloat16, generator=gen)
    k, v = (torch.randn(B, HK, S, D, device=dev, dtype=torch.bfloat16, generator=gen) for _ in range(2))
    sizes = dict(B=B, H=H, HK=HK, M=S, N=S, D=D, DV=D)
    xs = make_inputs(fn.attention, sizes, dev, gen)
    ins = [x.requires_grad_() for x in (q, k, v)]
    do = torch.randn_like(q)
    log = open(os.path.join(os.environ.get("OUT", "."), "kernel_prof.txt"), "a")

    def say(s):
        print(s, flush=True)
        log.write(s + "\n")

    def sync():
        if dev == "cuda":
            torch.cuda.synchronize()

    def fwd():
        return fn(*ins, **xs)

    def bwd(o):
        torch.autograd.grad(o, ins, do)

    for _ in range(2):
        o = fwd()
        if not args.no_backward:
            bwd(o)
    sync()
    parts = [("forward", lambda: fwd(), lambda: None)]
    if not args.no_backward:
        parts.append(("backward", lambda: fwd(), bwd))
    for label, before, step in parts:
        held = [before() for _ in range(5)] if label == "backward" else None
        sync()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
            for i in range(5):
                if held is None:
                    fwd()
                else:
                    step(held[i])
            sync()
        ev = prof.key_averages()
        syncs = sum(e.count for e in ev if e.key in ("cudaStreamSynchronize", "cudaMemcpyAsync")) // 5
        say(f"== {os.path.basename(args.spec)} {consts} B={B} S={S} H={H} HK={HK} D={D}: {label}, per call (5 calls); "
            f"host waits / copies per call: {syncs}")
        for e in sorted((e for e in ev if e.device_time_total), key=lambda e: -e.device_time_total)[:14]:
            say(f"  {e.key[:70]:70s} {e.device_time_total / 5 / 1000:8.3f} ms  x{e.count / 5:g}")


if __name__ == "__main__":
    main()

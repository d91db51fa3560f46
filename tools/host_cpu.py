"""attngen's own host time per cached call, every Triton launch stubbed out (CPU, no GPU).

A call's host time splits between Triton's launcher (JITFunction.run: binding and specializing the
arguments) and attngen's runtime (checks, sizes, configs, buffers). This measures the second part
alone on any machine: a decode step (default B = 32, H = 32, HK = 8, D = 128, cache 8192, bf16,
under no_grad) with the attention's kernels replaced by no-ops, so the figure is the host time
attngen adds over its kernel launches. ``--train``: a training call instead (M = N = the cache length,
q, k, v requiring grad), its forward and its forward+backward (autograd's own work included).

  TRITON_INTERPRET=1 PYTHONPATH=. python tools/host_cpu.py            # us per call
  TRITON_INTERPRET=1 PYTHONPATH=. python tools/host_cpu.py --profile  # and where it goes
  TRITON_INTERPRET=1 PYTHONPATH=. python tools/host_cpu.py --train --batch 1 --heads 16 --kv-heads 16 --cache 256
"""
import argparse
import cProfile
import io
import pstats
import time

import torch

import attngen



class _NoLaunch:
    """Stands in for a kernel: ``kernel[grid](*args, **constexprs)`` does nothing; its parameter names
    are the kernel's (the runtime binds arguments by them)."""

    def __init__(self, kernel):
        self.arg_names = kernel.arg_names

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the calls")
    ap.add_argument("--calls", type=int, default=2000)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--heads", type=int, default=32)
    ap.add_argument("--kv-heads", type=int, default=8)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--cache", type=int, default=8192, help="the KV cache's length N")
    ap.add_argument("--train", action="store_true", help="time training calls (forward, forward+backward)")
    opts = ap.parse_args(argv)
    B, H, HK, D, N = opts.batch, opts.heads, opts.kv_heads, opts.dim, opts.cache
    fn = attngen.load("examples/causal_gqa.attn")
    kernels = getattr(fn.module, f"_attention_{fn.name}").kernels
    for name in kernels:  # the attention's kernels, as its runtime object holds them
        kernels[name] = _NoLaunch(kernels[name])
    for name in dir(fn.module):  # and every @triton.jit helper kernel of the runtime (the split-KV merge)
        if type(getattr(fn.module, name)).__name__ in ("JITFunction", "InterpretedFunction"):
            setattr(fn.module, name, _NoLaunch(getattr(fn.module, name)))
    shape = f"B={B} H={H} HK={HK} D={D} N={N}"
    if opts.train:
        q = torch.randn(B, H, N, D, dtype=torch.bfloat16, requires_grad=True)
        k, v = (torch.randn(B, HK, N, D, dtype=torch.bfloat16, requires_grad=True) for _ in range(2))
        do = torch.randn(B, H, N, D, dtype=torch.bfloat16)

        def step():
            q.grad = k.grad = v.grad = None
            fn(q, k, v).backward(do)
        calls = {"forward": lambda: fn(q, k, v), "forward+backward": step}
        shape += f", M={N}, bf16, cpu tensors requiring grad"
    else:
        q = torch.randn(B, H, 1, D, dtype=torch.bfloat16)
        k, v = (torch.randn(B, HK, N, D, dtype=torch.bfloat16) for _ in range(2))
        calls = {"decode": lambda: fn(q, k, v)}
        shape += ", M=1, bf16, cpu tensors"
    for what, call in calls.items():
        with torch.set_grad_enabled(opts.train):
            for _ in range(50):
                call()
            start = time.perf_counter()
            for _ in range(opts.calls):
                call()
            print(f"{what}: {(time.perf_counter() - start) / opts.calls * 1e6:.1f} us per call, launches stubbed "
                  f"({shape})")
            if opts.profile:
                prof = cProfile.Profile()
                prof.enable()
                for _ in range(opts.calls):
                    call()
                prof.disable()
                text = io.StringIO()
                pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
                print(text.getvalue())

if __name__ == "__main__":
    main()

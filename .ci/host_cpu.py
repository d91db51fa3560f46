"""attngen's own host time per cached decoding call, every Triton launch stubbed out (CPU, no GPU).

The GPU's host profile (`.ci/gpu host`) splits a call between Triton's launcher (JITFunction.run:
binding and specializing the arguments) and attngen's wrapper (checks, sizes, configs, buffers).
This measures the second part alone on any machine: the decode step of .ci/host_profile.py
(B = 32, H = 32, HK = 8, D = 128, cache 8192, bf16, under no_grad) with the module's kernels
replaced by no-ops, so the figure is the host time attngen adds over its kernel launches.

  TRITON_INTERPRET=1 PYTHONPATH=. python .ci/host_cpu.py            # us per call
  TRITON_INTERPRET=1 PYTHONPATH=. python .ci/host_cpu.py --profile  # and where it goes
"""
import argparse
import cProfile
import io
import pstats
import time

import torch

import attngen

B, H, HK, D, N = 32, 32, 8, 128, 8192


class _NoLaunch:
    """Stands in for a kernel: ``kernel[grid](*args, **constexprs)`` does nothing."""

    def __getitem__(self, grid):
        return lambda *args, **kwargs: None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--profile", action="store_true", help="also print a cProfile of the calls")
    ap.add_argument("--calls", type=int, default=2000)
    opts = ap.parse_args()
    fn = attngen.load("examples/causal_gqa.attn")
    for name in dir(fn.module):  # every @triton.jit function of the module
        if type(getattr(fn.module, name)).__name__ in ("JITFunction", "InterpretedFunction"):
            setattr(fn.module, name, _NoLaunch())
    q = torch.randn(B, H, 1, D, dtype=torch.bfloat16)
    k, v = (torch.randn(B, HK, N, D, dtype=torch.bfloat16) for _ in range(2))
    with torch.no_grad():
        for _ in range(50):
            fn(q, k, v)
        start = time.perf_counter()
        for _ in range(opts.calls):
            fn(q, k, v)
        print(f"{(time.perf_counter() - start) / opts.calls * 1e6:.1f} us per call, launches stubbed "
              f"(B={B} H={H} HK={HK} D={D} N={N}, M=1, bf16, cpu tensors)")
        if opts.profile:
            prof = cProfile.Profile()
            prof.enable()
            for _ in range(opts.calls):
                fn(q, k, v)
            prof.disable()
            text = io.StringIO()
            pstats.Stats(prof, stream=text).sort_stats("tottime").print_stats(15)
            print(text.getvalue())


if __name__ == "__main__":
    main()

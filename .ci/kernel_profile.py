"""Per-kernel GPU time of attngen's causal forward + backward (GPU; run by `.ci/gpu bwd`).

B = 4 x S = 4096 and B = 1 x S = 16384, H = 16, D = 128, bf16, whatever configs the environment
selects (ATTNGEN_AUTOTUNE=0: the fixed defaults): the average time per call of each kernel over
10 calls, from torch.profiler. Writes kprof.txt under $OUT.
"""
import os
import torch
from torch.profiler import ProfilerActivity, profile
import attngen

out = open(os.path.join(os.environ.get("OUT", "."), "kprof.txt"), "w")


def say(s):
    print(s, flush=True)
    out.write(s + "\n")


f = attngen.load("examples/causal_gqa.attn")
for B, S in ((4, 4096), (1, 16384)):
    q, k, v, do = (torch.randn(B, 16, S, 128, device="cuda", dtype=torch.bfloat16) for _ in range(4))
    ins = [x.clone().requires_grad_() for x in (q, k, v)]

    def step():
        o = f(*ins)
        torch.autograd.grad(o, ins, do)

    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            step()
        torch.cuda.synchronize()
    say(f"== B={B} S={S}: per call (10 calls), attngen causal fwd+bwd")
    for e in sorted(prof.key_averages(), key=lambda e: -e.device_time_total)[:8]:
        say(f"  {e.key[:60]:60s} {e.device_time_total / 10 / 1000:8.3f} ms  x{e.count // 10}")

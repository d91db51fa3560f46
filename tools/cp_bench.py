"""Context-parallel scaling (issue 19): a spec over P ranks (attngen.context_parallel, ring) against one
rank running it on its own tokens, at the same tokens per rank; run under torchrun, one GPU a rank.

Per-rank TFLOP/s counts the causal pairs of the whole sequence over P ranks (4·pairs·D forward, 3.5× that
forward+backward), the single-rank row the causal pairs of its own S tokens; the ratio is the first over
the second (issue 19's target: at least 0.90). "hidden": the share of the ring's transfers (timed alone:
P - 1 steps of k and v) that does not add to the ring's time over its kernels alone (the same loop with
the rank's own shard in every step), clamped to [0, 1]. Times are the slowest rank's medians.

  torchrun --standalone --nproc-per-node 8 tools/cp_bench.py --tokens 65536           # 64k tokens a GPU
  TRITON_INTERPRET=1 torchrun --standalone --nproc-per-node 2 tools/cp_bench.py --tokens 16 --heads 2 \\
      --dim 16 --reps 1                                                              # CPU smoke run
"""
import argparse
import statistics
import time

import torch
import torch.distributed as dist

import attngen
from attngen.distributed import _Shift, init_from_env, on_shards, positions, shard_calls


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("spec", nargs="?", default="examples/causal_gqa.attn")
    ap.add_argument("--tokens", type=int, default=65536, help="tokens a rank holds")
    ap.add_argument("--heads", type=int, default=16)
    ap.add_argument("--dim", type=int, default=128)
    ap.add_argument("--layout", default="zigzag")
    ap.add_argument("--reps", type=int, default=10)
    args = ap.parse_args()
    device = init_from_env()
    cuda = device.type == "cuda"
    world, rank = dist.get_world_size(), dist.get_rank()
    dtype = torch.bfloat16 if cuda else torch.float32
    S, H, D = args.tokens, args.heads, args.dim
    fn = attngen.load(args.spec)
    q, k, v = (torch.randn(1, H, S, D, device=device, dtype=dtype, requires_grad=True) for _ in range(3))
    do = torch.randn_like(q)
    cp = attngen.context_parallel(fn, layout=args.layout)
    own, _ = shard_calls(fn)
    qpos = positions(S, world, rank, args.layout, device)

    def kernels_only():  # the ring's kernels, the rank's own shard in every step: no transfers
        return attngen.merge_by_lse([on_shards(own, q, k, v, qpos, qpos, world * S, None, {})
                                     for _ in range(world)])[0]

    def transfers():
        kk, vv = k, v
        for _ in range(world - 1):
            kk, vv = _Shift.apply(kk, None), _Shift.apply(vv, None)
        return kk

    def step(f, backward):
        def run():
            o = f()
            if backward:
                torch.autograd.grad(o, (q, k, v), do)
        return run

    calls = {"one rank": lambda: fn(q, k, v), "ring": lambda: cp(q, k, v), "ring kernels": kernels_only}
    ms = {}
    for backward in (False, True):
        for name, f in calls.items():
            ms[(name, backward)] = _slowest(step(f, backward), args.reps, device)
    comm = _slowest(transfers, args.reps, device)
    one_pairs = S * (S + 1) // 2
    ring_pairs = world * S * (world * S + 1) // 2 / world  # a rank's share of the whole sequence's pairs
    if rank == 0:
        print(f"{args.spec}: {world} ranks x {S} tokens, H {H}, D {D}, {dtype}, {args.layout}; transfers alone "
              f"{comm:.3f} ms")
        for backward in (False, True):
            f = 4.0 * D * H * (3.5 if backward else 1.0)
            one, ring = f * one_pairs / ms[("one rank", backward)] / 1e9, f * ring_pairs / ms[("ring", backward)] / 1e9
            extra = ms[("ring", backward)] - ms[("ring kernels", backward)]
            hidden = min(1.0, max(0.0, 1.0 - extra / comm)) if comm > 0 else 1.0
            print(f"{'fwd+bwd' if backward else 'fwd':>7}: one rank {ms[('one rank', backward)]:.3f} ms "
                  f"{one:.1f} TFLOP/s, ring {ms[('ring', backward)]:.3f} ms {ring:.1f} TFLOP/s a rank, "
                  f"ratio {ring / one:.2f}, transfers hidden {hidden:.0%}")
    dist.destroy_process_group()


def _slowest(fn, reps, device):
    """The slowest rank's median wall time of ``fn()`` in ms (ranks start each call together)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(reps):
        dist.barrier()
        sync()
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    t = torch.tensor([statistics.median(times)], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.item()


if __name__ == "__main__":
    main()

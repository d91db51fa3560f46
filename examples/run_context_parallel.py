"""Ring attention over torch.distributed: one sequence split across the ranks, each holding a shard of
q, k and v (attngen.context_parallel), checked against one process's call over the whole sequence,
outputs and every gradient; then Star Attention's two phases (attngen.star_context and
attngen.star_query, inference) against one process. On CPU (gloo, kernels under the Triton interpreter):

    TRITON_INTERPRET=1 torchrun --standalone --nproc-per-node 2 examples/run_context_parallel.py

On GPUs (NCCL), one per rank: torchrun --standalone --nproc-per-node 2 examples/run_context_parallel.py
"""
import argparse
import os

import torch
import torch.distributed as dist

import attngen
from attngen.bench.inputs import make_inputs
from attngen.distributed import init_from_env

#: (file, attention, consts): causal, ALiBi, a sliding window, a document mask and a sink
SPECS = [("causal_gqa.attn", None, {}), ("alibi.attn", None, {}), ("sliding_window.attn", None, {"W": 6}),
         ("document_mask.attn", None, {}), ("sink_softmax.attn", "sink_softmax", {})]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seq", type=int, default=0, help="tokens of the whole sequence (default: 8 per rank)")
    ap.add_argument("--layouts", default="contiguous,zigzag")
    args = ap.parse_args()
    device = init_from_env()
    world, rank = dist.get_world_size(), dist.get_rank()
    here = os.path.dirname(os.path.abspath(__file__))
    B, H, HK, D, S = 1, 4, 2, 16, args.seq or 8 * world
    for path, name, consts in SPECS:
        fn = attngen.load(os.path.join(here, path), name=name, consts=consts)
        ref = attngen.load(os.path.join(here, path), name=name, consts=consts, backend="reference")
        gen = torch.Generator(device="cpu").manual_seed(0)  # the same whole tensors on every rank
        q, k, v = (torch.randn(B, h, S, D, generator=gen) for h in (H, HK, HK))
        g = torch.randn(B, H, S, D, generator=gen)
        xs = make_inputs(fn.attention, dict(B=B, H=H, HK=HK, M=S, N=S, D=D, DV=D), "cpu", gen)
        want = _whole(ref, q, k, v, g, xs)
        names = ["o", "dq", "dk", "dv", *(f"d{n}" for n, x in xs.items() if x.is_floating_point())]
        # the Triton backend's ring has its own backward; the reference's goes through autograd (causal only)
        backends = [fn, ref] if path == "causal_gqa.attn" else [fn]
        for layout, each in ((layout, each) for layout in args.layouts.split(",") for each in backends):
            got = _sharded(attngen.context_parallel(each, layout=layout), q, k, v, g, xs, layout, device)
            for what, a, b in zip(names, got, want, strict=True):
                err = ((a.double() - b).norm() / b.norm().clamp_min(1e-30)).item()
                if err > 1e-4:
                    raise AssertionError(f"rank {rank}: {fn.name} {layout} {each!r}: {what} off by {err:.2e}")
            if rank == 0:
                print(f"{fn.name:>14} {layout:>10}: o and gradients match one process ({world} ranks, {S} tokens, "
                      f"{'reference' if each is ref else 'triton'})")
        if name is None and path == "causal_gqa.attn" or name == "sink_softmax":
            _star(fn, ref, q, k, v, xs, device, here)
    dist.destroy_process_group()


def _star(fn, ref, q, k, v, xs, device, here):
    """Star Attention: phase 1 (causal specs) against examples/star_context.attn on one process, phase 2
    (3 query tokens after the context) against the last rows of one call over context and query."""
    world, rank = dist.get_world_size(), dist.get_rank()
    S = q.shape[2] // world
    block = slice(rank * S, (rank + 1) * S)
    dev = {n: x.to(device) for n, x in xs.items()}
    checks = []
    if not fn.attention.inputs:  # plain causal: phase 1's mask is star_context's
        one = attngen.load(os.path.join(here, "star_context.attn"), consts={"BLOCK": S}, backend="reference")
        got = attngen.star_context(fn, *(t[:, :, block].to(device) for t in (q, k, v)))
        checks.append(("phase 1", got, one(q.double(), k.double(), v.double())[:, :, block]))
    gen = torch.Generator().manual_seed(1)
    qq, kq, vq = (torch.randn(t.shape[0], t.shape[1], 3, t.shape[3], generator=gen) for t in (q, k, v))
    got = attngen.star_query(fn, *(t.to(device) for t in (qq, kq, vq)), *(t[:, :, block].to(device) for t in (k, v)),
                        **dev)
    whole = ref(torch.cat([q, qq], 2).double(), torch.cat([k, kq], 2).double(), torch.cat([v, vq], 2).double(),
                **{n: x.double() if x.is_floating_point() else x for n, x in xs.items()})
    checks.append(("phase 2", got, whole[:, :, -3:]))
    for what, a, b in checks:
        err = ((a.cpu().double() - b).norm() / b.norm()).item()
        if err > 1e-4:
            raise AssertionError(f"rank {rank}: Star {what} of {fn.name} off by {err:.2e}")
        if rank == 0:
            print(f"{fn.name:>14}       star: {what} matches one process")


def _whole(ref, q, k, v, g, xs):
    """o and the gradients (q, k, v, then each float input) of one float64 call over the whole sequence."""
    leaves = [t.double().requires_grad_() for t in (q, k, v)]
    fxs = {n: x.detach().double().requires_grad_() if x.is_floating_point() else x for n, x in xs.items()}
    o = ref(*leaves, **fxs)
    return (o.detach(), *torch.autograd.grad((o * g.double()).sum(), leaves + [x for x in fxs.values()
                                                                                if x.requires_grad]))


def _sharded(cp, q, k, v, g, xs, layout, device):
    """This rank's shards through the ring, then o and the gradients gathered whole."""
    leaves = [attngen.shard_sequence(t.to(device), layout=layout).detach().requires_grad_() for t in (q, k, v)]
    fxs = {n: x.detach().to(device).requires_grad_() if x.is_floating_point() else x.to(device)
           for n, x in xs.items()}
    o = cp(*leaves, **fxs)
    floats = [x for x in fxs.values() if x.requires_grad]
    grads = torch.autograd.grad((o * attngen.shard_sequence(g.to(device), layout=layout)).sum(), leaves + floats)
    whole = [attngen.unshard_sequence(t.detach(), layout=layout).cpu() for t in (o, *grads[:3])]
    for t in grads[3:]:  # an input passed whole gets a share of its gradient on every rank
        dist.all_reduce(t)
    return (*whole, *(t.cpu() for t in grads[3:]))


if __name__ == "__main__":
    main()

"""Packed-sequence and paged-cache cases shared by the CPU and GPU kernel tests: random inputs,
the kernels and the reference (per sequence) on them, and the errors in verify's format."""

from __future__ import annotations

import torch

from attngen.ir import nodes as ir
from attngen.reference import ReferenceAttention
from attngen.runtime.jit import TritonAttention
from attngen.verify import make_inputs, rel_err


def packed_case(a: ir.Attention, lens_q, lens_k, H=4, HK=2, D=16, dtype=torch.float32, device="cpu", seed=0):
    """(q [TQ, H, D], k, v, inputs, the cu_seqlens keywords, do) for sequences of these lengths."""
    g = torch.Generator().manual_seed(seed)
    cu = lambda lens: torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device=device)  # noqa: E731
    seq = dict(cu_seqlens_q=cu(lens_q), cu_seqlens_k=cu(lens_k), max_seqlen_q=max(lens_q), max_seqlen_k=max(lens_k))
    TQ, TK = sum(lens_q), sum(lens_k)
    q, k, v, do = (torch.randn(*s, generator=g).to(device, dtype) for s in
                   ((TQ, H, D), (TK, HK, D), (TK, HK, D), (TQ, H, D)))
    sizes = dict(B=len(lens_q), H=H, HK=HK, M=max(lens_q), N=max(lens_k), D=D, DV=D)
    return q, k, v, make_inputs(a, sizes, device, g), seq, do


def _run(f, q, k, v, xs, seq, do, cast):
    leaves = {"q": cast(q), "k": cast(k), "v": cast(v)}
    leaves.update({n: cast(x) for n, x in xs.items() if x.is_floating_point()})
    leaves = {n: t.detach().requires_grad_() for n, t in leaves.items()}
    args = {**xs, **leaves}
    o = f(args.pop("q"), args.pop("k"), args.pop("v"), **args, **seq)
    o.backward(cast(do))
    return o.detach(), {n: t.grad for n, t in leaves.items()}


def packed_errors(a: ir.Attention, q, k, v, xs, seq, do) -> dict:
    """Relative errors (kernel, low-precision reference) against float64, for o and every gradient."""
    o_k, g_k = _run(TritonAttention(a), q, k, v, xs, seq, do, lambda t: t)
    o_64, g_64 = _run(ReferenceAttention(a), q, k, v, xs, seq, do, lambda t: t.double())
    o_lp, g_lp = _run(ReferenceAttention(a), q, k, v, xs, seq, do, lambda t: t)
    assert o_k.shape == (q.shape[0], q.shape[1], v.shape[2])
    errs = {"o": (rel_err(o_k, o_64), rel_err(o_lp, o_64))}
    errs.update({"d" + n: (rel_err(g_k[n], g_64[n]), rel_err(g_lp[n], g_64[n])) for n in g_k})
    return errs


def paged_case(a: ir.Attention, M, lengths, page=16, pages_per_seq=12, H=4, HK=2, D=16, dtype=torch.float32,
               device="cpu", seed=0):
    """Dense q, k, v and the same keys scattered over shuffled pages of a cache (plus unused pages
    of noise): (q, k, v, k_cache, v_cache, block_table, seqlens_k, inputs)."""
    g = torch.Generator().manual_seed(seed)
    B, N = len(lengths), page * pages_per_seq
    q = torch.randn(B, H, M, D, generator=g)
    k, v = torch.randn(B, HK, N, D, generator=g), torch.randn(B, HK, N, D, generator=g)
    n_pages = B * pages_per_seq + 3
    table = torch.randperm(n_pages, generator=g)[:B * pages_per_seq].view(B, pages_per_seq)
    k_cache, v_cache = torch.randn(n_pages, page, HK, D, generator=g), torch.randn(n_pages, page, HK, D, generator=g)
    for b in range(B):
        for p in range(pages_per_seq):
            k_cache[table[b, p]] = k[b, :, p * page:(p + 1) * page].transpose(0, 1)
            v_cache[table[b, p]] = v[b, :, p * page:(p + 1) * page].transpose(0, 1)
    xs = make_inputs(a, dict(B=B, H=H, HK=HK, M=M, N=N, D=D, DV=D), device, g)
    to = lambda t: t.to(device, dtype)  # noqa: E731
    return (to(q), to(k), to(v), to(k_cache), to(v_cache), table.int().to(device),
            torch.tensor(lengths, dtype=torch.int32, device=device), xs)


def paged_errors(a: ir.Attention, q, k, v, k_cache, v_cache, table, lengths, xs) -> dict:
    """The kernel on the paged cache against the reference on each sequence's contiguous keys."""
    with torch.no_grad():
        o = TritonAttention(a)(q, k_cache, v_cache, block_table=table, seqlens_k=lengths, **xs)

    def dense(cast):
        out = []
        for b, n in enumerate(lengths.tolist()):
            sub = {nm: x[b:b + 1, ..., :n] if nm == "doc" else x for nm, x in xs.items()}
            sub = {nm: cast(x) if x.is_floating_point() else x for nm, x in sub.items()}
            out.append(ReferenceAttention(a)(cast(q[b:b + 1]), cast(k[b:b + 1, :, :n]), cast(v[b:b + 1, :, :n]), **sub))
        return torch.cat(out)
    exact = dense(lambda t: t.double())
    return {"o": (rel_err(o, exact), rel_err(dense(lambda t: t), exact))}

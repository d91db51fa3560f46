"""lse is differentiable on both backends (language 1.1; issue 20): a loss that reads the lse of a
softmax attention, as merging partial results by their lse does (split-KV, Star or ring attention),
gets the same gradients of q, k, v and the float inputs from the kernels as from the float64
reference. Before, the kernels dropped lse's gradient: dq and dk were off by about 25 %, silently."""

from __future__ import annotations

import pytest
import torch

import attngen
from attngen.verify import rel_err

pytestmark = pytest.mark.interpret

SPECS = {
    "causal": "mask = causal",
    "alibi_sink": "input slopes: f32[H]\n input sinks: f32[H]\n score = dot(q, k) * scale + slopes[h] * (j - i)\n"
                  " mask = causal\n norm = softmax(sink = sinks[h])",
    "doc": "input doc: i32[B, N]\n mask = causal and doc[b, i] == doc[b, j]",
    "window_varlen": "mask = causal and i - j < 9",
    # block top-k: the forward and backward over the chosen blocks alone (the block-sparse kernels)
    "moba": "mask = causal\n select = topk(2, by = dot(q, kmean), block = 16, keep = jb == i // 16)",
}


def _inputs(name, B, H, N, g):
    return {"causal": {}, "window_varlen": {}, "moba": {},
            "alibi_sink": {"slopes": torch.rand(H, generator=g, dtype=torch.float64),
                           "sinks": torch.randn(H, generator=g, dtype=torch.float64)},
            "doc": {"doc": (torch.arange(N) * 3 // N).to(torch.int32).expand(B, N).contiguous()}}[name]


def _grads(fn, q, k, v, xs, w, u, **call):
    leaves = [q, k, v] + [x for x in xs.values() if x.is_floating_point()]
    leaves = [t.detach().clone().requires_grad_() for t in leaves]
    q2, k2, v2, *floats = leaves
    xs2 = dict(xs)
    xs2.update({n: t for n, t in zip([n for n, x in xs.items() if x.is_floating_point()], floats)})
    o, lse = fn(q2, k2, v2, return_lse=True, **xs2, **call)
    finite = torch.isfinite(lse)  # rows with no allowed key: lse = -inf, no gradient through it
    loss = (o.double() * w).sum() + (torch.where(finite, lse.double(), 0) * u).sum()
    return torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("name", ["causal", "alibi_sink", "doc", "moba"])
def test_lse_gradient_matches_the_reference(name):
    B, H, HK, M, N, D = 2, 4, 2, 37, 45, 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, n, D, generator=g, dtype=torch.float64) for h, n in ((H, M), (HK, N), (HK, N)))
    xs = _inputs(name, B, H, N, g)
    w, u = torch.randn(B, H, M, D, generator=g, dtype=torch.float64), torch.randn(B, H, M, generator=g,
                                                                                  dtype=torch.float64)
    src = f"attention {name} {{\n {SPECS[name]}\n}}"
    want = _grads(attngen.jit(src, backend="reference"), q, k, v, xs, w, u)
    f32 = {n: x.float() if x.is_floating_point() else x for n, x in xs.items()}
    got = _grads(attngen.jit(src), q.float(), k.float(), v.float(), f32, w, u)
    without = _grads(attngen.jit(src), q.float(), k.float(), v.float(), f32, w, torch.zeros_like(u))
    for a, b, c in zip(got, want, without):
        assert rel_err(a, b) < 1e-4, rel_err(a, b)
    # the lse term matters here: dropping it moves dq well past the tolerance (so this test can fail)
    assert rel_err(without[0], want[0]) > 1e-2


def test_lse_gradient_of_packed_sequences():
    lengths, H, HK, D = [7, 20, 13], 4, 2, 16
    T = sum(lengths)
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(T, h, D, generator=g, dtype=torch.float64) for h in (H, HK, HK))
    cu = torch.tensor([0, 7, 27, 40], dtype=torch.int32)
    call = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=20, max_seqlen_k=20)
    w, u = torch.randn(T, H, D, generator=g, dtype=torch.float64), torch.randn(H, T, generator=g, dtype=torch.float64)
    src = f"attention w {{\n {SPECS['window_varlen']}\n}}"
    want = _grads(attngen.jit(src, backend="reference"), q, k, v, {}, w, u, **call)
    got = _grads(attngen.jit(src), q.float(), k.float(), v.float(), {}, w, u, **call)
    for a, b in zip(got, want):
        assert rel_err(a, b) < 1e-4, rel_err(a, b)


def test_merging_two_halves_by_lse_trains_like_one_call():
    """The Star/ring pattern: attention over two key halves merged by their lse equals one call over
    all keys, forward and backward."""
    g = torch.Generator().manual_seed(2)
    B, H, M, N, D = 1, 2, 16, 40, 16
    q, k, v = (torch.randn(B, H, n, D, generator=g) for n in (M, N, N))
    fn = attngen.jit("attention full { norm = softmax }")
    leaves = [t.clone().requires_grad_() for t in (q, k, v)]
    o1, l1 = fn(leaves[0], leaves[1][:, :, :25], leaves[2][:, :, :25], return_lse=True)
    o2, l2 = fn(leaves[0], leaves[1][:, :, 25:], leaves[2][:, :, 25:], return_lse=True)
    lse = torch.logaddexp(l1, l2)
    o = o1 * (l1 - lse).exp()[..., None] + o2 * (l2 - lse).exp()[..., None]
    merged = torch.autograd.grad(o.square().sum(), leaves)
    whole = [t.clone().requires_grad_() for t in (q, k, v)]
    direct = torch.autograd.grad(fn(*whole).square().sum(), whole)
    for a, b in zip(merged, direct):
        assert rel_err(a, b) < 1e-4


def test_a_loss_of_lse_alone():
    """o unused: its gradient is None, and the backward runs on lse's alone."""
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, 20, 16, generator=g, dtype=torch.float64) for _ in range(3))
    src = "attention c { mask = causal }"
    grads = []
    for fn, cast in ((attngen.jit(src, backend="reference"), lambda t: t), (attngen.jit(src), lambda t: t.float())):
        leaves = [cast(t).requires_grad_() for t in (q, k, v)]
        _, lse = fn(*leaves, return_lse=True)
        grads.append(torch.autograd.grad(lse.sum(), leaves, allow_unused=True))
    for a, b in zip(*grads):
        assert rel_err(a if a is not None else torch.zeros_like(b), b if b is not None else torch.zeros_like(a)) < 1e-4

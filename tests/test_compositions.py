"""Attentions combined in Python (language 1.1's examples): differential attention (two calls, one
subtracted) and a softmax over disjoint key sets merged by lse (Star attention's second phase, ring
attention), forward and backward on both backends, against one float64 computation."""

from __future__ import annotations

import pytest
import torch

import attngen

pytestmark = pytest.mark.interpret

F64 = torch.float64


def _qkv(B=1, H=2, HK=1, M=37, N=37, D=32, DV=24, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=F64) for s in ((B, H, M, D), (B, HK, N, D), (B, HK, N, DV))]


def _grads(out, leaves):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(9), dtype=F64)  # one draw for every dtype
    return torch.autograd.grad(out, leaves, g.to(out.dtype))


def _close(got, want):
    torch.testing.assert_close(got.to(F64), want, rtol=2e-4, atol=2e-5)


def test_differential_attention_trains_through_both_calls():
    consts = {"HALF": 16}
    path = "examples/differential.attn"
    x64 = [t.requires_grad_() for t in _qkv()]
    lam64 = torch.tensor(0.3, dtype=F64, requires_grad=True)
    x32 = [t.detach().float().requires_grad_() for t in x64]
    lam32 = lam64.detach().float().requires_grad_()
    outs = {}
    for backend, xs, lam in (("reference", x64, lam64), ("triton", x32, lam32)):
        first, second = (attngen.load(path, name=n, consts=consts, backend=backend)
                         for n in ("diff_first", "diff_second"))
        o = first(*xs, scale=16 ** -0.5) - lam * second(*xs, scale=16 ** -0.5)
        outs[backend] = (o, _grads(o, [*xs, lam]))
    (o_ref, g_ref), (o, g) = outs["reference"], outs["triton"]
    _close(o, o_ref)
    for a, b in zip(g, g_ref):
        _close(a, b)
    # the paper's map: (softmax(Q1 K1^T s) - lambda softmax(Q2 K2^T s)) V, written out
    q, k, v = (t.detach() for t in x64)
    causal = torch.ones(37, 37, dtype=torch.bool).tril()
    maps = [torch.softmax((q[..., h] @ k[..., h].transpose(-1, -2) / 4.0).masked_fill(~causal, -torch.inf), -1)
            for h in (slice(0, 16), slice(16, 32))]
    _close(o_ref.detach(), (maps[0] - 0.3 * maps[1]) @ v)


@pytest.mark.parametrize("backend", ["reference", "triton"])
def test_merging_key_shards_by_lse_equals_one_call(backend):
    """Star attention's phase 2 / ring attention: a call per shard of the keys, merged by lse, is one
    call over all keys, gradients included (lse is differentiable)."""
    fn = attngen.load("examples/full.attn", backend=backend)
    dtype = F64 if backend == "reference" else torch.float32
    q, k, v = (t.to(dtype).requires_grad_() for t in _qkv(M=5, N=45))
    parts = [fn(q, k[:, :, s], v[:, :, s], return_lse=True) for s in (slice(0, 20), slice(20, 32), slice(32, 45))]
    o, lse = attngen.merge_by_lse(parts)
    o_all, lse_all = fn(q, k, v, return_lse=True)
    _close(o, o_all.detach().to(F64))
    _close(lse, lse_all.detach().to(F64))
    loss = lambda o_, l_: (o_ * torch.linspace(-1, 1, o_.shape[-1], dtype=o_.dtype)).sum() + l_.sum()  # noqa: E731
    got = torch.autograd.grad(loss(o, lse), (q, k, v))
    want = torch.autograd.grad(loss(o_all, lse_all), (q, k, v))
    for a, b in zip(got, want):
        _close(a, b.to(F64))


def test_star_context_sees_its_block_and_the_anchor():
    """Phase 1: with BLOCK = 8, query 20 attends keys 0..7 (anchor) and 16..20 (its block)."""
    fn = attngen.load("examples/star_context.attn", consts={"BLOCK": 8}, backend="reference")
    q, k, v = (t.requires_grad_() for t in _qkv(M=24, N=24))
    o = fn(q, k, v, scale=0.5)
    i, j = torch.arange(24)[:, None], torch.arange(24)[None, :]
    allowed = (j <= i) & ((j // 8 == i // 8) | (j < 8))
    kk, vv = k.repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    want = torch.softmax((q @ kk.transpose(-1, -2) * 0.5).masked_fill(~allowed, -torch.inf), -1) @ vv
    _close(o.detach(), want.detach())
    assert allowed[20].nonzero().flatten().tolist() == [*range(8), *range(16, 21)]


def test_merge_keeps_empty_rows_at_zero_and_checks_shapes():
    o = torch.ones(1, 1, 2, 4)
    lse = torch.tensor([[[0.0, -torch.inf]]])
    merged, lse_m = attngen.merge_by_lse([(o, lse), (2 * o, torch.full_like(lse, -torch.inf))])
    assert merged[0, 0, 1].eq(0).all() and lse_m[0, 0, 1] == -torch.inf and merged[0, 0, 0].eq(1).all()
    with pytest.raises(ValueError, match="part 1 has o"):
        attngen.merge_by_lse([(o, lse), (o[..., :2], lse)])

"""Bad call-time input on both backends: a TypeError or ValueError that names the argument (and the
dim), never a raw exception from torch or Triton; empty batches and sequences give empty outputs of
the right shape, with gradients, like SDPA."""

from __future__ import annotations


import pytest
import torch

import attngen

pytestmark = pytest.mark.interpret

SRC = "attention t { input doc: i32[B, N]\n mask = causal and doc[b, i] == doc[b, j] }"
BACKENDS = ("reference", "triton")


def _call(B=1, H=2, HK=2, M=5, N=5, D=16, DV=16, device="cpu", grad=False):
    q, k, v = (torch.randn(B, H, M, D, device=device), torch.randn(B, HK, N, D, device=device),
               torch.randn(B, HK, N, DV, device=device))
    if grad:
        for t in (q, k, v):
            t.requires_grad_(True)
    return (q, k, v), {"doc": torch.zeros(B, N, dtype=torch.int32, device=device)}


@pytest.fixture(params=BACKENDS)
def fn(request):
    return attngen.jit(SRC, backend=request.param)


@pytest.mark.parametrize("dims, fragment", [
    (dict(HK=0, H=2), r"k: dim 1 \(HK\) must be at least 1"),
    (dict(H=0, HK=0), r"q: dim 1 \(H\) must be at least 1"),
    (dict(D=0), r"q: dim 3 \(D\) must be at least 1"),
    (dict(DV=0), r"v: dim 3 \(DV\) must be at least 1"),
])
def test_zero_heads_or_head_dims(fn, dims, fragment):
    args, xs = _call(**dims)
    with pytest.raises(ValueError, match=fragment):
        fn(*args, **xs)


@pytest.mark.parametrize("backend, fragment", [
    ("triton", r"slices rows of length D up to lane 24, but q's and k's last dim is D = 16"),
    ("reference", r"q\[8:24\]: the slice runs past its row's D=16 lanes"),
])
def test_a_slice_past_the_rows(backend, fragment):
    fn = attngen.jit("attention s { score = dot(q[8:24], k[8:24]) }", backend=backend)
    (q, k, v), _ = _call()
    with pytest.raises(ValueError, match=fragment):
        fn(q, k, v)


@pytest.mark.parametrize("kw, error, fragment", [
    (dict(scale="x"), TypeError, "scale must be a number"),
    (dict(scale=torch.ones(2)), TypeError, "scale must be a number"),
    (dict(scale=float("nan")), ValueError, "scale must be finite"),
    (dict(scale=float("inf")), ValueError, "scale must be finite"),
    (dict(scale=-float("inf")), ValueError, "scale must be finite"),
    (dict(return_lse="yes"), TypeError, "return_lse must be True or False"),
])
def test_bad_keywords(fn, kw, error, fragment):
    args, xs = _call()
    with pytest.raises(error, match=fragment):
        fn(*args, **xs, **kw)


def test_non_tensor_q(fn):
    (q, k, v), xs = _call()
    with pytest.raises(TypeError, match="q must be a torch.Tensor"):
        fn(q.tolist(), k, v, **xs)


def test_meta_tensors(fn):
    args, xs = _call(device="meta")
    with pytest.raises(ValueError, match="q is on (the )?meta"):
        fn(*args, **xs)


@pytest.mark.parametrize("dims", [dict(B=0), dict(M=0)], ids=["B=0", "M=0"])
def test_empty_batches_and_sequences(fn, dims):
    args, xs = _call(grad=True, **dims)
    o, lse = fn(*args, return_lse=True, **xs)
    shape = (*args[0].shape[:3], 16)
    assert o.shape == shape and lse.shape == shape[:3] and o.dtype == args[0].dtype
    o.sum().backward()
    for t in args:
        assert t.grad is not None and t.grad.shape == t.shape and not t.grad.any()


def test_no_keys(fn):
    """N = 0: every row has no allowed key, so o = 0 and lse = -inf; q gets a zero gradient."""
    args, xs = _call(N=0, grad=True)
    o, lse = fn(*args, return_lse=True, **xs)
    assert o.shape == (1, 2, 5, 16) and not o.any() and (lse == -float("inf")).all()
    o.sum().backward()
    assert args[0].grad is not None and not args[0].grad.any()

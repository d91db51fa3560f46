"""Helpers shared by the reference tests: float64 inputs, end-aligned positions, and a
forward-plus-gradient comparison against an independent formula."""

from __future__ import annotations

import torch

from attngen.reference import ReferenceAttention
from attngen.driver import compile_source

F64 = torch.float64


def ref(src, **consts):
    return ReferenceAttention(compile_source(src, consts=consts or None)[0])


def qkv(B=2, H=4, HK=2, M=67, N=67, D=40, DV=24, dtype=F64, seed=0, scale=1.0):
    """q [B, H, M, D], k [B, HK, N, D], v [B, HK, N, DV], random, requiring grad."""
    g = torch.Generator().manual_seed(seed)
    return [(torch.randn(*s, generator=g, dtype=dtype) * scale).requires_grad_()
            for s in ((B, H, M, D), (B, HK, N, D), (B, HK, N, DV))]


def leaf(*shape, seed=1, low=0.0, high=1.0):
    g = torch.Generator().manual_seed(seed)
    return (low + (high - low) * torch.rand(*shape, generator=g, dtype=F64)).requires_grad_()


def positions(M, N):
    """(i [M, 1], j [1, N]) with end-aligned query positions."""
    return torch.arange(M)[:, None] + N - M, torch.arange(N)[None, :]


def check(out, expect, leaves, **tol):
    """Forward equal, and gradients of a random projection equal for every leaf."""
    torch.testing.assert_close(out, expect, **tol)
    g = torch.randn_like(out)
    got = torch.autograd.grad(out, leaves, g, retain_graph=True)
    want = torch.autograd.grad(expect, leaves, g, retain_graph=True)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, **tol)

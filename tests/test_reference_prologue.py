"""Reference interpreter, q/k prologues and row inputs, against per-element formulas."""

import math

import pytest
import torch

from refutil import F64, check, leaf, positions, qkv, ref


def attend(q, k, v, allowed, scale=None, bias=0.0):
    """softmax(q k^T * scale + bias) v with GQA by repeat_interleave."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = (q @ k.transpose(-1, -2) * scale + bias).masked_fill(~allowed, float("-inf"))
    return torch.softmax(s, -1) @ v


def rope_loop(x, pos, base):
    """Rotate-half RoPE element by element: x [B, H, L, D], pos [L]."""
    D = x.shape[-1]
    out = torch.empty_like(x)
    for t in range(D // 2):
        theta = pos.to(F64) * base ** (-2 * t / D)
        c, s = torch.cos(theta), torch.sin(theta)
        out[..., t] = x[..., t] * c - x[..., t + D // 2] * s
        out[..., t + D // 2] = x[..., t + D // 2] * c + x[..., t] * s
    return out


@pytest.mark.parametrize("M, N", [(67, 67), (5, 67)])
def test_rope(M, N):
    src = "attention r { q = rope(q, i); k = rope(k, j, base=500.0); mask = causal }"
    q, k, v = qkv(M=M, N=N)
    i, j = positions(M, N)
    expect = attend(rope_loop(q, i[:, 0], 10000.0), rope_loop(k, j[0], 500.0), v, j <= i)
    check(ref(src)(q, k, v), expect, [q, k, v])


@pytest.mark.parametrize("score", [
    "(dot(q[0:24], k[0:24]) + dot(rope(q[24:40], i), rope(k[24:40], j))) * 0.2",  # slices
    "dot(concat(q[0:24], rope(q[24:40], i)), concat(k[0:24], rope(k[24:40], j))) * 0.2",  # one dot of joined rows
], ids=["slices", "concat"])
def test_mla_decoupled_rope(score):
    """1.1 slices and concat: MLA's score, the first 24 lanes as they are plus RoPE on the last 16
    (rotated within the slice, its length as D in theta), against the parts cut out in torch."""
    src = f"attention mla {{\n score = {score}\n mask = causal\n}}"
    q, k, v = qkv()
    i, j = positions(67, 67)
    qq = torch.cat([q[..., :24], rope_loop(q[..., 24:], i[:, 0], 10000.0)], -1)
    kk = torch.cat([k[..., :24], rope_loop(k[..., 24:], j[0], 10000.0)], -1)
    check(ref(src)(q, k, v), attend(qq, kk, v, j <= i, scale=0.2), [q, k, v])


def test_a_slice_past_the_row_is_an_error_at_call_time():
    q, k, v = qkv(M=3, N=3, D=32)
    with pytest.raises(ValueError, match=r"score stage, q\[24:40\]: the slice runs past its row's D=32 lanes"):
        ref("attention r { score = dot(q[24:40], k[24:40]) }")(q, k, v)


def test_rope_odd_length_is_an_error():
    q, k, v = qkv(M=3, N=3, D=7)
    msg = r"q stage, rope\(q, float\(i\), base=10000.0\): .* even row length, got D=7"
    with pytest.raises(ValueError, match=msg):
        ref("attention r { q = rope(q, i) }")(q, k, v)


def l2(x):
    return x / x.norm(dim=-1, keepdim=True).clamp_min(1e-6)


def rms(x, w):
    return x / torch.sqrt(x.square().mean(-1, keepdim=True) + 1e-6) * w


def test_rows_element_by_element():
    """1.1: comparisons, and/not and where on rows (elu + 1 on q; k clipped to a band, a scalar branch)."""
    src = """
    attention a {
        q = where(q > 0.0, q + 1.0, exp(q))
        k = where(k > -1.0 and not (k > 1.5), k, 0.25)
        score = dot(q, k) * 0.5
        mask = causal
    }"""
    q, k, v = qkv()
    i, j = positions(67, 67)
    kk = torch.where((k > -1.0) & (k <= 1.5), k, torch.full_like(k, 0.25))
    expect = attend(torch.nn.functional.elu(q) + 1.0, kk, v, j <= i, scale=0.5)
    check(ref(src)(q, k, v), expect, [q, k, v])


def test_l2norm_with_temperature():
    src = """
    attention qknorm {
        input temp: f32[H]
        q = l2norm(q)
        k = l2norm(k)
        score = dot(q, k) * temp[h]
        mask = causal
    }"""
    q, k, v = qkv()
    temp = leaf(4, low=5, high=10)
    i, j = positions(67, 67)
    kk, vv = l2(k).repeat_interleave(2, 1), v.repeat_interleave(2, 1)
    s = (l2(q) @ kk.transpose(-1, -2)) * temp[None, :, None, None]
    expect = torch.softmax(s.masked_fill(j > i, float("-inf")), -1) @ vv
    check(ref(src)(q, k, v, temp=temp), expect, [q, k, v, temp])


def test_rmsnorm_weights_and_rope():
    src = """
    attention rope_rmsnorm {
        input qw: f32[D]
        input kw: f32[D]
        q = rope(rmsnorm(q, qw), i, base=1000000.0)
        k = rope(rmsnorm(k, kw), j, base=1000000.0)
        mask = causal
    }"""
    q, k, v = qkv(M=5, N=67)
    qw, kw = leaf(40, low=0.5, high=1.5), leaf(40, seed=2, low=0.5, high=1.5)
    i, j = positions(5, 67)
    expect = attend(rope_loop(rms(q, qw), i[:, 0], 1e6), rope_loop(rms(k, kw), j[0], 1e6), v, j <= i)
    check(ref(src)(q, k, v, qw=qw, kw=kw), expect, [q, k, v, qw, kw])


def test_per_head_scaling_and_a_zero_row():
    # q * temp[h]: a row times a scalar; l2norm of an all-zero row stays finite
    src = """
    attention t {
        input temp: f32[H]
        q = l2norm(q * temp[h])
    }"""
    q, k, v = qkv(M=5, N=9)
    with torch.no_grad():
        q[0, 0, 0] = 0.0
    temp = leaf(4, low=0.5, high=1.5)
    expect = attend(l2(q * temp[None, :, None, None]), k, v, torch.ones(5, 9, dtype=torch.bool))
    check(ref(src)(q, k, v, temp=temp), expect, [q, k, v, temp])


def test_row_inputs_as_scores():
    # an indexer-style score from rows of extra inputs, and sqdist / norm
    src = """
    attention rows {
        input qi: f32[B, M, 16]
        input ki: f32[B, N, 16]
        score = dot(qi[b, m], ki[b, j]) - sqdist(q, k) * scale + norm(q)
        mask = causal
    }"""
    q, k, v = qkv(M=5, N=67)
    qi, ki = leaf(2, 5, 16, low=-1, high=1.5), leaf(2, 67, 16, seed=2, low=-1, high=1.5)
    i, j = positions(5, 67)
    kk = k.repeat_interleave(2, 1)
    sq = (q[:, :, :, None, :] - kk[:, :, None, :, :]).square().sum(-1)
    bias = (qi @ ki.transpose(-1, -2))[:, None] - sq / math.sqrt(40) + q.norm(dim=-1)[..., None]
    expect = attend(q, k, v, j <= i, scale=0.0, bias=bias)
    check(ref(src)(q, k, v, qi=qi, ki=ki), expect, [q, k, v, qi, ki])

"""Reference interpreter, expression semantics: every built-in function against torch written out."""

import math

import torch
import torch.nn.functional as F

from attngen.reference import ReferenceAttention
from attngen.driver import compile_source

from refutil import F64, check


def run(src, q, k, v, **inputs):
    return ReferenceAttention(compile_source(src)[0])(q, k, v, **inputs)


def qkv(B=1, H=2, HK=1, M=7, N=9, D=8, DV=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*s, generator=g, dtype=F64).requires_grad_()
            for s in ((B, H, M, D), (B, HK, N, D), (B, HK, N, DV))]


def none_norm(s, v):
    """norm = none: o = s @ v (v per query head)."""
    return s @ v.repeat_interleave(s.shape[1] // v.shape[1], 1)


def test_unary_functions():
    src = """
    attention fns {
        input x: f32[H]
        score = (exp2(x[h]) + log2(x[h] + 1.0) + sqrt(x[h]) + rsqrt(x[h]) + softplus(dot(q, k))
                 + sin(dot(q, k)) * cos(x[h]) + abs(dot(q, k)) + relu(dot(q, k) - 1.0) + tanh(x[h])
                 + sigmoid(dot(q, k)) - exp(-x[h]) * log(x[h]))
        norm = none
    }"""
    q, k, v = qkv()
    x = (torch.rand(2, dtype=F64) + 0.5).requires_grad_()
    d = q @ k.repeat_interleave(2, 1).transpose(-1, -2)
    xs = x[None, :, None, None]
    s = (torch.exp2(xs) + torch.log2(xs + 1) + xs.sqrt() + xs.rsqrt() + F.softplus(d) + d.sin() * xs.cos()
         + d.abs() + torch.relu(d - 1) + xs.tanh() + torch.sigmoid(d) - torch.exp(-xs) * torch.log(xs))
    check(run(src, q, k, v, x=x), none_norm(s, v), [q, k, v, x])


def test_min_max_clamp_where_pow_and_float_floordiv():
    src = """
    attention ops {
        score = (min(dot(q, k), 1.0) + max(dot(q, k), -1.0) * 0.5 + clamp(dot(q, k), -0.5, 0.5)
                 + where(j > i - 3, dot(q, k), 0.25) + abs(dot(q, k)) ** 1.5 + (i - j) ** 2 * 0.01
                 + (dot(q, k) // 0.7) + (dot(q, k) % 0.7) + floor(dot(q, k) * 2.0) * 0.1)
        norm = none
    }"""
    q, k, v = qkv()
    d = q @ k.repeat_interleave(2, 1).transpose(-1, -2)
    i = torch.arange(7)[:, None] + 2
    j = torch.arange(9)[None, :]
    s = (torch.minimum(d, torch.tensor(1.0, dtype=F64)) + torch.maximum(d, torch.tensor(-1.0, dtype=F64)) * 0.5
         + d.clamp(-0.5, 0.5) + torch.where(j > i - 3, d, 0.25) + d.abs() ** 1.5 + (i - j) ** 2 * 0.01
         + torch.div(d, 0.7, rounding_mode="floor") + torch.remainder(d, 0.7) + torch.floor(d * 2.0) * 0.1)
    check(run(src, q, k, v), none_norm(s, v), [q, k, v])


def test_integer_sizes_and_division_by_zero():
    # sizes are integers; integer // and % by zero give 0 instead of failing on masked pairs
    src = """
    attention ints {
        score = dot(q, k) * scale + (N - M + H * HK - D + DV - B) * 0.1 + ((i // (j - i)) + (i % (j - i))) * 0.01
        mask = j < i
    }"""
    q, k, v = qkv()
    i = torch.arange(7)[:, None] + 2
    j = torch.arange(9)[None, :]
    diff = torch.where(j == i, 1, j - i)
    ints = torch.where(j == i, 0, torch.div(i, diff, rounding_mode="floor") + torch.remainder(i, diff))
    s = q @ k.repeat_interleave(2, 1).transpose(-1, -2) / math.sqrt(8) + (9 - 7 + 2 - 8 + 5 - 1) * 0.1 \
        + ints * 0.01
    s = s.masked_fill(j >= i, float("-inf"))
    check(run(src, q, k, v), torch.softmax(s, -1) @ v.repeat_interleave(2, 1), [q, k, v])


def test_boolean_inputs_and_logic():
    src = """
    attention glob {
        input is_global: bool[B, N]
        mask = (i - j <= 2 and j - i <= 2) or is_global[b, j] or not (j != 0)
    }"""
    q, k, v = qkv(B=2, M=9)
    g = torch.zeros(2, 9, dtype=torch.bool)
    g[0, 4] = g[1, 8] = True
    i = torch.arange(9)[:, None]
    j = torch.arange(9)[None, :]
    allowed = ((i - j).abs() <= 2) | g[:, None, None, :] | (j == 0)
    s = (q @ k.repeat_interleave(2, 1).transpose(-1, -2) / math.sqrt(8)).masked_fill(~allowed, float("-inf"))
    check(run(src, q, k, v, is_global=g), torch.softmax(s, -1) @ v.repeat_interleave(2, 1), [q, k, v])


def test_sqdist_of_query_and_key_rows_is_the_squared_difference():
    """The pair form (|q|² + |k|² - 2 q·k, one matmul) equals the written-out difference."""
    q, k, v = qkv(M=6, N=11, D=16)
    o = run("attention s {\n score = -sqdist(q, k) * scale\n norm = none\n}", q, k, v)
    s = -(q[:, :, :, None, :] - k[:, :, None, :, :]).square().sum(-1) / math.sqrt(16)
    check(o, none_norm(s, v), [q, k, v])

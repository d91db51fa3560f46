"""Reference interpreter, non-softmax norms and sinks, against hand-written formulas."""

import math

import torch

from refutil import F64, check, leaf, positions, qkv, ref


def scores(q, k, v, scale=None):
    """Plain scaled q k^T [B, H, M, N] and v per query head."""
    g = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    return q @ k.transpose(-1, -2) * scale, v


def test_sigmoid_with_minus_log_n_bias():
    src = "attention sig { score = dot(q, k) * scale - log(N); mask = causal; norm = sigmoid }"
    q, k, v = qkv(M=5, N=67)
    i, j = positions(5, 67)
    s, vv = scores(q, k, v)
    w = torch.sigmoid(s - math.log(67)) * (j <= i)
    check(ref(src)(q, k, v), w @ vv, [q, k, v])


def test_relu_relu2_none():
    q, k, v = qkv(M=67, N=67)
    i, j = positions(67, 67)
    s, vv = scores(q, k, v)
    allowed = j <= i
    for norm, fn in (("relu", torch.relu), ("relu2", lambda x: torch.relu(x) ** 2), ("none", lambda x: x)):
        out = ref(f"attention r {{ mask = causal; norm = {norm} }}")(q, k, v)
        check(out, (fn(s) * allowed) @ vv, [q, k, v])


def test_relu2_with_seqlen_score():
    src = "attention relu2 { score = dot(q, k) / (i + 1); mask = causal; norm = relu2 }"
    q, k, v = qkv(M=5, N=67)
    i, j = positions(5, 67)
    s, vv = scores(q, k, v, scale=1.0)
    w = torch.relu(s / (i + 1)) ** 2 * (j <= i)
    check(ref(src)(q, k, v), w @ vv, [q, k, v])


def test_sum_norm_and_zero_row_sum():
    src = "attention lin { score = exp(dot(q, k) * scale); mask = causal; norm = sum }"
    q, k, v = qkv(M=67, N=67)
    i, j = positions(67, 67)
    s, vv = scores(q, k, v)
    e = torch.exp(s) * (j <= i)
    check(ref(src)(q, k, v), (e / e.sum(-1, keepdim=True)) @ vv, [q, k, v])
    zero = ref("attention z { score = 0.0 * dot(q, k); mask = causal; norm = sum }")(q, k, v)
    assert torch.equal(zero, torch.zeros_like(zero))
    zero.sum().backward()
    assert bool(torch.isfinite(q.grad).all())


def test_sink_softmax_with_gradients():
    src = "attention sink { input sinks: f32[H]; mask = causal; norm = softmax(sink = sinks[h]) }"
    q, k, v = qkv(M=5, N=67)
    sinks = leaf(4, low=-1, high=3)
    i, j = positions(5, 67)
    s, vv = scores(q, k, v)
    e = torch.exp(s) * (j <= i)
    denom = e.sum(-1) + torch.exp(sinks)[None, :, None]
    o, lse = ref(src)(q, k, v, sinks=sinks, return_lse=True)
    check(o, (e / denom[..., None]) @ vv, [q, k, v, sinks])
    check(lse, torch.log(denom), [q, k, sinks])


def test_off_by_one_sink_zero():
    src = "attention obo { mask = causal; norm = softmax(sink = 0.0) }"
    q, k, v = qkv(M=67, N=67)
    i, j = positions(67, 67)
    s, vv = scores(q, k, v)
    e = torch.exp(s) * (j <= i)
    o, lse = ref(src)(q, k, v, return_lse=True)
    check(o, (e / (1 + e.sum(-1, keepdim=True))) @ vv, [q, k, v])
    torch.testing.assert_close(lse, torch.log1p(e.sum(-1)))


def test_sink_on_empty_rows_and_large_scores():
    src = "attention sink { input sinks: f32[H]; mask = j < i - 100; norm = softmax(sink = sinks[h]) }"
    q, k, v = qkv(M=5, N=67, scale=1e3)
    sinks = leaf(4)
    o, lse = ref(src)(q, k, v, sinks=sinks, return_lse=True)
    assert torch.equal(o, torch.zeros_like(o))
    torch.testing.assert_close(lse, sinks[None, :, None].expand(2, 4, 5).detach())
    (o.sum() + lse.sum()).backward()
    torch.testing.assert_close(sinks.grad, torch.full((4,), 10.0, dtype=F64))  # d lse / d sink = 1 per row
    big = ref("attention s { mask = causal; norm = softmax(sink = 3.0) }")(q, k, v, return_lse=True)
    assert all(bool(torch.isfinite(t).all()) for t in big)


def naive_stickbreaking(s, allowed):
    """w[i, j] = sigmoid(s_ij) * prod over allowed j' > j of (1 - sigmoid(s_ij')), by loops."""
    B, H, M, N = s.shape
    rows = []
    for b in range(B):
        for h in range(H):
            for m in range(M):
                row = []
                for j in range(N):
                    w = torch.zeros((), dtype=s.dtype)
                    if allowed[b, h, m, j]:
                        w = torch.sigmoid(s[b, h, m, j])
                        for jj in range(j + 1, N):
                            if allowed[b, h, m, jj]:
                                w = w * (1 - torch.sigmoid(s[b, h, m, jj]))
                    row.append(w)
                rows.append(torch.stack(row))
    return torch.stack(rows).view(B, H, M, N)


def test_stickbreaking_naive_loop():
    src = "attention sb { mask = causal and (i - j) % 3 != 1; norm = stickbreaking }"
    q, k, v = qkv(B=1, H=2, HK=1, M=6, N=9, D=8, DV=5)
    i, j = positions(6, 9)
    s, vv = scores(q, k, v)
    allowed = ((j <= i) & ((i - j) % 3 != 1)).expand(1, 2, 6, 9)
    check(ref(src)(q, k, v), naive_stickbreaking(s, allowed) @ vv, [q, k, v])


def test_stickbreaking_large_scores_finite():
    src = "attention sb { mask = causal; norm = stickbreaking }"
    q, k, v = qkv(M=5, N=67, scale=1e3)
    o = ref(src)(q, k, v)
    o.square().sum().backward()
    assert bool(torch.isfinite(o).all()) and all(bool(torch.isfinite(t.grad).all()) for t in (q, k, v))
    q32, k32, v32 = (t.detach().float() for t in (q, k, v))
    assert bool(torch.isfinite(ref(src)(q32, k32, v32)).all())

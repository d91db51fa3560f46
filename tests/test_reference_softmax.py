"""Reference interpreter, softmax family, against hand-written torch formulas (forward and backward).

Shapes are deliberately awkward: GQA 4:2, M = N = 67, M != N, decode M = 1, D = 40, DV = 24.
"""

import math

import pytest
import torch
import torch.nn.functional as F

from attngen.reference import reference_attention
from attngen.driver import compile_source

from refutil import F64, check, leaf, positions, qkv, ref


def expand_kv(q, k, v):
    g = q.shape[1] // k.shape[1]
    return k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)


def naive_softmax(q, k, v, bias=None, allowed=None, scale=None, sink=None):
    """softmax(q k^T * scale + bias) v over allowed pairs; plain torch, no shortcuts."""
    k, v = expand_kv(q, k, v)
    scale = 1 / math.sqrt(q.shape[-1]) if scale is None else scale
    s = q @ k.transpose(-1, -2) * scale
    if bias is not None:
        s = s + bias
    if allowed is None:
        allowed = torch.ones(s.shape, dtype=torch.bool)
    s = s.masked_fill(~allowed, float("-inf"))
    if sink is not None:
        s = torch.cat([s, sink.expand(*s.shape[:-1], 1)], -1)
    p = torch.softmax(s, -1)
    lse = torch.logsumexp(s, -1)
    return p[..., :v.shape[2]] @ v, lse


def sdpa(q, k, v, allowed=None):
    k, v = expand_kv(q, k, v)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed)


@pytest.mark.parametrize("M, N", [(67, 67), (5, 67), (1, 67)])
def test_causal_and_full_match_sdpa(M, N):
    q, k, v = qkv(M=M, N=N)
    i, j = positions(M, N)
    check(ref("attention c { mask = causal }")(q, k, v), sdpa(q, k, v, j <= i), [q, k, v])
    check(ref("attention full {}")(q, k, v), sdpa(q, k, v), [q, k, v])


def test_mha_and_mqa():
    for H, HK in ((3, 3), (4, 1)):
        q, k, v = qkv(B=1, H=H, HK=HK, M=9, N=11)
        check(ref("attention full {}")(q, k, v), sdpa(q, k, v), [q, k, v])


def test_lse_and_explicit_scale():
    q, k, v = qkv(M=5, N=67)
    i, j = positions(5, 67)
    o, lse = ref("attention c { mask = causal }")(q, k, v, scale=0.3, return_lse=True)
    o2, lse2 = naive_softmax(q, k, v, allowed=j <= i, scale=0.3)
    torch.testing.assert_close(o, o2)
    torch.testing.assert_close(lse, lse2)
    assert lse.dtype == F64 and lse.shape == (2, 4, 5)


def test_alibi_window_with_slope_gradients():
    src = """
    attention alibi_window {
        input slopes: f32[H]
        const WINDOW = 16
        score = dot(q, k) * scale + slopes[h] * (j - i)
        mask = causal and i - j < WINDOW
    }"""
    q, k, v = qkv()
    slopes = leaf(4)
    i, j = positions(67, 67)
    bias = slopes[None, :, None, None] * (j - i)
    expect, _ = naive_softmax(q, k, v, bias, (j <= i) & (i - j < 16))
    check(ref(src)(q, k, v, slopes=slopes), expect, [q, k, v, slopes])


def test_softcap_and_float32():
    src = "attention softcap { const CAP = 5.0; score = CAP * tanh(dot(q, k) * scale / CAP); mask = causal }"
    q, k, v = qkv(M=5, N=67, scale=3.0)
    i, j = positions(5, 67)
    kk, vv = expand_kv(q, k, v)
    s = 5.0 * torch.tanh(q @ kk.transpose(-1, -2) / math.sqrt(40) / 5.0)
    p = torch.softmax(s.masked_fill(j > i, float("-inf")), -1)
    check(ref(src)(q, k, v), p @ vv, [q, k, v])
    q32, k32, v32 = (t.detach().float() for t in (q, k, v))
    o32 = ref(src)(q32, k32, v32)
    assert o32.dtype == torch.float32
    torch.testing.assert_close(o32, (p @ vv).float(), atol=1e-5, rtol=1e-4)


def test_t5_bucket_table_gradients():
    src = """
    attention t5 {
        const NB = 8
        const MAX_DIST = 32
        input rel: f32[H, NB]
        score = dot(q, k) * scale + rel[h, where(i - j < NB // 2, max(i - j, 0),
                    min(NB // 2 + floor(log(max(i - j, NB // 2) / (NB // 2)) / log(MAX_DIST / (NB // 2))
                                       * (NB - NB // 2)), NB - 1))]
        mask = causal
    }"""
    q, k, v = qkv()
    rel = leaf(4, 8, high=2.0)

    def bucket(n):
        if n < 4:
            return max(n, 0)
        return min(4 + int(math.log(n / 4) / math.log(32 / 4) * 4), 7)

    i, j = positions(67, 67)
    idx = torch.tensor([[bucket(a - b) for b in range(67)] for a in range(67)])
    bias = rel[:, idx][None]
    expect, _ = naive_softmax(q, k, v, bias, j <= i)
    check(ref(src)(q, k, v, rel=rel), expect, [q, k, v, rel])


def test_document_mask():
    src = """
    attention doc {
        input doc: i32[B, N]
        mask = causal and doc[b, i] == doc[b, j]
    }"""
    q, k, v = qkv()
    doc = torch.randint(0, 4, (2, 67), generator=torch.Generator().manual_seed(3)).sort(-1).values.int()
    i, j = positions(67, 67)
    allowed = (j <= i) & (doc[:, None, :, None] == doc[:, None, None, :])
    check(ref(src)(q, k, v, doc=doc), sdpa(q, k, v, allowed), [q, k, v])


def test_affine_weights_gradients():
    src = """
    attention affine {
        input alpha: f32[B, H, M]
        input beta: f32[B, H, M]
        mask = causal
        weights = alpha[b, h, m] * p + beta[b, h, m]
    }"""
    q, k, v = qkv(M=5, N=67)
    alpha, beta = leaf(2, 4, 5, seed=2), leaf(2, 4, 5, seed=3, low=-0.1, high=0.1)
    i, j = positions(5, 67)
    allowed = j <= i
    kk, vv = expand_kv(q, k, v)
    p = torch.softmax((q @ kk.transpose(-1, -2) / math.sqrt(40)).masked_fill(~allowed, float("-inf")), -1)
    w = (alpha[..., None] * p + beta[..., None]) * allowed
    check(ref(src)(q, k, v, alpha=alpha, beta=beta), w @ vv, [q, k, v, alpha, beta])


def test_gated_out_gradients():
    src = """
    attention gated {
        input gate: f32[B, H, M]
        input bias: f32[H, DV]
        mask = causal
        out = o * sigmoid(gate[b, h, m]) + bias[h]
    }"""
    q, k, v = qkv()
    gate, bias = leaf(2, 4, 67, low=-2, high=2), leaf(4, 24, seed=5)
    i, j = positions(67, 67)
    o, _ = naive_softmax(q, k, v, allowed=j <= i)
    expect = o * torch.sigmoid(gate)[..., None] + bias[None, :, None, :]
    check(ref(src)(q, k, v, gate=gate, bias=bias), expect, [q, k, v, gate, bias])


def test_scalar_input_as_float_and_as_tensor_with_gradient():
    src = "attention temp { input t: f32; score = dot(q, k) * t; mask = causal }"
    q, k, v = qkv(M=5, N=9)
    i, j = positions(5, 9)
    t = torch.tensor(0.3, dtype=F64, requires_grad=True)
    expect, _ = naive_softmax(q, k, v, allowed=j <= i, scale=t)
    check(ref(src)(q, k, v, t=t), expect, [q, k, v, t])
    torch.testing.assert_close(ref(src)(q, k, v, t=0.3), expect)


def test_rows_without_keys_give_zero_and_minus_inf():
    src = "attention none { mask = j < i - 100 }"
    q, k, v = qkv(M=5, N=67)
    o, lse = ref(src)(q, k, v, return_lse=True)
    assert torch.equal(o, torch.zeros_like(o)) and bool((lse == float("-inf")).all())
    (o.sum() + o.square().sum()).backward()
    assert all(bool(torch.isfinite(t.grad).all()) and not t.grad.any() for t in (q, k, v))


def test_partly_empty_rows_with_out_stage_and_lse_gradient():
    src = """
    attention gap {
        input bias: f32[H, DV]
        mask = j < i - 40
        out = o + bias[h]
    }"""
    q, k, v = qkv(M=67, N=67)
    bias = leaf(4, 24)
    o, lse = ref(src)(q, k, v, bias=bias, return_lse=True)
    i, j = positions(67, 67)
    allowed = j < i - 40
    empty = ~allowed.any(-1)  # rows 0..40
    o_naive, lse_naive = naive_softmax(q, k, v, allowed=allowed)
    torch.testing.assert_close(o[:, :, ~empty], (o_naive + bias[None, :, None, :])[:, :, ~empty])
    torch.testing.assert_close(o[:, :, empty], bias[None, :, None, :].expand_as(o)[:, :, empty])
    assert bool((lse[:, :, empty] == float("-inf")).all())
    torch.testing.assert_close(lse[:, :, ~empty], lse_naive[:, :, ~empty])
    (o.square().sum() + lse[:, :, ~empty].sum()).backward()
    assert all(bool(torch.isfinite(t.grad).all()) for t in (q, k, v, bias))


def test_nan_free_gradients_where_masked_pairs_are_singular():
    # log(i - j) is -inf or NaN on the masked pairs j >= i; they must not poison gradients
    src = """
    attention logdist {
        input r: f32[H]
        score = dot(q, k) * scale - r[h] * log(i - j)
        mask = j < i
    }"""
    q, k, v = qkv(M=8, N=9)  # i = m + 1: every row has a key
    r = leaf(4)
    i, j = positions(8, 9)
    dist = (i - j).clamp_min(1).to(F64)
    expect, _ = naive_softmax(q, k, v, -r[None, :, None, None] * torch.log(dist), j < i)
    out = ref(src)(q, k, v, r=r)
    check(out, expect, [q, k, v, r])
    out.sum().backward()
    assert bool(torch.isfinite(r.grad).all())


def test_large_scores_stay_finite():
    q, k, v = qkv(M=5, N=67, scale=1e3)
    i, j = positions(5, 67)
    o, lse = ref("attention c { mask = causal }")(q, k, v, return_lse=True)
    assert bool(torch.isfinite(o).all()) and bool(torch.isfinite(lse).all())
    check(o, sdpa(q, k, v, j <= i), [q, k, v])
    q32, k32, v32 = (t.detach().float() for t in (q, k, v))
    assert bool(torch.isfinite(ref("attention c { mask = causal }")(q32, k32, v32)).all())


def test_bf16_is_low_precision_reference():
    q, k, v = qkv(M=5, N=67)
    i, j = positions(5, 67)
    qb, kb, vb = (t.detach().bfloat16() for t in (q, k, v))
    o, lse = ref("attention c { mask = causal }")(qb, kb, vb, return_lse=True)
    assert o.dtype == torch.bfloat16 and lse.dtype == torch.float32
    torch.testing.assert_close(o.double(), sdpa(q, k, v, j <= i), atol=3e-2, rtol=3e-2)


def test_integer_floor_semantics_and_out_of_range_loads():
    # (j - i) // 3 and % 3 follow Python on negatives; tab[i - j] reads 0 outside [0, 8)
    src = """
    attention ints {
        input tab: f32[8]
        score = dot(q, k) * scale + ((j - i) // 3) * 0.5 + ((j - i) % 3) * 0.25 + tab[i - j] + (j - i) / 4
    }"""
    q, k, v = qkv(M=9, N=9)
    tab = leaf(8)
    i, j = positions(9, 9)
    d = i - j
    padded = torch.cat([tab, torch.zeros(1, dtype=F64)])
    bias = torch.div(j - i, 3, rounding_mode="floor") * 0.5 + torch.remainder(j - i, 3) * 0.25 \
        + padded[torch.where((d >= 0) & (d < 8), d, 8)] + (j - i) / 4
    expect, _ = naive_softmax(q, k, v, bias)
    check(ref(src)(q, k, v, tab=tab), expect, [q, k, v, tab])


def test_reference_attention_function_and_load_backend():
    import attngen
    q, k, v = qkv(M=5, N=7)
    a = compile_source("attention full {}")[0]
    fn = attngen.jit("attention full {}", backend="reference")
    assert fn.name == "full" and fn.attention == a
    torch.testing.assert_close(reference_attention(a, q, k, v), fn(q, k, v))
    with pytest.raises(ValueError, match="softmax"):
        reference_attention(compile_source("attention s { norm = relu }")[0], q, k, v, return_lse=True)

"""Call-time validation (attngen.signature.bind): every error names the tensor and the dim."""

import math

import pytest
import torch

from attngen.signature import Bound, bind
from attngen.driver import compile_source

ALIBI = """
attention alibi {
    input slopes: f32[H]
    input rel: f32[H, 32]
    input doc: i32[B, N]
    input t: f32
    score = dot(q, k) * scale + slopes[h] * (j - i) + rel[h, clamp(i - j, 0, 31)] * t
    mask = causal and doc[b, i] == doc[b, j]
}
"""


def spec(src=ALIBI):
    return compile_source(src)[0]


def qkv(B=2, H=4, HK=2, M=5, N=7, D=8, DV=6, dtype=torch.float32):
    return (torch.randn(B, H, M, D, dtype=dtype), torch.randn(B, HK, N, D, dtype=dtype),
            torch.randn(B, HK, N, DV, dtype=dtype))


def good_inputs(B=2, H=4, N=7):
    return {"slopes": torch.rand(H), "rel": torch.rand(H, 32), "doc": torch.zeros(B, N, dtype=torch.int32),
            "t": 0.5}


def test_bind_returns_sizes_scale_and_inputs():
    q, k, v = qkv()
    bd = bind(spec(), q, k, v, {**good_inputs(), "t": 2})
    assert isinstance(bd, Bound)
    assert bd.sizes == {"B": 2, "H": 4, "HK": 2, "M": 5, "N": 7, "D": 8, "DV": 6}
    assert bd.scale == pytest.approx(1 / math.sqrt(8))
    assert bd.inputs["t"] == 2.0 and isinstance(bd.inputs["t"], float)
    assert bd.q is q and bd.k is k and bd.v is v
    assert bind(spec(), q, k, v, good_inputs(), scale=0.25).scale == 0.25


def test_scalar_input_as_zero_dim_tensor_is_kept():
    q, k, v = qkv()
    t = torch.tensor(0.5, requires_grad=True)
    assert bind(spec(), q, k, v, {**good_inputs(), "t": t}).inputs["t"] is t
    with pytest.raises(ValueError, match="t: a scalar input"):
        bind(spec(), q, k, v, {**good_inputs(), "t": torch.ones(2)})
    with pytest.raises(TypeError, match="t: expected a Python float"):
        bind(spec(), q, k, v, {**good_inputs(), "t": "0.5"})


def test_missing_input_shows_declaration():
    q, k, v = qkv()
    ins = good_inputs()
    del ins["slopes"]
    with pytest.raises(TypeError, match=r"missing keyword input 'slopes' \(declared f32\[H\]\)"):
        bind(spec(), q, k, v, ins)


def test_unexpected_input_suggests_nearest():
    q, k, v = qkv()
    with pytest.raises(TypeError, match="unexpected keyword input 'slope'; did you mean 'slopes'"):
        bind(spec(), q, k, v, {**good_inputs(), "slope": torch.rand(4)})
    with pytest.raises(TypeError, match="declares no inputs"):
        bind(spec("attention full {}"), q, k, v, {"x": 1.0})


def test_wrong_input_dtype():
    q, k, v = qkv()
    msg = r"slopes: expected dtype torch.float32 \(declared f32\[H\]\), got torch.float16"
    with pytest.raises(TypeError, match=msg):
        bind(spec(), q, k, v, {**good_inputs(), "slopes": torch.rand(4).half()})
    with pytest.raises(TypeError, match="doc: expected dtype torch.int32"):
        bind(spec(), q, k, v, {**good_inputs(), "doc": torch.zeros(2, 7, dtype=torch.int64)})
    with pytest.raises(TypeError, match="slopes: expected a torch.Tensor"):
        bind(spec(), q, k, v, {**good_inputs(), "slopes": [1.0] * 4})


def test_float64_inputs_only_when_allowed():
    q, k, v = qkv(dtype=torch.float64)
    with pytest.raises(TypeError, match="q has dtype torch.float64"):
        bind(spec(), q, k, v, good_inputs())
    ins = {**good_inputs(), "slopes": torch.rand(4, dtype=torch.float64)}
    assert bind(spec(), q, k, v, ins, allow_float64=True).q.dtype == torch.float64
    with pytest.raises(TypeError, match="doc: expected dtype torch.int32"):
        bind(spec(), q, k, v, {**ins, "doc": torch.zeros(2, 7, dtype=torch.float64)}, allow_float64=True)


def test_wrong_input_shape_names_tensor_and_dim():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="slopes: dim 0 must be H=4, got 8"):
        bind(spec(), q, k, v, {**good_inputs(), "slopes": torch.rand(8)})
    with pytest.raises(ValueError, match="rel: dim 1 must be 32, got 16"):
        bind(spec(), q, k, v, {**good_inputs(), "rel": torch.rand(4, 16)})
    with pytest.raises(ValueError, match="doc: dim 1 must be N=7, got 5"):
        bind(spec(), q, k, v, {**good_inputs(), "doc": torch.zeros(2, 5, dtype=torch.int32)})
    with pytest.raises(ValueError, match=r"slopes: expected 1 dim\(s\) \[H\]"):
        bind(spec(), q, k, v, {**good_inputs(), "slopes": torch.rand(4, 1)})


def test_qkv_types_dims_and_dtypes():
    q, k, v = qkv()
    a = spec("attention full {}")
    with pytest.raises(TypeError, match=r"k must be a torch.Tensor \[B, HK, N, D\], got list"):
        bind(a, q, [1], v, {})
    with pytest.raises(ValueError, match=r"v must have 4 dims \[B, HK, N, DV\], got shape \(2, 7, 6\)"):
        bind(a, q, k, v[0], {})
    with pytest.raises(TypeError, match="q has dtype torch.int64"):
        bind(a, q.long(), k, v, {})
    with pytest.raises(TypeError, match="share a dtype: q is torch.float32, v is torch.float16"):
        bind(a, q, k, v.half(), {})


@pytest.mark.parametrize("which, shape, msg", [
    ("k", (3, 2, 7, 8), r"k: dim 0 must be B=2 \(from q\), got 3"),
    ("k", (2, 2, 7, 9), r"k: dim 3 must be D=8 \(from q\), got 9"),
    ("v", (2, 2, 6, 6), r"v: dim 2 must be N=7 \(from k\), got 6"),
    ("v", (2, 1, 7, 6), r"v: dim 1 must be HK=2 \(from k\), got 1"),
    ("v", (1, 2, 7, 6), r"v: dim 0 must be B=2 \(from q\), got 1"),
])
def test_qkv_shape_mismatch(which, shape, msg):
    q, k, v = qkv()
    t = {"k": k, "v": v}
    t[which] = torch.randn(shape)
    with pytest.raises(ValueError, match=msg):
        bind(spec("attention full {}"), q, t["k"], t["v"], {})


def test_heads_must_divide_and_sizes_positive():
    """H must be a multiple of HK; H, HK, D and DV at least 1 (B, M and N may be 0: empty calls)."""
    a = spec("attention full {}")
    q, k, v = qkv(H=4, HK=3)
    with pytest.raises(ValueError, match="H=4 .* multiple of .* HK=3"):
        bind(a, q, k, v, {})
    for dims, msg in ((dict(D=0), r"q: dim 3 \(D\) must be at least 1"),
                      (dict(DV=0), r"v: dim 3 \(DV\) must be at least 1")):
        q, k, v = qkv(**dims)
        with pytest.raises(ValueError, match=msg):
            bind(a, q, k, v, {})
    for dims in (dict(M=0), dict(N=0), dict(B=0)):
        bd = bind(a, *qkv(**dims), {})
        assert all(bd.sizes[d] == 0 for d in dims)


def test_scale_type():
    q, k, v = qkv()
    a = spec("attention full {}")
    assert bind(a, q, k, v, {}, scale=torch.tensor(0.5)).scale == 0.5
    with pytest.raises(TypeError, match="scale must be a number"):
        bind(a, q, k, v, {}, scale="big")


def test_return_lse_needs_softmax():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="return_lse=True needs a softmax norm.*sigmoid"):
        bind(spec("attention s { norm = sigmoid }"), q, k, v, {}, return_lse=True)
    bind(spec("attention s { norm = softmax(sink = 0.0) }"), q, k, v, {}, return_lse=True)


def test_vector_length_integer_vs_size_name():
    src = """
    attention idx {
        input qi: f32[B, M, 64]
        score = dot(qi[b, m], q)
    }
    """
    q, k, v = qkv(D=40)
    with pytest.raises(ValueError, match=r"qi\[b, m\] has length 64 but q has length D=40"):
        bind(spec(src), q, k, v, {"qi": torch.rand(2, 5, 64)})
    q, k, v = qkv(D=64)
    bind(spec(src), q, k, v, {"qi": torch.rand(2, 5, 64)})


def test_prologue_row_length_checked():
    src = """
    attention p {
        input w: f32[4, 16]
        q = w[h]
    }
    """
    q, k, v = qkv(D=8)
    with pytest.raises(ValueError, match="q stage.*length 16 but the row the q stage must give has length D=8"):
        bind(spec(src), q, k, v, {"w": torch.rand(4, 16)})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a second device")
def test_device_mismatch():
    q, k, v = qkv()
    with pytest.raises(ValueError, match="one device"):
        bind(spec("attention full {}"), q, k.cuda(), v, {})
    ins = {**good_inputs(), "slopes": torch.rand(4).cuda()}
    with pytest.raises(ValueError, match="slopes is on cuda"):
        bind(spec(), q, k, v, ins)

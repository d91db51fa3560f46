"""The Triton backend's runtime: call-time validation, strides and decode shapes (the disk cache:
test_cache.py)."""

from __future__ import annotations


import pytest
import torch

import attngen

SPEC = """
attention win {
    input slopes: f32[H]
    score = dot(q, k) * scale + slopes[h] * (j - i)
    mask = window(9)
}"""

interp = pytest.mark.interpret


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path))
    return tmp_path


def qkv(B=1, H=4, HK=2, M=20, N=20, D=16, DV=16):
    return torch.randn(B, H, M, D), torch.randn(B, HK, N, D), torch.randn(B, HK, N, DV)


@interp
def test_validation_names_tensor_and_dim(cache_dir):
    fn = attngen.jit(SPEC)
    q, k, v = qkv()
    with pytest.raises(TypeError, match="missing keyword input 'slopes'"):
        fn(q, k, v)
    with pytest.raises(ValueError, match="slopes: dim 0 must be H=4, got 3"):
        fn(q, k, v, slopes=torch.rand(3))
    with pytest.raises(TypeError, match=r"slopes: expected dtype torch.float32 \(declared f32\[H\]\), got torch.float64"):
        fn(q, k, v, slopes=torch.rand(4, dtype=torch.float64))
    with pytest.raises(TypeError, match="unexpected keyword input 'slope'; did you mean 'slopes'"):
        fn(q, k, v, slopes=torch.rand(4), slope=1)
    with pytest.raises(ValueError, match=r"v: dim 2 must be N=20 \(from k\), got 21"):
        fn(q, k, torch.randn(1, 2, 21, 16), slopes=torch.rand(4))
    with pytest.raises(ValueError, match="multiple of the key/value heads"):
        fn(torch.randn(1, 3, 20, 16), k, v, slopes=torch.rand(3))
    with pytest.raises(TypeError, match="share a dtype"):
        fn(q.half(), k, v, slopes=torch.rand(4))
    with pytest.raises(ValueError, match="return_lse"):
        attngen.jit("attention s { norm = sigmoid }")(q, k, v, return_lse=True)


@interp
def test_cpu_without_interpreter_names_the_reference_backend(cache_dir, monkeypatch):
    fn = attngen.jit(SPEC)
    fn.module  # imported under the interpreter, as later tests in this process will reuse it
    q, k, v = qkv()
    monkeypatch.delenv("TRITON_INTERPRET")
    with pytest.raises(ValueError, match="backend='reference'"):
        fn(q, k, v, slopes=torch.rand(4))


@interp
@pytest.mark.parametrize("M,N", [(1, 37), (37, 37), (3, 1)])
def test_any_strides_and_decode(cache_dir, M, N):
    """q, k, v as views of [B, rows, heads, D] tensors (the layout most models keep)."""
    fn, ref = attngen.jit(SPEC), attngen.jit(SPEC, backend="reference")
    q = torch.randn(2, M, 4, 24).transpose(1, 2)
    k = torch.randn(2, N, 2, 24).transpose(1, 2)
    v = torch.randn(2, N, 2, 40)[..., ::2].transpose(1, 2)
    slopes = torch.rand(4)
    o, lse = fn(q, k, v, slopes=slopes, return_lse=True)
    o_ref, lse_ref = ref(q, k, v, slopes=slopes, return_lse=True)
    torch.testing.assert_close(o, o_ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, lse_ref.float(), atol=1e-5, rtol=1e-5)

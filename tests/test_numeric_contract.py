"""The numeric contract on both backends (README, "Numbers"): NaN or inf in q, or in an allowed
key's k or v, reaches exactly the rows that read it; a masked-out key never affects any row, whatever
its values; a row with no allowed key gives o = 0 and lse = -inf; large finite scores do not overflow.

Every kernel path is exercised: dense tiles (full and partial), split-KV decoding (M <= 16), the
block-sparse forward (moba) and the listed token top-k forward (dsa_indexer)."""

from __future__ import annotations


import pytest
import torch

import attngen
from attngen.reference.interpreter import selected_pairs
from attngen.driver import compile_file, compile_source

from example_specs import EXAMPLES

# the CPU (the interpreter, small shapes) and, with -m gpu, a CUDA GPU (keys past one tile, so full
# tiles too): the GPU's max ignores NaN where the interpreter's propagates it
DEVICES = [pytest.param("cpu", marks=pytest.mark.interpret),
           pytest.param("cuda", marks=[pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(),
                                                                           reason="needs a CUDA GPU")])]
KEYS = {"cpu": 37, "cuda": 300}

NAN, INF = float("nan"), float("inf")
DOC = "attention t { input doc: i32[B, N]\n mask = causal and doc[b, i] == doc[b, j] }"
SPECS = {
    "doc_softmax": DOC,
    "window_sigmoid": "attention t { mask = window(9)\n norm = sigmoid }",
    "stickbreaking": "attention t { mask = causal\n norm = stickbreaking }",
    "doc_sum": "attention t { input doc: i32[B, N]\n score = exp(dot(q, k) * scale)\n"
               " mask = doc[b, i] == doc[b, j]\n norm = sum }",
}
BACKENDS = ("reference", "triton")


def _qkv(M, N, H=2, HK=2, D=16, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, H, M, D, generator=g).to(device), torch.randn(1, HK, N, D, generator=g).to(device),
            torch.randn(1, HK, N, D, generator=g).to(device))


def _doc(N, device="cpu"):
    """Two documents: keys 0..19 and 20..N-1."""
    doc = torch.zeros(1, N, dtype=torch.int32)
    doc[:, 20:] = 1
    return doc.to(device)


def _inputs(a, N, device):
    return {"doc": _doc(N, device)} if any(d.name == "doc" for d in a.inputs) else {}


def _bad_rows(o):
    """bool [B, H, M]: rows of o with a value that is not finite."""
    return ~torch.isfinite(o).all(-1)


def _readers(a, q, k, v, xs, j0):
    """bool [B, H, M]: the rows whose allowed (and selected) keys include key j0."""
    return selected_pairs(a, q.double(), k.double(), v.double(), **xs)[..., j0]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("value", [NAN, INF])
@pytest.mark.parametrize("M", [37, 5], ids=["tiles", "split"])
@pytest.mark.parametrize("spec", sorted(SPECS))
def test_a_bad_value_reaches_exactly_the_rows_that_read_it(spec, M, value, backend, device):
    """A non-finite value in key j0's v: the rows reading j0 become non-finite, every other row
    keeps exactly its value (no 0 * NaN through the weighted sum, in any tile)."""
    a = compile_source(SPECS[spec])[0]
    fn = attngen.jit(SPECS[spec], backend=backend)
    N = KEYS[device]
    q, k, v = _qkv(M, N, device=device)
    xs = _inputs(a, N, device)
    clean = fn(q, k, v, **xs)
    for j0 in (5, 33):  # a key of each document; with M = 5 most rows cannot see key 5
        bad = v.clone()
        bad[:, :, j0, 3] = value  # every KV head: readers are counted over all query heads
        o = fn(q, k, bad, **xs)
        readers = _readers(a, q, k, bad, xs, j0)
        assert torch.equal(_bad_rows(o), readers), (j0, _bad_rows(o), readers)
        torch.testing.assert_close(o[~readers], clean[~readers], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_nan_in_q_and_k(backend, device):
    a = compile_source(DOC)[0]
    fn = attngen.jit(DOC, backend=backend)
    N = KEYS[device]
    q, k, v = _qkv(37, N, device=device)
    xs = {"doc": _doc(N, device)}
    clean, clean_lse = fn(q, k, v, return_lse=True, **xs)
    q2 = q.clone()
    q2[0, 1, 7, 2] = NAN
    o, lse = fn(q2, k, v, return_lse=True, **xs)
    row = torch.zeros_like(lse, dtype=torch.bool)
    row[0, 1, 7] = True
    assert torch.equal(_bad_rows(o), row) and torch.isnan(lse[0, 1, 7])
    torch.testing.assert_close(o[~row], clean[~row], rtol=0, atol=0)
    torch.testing.assert_close(lse[~row], clean_lse[~row], rtol=0, atol=0)
    for j0, value in ((N - 7, NAN), (N - 7, INF), (2, INF)):
        k2 = k.clone()
        k2[0, :, j0, :] = value  # every component: the score of every reader is +-inf or NaN
        o, lse = fn(q, k2, v, return_lse=True, **xs)
        readers = _readers(a, q, k2, v, xs, j0)
        assert torch.equal(_bad_rows(o), readers)
        assert torch.equal(~torch.isfinite(lse), readers)
        torch.testing.assert_close(o[~readers], clean[~readers], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name", ["moba", "dsa_indexer"])
def test_selection_kernels_keep_bad_values_to_their_readers(name, backend, device):
    """The block-sparse (moba) and listed (dsa_indexer) forwards: a row that did not choose key j0
    never sees its NaN."""
    path = next(p for p in EXAMPLES if p.stem == name)
    consts = {"BLOCK": 16, "TOPK": 2} if name == "moba" else {"TOPK": 8}
    a = compile_file(path, consts)[0]
    fn = attngen.load(path, consts=consts, backend=backend)
    q, k, v = _qkv(67, 67, H=4, HK=2, device=device)
    g = torch.Generator().manual_seed(1)
    xs = {d.name: torch.randn([{"B": 1, "M": 67, "N": 67}.get(x, x) for x in d.dims], generator=g)
          .to(device, getattr(torch, {"bf16": "bfloat16", "f32": "float32", "f16": "float16"}[d.dtype]))
          for d in a.inputs}
    clean = fn(q, k, v, **xs)
    bad = v.clone()
    bad[:, :, 40, :] = NAN
    o = fn(q, k, bad, **xs)
    readers = _readers(a, q, k, bad, xs, 40)
    assert readers.any() and not readers.all()
    assert torch.equal(_bad_rows(o), readers)
    torch.testing.assert_close(o[~readers], clean[~readers], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_with_no_key(backend, device):
    """No allowed key (a window ending before the row's first key, or N = 0): o = 0, lse = -inf."""
    fn = attngen.jit("attention t { mask = j > i }", backend=backend)
    q, k, v = _qkv(6, 6, device=device)
    o, lse = fn(q, k, v, return_lse=True)
    assert torch.equal(o[:, :, 5], torch.zeros_like(o[:, :, 5])) and (lse[:, :, 5] == -INF).all()
    o, lse = fn(q, k[:, :, :0], v[:, :, :0], return_lse=True)
    assert o.shape == (1, 2, 6, 16) and not o.any() and (lse == -INF).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("backend", BACKENDS)
def test_large_scores_do_not_overflow(backend, device):
    """fp16 scores of 1e5: the kernels and the fp16 reference both compute them in float32."""
    fn = attngen.jit("attention t { mask = causal }", backend=backend)
    ref = attngen.jit("attention t { mask = causal }", backend="reference")
    q, k, v = (t.half() for t in _qkv(17, 17, device=device))
    o = fn(q, k, v, scale=1e4)
    want = ref(q.double(), k.double(), v.double(), scale=1e4)
    assert torch.isfinite(o).all()
    torch.testing.assert_close(o.double(), want, rtol=2e-2, atol=2e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_row_side_loads_past_the_keys(device):
    """doc[b, i] with M > N: i = m + N - M is negative for the first rows, which read 0, as in the
    reference (the kernels used to load before the tensor's start)."""
    src = "attention t { input doc: i32[B, N]\n mask = doc[b, i] == doc[b, j] }"
    q, k, v = _qkv(40, 5, device=device)
    doc = torch.tensor([[0, 0, 1, 1, 1]], dtype=torch.int32, device=device)
    o = attngen.jit(src)(q, k, v, doc=doc)
    torch.testing.assert_close(o, attngen.jit(src, backend="reference")(q, k, v, doc=doc))

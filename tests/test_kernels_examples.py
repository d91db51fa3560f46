"""Every dense and token top-k example through the generated Triton kernels (TRITON_INTERPRET=1 on
CPU), forward and every gradient, against the float64 reference on awkward shapes."""

from __future__ import annotations


import pytest
import torch

from attngen.driver import compile_file
from attngen.verify import assert_close, compare

from example_specs import DENSE, DENSE_IDS, EXAMPLES, shrunk

pytestmark = pytest.mark.interpret

# consts shrunk so windows, chunks, strides and top-k selections matter at 67 keys
SMALL = {"W": 20, "WINDOW": 20, "CHUNK": 16, "STRIDE": 8, "SINKS": 4, "TRAIN_LEN": 16, "LOCAL": 12, "TOPK": 7,
         "NOPE": 16, "ROPE": 16, "HALF": 16, "BLOCK": 16}  # slices inside the test rows (D = 32 and 40)


@pytest.mark.parametrize("path,name", DENSE, ids=DENSE_IDS)
def test_example_square(path, name):
    a = shrunk(path, name, SMALL)
    assert_close(compare(a, M=67, N=67, D=40, DV=24))


@pytest.mark.parametrize("path,name", DENSE, ids=DENSE_IDS)
def test_example_decode_shapes(path, name):
    a = shrunk(path, name, SMALL)
    assert_close(compare(a, B=1, H=2, HK=1, M=5, N=67, D=32, DV=32, seed=1))


@pytest.mark.parametrize("stem,consts", [("causal_gqa", {}), ("alibi", {}), ("dsa_indexer", {"TOPK": 7}),
                                         ("moba", {"BLOCK": 16, "TOPK": 2})])
def test_example_bf16(stem, consts):
    """bf16 through the interpreter: its tl.dot of bf16 tiles is wrong (triton 3.9), so the CPU's kernels take
    float32 operands. Dense, token top-k (listed) and block-sparse (moba) kernels alike."""
    path = EXAMPLES[0].parent / f"{stem}.attn"
    a = compile_file(path, consts)[0]
    assert_close(compare(a, M=67, N=67, D=40, DV=24, dtype=torch.bfloat16), factor=4.0, floor=1e-3)

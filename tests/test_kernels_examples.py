"""Every dense and token top-k example through the generated Triton kernels (TRITON_INTERPRET=1 on
CPU), forward and every gradient, against the float64 reference on awkward shapes."""

from __future__ import annotations

import os

import pytest

from attngen.verify import assert_close, compare

from example_specs import DENSE, DENSE_IDS, shrunk

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="CPU kernel tests need TRITON_INTERPRET=1")

# consts shrunk so windows, chunks, strides and top-k selections matter at 67 keys
SMALL = {"W": 20, "WINDOW": 20, "CHUNK": 16, "STRIDE": 8, "SINKS": 4, "TRAIN_LEN": 16, "LOCAL": 12, "TOPK": 7}


@pytest.mark.parametrize("path,name", DENSE, ids=DENSE_IDS)
def test_example_square(path, name):
    a = shrunk(path, name, SMALL)
    assert_close(compare(a, M=67, N=67, D=40, DV=24))


@pytest.mark.parametrize("path,name", DENSE, ids=DENSE_IDS)
def test_example_decode_shapes(path, name):
    a = shrunk(path, name, SMALL)
    assert_close(compare(a, B=1, H=2, HK=1, M=5, N=67, D=32, DV=32, seed=1))

"""Every dense example through the generated Triton kernels (TRITON_INTERPRET=1 on CPU),
forward and every gradient, against the float64 reference on awkward shapes."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from attngen.spec import compile_file

from attngen.verify import assert_close, compare

EXAMPLES = sorted(Path(__file__).resolve().parent.parent.joinpath("examples").glob("*.attn"))
DENSE = [(p, a.name) for p in EXAMPLES for a in compile_file(p) if a.select is None]

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="CPU kernel tests need TRITON_INTERPRET=1")

# consts shrunk so windows, chunks and strides matter at 67 keys
SMALL = {"W": 20, "WINDOW": 20, "CHUNK": 16, "STRIDE": 8, "SINKS": 4, "TRAIN_LEN": 16, "LOCAL": 12}


def _consts(path):
    a = compile_file(path)[0]
    return {k: v for k, v in SMALL.items() if k in dict(a.consts)}


@pytest.mark.parametrize("path,name", DENSE, ids=[f"{p.stem}:{n}" for p, n in DENSE])
def test_example_square(path, name):
    a = compile_file(path, consts=_consts(path), name=name)[0]
    assert_close(compare(a, M=67, N=67, D=40, DV=24))


@pytest.mark.parametrize("path,name", DENSE, ids=[f"{p.stem}:{n}" for p, n in DENSE])
def test_example_decode_shapes(path, name):
    a = compile_file(path, consts=_consts(path), name=name)[0]
    assert_close(compare(a, B=1, H=2, HK=1, M=5, N=67, D=32, DV=32, seed=1))

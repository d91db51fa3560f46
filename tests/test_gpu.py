"""GPU suite (``pytest -m gpu`` on a CUDA machine): every dense example at real shapes,
forward and every gradient, against the float64 reference."""

from __future__ import annotations

import pytest
import torch

from attngen.verify import assert_close, compare

from example_specs import DENSE, DENSE_IDS, EXAMPLES, shrunk

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SMALL = {"WINDOW": 256, "W": 256, "CHUNK": 128}


@pytest.mark.parametrize("path,name", DENSE, ids=DENSE_IDS)
def test_example_bf16_d128(path, name):
    a = shrunk(path, name, SMALL)
    assert_close(compare(a, B=1, H=4, HK=2, M=1024, N=1024, D=128, DV=128, dtype=torch.bfloat16, device="cuda"),
                 factor=4.0, floor=1e-3)


@pytest.mark.parametrize("path,name", DENSE, ids=DENSE_IDS)
def test_example_fp16_d64_decode(path, name):
    a = shrunk(path, name, SMALL)
    assert_close(compare(a, B=2, H=4, HK=1, M=67, N=1000, D=64, DV=64, dtype=torch.float16, device="cuda", seed=1),
                 factor=4.0, floor=1e-3)


@pytest.mark.parametrize("stem", ["causal_gqa", "alibi_window", "softcap", "sink_softmax", "stickbreaking",
                                  "document_mask", "qknorm_rope"])
def test_long_4096(stem):
    path = EXAMPLES[0].parent / f"{stem}.attn"
    a = shrunk(path, None, SMALL)
    assert_close(compare(a, B=1, H=2, HK=1, M=4096, N=4096, D=128, DV=128, dtype=torch.bfloat16, device="cuda"),
                 factor=4.0, floor=1e-3)

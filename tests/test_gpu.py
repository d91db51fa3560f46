"""GPU suite (``pytest -m gpu`` on a CUDA machine): every dense example at real shapes, forward
and every gradient, against the float64 reference; kernel error within 4x the low-precision
reference's own error (floor 1e-3)."""

from __future__ import annotations

import pytest
import torch

from attngen.verify import assert_close, compare

from example_specs import DENSE, DENSE_IDS, EXAMPLES, shrunk

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

SMALL = {"WINDOW": 256, "W": 256, "CHUNK": 128}

# (dtype, D, M, N, B, H, HK): the grid, plus decode-like and M != N shapes
SHAPES = {
    "bf16-d128-1k": (torch.bfloat16, 128, 1024, 1024, 1, 4, 2),
    "fp16-d64-1k": (torch.float16, 64, 1024, 1024, 1, 4, 2),
    "bf16-d128-4k": (torch.bfloat16, 128, 4096, 4096, 1, 2, 1),
    "fp16-d64-4k": (torch.float16, 64, 4096, 4096, 1, 2, 2),
    "fp16-d64-decode": (torch.float16, 64, 67, 1000, 2, 4, 1),
}


def _run(path, name, dtype, D, M, N, B, H, HK, DV=None, seed=0):
    a = shrunk(path, name, SMALL)
    errs = compare(a, B=B, H=H, HK=HK, M=M, N=N, D=D, DV=DV or D, dtype=dtype, device="cuda", seed=seed)
    assert_close(errs, factor=4.0, floor=1e-3)


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("path,name", DENSE, ids=DENSE_IDS)
def test_example(path, name, shape):
    _run(path, name, *SHAPES[shape])


@pytest.mark.parametrize("D,DV", [(16, 16), (40, 24), (96, 96), (200, 136), (256, 256)])
@pytest.mark.parametrize("stem", ["causal_gqa", "alibi_window", "qknorm_rope", "stickbreaking"])
def test_head_dims(stem, D, DV):
    _run(EXAMPLES[0].parent / f"{stem}.attn", None, torch.bfloat16, D, 300, 517, 2, 4, 2, DV=DV, seed=2)


@pytest.mark.parametrize("stem", ["causal_gqa", "softcap", "sink_softmax", "gated_output"])
def test_fp32(stem):
    _run(EXAMPLES[0].parent / f"{stem}.attn", stem, torch.float32, 64, 333, 333, 2, 4, 2)

"""GPU suite (``pytest -m gpu`` on a CUDA machine): every dense example at real shapes,
forward and every gradient, against the float64 reference."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from attngen.spec import compile_file
from attngen.verify import assert_close, compare

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")]

EXAMPLES = sorted(Path(__file__).resolve().parent.parent.joinpath("examples").glob("*.attn"))
DENSE = [(p, a.name) for p in EXAMPLES for a in compile_file(p) if a.select is None]
SMALL = {"WINDOW": 256, "W": 256, "CHUNK": 128}


def _consts(path):
    a = compile_file(path)[0]
    return {k: v for k, v in SMALL.items() if k in dict(a.consts)}


@pytest.mark.parametrize("path,name", DENSE, ids=[f"{p.stem}:{n}" for p, n in DENSE])
def test_example_bf16_d128(path, name):
    a = compile_file(path, consts=_consts(path), name=name)[0]
    assert_close(compare(a, B=1, H=4, HK=2, M=1024, N=1024, D=128, DV=128, dtype=torch.bfloat16, device="cuda"),
                 factor=4.0, floor=1e-3)


@pytest.mark.parametrize("path,name", DENSE, ids=[f"{p.stem}:{n}" for p, n in DENSE])
def test_example_fp16_d64_decode(path, name):
    a = compile_file(path, consts=_consts(path), name=name)[0]
    assert_close(compare(a, B=2, H=4, HK=1, M=67, N=1000, D=64, DV=64, dtype=torch.float16, device="cuda", seed=1),
                 factor=4.0, floor=1e-3)


@pytest.mark.parametrize("stem", ["causal_gqa", "alibi_window", "softcap", "sink_softmax", "stickbreaking",
                                  "document_mask", "qknorm_rope"])
def test_long_4096(stem):
    path = EXAMPLES[0].parent / f"{stem}.attn"
    a = compile_file(path, consts=_consts(path))[0]
    assert_close(compare(a, B=1, H=2, HK=1, M=4096, N=4096, D=128, DV=128, dtype=torch.bfloat16, device="cuda"),
                 factor=4.0, floor=1e-3)

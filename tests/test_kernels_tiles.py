"""Tile skipping through the generated kernels (TRITON_INTERPRET=1): masks whose tiles are empty,
full and partial at the CPU block size (32), with query and key counts that are not multiples of
it, forward and backward against the float64 reference; and prepared tile lists."""

from __future__ import annotations


import pytest
import torch

import attngen
from attngen.passes.mask_tiles import band
from attngen.passes.pipeline import run_pipeline
from attngen.driver import compile_source
from attngen.verify import assert_close, compare

pytestmark = pytest.mark.interpret

SPECS = {
    "window": "mask = causal and i - j < 40",
    "chunked": "mask = i // 48 == j // 48",
    "sinks_window": "mask = causal and (i - j < 33 or j < 5)",
    "dilated": "mask = causal and (i - j) % 3 == 0",
    "prefix": "input pl: i32[B]\n mask = j <= i or j < pl[b] * 20",
    "document": "input doc: i32[B, N]\n mask = causal and doc[b, i] == doc[b, j]",
    "flags_per_head": "input g: bool[H, N]\n mask = g[h, j] or (i - j < 20 and j <= i)",
    "sigmoid_window": "score = dot(q, k) * scale - 2.0\n mask = causal and i - j < 70\n norm = sigmoid",
    "stick_window": "mask = causal and i - j < 50\n norm = stickbreaking",
    "stick_document": "input doc: i32[B, N]\n mask = causal and doc[b, i] == doc[b, j]\n norm = stickbreaking",
    "weights_window": "input a: f32[B, H, M]\n mask = i - j < 45 and j <= i\n weights = a[b, h, m] * p",
    "alibi_chunk": "input slopes: f32[H]\n score = dot(q, k) * scale + slopes[h] * (j - i)\n"
                   " mask = j // 40 <= i // 40",
    # bands (constant bounds on i - j): tile ranges in closed form, keys ahead of the row included
    "band_ahead": "mask = j - i <= 37 and i - j <= 21",
    "anti_causal": "mask = j >= i",
    "strict_past": "mask = i - j >= 3\n norm = sigmoid",
}
#: the bands the kernels get their ranges for in closed form (None: unbounded on that side)
BANDS = {"window": (0, 39), "band_ahead": (-37, 21), "anti_causal": (None, 0), "strict_past": (3, None),
         "stick_window": (0, 49), "weights_window": (0, 44), "chunked": None, "sinks_window": None}
SHAPES = {"square": dict(M=150, N=150), "short": dict(M=41, N=150)}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(SPECS))
def test_tiles(name, shape):
    a = compile_source(f"attention {name} {{\n {SPECS[name]}\n}}", f"{name}.attn")[0]
    assert run_pipeline(a).tiles is not None
    assert_close(compare(a, B=1, H=2, HK=1, D=16, DV=16, **SHAPES[shape]))


@pytest.mark.parametrize("name", sorted(BANDS))
def test_band_detection(name):
    a = run_pipeline(compile_source(f"attention {name} {{\n {SPECS[name]}\n}}", f"{name}.attn")[0])
    assert band(a.mask) == BANDS[name]


def _doc_inputs(M=96, N=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    q, k, v = (torch.randn(2, 2, n, 16, generator=g) for n in (M, N, N))
    doc = torch.sort(torch.randint(0, 5, (2, N), generator=g), dim=-1).values.int()
    return q, k, v, doc


def test_prepared_lists_match_a_fresh_call():
    fn = attngen.jit(f"attention d {{ {SPECS['document'].split(chr(10))[0]}\n mask = causal and doc[b, i] == doc[b, j] }}")
    q, k, v, doc = _doc_inputs()
    handle = attngen.prepare(fn, q, k, doc=doc)
    assert handle is not None
    torch.testing.assert_close(fn(q, k, v, doc=doc, prepared=handle), fn(q, k, v, doc=doc))
    q2 = torch.randn_like(q)
    torch.testing.assert_close(fn(q2, k, v, doc=doc, prepared=handle), fn(q2, k, v, doc=doc))


def test_prepared_lists_check_shapes():
    fn = attngen.jit("attention d { input doc: i32[B, N]\n mask = doc[b, i] == doc[b, j] }")
    q, k, v, doc = _doc_inputs()
    handle = attngen.prepare(fn, q, k, doc=doc)
    with pytest.raises(ValueError, match="prepared tiles are for d with M=96"):
        fn(q[:, :, :50], k, v, doc=doc, prepared=handle)


def test_affine_masks_need_no_preparation():
    fn = attngen.jit("attention w { mask = causal and i - j < 64 }")
    q, k, v, _ = _doc_inputs()
    assert attngen.prepare(fn, q, k) is None

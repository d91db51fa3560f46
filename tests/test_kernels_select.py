"""Block top-k selection through the generated kernels (TRITON_INTERPRET=1): the blocks chosen agree
exactly with the reference (index sets, not just outputs: short last blocks, rows with fewer than K
allowed blocks, keep=, share=group, ties), and outputs and gradients match it."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

import attngen
from attngen.reference.interpreter import selected_pairs
from attngen.driver import compile_file, compile_source
from attngen.verify import assert_close, compare

from example_specs import EXAMPLES

pytestmark = pytest.mark.interpret

SHRINK = {"BLOCK": 16, "TOPK": 2}
BLOCK_EXAMPLES = [p for p in EXAMPLES for a in compile_file(p) if a.select is not None and a.select.block]
SHAPES = {"square": dict(M=67, N=67), "short": dict(M=5, N=67), "long": dict(M=40, N=150)}


def _qkv(B, H, HK, M, N, D=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, H, M, D, generator=g), torch.randn(B, HK, N, D, generator=g),
            torch.randn(B, HK, N, D, generator=g))


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("path", BLOCK_EXAMPLES, ids=[p.stem for p in BLOCK_EXAMPLES])
def test_block_selection_matches_the_reference(path, shape):
    a = compile_file(path, SHRINK)[0]
    fn = attngen.load(path, consts=SHRINK)
    q, k, v = _qkv(2, 4, 2, **SHAPES[shape])
    sel = getattr(fn.module, f"{a.name}_selected")(q, k)
    want = selected_pairs(a, q.double(), k.double(), v.double())
    N, H = k.shape[2], q.shape[1]
    mine = sel.repeat_interleave(a.select.block, dim=-1)[..., :N].repeat_interleave(H // sel.shape[1], dim=1)
    assert torch.equal(mine & _mask_pairs(a, q, k, v), want)
    assert_close(compare(a, B=2, H=4, HK=2, D=16, DV=16, **SHAPES[shape]))


MASKS = {  # which blocks hold an allowed key: in closed form (no mask, bands) or key by key (not_a_band);
    # blocks of 16 keys take the block-sparse backward too, blocks of 8 (or 12) the dense one
    "no_mask": "select = topk(2, by = dot(q, kmean), block = 8)",
    "window": "mask = window(20)\n select = topk(2, by = dot(q, kmean), block = 16)",
    "keys_ahead": "mask = j - i <= 5\n select = topk(2, by = dot(q, kmean), block = 16, keep = jb == 0)",
    "not_a_band": "mask = causal or j < 4\n select = topk(3, by = dot(q, kmean) - 0.1 * jb, block = 16)",
    # a block that is not a whole number of key tiles (the block-sparse forward's tiles end inside it)
    "odd_block": "mask = causal\n select = topk(2, by = dot(q, kmean), block = 12)",
    # the block-sparse backward with its own dq kernel: blocks of two key tiles, or a score that is not
    # scale * dot(q, k) (blocks of 16 with a plain scaled dot have dq written by the dk/dv kernel)
    "block_48": "mask = causal\n select = topk(2, by = dot(q, kmean), block = 48)",
    "biased_score": "mask = causal\n score = dot(q, k) * scale - 0.05 * (i - j)\n"
                    " select = topk(2, by = dot(q, kmean), block = 16)",
}


@pytest.mark.parametrize("shape", sorted(SHAPES))
@pytest.mark.parametrize("name", sorted(MASKS))
def test_block_selection_under_each_kind_of_mask(name, shape):
    src = f"attention t {{\n {MASKS[name]}\n}}"
    a = compile_source(src)[0]
    fn = attngen.jit(src)
    q, k, v = _qkv(2, 2, 1, **SHAPES[shape])
    sel = fn.module.t_selected(q, k)
    want = selected_pairs(a, q.double(), k.double(), v.double())
    mine = sel.repeat_interleave(a.select.block, dim=-1)[..., :k.shape[2]]
    assert torch.equal(mine & _mask_pairs(a, q, k, v), want)
    assert_close(compare(a, B=2, H=2, HK=1, D=16, DV=16, **SHAPES[shape]))


def _mask_pairs(a, q, k, v):
    """Pairs the mask alone allows [B, H, M, N] (the reference with the selection taken off)."""
    return selected_pairs(replace(a, select=None), q.double(), k.double(), v.double())


def test_ties_go_to_the_smaller_block():
    src = "attention t { mask = causal\n select = topk(2, by = dot(q, kmean), block = 8) }"
    a = compile_source(src)[0]
    fn = attngen.jit(src)
    q, k, v = _qkv(1, 2, 2, 40, 40)
    # five identical blocks of small integers: their means are exact, so every by ties bit for bit
    # (means of random floats may differ in the last bit with the summation order)
    k = torch.randint(-4, 5, (1, 2, 8, 16), generator=torch.Generator().manual_seed(1)).float().repeat(1, 1, 5, 1)
    sel = fn.module.t_selected(q, k)
    want = selected_pairs(a, q.double(), k.double(), v.double())[..., ::8]
    assert torch.equal(sel, want)


@pytest.mark.parametrize("by, most", [("dot(q, kmean)", 1024), ("dot(q, kmean) * 2.0", 256)])
def test_too_many_blocks_is_a_clear_error(by, most):
    """dot(q, kmean) runs over slices of D, so more blocks fit than for any other by."""
    fn = attngen.jit(f"attention t {{ select = topk(2, by = {by}, block = 1) }}")
    q, k, v = _qkv(1, 1, 1, 3, most + 1)
    with pytest.raises(ValueError, match=f"up to {most} blocks per row, this call has {most + 1}"):
        fn(q, k, v)


@pytest.mark.parametrize("extra, block, sparse, backward, dq_kernel", [
    ("", 16, True, True, False),  # dq in the dk/dv kernel: its key tile is the whole block
    ("", 128, True, True, True),
    ("score = dot(q, k) * scale + 0.5 * i", 16, True, True, True),  # dq is not ds @ k times a factor
    ("", 8, True, False, False),  # the backward's key tiles must lie inside one block
    ("input t: f32[H]\n score = dot(q, k) * scale * t[h]", 16, True, False, False),  # t's gradient: the dense backward
    ("weights = p * 0.5", 16, False, False, False),  # a weights stage needs the final lse: the dense forward
    ("norm = sigmoid", 16, False, False, False),
])
def test_which_specs_take_the_block_sparse_kernels(extra, block, sparse, backward, dq_kernel):
    fn = attngen.jit(f"attention t {{\n mask = causal\n select = topk(2, by = dot(q, kmean), block = {block})\n {extra}\n}}")
    assert hasattr(fn.module, "t_attend") == sparse
    assert hasattr(fn.module, "t_attend_dkdv") == backward
    assert hasattr(fn.module, "t_attend_dq") == dq_kernel
    doc = " ".join(fn.module.__doc__.split())
    assert ("block-sparse forward: the attend kernel" in doc) == sparse
    assert ("the backward too: dq per chosen block" in doc) == backward
    assert ("written by the dk/dv kernel" in doc) == (backward and not dq_kernel)


def test_rows_in_a_block_selections_mask_are_refused_with_a_caret():
    """The select kernel evaluates the mask over [BLOCK_M, NBP] tiles, one key a block at a time: a row
    there has no layout, so check refuses it (it compiled to a NameError before)."""
    from attngen.frontend.errors import AttnError

    with pytest.raises(AttnError, match="block selection, the mask may not use rows") as err:
        attngen.jit("attention t {\n input x: f32[B, M, D]\n input y: f32[B, N, D]\n"
                    " mask = causal and dot(x[b, m], y[b, j]) < 9.0\n"
                    " select = topk(2, by = dot(q, kmean), block = 16)\n}")
    assert "4:" in str(err.value) and "^" in err.value.format()

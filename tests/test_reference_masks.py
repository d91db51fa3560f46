"""mask_grid: the static [M, N] picture of a mask stage, for b = 0, h = 0."""

import pytest
import torch

from attngen.reference import mask_grid
from attngen.driver import compile_source


def spec(src):
    return compile_source(src)[0]


def test_causal_end_aligned_and_default():
    grid = mask_grid(spec("attention c { mask = causal }"), 4, 6)
    i = torch.arange(4)[:, None] + 2
    assert grid.dtype == torch.bool and torch.equal(grid, torch.arange(6)[None, :] <= i)
    assert bool(mask_grid(spec("attention f {}"), 3, 5).all())


def test_window_and_sinks_ignore_select():
    src = "attention s { mask = causal and (i - j < 3 or j < 2); select = topk(1) }"
    grid = mask_grid(spec(src), 8, 8)
    i, j = torch.arange(8)[:, None], torch.arange(8)[None, :]
    assert torch.equal(grid, (j <= i) & ((i - j < 3) | (j < 2)))


def test_data_dependent_mask_is_an_error():
    with pytest.raises(ValueError, match="depends on the data"):
        mask_grid(spec("attention d { mask = score > 0.0 }"), 4, 4)
    with pytest.raises(ValueError, match="depends on the data"):
        mask_grid(spec("attention d { mask = dot(q, k) > 0.0 }"), 4, 4)


def test_given_document_ids_and_inferred_batch():
    src = "attention doc { input doc: i32[B, N]; mask = causal and doc[b, i] == doc[b, j] }"
    doc = torch.tensor([[0, 0, 1, 1, 1, 2], [5, 5, 5, 5, 5, 5]], dtype=torch.int32)
    grid = mask_grid(spec(src), 6, 6, {"doc": doc})
    i, j = torch.arange(6)[:, None], torch.arange(6)[None, :]
    assert torch.equal(grid, (j <= i) & (doc[0][:, None] == doc[0][None, :]))
    with pytest.raises(ValueError, match="doc: dim 1 must be N=8, got 6"):
        mask_grid(spec(src), 8, 8, {"doc": doc})


def test_sampled_inputs_are_seeded_and_document_like():
    src = "attention doc { input doc: i64[B, N]; mask = doc[b, i] == doc[b, j] }"
    a = spec(src)
    g0, g1 = mask_grid(a, 32, 32, seed=0), mask_grid(a, 32, 32, seed=0)
    assert torch.equal(g0, g1)
    assert torch.equal(g0, g0.T) and bool(g0.diagonal().all())
    # sorted ids: every row's allowed keys form one contiguous run
    for row in g0:
        idx = row.nonzero().flatten()
        assert int(idx[-1] - idx[0]) + 1 == len(idx)
    assert not bool(g0.all())


def test_sampled_bool_and_float_inputs():
    src = """
    attention g {
        input is_global: bool[B, N]
        input t: f32
        input w: f32[H]
        mask = causal and (is_global[b, j] or i - j < 2 or w[h] > 100.0 or t > 100.0)
    }"""
    grid = mask_grid(spec(src), 64, 64, seed=3)
    i, j = torch.arange(64)[:, None], torch.arange(64)[None, :]
    assert not bool((grid & ~(j <= i)).any())
    assert bool(grid[(i - j < 2) & (j <= i)].all())
    assert int(grid[i - j >= 2].sum()) > 0  # some global columns

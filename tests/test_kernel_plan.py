"""The kernel plan (codegen/kernel_plan.py): which kernels run a spec, and the reason for each choice."""

from __future__ import annotations

import pytest

from attngen.codegen.kernel_plan import choose
from attngen.codegen.plan import make_plan
from attngen.driver import compile_source, optimize


def _plan(body: str):
    return choose(make_plan(optimize(compile_source(f"attention t {{\n{body}\n}}")[0])))


def test_causal_softmax_splits_and_packs():
    kp = _plan("mask = causal")
    assert kp.tiles == "static" and kp.band == (0, None)
    assert kp.split and kp.pack and kp.kernels == ["fwd", "bwd_pre", "bwd_dq", "bwd_dkdv"]  # split: fwd with SPLIT


@pytest.mark.parametrize("body,why", [
    ("mask = causal\n norm = stickbreaking", "stick-breaking visits keys in order"),
    ("input doc: i32[B, N]\n mask = doc[b, i] == doc[b, j]", "per-call tile lists"),
    ("mask = causal\n weights = p * 2.0", "do not merge by row statistics"),
])
def test_no_split_kv_says_why(body, why):
    kp = _plan(body)
    assert not kp.split and why in kp.split.why


def test_per_head_tile_bounds_do_not_pack():
    kp = _plan("input w: i32[H]\n mask = i - j < w[h]")
    assert kp.split and not kp.pack and "one program per head" in kp.pack.why


def test_block_selection_goes_block_sparse_both_ways():
    kp = _plan("mask = causal\n select = topk(4, by = dot(q, kmean), block = 64)")
    assert kp.gather and kp.gather_bwd and kp.dq_factor == "scale"
    assert kp.kernels[-6:] == ["kmean", "select", "place", "attend", "merge", "attend_dkdv"]


def test_block_selection_with_weights_stays_dense_and_says_why():
    kp = _plan("mask = causal\n select = topk(4, by = dot(q, kmean), block = 64)\n weights = p * 2.0")
    assert not kp.gather and "weights" in kp.gather.why and "attend" not in kp.kernels


def test_block_of_8_keys_keeps_the_dense_backward():
    kp = _plan("mask = causal\n select = topk(4, by = dot(q, kmean), block = 8)")
    assert kp.gather and not kp.gather_bwd and "multiple of 16" in kp.gather_bwd.why


def test_token_selection_lists_unless_keep():
    assert _plan("mask = causal\n select = topk(8, by = score)").listed
    kp = _plan("mask = causal\n select = topk(8, by = score, keep = i == j)")
    assert not kp.listed and "keep=" in kp.listed.why and kp.kernels[-1] == "topk"


def test_the_header_lines_give_the_reasons():
    plan = make_plan(optimize(compile_source("attention t {\n mask = causal\n norm = stickbreaking\n}")[0]))
    text = " ".join(line.strip() for line in choose(plan).notes(plan))
    assert "decoding: no split-KV (stick-breaking visits keys in order)" in text

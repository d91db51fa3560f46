"""Paged KV caches through the generated forward kernel (TRITON_INTERPRET=1): each sequence's keys
scattered over shuffled pages, against the reference on that sequence's contiguous keys; and the
host-side validation of the block table."""

from __future__ import annotations


import pytest
import torch

import attngen
from attngen.driver import compile_source
from attngen.verify import assert_close

from seqcases import paged_case, paged_errors

pytestmark = pytest.mark.interpret

SPECS = {
    "causal": "mask = causal",
    "alibi_window": "input slopes: f32[H]\n score = dot(q, k) * scale + slopes[h] * (j - i)\n mask = causal and i - j < 30",
    "sink": "input sinks: f32[H]\n mask = causal\n norm = softmax(sink = sinks[h])",
    "document": "input doc: i32[B, N]\n mask = causal and doc[b, i] == doc[b, j]",
    "sigmoid": "score = dot(q, k) * scale - 3.0\n norm = sigmoid",
    "pair_vectors": "score = -sum(abs(q - k)) * scale\n mask = causal",
    # a one-pass forward (codegen/linear.py) that keeps nothing (no gradients), and a table dot (tables.py)
    "nap": "mask = causal\n norm = none\n weights = (score - rowmean(score)) / sqrt(rowmean(score * score) - "
           "rowmean(score) ** 2 + 1e-6)",
    "table": "input e: f32[16, D]\n score = dot(q, k) * scale + dot(q, e[min(i - j, 15)])\n mask = causal",
}
PAGE, PAGES_PER_SEQ, LENGTHS = 16, 12, [150, 1, 192, 33]  # M <= 16 splits the keys


@pytest.mark.parametrize("M", [1, 5, 40])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_paged_matches_contiguous_keys(name, M):
    a = compile_source(f"attention {name} {{\n {SPECS[name]}\n}}", f"{name}.attn")[0]
    assert_close(paged_errors(a, *paged_case(a, M, LENGTHS, PAGE, PAGES_PER_SEQ)))


def test_paged_is_forward_only_and_checks_its_table():
    fn = attngen.jit("attention c { mask = causal }")
    a = compile_source("attention c { mask = causal }")[0]
    q, k, v, k_cache, v_cache, table, lengths, _ = paged_case(a, 3, LENGTHS, PAGE, PAGES_PER_SEQ)
    with pytest.raises(ValueError, match="forward-only"):
        fn(q.requires_grad_(), k_cache, v_cache, block_table=table, seqlens_k=lengths)
    q = q.detach()
    bad = table.clone()
    bad[2, 1] = 999
    with pytest.raises(ValueError, match=r"block_table\[2\] refers to page 999"):
        fn(q, k_cache, v_cache, block_table=bad, seqlens_k=lengths)
    with pytest.raises(ValueError, match="seqlens_k\\[0\\] = 193"):
        fn(q, k_cache, v_cache, block_table=table, seqlens_k=torch.tensor([193, 1, 2, 3], dtype=torch.int32))
    with pytest.raises(TypeError, match="block_table must be a 2-d int32"):
        fn(q, k_cache, v_cache, block_table=table.long(), seqlens_k=lengths)
    with pytest.raises(TypeError, match="needs block_table and seqlens_k"):
        fn(q, k_cache, v_cache, block_table=table)


def test_unvalidated_bad_table_stays_in_bounds():
    """validate=False skips the value checks (decoding loops); pages and lengths are clamped in the
    kernel, so a bad table gives some rows, never an out-of-bounds read, and a good one is unchanged."""
    fn = attngen.jit("attention c { mask = causal }")
    a = compile_source("attention c { mask = causal }")[0]
    q, _, _, k_cache, v_cache, table, lengths, _ = paged_case(a, 3, LENGTHS, PAGE, PAGES_PER_SEQ)
    good = fn(q, k_cache, v_cache, block_table=table, seqlens_k=lengths)
    torch.testing.assert_close(fn(q, k_cache, v_cache, block_table=table, seqlens_k=lengths, validate=False), good)
    bad = table.clone()
    bad[2, 1], bad[0, 0] = 10 ** 6, -5
    o = fn(q, k_cache, v_cache, block_table=bad, seqlens_k=torch.tensor([10 ** 6, 1, 192, -3], dtype=torch.int32),
           validate=False)
    assert o.shape == good.shape and torch.isfinite(o).all()
    torch.testing.assert_close(o[1], good[1])


def test_reference_backend_reads_the_same_pages():
    a = compile_source(f"attention alibi_window {{\n {SPECS['alibi_window']}\n}}")[0]
    q, k, v, k_cache, v_cache, table, lengths, xs = paged_case(a, 5, LENGTHS, PAGE, PAGES_PER_SEQ)
    ref = attngen.jit(f"attention alibi_window {{\n {SPECS['alibi_window']}\n}}", backend="reference")
    paged = ref(q.double(), k_cache.double(), v_cache.double(), block_table=table, seqlens_k=lengths,
                slopes=xs["slopes"].double())
    for b, n in enumerate(LENGTHS):
        dense = ref(q[b:b + 1].double(), k[b:b + 1, :, :n].double(), v[b:b + 1, :, :n].double(),
                    slopes=xs["slopes"].double())
        torch.testing.assert_close(paged[b:b + 1], dense)

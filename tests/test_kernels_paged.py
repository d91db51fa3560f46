"""Paged KV caches through the generated forward kernel (TRITON_INTERPRET=1): each sequence's keys
scattered over shuffled pages, against the reference on that sequence's contiguous keys; and the
host-side validation of the block table."""

from __future__ import annotations

import os

import pytest
import torch

import attngen
from attngen.reference import ReferenceAttention
from attngen.runtime.jit import TritonAttention
from attngen.spec import compile_source
from attngen.verify import make_inputs, rel_err

pytestmark = pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                reason="CPU kernel tests need TRITON_INTERPRET=1")

SPECS = {
    "causal": "mask = causal",
    "alibi_window": "input slopes: f32[H]\n score = dot(q, k) * scale + slopes[h] * (j - i)\n mask = causal and i - j < 30",
    "sink": "input sinks: f32[H]\n mask = causal\n norm = softmax(sink = sinks[h])",
    "document": "input doc: i32[B, N]\n mask = causal and doc[b, i] == doc[b, j]",
    "sigmoid": "score = dot(q, k) * scale - 3.0\n norm = sigmoid",
}
PAGE, PAGES_PER_SEQ, LENGTHS = 16, 12, [150, 1, 192, 33]  # M <= 16 splits the keys


def _cache(a, M, seed=0):
    g = torch.Generator().manual_seed(seed)
    B, H, HK, D, DV = len(LENGTHS), 4, 2, 16, 16
    N = PAGE * PAGES_PER_SEQ
    q = torch.randn(B, H, M, D, generator=g)
    k, v = torch.randn(B, HK, N, D, generator=g), torch.randn(B, HK, N, DV, generator=g)
    pages = torch.randperm(B * PAGES_PER_SEQ + 3, generator=g)[:B * PAGES_PER_SEQ].view(B, PAGES_PER_SEQ)
    k_cache = torch.randn(B * PAGES_PER_SEQ + 3, PAGE, HK, D, generator=g)  # unused pages hold noise
    v_cache = torch.randn(B * PAGES_PER_SEQ + 3, PAGE, HK, DV, generator=g)
    for b in range(B):
        for p in range(PAGES_PER_SEQ):
            k_cache[pages[b, p]] = k[b, :, p * PAGE:(p + 1) * PAGE].transpose(0, 1)
            v_cache[pages[b, p]] = v[b, :, p * PAGE:(p + 1) * PAGE].transpose(0, 1)
    xs = make_inputs(a, dict(B=B, H=H, HK=HK, M=M, N=N, D=D, DV=DV), "cpu", g)
    return q, k, v, k_cache, v_cache, pages.int(), torch.tensor(LENGTHS, dtype=torch.int32), xs


def _dense_per_sequence(a, q, k, v, xs, cast):
    ref = ReferenceAttention(a)
    out = []
    for b, n in enumerate(LENGTHS):
        sub = {nm: (x[b:b + 1, ..., :n] if nm == "doc" else x) for nm, x in xs.items()}
        sub = {nm: (cast(x) if x.is_floating_point() else x) for nm, x in sub.items()}
        out.append(ref(cast(q[b:b + 1]), cast(k[b:b + 1, :, :n]), cast(v[b:b + 1, :, :n]), **sub))
    return torch.cat(out)


@pytest.mark.parametrize("M", [1, 5, 40])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_paged_matches_contiguous_keys(name, M):
    a = compile_source(f"attention {name} {{\n {SPECS[name]}\n}}", f"{name}.attn")[0]
    q, k, v, k_cache, v_cache, table, lengths, xs = _cache(a, M)
    with torch.no_grad():
        o = TritonAttention(a)(q, k_cache, v_cache, block_table=table, seqlens_k=lengths, **xs)
    exact = _dense_per_sequence(a, q, k, v, xs, lambda t: t.double())
    lowp = _dense_per_sequence(a, q, k, v, xs, lambda t: t)
    assert rel_err(o, exact) <= max(4 * rel_err(lowp, exact), 1e-5)


def test_paged_is_forward_only_and_checks_its_table():
    fn = attngen.jit("attention c { mask = causal }")
    a = compile_source("attention c { mask = causal }")[0]
    q, k, v, k_cache, v_cache, table, lengths, _ = _cache(a, 3)
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

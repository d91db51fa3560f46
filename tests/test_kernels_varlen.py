"""Packed variable-length sequences through the generated kernels (TRITON_INTERPRET=1), forward
and backward, against the reference applied to each sequence; and the host-side validation."""

from __future__ import annotations


import pytest
import torch

import attngen
from attngen.driver import compile_source
from attngen.verify import assert_close
from attngen.reference import ReferenceAttention
from attngen.runtime.jit import TritonAttention

from seqcases import packed_case, packed_errors

pytestmark = pytest.mark.interpret

SPECS = {
    "causal": "mask = causal",
    "window_alibi": "input slopes: f32[H]\n score = dot(q, k) * scale + slopes[h] * (j - i)\n"
                    " mask = causal and i - j < 20",
    "document": "input doc: i32[B, N]\n mask = causal and doc[b, i] == doc[b, j]",
    "gated_sigmoid": "input gate: f32[B, H, M]\n mask = causal\n norm = sigmoid\n out = o * sigmoid(gate[b, h, m])",
    "stick": "mask = causal\n norm = stickbreaking",
    "full": "norm = softmax",
    "pair_vectors": "input w: f32[D]\n score = dot(w, tanh(q + k)) - sum(abs(q - k)) * scale\n mask = causal",
    # the one-pass forwards (codegen/linear.py) keep [H, TQ, ...] rows for the backward; a table dot (tables.py)
    "nap": "mask = causal\n norm = none\n weights = (score - rowmean(score)) / sqrt(rowmean(score * score) - "
           "rowmean(score) ** 2 + 1e-6)",
    "out_aggregates": "mask = causal\n out = o * (1.0 + 0.1 * rowmax(score))",
    "table": "input e: f32[16, D]\n score = dot(q, k) * scale + dot(q, e[min(i - j, 15)])\n mask = causal",
}
LENS_Q = [37, 0, 70, 5]
LENS_K = [37, 12, 70, 41]  # keys may outnumber queries: positions are end-aligned per sequence


def _packed_call(name, seed=0):
    a = compile_source(f"attention {name} {{\n {SPECS[name]}\n}}", f"{name}.attn")[0]
    return (a, *packed_case(a, LENS_Q, LENS_K, seed=seed))


@pytest.mark.parametrize("name", sorted(SPECS))
def test_varlen_matches_the_reference_per_sequence(name):
    a, q, k, v, xs, seq, do = _packed_call(name)
    assert_close(packed_errors(a, q, k, v, xs, seq, do))


def test_varlen_lse_layout():
    a, q, k, v, xs, seq, do = _packed_call("causal")
    _, lse = TritonAttention(a)(q, k, v, return_lse=True, **seq)
    _, ref = ReferenceAttention(a)(q.double(), k.double(), v.double(), return_lse=True, **seq)
    assert lse.shape == (4, sum(LENS_Q))
    torch.testing.assert_close(lse.double(), ref, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("bad, match", [
    (dict(cu_seqlens_q=torch.tensor([0, 37, 37, 107, 111])), "int32"),
    (dict(cu_seqlens_q=torch.tensor([0, 37, 30, 107, 112], dtype=torch.int32)), "never decrease"),
    (dict(cu_seqlens_q=torch.tensor([0, 37, 37, 107, 110], dtype=torch.int32)), "end at the 112"),
    (dict(cu_seqlens_k=torch.tensor([0, 37, 49, 160], dtype=torch.int32)), "cu_seqlens_k has 3"),
    (dict(max_seqlen_q=50), "max_seqlen_q"),
    (dict(cu_seqlens_k=None), "both cu_seqlens"),
])
def test_varlen_bad_input_is_reported_before_launch(bad, match):
    a, q, k, v, xs, seq, do = _packed_call("causal")
    fn = attngen.jit(f"attention causal {{ {SPECS['causal']} }}")
    with pytest.raises((ValueError, TypeError), match=match):
        fn(q, k, v, **{**seq, **bad})


def test_varlen_needs_packed_rows():
    a, q, k, v, xs, seq, do = _packed_call("causal")
    fn = attngen.jit(f"attention causal {{ {SPECS['causal']} }}")
    with pytest.raises(ValueError, match=r"packed \[TQ, H, D\]"):
        fn(q[None], k, v, **seq)

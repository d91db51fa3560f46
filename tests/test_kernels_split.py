"""Split-KV decoding through the generated kernels (TRITON_INTERPRET=1): with few query rows the
keys are shared among several programs per (b, h) and merged exactly; outputs, lse and gradients
against the float64 reference, dense and paged."""

from __future__ import annotations


import pytest

from attngen.codegen.render import cache_key, render_module
from attngen.passes.pipeline import run_pipeline
from attngen.driver import compile_source
from attngen.verify import assert_close, compare

pytestmark = pytest.mark.interpret

SPECS = {
    "causal": "mask = causal",
    "window": "mask = causal and i - j < 150",
    "sink": "input sinks: f32[H]\n input slopes: f32[H]\n score = dot(q, k) * scale + slopes[h] * (j - i)\n"
            " mask = causal\n norm = softmax(sink = sinks[h])",
    "sumnorm": "score = relu(dot(q, k) * scale) + 0.1\n mask = causal\n norm = sum",
    "sigmoid": "score = dot(q, k) * scale - 2.0\n mask = causal and i - j < 170\n norm = sigmoid",
    "full": "norm = softmax",
}


@pytest.mark.parametrize("heads", [(4, 1), (2, 2)], ids=["gqa4_packed", "mha"])
@pytest.mark.parametrize("M", [1, 3, 16])
@pytest.mark.parametrize("name", sorted(SPECS))
def test_split_kv(name, M, heads):
    """GQA 4:1 packs the group's heads into one tile up to M = 8 (32 rows); M = 16 splits unpacked."""
    a = compile_source(f"attention {name} {{\n {SPECS[name]}\n}}", f"{name}.attn")[0]
    assert_close(compare(a, B=1, H=heads[0], HK=heads[1], M=M, N=230, D=16, DV=16))


def test_split_kernel_is_generated_where_it_can_merge():
    def has_split(src):
        a = compile_source(src)[0]
        return "SPLIT: tl.constexpr" in render_module([a], src, "<t>", cache_key(src, {}))
    assert has_split("attention a { mask = causal }")
    assert not has_split("attention a { norm = stickbreaking }")
    assert not has_split("attention a { input g: f32[B, H, M]\n out = o * g[b, h, m] }")
    assert not has_split("attention a { input doc: i32[B, N]\n mask = doc[b, i] == doc[b, j] }")
    assert run_pipeline(compile_source("attention a { mask = causal }")[0]).tiles is not None

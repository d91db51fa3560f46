"""One golden test per optimizer pass: the IR text before and after it (tests/golden/pass_*.txt)."""

from __future__ import annotations

import pytest

from attngen.ir.printer import attention_str
from attngen.passes.pipeline import PASSES, run_pipeline
from attngen.driver import compile_source

from golden import check_golden

# for each pass, a spec that gives it work to do
CASES = {
    "fold_constants": """
attention fold {
    const CAP = 30.0
    const TRAIN = 2048
    score = CAP * tanh(dot(q, k) * scale / CAP) + log(TRAIN * 1.0) * 1 + 0.0 * 2 - (-(-1.0))
    mask = true and (j <= i or false) and not not (7 // 2 == 3) and (-7) % 3 == 2
    weights = p * (1 + 0) / 1
}""",
    "exp2_scores": """
attention exp2 {
    input slopes: f32[H]
    const CAP = 30.0
    score = CAP * tanh(dot(q, k) * scale / CAP) - slopes[h] * (i - j) + 0.5 * log(1.0 + j)
    mask = causal
}""",
    "substitute_prologue": """
attention prologue {
    input g: f32[D]
    q = rmsnorm(q, g)
    k = rope(k, j)
    score = dot(q, k) * scale
    mask = causal and score > -30.0
    select = topk(4, by=dot(q, kmean), block=16)
}""",
    "lanewise_norms": """
attention lanewise {
    input w: f32[D]
    score = dot(w, l2norm(q + k)) + dot(rmsnorm(q - k, w), w)
}""",
    "lower_select": """
attention lower {
    score = dot(q, k) * scale
    mask = causal
    select = topk(8, by=dot(q, kmean), block=64, keep=jb == i // 64, share=group)
}""",
    "scaled_dot": """
attention scaled {
    score = dot(q, k) * scale * 0.5
    mask = causal
}""",
    "mask_tiles": """
attention tiles {
    input doc: i32[B, N]
    const W = 256
    mask = causal and i - j < W and (i // 64 == j // 64 or doc[b, i] == doc[b, j] or j < 4)
}""",
}


def test_every_pass_has_a_case():
    assert set(CASES) == {p.name for p in PASSES}


@pytest.mark.parametrize("name", sorted(CASES))
def test_pass_golden(name):
    a = compile_source(CASES[name], f"{name}.attn")[0]
    before = attention_str(a)
    names = [p.name for p in PASSES]
    previous = names[names.index(name) - 1] if names.index(name) else None
    a = run_pipeline(a, previous)
    after = attention_str(next(p for p in PASSES if p.name == name).run(a))
    check_golden(f"pass_{name}.txt", f"# before\n{before}\n# after\n{after}\n")


def test_unknown_pass_is_an_error():
    with pytest.raises(ValueError, match="unknown pass"):
        run_pipeline(compile_source("attention a { mask = causal }")[0], "nope")

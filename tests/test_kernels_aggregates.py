"""Row aggregates (language 1.1) through the generated kernels (TRITON_INTERPRET=1), forward and
backward, against the float64 reference: one pass per nesting level in the forward, the pre kernel's
adjoints, the argument seeds of dq and dk/dv (codegen/aggregates.py); and key scans (codegen/scans.py)."""

from __future__ import annotations

import pytest
import torch

from attngen.codegen.analysis import CodegenError
from attngen.codegen.plan import make_plan
from attngen.driver import compile_source
from attngen.passes.pipeline import run_pipeline
from attngen.verify import assert_close, compare

pytestmark = pytest.mark.interpret

SPECS = {
    # NAP: mean and mean of squares of the score, one pass
    "nap": """
attention a {
    mask = causal
    norm = none
    let mu = rowmean(score)
    weights = (score - mu) / sqrt(rowmean(score * score) - mu ** 2 + 1e-6)
}""",
    # average-hard: a nested aggregate inside a comparison (two passes; no gradient through the inner one)
    "average_hard": """
attention a {
    mask = causal
    norm = none
    let hit = where(score == rowmax(score), 1.0, 0.0)
    weights = hit / rowsum(hit)
}""",
    # max and min with gradients (to the first key attaining them), an input inside an argument, an integer
    # aggregate, and a window that leaves the first rows without keys (o = 0, every aggregate 0)
    "extremes": """
attention a {
    input w: f32[H]
    score = dot(q, k) * scale
    mask = j <= i - 20 and i - j < 30
    norm = none
    weights = exp(score - rowmax(score * w[h])) + 0.1 * rowmin(score) + 0.01 * rowsum(j % 3) + 0.1 * rowcount()
}""",
    # aggregates in the out stage only (the pre kernel's out-stage adjoints), with softmax-free weights
    "out_stage": """
attention a {
    mask = causal
    norm = none
    weights = sigmoid(score)
    out = o / (1.0 + rowsum(sigmoid(score))) + 0.1 * rowmax(score)
}""",
    # softmax: the aggregate passes after the statistics pass, the natural score in their arguments, the
    # aggregates' score adjoints beside p (dp - delta) in ds; an aggregate in out
    "softmax": """
attention a {
    mask = causal
    weights = p * sigmoid(score - rowmean(score))
    out = o / (1.0 + 0.1 * rowmax(score))
}""",
    # a row sum normalization (norm = sum) and sigmoid with aggregates of the score in weights
    "sum_norm": """
attention a {
    score = exp(dot(q, k) * scale - 1.0)
    mask = causal
    norm = sum
    weights = p + 0.1 * score / rowsum(score)
}""",
    # aggregates of p under softmax: their passes follow the statistics pass, and delta (sum_j p dp) takes
    # their adjoints' part; in out alone, the forward takes the statistics pass for them
    "p_softmax": """
attention a {
    mask = causal
    weights = p / rowmax(p) * 0.5 + 0.1 * p * rowsum(p * score)
}""",
    "p_out": """
attention a {
    mask = causal
    out = o * (1.0 + rowsum(p * p))
}""",
    # over the kept keys of a block selection (the dense kernels with the lowered selection in the mask)
    "selection": """
attention a {
    mask = causal
    select = topk(2, by = dot(q, kmean), block = 8, keep = jb == i // 8)
    norm = none
    weights = (score - rowmean(score)) / sqrt(rowmean(score * score) - rowmean(score) ** 2 + 1e-6)
}""",
    # nesting with gradients through the inner aggregates (a pre kernel loop per level): a softmax written
    # out (its max's adjoint cancels), and three levels of sums and means
    "nested": """
attention a {
    mask = causal
    norm = none
    let e = exp(score - rowmax(score))
    weights = e / rowsum(e) + 0.1 * score * rowmean(sigmoid(score - rowmean(score * rowsum(sigmoid(score)) * 0.1)))
}""",
    # a let carries a pair vector of q and k into weights and into an aggregate's argument (Comateformer with
    # its dissimilarity centered per row)
    "let_rows": """
attention a {
    let far = -sum(abs(q - k)) * scale
    norm = none
    weights = tanh(score) * sigmoid(far - rowmean(far))
}""",
}


def test_extremes_gradient_goes_to_the_first_key():
    """Equal scores along a row: rowmax's gradient reaches only the first key attaining it (k rows equal)."""
    a = compile_source("attention a {\n mask = causal\n norm = none\n weights = 1.0 + rowmax(score)\n}", "t.attn")[0]
    torch.manual_seed(0)
    q = torch.randn(1, 1, 16, 16, requires_grad=True)
    k = torch.randn(1, 1, 1, 16).expand(1, 1, 16, 16).contiguous().requires_grad_()
    v = torch.randn(1, 1, 16, 16, requires_grad=True)
    from attngen.reference.api import ReferenceAttention
    from attngen.runtime.jit import TritonAttention
    got = TritonAttention(a)(q, k, v)
    (dk,) = torch.autograd.grad(got.square().sum(), (k,))
    want = ReferenceAttention(a)(q.double(), k.double(), v.double())
    (dk_want,) = torch.autograd.grad(want.square().sum(), (k,))
    torch.testing.assert_close(got.double(), want.detach(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(dk, dk_want, rtol=1e-4, atol=1e-4)
    rows = dk.abs().sum(-1)[0, 0]
    assert rows[0] > 0 and bool((rows[1:] == 0).all())  # every row's max is at key 0


@pytest.mark.parametrize("spec,why", [
    ("mask = causal\n norm = stickbreaking\n weights = p / rowsum(p)", "stick-breaking"),
    ("score = dot(q, k) * scale - 0.1 * suffixsum(1.0)\n select = topk(4, by = dot(q, k))", "selection"),
    ("norm = none\n score = dot(q, k) * scale - 0.1 * suffixsum(1.0)\n weights = score - rowmean(score)", "together"),
])
def test_refused_with_a_caret(spec, why):
    a = compile_source(f"attention a {{\n {spec}\n}}", "r.attn")[0]
    with pytest.raises(CodegenError, match=why) as err:
        make_plan(run_pipeline(a))
    assert err.value.span is not None and "^" in err.value.format()


SCANS = {
    # CoPE: contextual positions by a scan of sigmoid gates, interpolated position embeddings (pair rows of e)
    "cope": """
attention a {
    const NP = 16
    input e: f32[NP, D]
    let g = suffixsum(sigmoid(dot(q, k)))
    let f = floor(g)
    score = dot(q, k) * scale + (f + 1 - g) * dot(q, e[min(f, NP - 1)]) + (g - f) * dot(q, e[min(f + 1, NP - 1)])
    mask = causal
}""",
    # a scan of an input and positions in a window (tiles left out, empty first rows), and one in weights
    "window": """
attention a {
    input w: f32[H]
    score = dot(q, k) * scale - 0.05 * suffixsum(w[h] * (1.0 + 0.01 * j))
    mask = j <= i - 5 and i - j < 40
    norm = none
    weights = exp(score) * (1.0 + 0.01 * suffixsum(sigmoid(dot(q, k))))
}""",
}


@pytest.mark.parametrize("name", sorted(SPECS) + sorted(SCANS))
def test_kernels(name):
    a = compile_source({**SPECS, **SCANS}[name], f"{name}.attn")[0]
    assert_close(compare(a, M=67, N=67, D=40, DV=24, dtype=torch.float32))
    assert_close(compare(a, B=1, H=2, HK=1, M=37, N=45, D=32, DV=16, dtype=torch.float32, seed=1))

"""Weights linear in pair terms (codegen/linear.py): the decomposition and the kernel plan's choice, the
one-pass forward and the pre kernel without key loops, through the generated kernels
(TRITON_INTERPRET=1) against the float64 reference."""

from __future__ import annotations

import ast

import pytest
import torch

from attngen.codegen import linear
from attngen.codegen.kernel_plan import choose
from attngen.codegen.plan import make_plan
from attngen.driver import compile_file, compile_source, generate, optimize
from attngen.ir.printer import expr_str
from attngen.runtime.jit import TritonAttention
from attngen.verify import assert_close, compare

NAP = "norm = none\n weights = (score - rowmean(score)) / sqrt(rowmean(score * score) - rowmean(score) ** 2 + 1e-6)"


def _attn(body: str):
    return optimize(compile_source(f"attention t {{\n mask = causal\n {body}\n}}")[0])


@pytest.mark.parametrize("body,terms", [
    # NAP: the centred score over its std
    (NAP, ["(1.0 / sqrt(((rowmean((score * score)) - (rowmean(score) ** 2.0)) + 1e-06))) * (score - rowmean(score))"]),
    # a term and the term 1
    ("norm = none\n weights = (score - rowmax(score)) / rowcount()",
     ["(1.0 / float(rowcount())) * score", "((-rowmax(score)) / float(rowcount())) * 1.0"]),
    # aggregates in out alone: the weights are the one term
    ("norm = none\n weights = sigmoid(score)\n out = o / rowsum(sigmoid(score))", ["1.0 * sigmoid(score)"]),
    # equal terms merge; a row factor on either side of a product
    ("norm = none\n weights = rowmax(score) * score + score * rowcount() - score",
     ["((rowmax(score) + float(rowcount())) + (-1.0)) * score"]),
])
def test_terms(body, terms):
    lin, why = linear.of(_attn(body))
    assert [f"{expr_str(c)} * {expr_str(t)}" for c, t in lin.terms] == terms, why


@pytest.mark.parametrize("body,why", [
    ("norm = none\n weights = exp(score - rowmax(score))", "not a sum of pair terms with row factors"),
    ("weights = p * rowmean(score)", "norm = softmax"),
    ("norm = none\n let hit = where(score == rowmax(score), 1.0, 0.0)\n weights = hit / rowsum(hit)",
     "an aggregate inside another's argument"),
    ("norm = none\n weights = score * rowmean(score) + score * score + sigmoid(score) * rowmax(score)",
     "3 sums of pair terms"),
    ("norm = none\n weights = (score - rowmean(score)) * rowmax(score) + score * score", "3 sums of pair terms"),
    ("norm = none\n weights = sigmoid(score)", "no row aggregates"),
])
def test_not_linear_says_why(body, why):
    lin, reason = linear.of(_attn(body))
    assert lin is None and why in reason


def test_sums_kept_beside_the_terms():
    """A centred term needs the sum of v too (its mean's adjoint, and moving the sum to the new mean)."""
    lin, _ = linear.of(_attn(NAP))
    assert [expr_str(t) for t in linear.slots(lin)] == ["(score - rowmean(score))", "1.0"]
    lin, _ = linear.of(_attn("norm = none\n weights = sigmoid(score)\n out = o / rowsum(sigmoid(score))"))
    assert [expr_str(t) for t in linear.slots(lin)] == ["sigmoid(score)"]


def test_the_kernel_plan_takes_it_and_says_so():
    kp = choose(make_plan(_attn(NAP)))
    assert kp.one_pass and "1 pair term(s)" in kp.one_pass.why
    assert any("one pass over the keys" in line for line in kp.notes(make_plan(_attn(NAP))))


def _loops(source: str, kernel: str) -> int:
    """The loops over key tiles in one generated kernel."""
    fn = next(n for n in ast.parse(source).body if isinstance(n, ast.FunctionDef) and n.name == kernel)
    return sum(isinstance(n, ast.For) for n in ast.walk(fn))


def test_nap_forward_walks_the_keys_once_and_the_pre_kernel_not_at_all():
    src = generate([compile_file("examples/nap.attn")[0]]).render()
    assert _loops(src, "nap_fwd") == 2  # one visit: its partial tiles, then its full ones
    assert _loops(src, "nap_bwd_pre") == 0


SPECS = {
    # NAP: its centred term summed around the running mean (its rowmean of the score is the running sum)
    "nap": NAP,
    # a term shifted to its running mean and back, beside the term 1
    "shifted": "norm = none\n weights = (score - rowmax(score)) / (1.0 + rowcount())",
    # a window that leaves the first rows without keys (o = 0), max's key, an input in the row factors, and
    # a shifted term without a rowmean of it (the pass keeps its own running sum)
    "window": ("input g: f32[H]\n mask = j <= i - 20 and i - j < 30\n norm = none\n"
               " weights = (score - rowmax(score)) * g[h] / (1.0 + rowcount())"),
    # two terms, neither of them 1 (no shift)
    "two": "norm = none\n weights = score * rowmean(score) + sigmoid(score) / (1.0 + rowsum(sigmoid(score)))",
}


#: aggregates only the out stage reads (linear.fused): the forward's own loop takes them, under any norm
FUSED = {
    # softmax; max's gradient to its first key, a mean of squares
    "softmax": "out = o * (1.0 + 0.1 * rowmax(score)) + 0.05 * rowmean(score * score)",
    # sigmoid with weights, a window that leaves the first rows without keys
    "sigmoid": ("score = dot(q, k) * scale - 2.0\n mask = j <= i - 20 and i - j < 30\n norm = sigmoid\n"
                " weights = p * 2.0\n out = o / (1.0 + rowcount()) + 0.1 * rowsum(score)"),
}


def _spec(body: str, name: str):
    mask = "" if "mask" in body else " mask = causal\n"
    return compile_source(f"attention t {{\n{mask} {body}\n}}", f"{name}.attn")[0]


def _check(a):
    assert _loops(generate([a]).render(), "t_bwd_pre") == 0
    assert_close(compare(a, M=67, N=67, D=40, DV=24, dtype=torch.float32))
    assert_close(compare(a, B=1, H=2, HK=1, M=37, N=45, D=32, DV=16, dtype=torch.float32, seed=1))


@pytest.mark.interpret
@pytest.mark.parametrize("name", sorted(FUSED))
def test_aggregates_only_out_reads(name):
    a = _spec(FUSED[name], name)
    plan = make_plan(optimize(a))
    assert plan.fused and "forward's own loop" in " ".join(choose(plan).notes(plan))
    _check(a)


@pytest.mark.interpret
@pytest.mark.parametrize("name", sorted(SPECS))
def test_kernels(name):
    a = _spec(SPECS[name], name)
    assert linear.of(optimize(a))[0] is not None
    _check(a)


@pytest.mark.interpret
@pytest.mark.parametrize("common", [8.0, 16.0])
def test_scores_with_a_common_part(common):
    """q and k share a direction: each row's scores sit around a mean far from 0 (mean / std up to about
    25). NAP's centred term keeps the sums free of the mean: no difference of large sums forward or in
    the pre kernel, so every error stays within the fp32 reference's few multiples."""
    a = compile_file("examples/nap.attn")[0]
    assert_close(compare(a, M=67, N=67, D=40, DV=24, dtype=torch.float32, common=common))


@pytest.mark.interpret
def test_a_call_without_gradients_keeps_nothing():
    """Inference keeps no aggregates or sums (the forward's SAVE is off): the same o, and nothing for a
    backward; a call that needs gradients keeps both."""
    fn = TritonAttention(compile_file("examples/nap.attn")[0])
    ops = getattr(fn.module, "_attention_nap").ops
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, 2, 37, 16, generator=gen) for _ in range(3))
    call = (q, k, v, 0.25, [], [], [], None, None, 0, 0, 0)
    o_save, *_, kept = ops._fwd_impl(*call, save=True)
    o_none, *_, none = ops._fwd_impl(*call, save=False)
    assert [t.shape for t in kept] == [(1, 2, 37, 3), (1, 2, 37, 2, 16)] and none == []
    torch.testing.assert_close(o_none, o_save, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(fn(q, k, v, scale=0.25), o_save, rtol=0, atol=0)

"""Every pass keeps the attention's meaning: the reference interpreter gives the same o and the same
gradients of q, k, v and every float input on the IR before and after each pass, for every example
(float64, small awkward shapes: M != N, D = 16, GQA)."""

from __future__ import annotations

import pytest
import torch

from attngen.bench.inputs import make_inputs
from attngen.passes.pipeline import PASSES
from attngen.reference.interpreter import reference_attention
from attngen.driver import compile_file, compile_source

from example_specs import EXAMPLES, shrunk
from test_passes import CASES as PASS_CASES

SMALL = {"W": 12, "WINDOW": 12, "CHUNK": 8, "STRIDE": 4, "SINKS": 2, "TRAIN_LEN": 8, "LOCAL": 6, "TOPK": 3,
         "NOPE": 8, "ROPE": 8, "HALF": 8, "BLOCK": 8}
CASES = [(p, a.name) for p in EXAMPLES for a in compile_file(p)]


def _run(a, q, k, v, inputs):
    """o and the gradients of q, k, v and the float inputs for a fixed random cotangent."""
    leaves = [q, k, v, *(x for x in inputs.values() if isinstance(x, torch.Tensor) and x.requires_grad)]
    o = reference_attention(a, q, k, v, **inputs)
    do = torch.randn(o.shape, dtype=o.dtype, generator=torch.Generator().manual_seed(7))
    grads = torch.autograd.grad(o, leaves, do, allow_unused=True)
    return [o.detach(), *(g for g in grads if g is not None)]


@pytest.mark.parametrize("path,name", CASES, ids=[f"{p.stem}:{n}" for p, n in CASES])
def test_every_pass_keeps_the_meaning(path, name):
    _same_after_every_pass(shrunk(path, name, SMALL))


@pytest.mark.parametrize("name", sorted(PASS_CASES))
def test_every_pass_keeps_the_meaning_of_the_golden_cases(name):
    """The specs of the passes' golden tests (test_passes.py), each written to give its pass work."""
    _same_after_every_pass(compile_source(PASS_CASES[name], f"{name}.attn")[0])


def _same_after_every_pass(a):
    B, H, HK, M, N, D = 2, 4, 2, 19, 23, 16
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, n, D, generator=g, dtype=torch.float64, requires_grad=True)
               for h, n in ((H, M), (HK, N), (HK, N)))
    sizes = dict(B=B, H=H, HK=HK, M=M, N=N, D=D, DV=D)
    inputs = {n: x.double().detach().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor)
              and x.is_floating_point() else x for n, x in make_inputs(a, sizes, "cpu", g).items()}
    want = _run(a, q, k, v, inputs)
    for p in PASSES:
        a = p.run(a)
        got = _run(a, q, k, v, inputs)
        assert len(got) == len(want), p.name
        for x, y in zip(got, want):
            torch.testing.assert_close(x, y, rtol=1e-9, atol=1e-9, msg=lambda m: f"after {p.name}: {m}")

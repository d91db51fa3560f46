"""The table of elementwise float functions (attngen/ir/builtins.py): every entry has every part,
its parts agree with each other (folding with torch, monotonicity with the values), and it runs
through the kernels, forward and backward, as the reference runs it."""

from __future__ import annotations

import pytest
import torch

from attngen.ir.builtins import UNARY
from attngen.ir.check_expr import FUNCTIONS
from attngen.reference.exprs import _ELEMENTWISE
from attngen.driver import compile_source
from attngen.verify import assert_close, compare

#: arguments inside every function's domain (log, sqrt and rsqrt need positive ones)
POINTS = [0.05, 0.3, 0.5, 0.9, 1.0, 1.7, 2.5, 4.0]


@pytest.mark.parametrize("name", sorted(UNARY))
def test_every_entry_is_complete_and_consistent(name):
    u = UNARY[name]
    assert name in FUNCTIONS and name in _ELEMENTWISE
    assert "{}" in u.triton and "{g}" in u.grad
    x = torch.tensor(POINTS, dtype=torch.float64)
    want = _ELEMENTWISE[name](x)
    folded = torch.tensor([u.fold(p) for p in POINTS], dtype=torch.float64)
    torch.testing.assert_close(folded, want, rtol=1e-12, atol=1e-12)
    if u.increasing:
        assert (want[1:] >= want[:-1]).all()


@pytest.mark.interpret
@pytest.mark.parametrize("name", sorted(UNARY))
def test_every_entry_runs_in_the_kernels(name):
    """Its Triton spelling and its derivative, against the float64 reference (q, k, v gradients)."""
    src = (f"attention f {{\n score = dot(q, k) * scale + 0.5 * {name}(0.5 + sigmoid(dot(q, k) * scale))\n"
           " mask = causal\n}")
    a = compile_source(src, f"{name}.attn")[0]
    assert_close(compare(a, B=1, H=2, HK=1, M=37, N=37, D=16, DV=16))


def test_folding_uses_the_table_and_refuses_outside_the_domain():
    from attngen.frontend.errors import AttnError
    from attngen.ir.printer import expr_str
    from attngen.passes.fold_constants import run as fold_constants

    a = fold_constants(compile_source("attention f { score = dot(q, k) * erf(0.5) }")[0])
    assert "0.5204998" in expr_str(a.score)  # erf(0.5), folded by the table's fold
    with pytest.raises(AttnError, match=r"log\(\) of these constants has no real value"):
        compile_source("attention f { score = dot(q, k) + log(0.0 - 1.0) }")

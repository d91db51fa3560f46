"""``let NAME = EXPR`` (language 1.1): a value named for the statements after it, resolved before
type checking; the kernels and the reference agree on specs that use lets (forward and backward),
and misuse is an error at the let or at its use, with a caret."""

from __future__ import annotations

import pytest

from attngen.frontend.errors import AttnError
from attngen.ir.printer import attention_str
from attngen.driver import compile_source
from attngen.verify import assert_close, compare

LETS = """
attention lets {
    input slopes: f32[H]
    let bias = slopes[h] * (j - i)      # a pair value
    let qn = l2norm(q)                  # a row, after the prologue
    let t = 0.5 * scale                 # a scalar built from another name
    q = q * 1.5
    score = dot(qn, k) * t * 8.0 + bias
    mask = causal and bias > -20.0
    weights = p * (1.0 + 0.01 * bias)
}"""

SPELLED = """
attention lets {
    input slopes: f32[H]
    q = q * 1.5
    score = dot(l2norm(q), k) * (0.5 * scale) * 8.0 + slopes[h] * (j - i)
    mask = causal and slopes[h] * (j - i) > -20.0
    weights = p * (1.0 + 0.01 * (slopes[h] * (j - i)))
}"""


def test_a_let_means_its_expression_written_out():
    """The checked IR of a spec with lets is that of the spec with the lets spelled out."""
    a, b = compile_source(LETS)[0], compile_source(SPELLED)[0]
    assert attention_str(a) == attention_str(b)


@pytest.mark.interpret
def test_kernels_match_the_reference_with_lets():
    a = compile_source(LETS, "lets.attn")[0]
    assert_close(compare(a, B=1, H=4, HK=2, M=37, N=45, D=16, DV=16))


@pytest.mark.parametrize("src, at, message", [
    ("attention a { score = x\n let x = 1.0 }", (1, 23), "'x' is a let defined later (line 2)"),
    ("attention a { let x = q * 2.0\n q = x }", (2, 6), "the q prologue uses let 'x', which reads q or k"),
    ("attention a { let y = k\n let x = y * 2.0\n k = x }", (3, 6), "the k prologue uses let 'x'"),
    ("attention a { let x = 1.0\n let x = 2.0 }", (2, 6), "let 'x' is defined twice (first on line 1)"),
    ("attention a { let score = 1.0 }", (1, 19), "'score' is already a name here"),
    ("attention a { input w: f32[H]\n let w = 1.0 }", (2, 6), "'w' is already a name here"),
    ("attention a { let x = 1.0\n input x: f32[H] }", (2, 8), "'x' is declared twice"),
    ("attention a { weights = p * dot(q, k) }", (1, 33), "'q' is not available in the weights stage"),
    ("attention a { let x = dot(q, k)\n out = o * x }", (1, 27), "'q' is not available in the out stage"),
    ("attention a { let let = 1.0 }", (1, 19), "cannot name a let"),
])
def test_let_errors_point_at_the_let_or_its_use(src, at, message):
    with pytest.raises(AttnError) as err:
        compile_source(src, "a.attn")
    text = err.value.format()
    line, col = at
    assert text.startswith(f"a.attn:{line}:{col}: error: ") and message in text.splitlines()[0], text


@pytest.mark.parametrize("step, n", [("a{p} + a{p}", 40), ("-a{p}", 150)], ids=["doubling", "deep"])
def test_lets_cannot_blow_up_a_statement(step, n):
    """Each let used twice by the next doubles the expression (2^40 nodes from 40 lines), and a chain
    nests deeper than the builder's limit: both refused at the let that crosses the limit, at once."""
    lines = ["let a0 = scale"] + [f"let a{i} = " + step.format(p=i - 1) for i in range(1, n)]
    src = "attention a {\n" + "\n".join(lines) + f"\nscore = dot(q, k) * a{n - 1}\n}}"
    with pytest.raises(AttnError, match="too large with its lets put in"):
        compile_source(src, "a.attn")

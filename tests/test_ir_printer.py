"""Golden snapshots of the IR text (``attngen show --ir``), and verify() on good and broken IR.

The snapshots live in tests/golden/NAME.ir; after an intended change to the builder or
the printer, rewrite them with ``ATTNGEN_UPDATE_GOLDEN=1 pytest tests/test_ir_printer.py``
and review the diff.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from attngen.ir import nodes as ir
from attngen.ir.printer import attention_str
from attngen.ir.types import BOOL, FLOAT, INT, vec
from attngen.ir.verify import IRVerifyError, verify
from attngen.driver import compile_source

from golden import check_golden


SPECS = {
    "causal": "attention causal { mask = causal }",
    "alibi_window": """
attention alibi_window {
    input  slopes: f32[H]
    const  WINDOW = 1024
    score = dot(q, k) * scale + slopes[h] * (j - i)
    mask  = causal and i - j < WINDOW
    norm  = softmax
}
""",
    "prologue": """
attention prologue {
    input  w: bf16[D]
    input  temp: f32[H]
    q = rmsnorm(rope(q, i), w) * temp[h]
    k = l2norm(rope(k, j, base = 500000.0))
    score = dot(q, k) * scale / log(N)
}
""",
    "topk_gated": """
attention topk_gated {
    input  sinks: f32[H]
    input  gate: f32[B, H, M]
    input  alpha: f32[B, H, M]
    select  = topk(32, by = score, keep = i - j < 64 or j < 4, share = group)
    norm    = softmax(sink = sinks[h])
    weights = alpha[b, h, m] * p
    out     = o * sigmoid(gate[b, h, m])
}
""",
    "block_select": """
attention block_select {
    const BS = 64
    mask   = window(4096)
    select = topk(8, by = dot(q, kmean) * scale, block = BS, keep = jb == i // BS)
    norm   = stickbreaking
}
""",
    "doc_softcap": """
attention doc_softcap {
    input  doc: i32[B, N]
    input  cap: f32
    input  rel: f32[H, 128]
    score = cap * tanh(dot(q, k) * scale / cap) + rel[h, clamp(i - j, 0, 127)]
    mask  = doc[b, i] == doc[b, j] and 0 <= i - j < 2 ** 12 and not -(j % 2) ** 2 > 0
    norm  = sigmoid
}
""",
}


def _build(name: str) -> ir.Attention:
    (a,) = compile_source(SPECS[name], f"{name}.attn")
    return a


@pytest.mark.parametrize("name", sorted(SPECS))
def test_golden_ir(name):
    check_golden(f"{name}.ir", attention_str(_build(name)) + "\n")


@pytest.mark.parametrize("name", sorted(SPECS))
def test_verify_accepts(name):
    a = _build(name)
    assert verify(a) is a


# ---- hand-broken IR: verify() must catch what a buggy pass could produce

def _i(name="i"):
    return ir.Sym(name, INT)


def _broken(**stages) -> ir.Attention:
    return replace(_build("alibi_window"), **stages)


@pytest.mark.parametrize("what, attn, msg", [
    ("int + float without a cast",
     lambda: _broken(score=ir.Binary("add", _i(), ir.Const(1.0, FLOAT), FLOAT)), "mixed int/float"),
    ("comparison of int with float",
     lambda: _broken(mask=ir.Binary("lt", _i(), ir.Const(1.0, FLOAT), BOOL)), "comparison operands differ"),
    ("and of ints",
     lambda: _broken(mask=ir.Binary("and", _i(), _i("j"), BOOL)), "boolean op on non-booleans"),
    ("a float mask",
     lambda: _broken(mask=ir.Cast(_i(), FLOAT)), "stage type is float, expected bool"),
    ("a no-op cast",
     lambda: _broken(score=ir.Cast(ir.Sym("scale", FLOAT), FLOAT)), "no-op cast"),
    ("exp of an int",
     lambda: _broken(score=ir.Call("exp", (_i(),), FLOAT)), "float function of an int"),
    ("a float index",
     lambda: _broken(score=ir.Load("slopes", (ir.Const(0.5, FLOAT),), FLOAT)), "non-integer index"),
    ("too many indices",
     lambda: _broken(score=ir.Load("slopes", (_i("h"), _i("h")), FLOAT)), "wrong number of indices"),
    ("an undeclared input",
     lambda: _broken(score=ir.Param("nope", FLOAT)), "undeclared input"),
    ("j in the out stage",
     lambda: _broken(out=ir.Binary("mul", ir.Row("o", vec("DV")), ir.Cast(_i("j"), FLOAT), vec("DV"))),
     "'j' is not in scope"),
    ("K of zero",
     lambda: _broken(select=ir.Select(0, ir.Sym("score", FLOAT), None, None, False)), "K and block must be"),
])
def test_verify_rejects(what, attn, msg):
    with pytest.raises(IRVerifyError, match=msg):
        verify(attn())


def test_golden_failures_show_a_diff(tmp_path, monkeypatch):
    import golden

    monkeypatch.setattr(golden, "GOLDEN", tmp_path)
    monkeypatch.delenv("ATTNGEN_UPDATE_GOLDEN", raising=False)
    (tmp_path / "x.txt").write_text("a\nb\nc\n")
    golden.check_golden("x.txt", "a\nb\nc\n")
    try:
        golden.check_golden("x.txt", "a\nB\nc\n")
    except AssertionError as err:
        assert "-b\n+B" in str(err) and "ATTNGEN_UPDATE_GOLDEN=1" in str(err)
    else:
        raise AssertionError("a changed text passed its golden check")

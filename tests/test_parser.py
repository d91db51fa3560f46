"""Parser tests: the whole of LANGUAGE.md v1 reaches the AST (and the checked IR) intact.

Expressions are compared as S-expressions, so precedence reads at a glance:
``causal and i - j < W`` is ``(and causal (< (- i j) W))``.
"""

from __future__ import annotations

import math

import pytest

from attngen.frontend import ast
from attngen.frontend.parser import parse
from attngen.driver import compile_source


def sx(e: ast.Expr) -> str:
    """An AST expression as an S-expression."""
    if isinstance(e, ast.Name):
        return e.id
    if isinstance(e, ast.Literal):
        return repr(e.value)
    if isinstance(e, ast.Unary):
        return f"({e.op} {sx(e.operand)})"
    if isinstance(e, ast.Binary):
        return f"({e.op} {sx(e.left)} {sx(e.right)})"
    if isinstance(e, ast.Compare):
        parts = [sx(e.operands[0])]
        for op, x in zip(e.ops, e.operands[1:]):
            parts += [op, sx(x)]
        return f"(cmp {' '.join(parts)})"
    if isinstance(e, ast.Call):
        args = [sx(a) for a in e.args] + [f"{k.name}={sx(k.value)}" for k in e.kwargs]
        return f"({e.func.id}{''.join(' ' + a for a in args)})"
    if isinstance(e, ast.Index):
        return f"{e.base.id}[{', '.join(sx(x) for x in e.indices)}]"
    raise TypeError(e)


def one(src: str) -> ast.Attention:
    (a,) = parse(src, "t.attn").attentions
    return a


def stages(src: str) -> dict[str, str]:
    """The stage assignments of a single attention, as S-expressions."""
    return {s.target.id: sx(s.value) for s in one(src).body if isinstance(s, ast.Assign)}


def expr(text: str) -> str:
    return stages(f"attention a {{ score = {text} }}")["score"]


# ---- declarations

def test_input_declarations():
    a = one("""
attention a {
    input slopes: f32[H]
    input doc: i32[B, N]
    input rel: bf16[H, 128]
    input qi: f16[B, M, 64]
    input flags: bool[B, N]
    input pos: i64[N]
    input temp: f32
}
""")
    decls = {d.name.id: (d.dtype.id, None if d.dims is None else tuple(x.value for x in d.dims)) for d in a.body}
    assert decls == {
        "slopes": ("f32", ("H",)), "doc": ("i32", ("B", "N")), "rel": ("bf16", ("H", 128)),
        "qi": ("f16", ("B", "M", 64)), "flags": ("bool", ("B", "N")), "pos": ("i64", ("N",)),
        "temp": ("f32", None),
    }


def test_const_declarations():
    a = one("attention a { const W = 1024; const T = 0.5; const F = false; const X = inf; const NEG = -3 }")
    consts = {d.name.id: sx(d.value) for d in a.body}
    assert consts == {"W": "1024", "T": "0.5", "F": "False", "X": "inf", "NEG": "(- 3)"}
    (ir_a,) = compile_source("attention a { const W = 1024; const T = 0.5; const F = false; const X = inf; "
                             "const NEG = -3 }")
    assert dict(ir_a.consts) == {"W": 1024, "T": 0.5, "F": False, "X": math.inf, "NEG": -3}


# ---- stages

def test_every_stage():
    src = """
attention every {
    input  w: f32[D]
    input  sinks: f32[H]
    input  gate: f32[B, H, M]
    q       = rmsnorm(rope(q, i), w)
    k       = rope(k, j, base = 500000.0)
    score   = dot(q, k) * scale
    mask    = causal
    select  = topk(16, by = score, keep = i - j < 4, share = group)
    norm    = softmax(sink = sinks[h])
    weights = p * 2
    out     = o * sigmoid(gate[b, h, m])
}
"""
    assert stages(src) == {
        "q": "(rmsnorm (rope q i) w)",
        "k": "(rope k j base=500000.0)",
        "score": "(* (dot q k) scale)",
        "mask": "causal",
        "select": "(topk 16 by=score keep=(cmp (- i j) < 4) share=group)",
        "norm": "(softmax sink=sinks[h])",
        "weights": "(* p 2)",
        "out": "(* o (sigmoid gate[b, h, m]))",
    }
    (a,) = compile_source(src)
    assert a.select.k == 16 and a.select.share and a.select.block is None
    assert a.norm.kind == "softmax" and a.norm.sink is not None
    assert all(getattr(a, st) is not None for st in ("q", "k", "mask", "weights", "out"))


def test_defaults():
    (a,) = compile_source("attention plain { }")
    assert a.q is a.k is a.mask is a.select is a.weights is a.out is None
    assert a.norm.kind == "softmax"


@pytest.mark.parametrize("select, want", [
    ("topk(8)", "(topk 8)"),
    ("topk(8, by = -sqdist(q, k))", "(topk 8 by=(- (sqdist q k)))"),
    ("topk(4, by = dot(q, kmean), block = 64)", "(topk 4 by=(dot q kmean) block=64)"),
    ("topk(4, by = dot(q, kmean), block = 64, keep = jb == i // 64 or jb == 0, share = group)",
     "(topk 4 by=(dot q kmean) block=64 keep=(or (cmp jb == (// i 64)) (cmp jb == 0)) share=group)"),
])
def test_select_forms(select, want):
    src = f"attention a {{ select = {select} }}"
    assert stages(src)["select"] == want
    compile_source(src)


@pytest.mark.parametrize("norm", ["softmax", "softmax(sink = 0.0)", "softmax(sink = sinks[h])",
                                  "sigmoid", "relu", "relu2", "none", "sum", "stickbreaking"])
def test_norm_forms(norm):
    (a,) = compile_source(f"attention a {{ input sinks: f32[H]\n norm = {norm} }}")
    assert a.norm.kind == norm.split("(")[0]
    assert (a.norm.sink is not None) == ("sink" in norm)


# ---- operators, functions, precedence (Python's)

@pytest.mark.parametrize("text, want", [
    ("a + b - c", "(- (+ a b) c)"),
    ("a * b / c // d % e", "(% (// (/ (* a b) c) d) e)"),
    ("a + b * c", "(+ a (* b c))"),
    ("a ** b ** c", "(** a (** b c))"),
    ("-x ** 2", "(- (** x 2))"),
    ("2 ** -1", "(** 2 (- 1))"),
    ("-a * b", "(* (- a) b)"),
    ("+a - -b", "(- (+ a) (- b))"),
    ("(a + b) * c", "(* (+ a b) c)"),
    ("causal and i - j < W", "(and causal (cmp (- i j) < W))"),
    ("a or b and c", "(or a (and b c))"),
    ("not a and b", "(and (not a) b)"),
    ("not not a", "(not (not a))"),
    ("not a == b", "(not (cmp a == b))"),
    ("0 <= i - j < W", "(cmp 0 <= (- i j) < W)"),
    ("a == b != c", "(cmp a == b != c)"),
    ("a < b or c >= d and e > f", "(or (cmp a < b) (and (cmp c >= d) (cmp e > f)))"),
    ("a <= b", "(cmp a <= b)"),
])
def test_precedence(text, want):
    assert expr(text) == want


@pytest.mark.parametrize("text", [
    "where(i > j, 1.0, 2.0)", "min(i, j)", "max(i, j)", "clamp(i - j, 0, 127)", "abs(i - j)",
    "exp(1.0)", "exp2(1.0)", "log(N)", "log2(N)", "sqrt(D)", "rsqrt(D)", "tanh(1.0)", "sigmoid(1.0)",
    "softplus(1.0)", "relu(i - j)", "sin(1.0)", "cos(1.0)", "floor(1.5)",
    "dot(q, k)", "sqdist(q, k)", "norm(q)", "norm(q) * norm(k)",
    "dot(rope(q, i), rope(k, j, base=10000.0))", "dot(l2norm(q), l2norm(k))", "dot(rmsnorm(q, w), k)",
    "where(window(8), 0.0, -1.0)",
])
def test_functions(text):
    src = f"attention a {{ input w: f32[D]\n score = {text} }}"
    assert expr(text).startswith("(")
    (a,) = compile_source(src)
    assert a.score.ty.kind == "float"


def test_call_arguments():
    assert expr("rope(q, i, base = 10.0)") == "(rope q i base=10.0)"
    assert expr("max(i, j,)") == "(max i j)"  # a trailing comma, as in Python
    assert expr("slopes[h]") == "slopes[h]"
    assert expr("doc[b, i] == doc[b, j]") == "(cmp doc[b, i] == doc[b, j])"
    assert expr("rel[h, clamp(i - j, 0, 127)]") == "rel[h, (clamp (- i j) 0 127)]"


# ---- literals

@pytest.mark.parametrize("text, value", [
    ("1", 1), ("1024", 1024), ("1.0", 1.0), ("1.", 1.0), (".5", 0.5), ("1e-3", 1e-3), ("2E+2", 200.0),
    ("1.5e3", 1500.0), ("true", True), ("false", False), ("inf", math.inf),
])
def test_literals(text, value):
    lit = one(f"attention a {{ score = {text} }}").body[0].value
    assert isinstance(lit, ast.Literal) and lit.value == value and type(lit.value) is type(value)


def test_keyword_prefixed_names_are_names():
    src = "attention a { const inff = 1.0; const nothing = 2; const order = 3; const android = 4\n" \
          "score = inff + nothing + order + android }"
    assert stages(src)["score"] == "(+ (+ (+ inff nothing) order) android)"


# ---- layout: statements, separators, comments, several attentions

def test_one_line_program():
    (a,) = compile_source("attention causal { mask = causal }")
    assert a.name == "causal" and a.mask is not None


def test_semicolons_and_newlines():
    one_line = "attention a { input s: f32[H]; const W = 4; score = s[h]; mask = i - j < W; norm = sigmoid }"
    multi = "attention a {\n  input s: f32[H]\n\n  const W = 4;\n  score = s[h];;\n  mask = i - j < W\n" \
            "  norm = sigmoid;\n}\n"
    assert compile_source(one_line) == compile_source(multi)


def test_newlines_inside_parentheses_and_brackets():
    src = """
attention a {
    input rel: f32[H,
                   128]
    score = dot(q,
                k) * scale + rel[h,
                                 clamp(i - j, 0, 127)]
    mask = (causal and
            i - j < 64)
}
"""
    assert stages(src) == {
        "score": "(+ (* (dot q k) scale) rel[h, (clamp (- i j) 0 127)])",
        "mask": "(and causal (cmp (- i j) < 64))",
    }


def test_comments():
    src = """# a file comment
attention a {   # after the brace
    # a whole-line comment
    score = dot(q, k)  # trailing comment
    mask = (causal  # inside parentheses
            and i - j < 8)
}
# the end
"""
    assert stages(src) == {"score": "(dot q k)", "mask": "(and causal (cmp (- i j) < 8))"}


def test_crlf_line_endings():
    src = "attention a {\r\n  mask = causal\r\n  norm = relu\r\n}\r\n"
    assert stages(src) == {"mask": "causal", "norm": "relu"}


def test_several_attentions_per_file():
    src = """
attention full { }

attention causal { mask = causal }
attention windowed {
    const W = 128
    mask = window(W)
}
"""
    mod = parse(src, "many.attn")
    assert [a.name.id for a in mod.attentions] == ["full", "causal", "windowed"]
    assert [a.name for a in compile_source(src)] == ["full", "causal", "windowed"]
    (w,) = compile_source(src, name="windowed", consts={"W": 256})
    assert dict(w.consts) == {"W": 256}


def test_empty_file_parses_to_no_attention():
    assert parse("# nothing here\n\n", "e.attn").attentions == ()


# ---- spans

def test_spans_are_one_based_and_cover_the_text():
    src = "attention a {\n    score = slopes[h] * 2\n}\n"
    st = one(src).body[0]
    assert (st.target.span.line, st.target.span.col) == (2, 5)
    idx = st.value.left
    assert isinstance(idx, ast.Index)
    s = idx.span
    assert (s.line, s.col, s.end_line, s.end_col) == (2, 13, 2, 22)
    assert s.source_line()[s.col - 1:s.end_col - 1] == "slopes[h]"

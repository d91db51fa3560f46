"""Every user mistake LANGUAGE.md lists is an AttnError at FILE:LINE:COL, quoting the
source line with a caret under the offending column; never a Python traceback."""

from __future__ import annotations

import re

import pytest

import attngen
from attngen.driver import compile_source

FILE = "spec.attn"


def error(src: str, **kw) -> attngen.AttnError:
    with pytest.raises(attngen.AttnError) as info:
        compile_source(src, FILE, **kw)
    return info.value


def check(src: str, line: int, col: int, *fragments: str, hint: str | None = None, width: int | None = None):
    """Assert the error's location, quoted line, caret and message fragments."""
    err = error(src)
    text = str(err)
    head, quoted, caret, *rest = text.split("\n")
    assert head.startswith(f"{FILE}:{line}:{col}: error: "), text
    assert quoted == "    " + src.split("\n")[line - 1], text
    assert caret.index("^") == 4 + col - 1, text
    if width is not None:
        assert len(caret.strip()) == width, text
    for f in fragments:
        assert f in head, text
    if hint is not None:
        assert rest and hint in rest[0] and rest[0].startswith("  hint: "), text
    return err


# ---- syntax

def test_unexpected_token():
    check("attention a {\n  score = dot(q, k) * * 2\n}", 2, 23, "unexpected '*'")


def test_unexpected_character():
    check("attention a {\n  score = dot(q, k) $ 2\n}", 2, 21, "unexpected character '$'")


def test_missing_closing_brace_at_eof():
    check("attention a {\n  mask = causal\n\n\n", 2, 16, "unexpected end of file", "'}'")


def test_missing_closing_parenthesis():
    check("attention a {\n  score = (dot(q, k)\n}\n", 3, 1, "unexpected '}'", hint="')'")
    check("attention a {\n  score = (dot(q, k)\n", 2, 21, "unexpected end of file", "')'")


def test_two_statements_on_one_line():
    check("attention a { mask = causal score = 1.0 }", 1, 29, "unexpected 'score'", hint="';'")


def test_missing_attention_keyword():
    check("atention a { }", 1, 1, "unexpected 'atention'")


def test_positional_after_keyword():
    check("attention a { k = rope(k, base = 10.0, j) }", 1, 40, "positional argument after a keyword")


def test_index_of_a_call():
    check("attention a { score = exp(1.0)[0] }", 1, 23, "only named tensors can be indexed")


# ---- names

def test_unknown_name_suggests_nearest():
    check("attention a {\n  score = dot(q, k) * scael\n}", 2, 23, "unknown name 'scael'",
          hint="did you mean 'scale'?", width=5)


def test_unknown_tensor_suggests_input():
    check("attention a {\n  input slopes: f32[H]\n  score = slope[h] * (j - i)\n}", 3, 11,
          "unknown input tensor 'slope'", hint="did you mean 'slopes'?")


def test_unknown_scalar_name_suggests_input():
    check("attention a { input slopes: f32[H]\n  score = slope * 2.0 }", 2, 11, "unknown name 'slope'",
          hint="did you mean 'slopes'?")


def test_unknown_const_name_suggests_const():
    check("attention a { const WINDOW = 8\n  mask = i - j < WINDW }", 2, 18, "unknown name 'WINDW'",
          hint="did you mean 'WINDOW'?")


def test_unknown_function_suggests_nearest():
    check("attention a { score = sigmod(dot(q, k)) }", 1, 23, "unknown function 'sigmod'",
          hint="did you mean 'sigmoid'?")
    check("attention a { score = exq(1.0) }", 1, 23, "unknown function 'exq'", hint="did you mean 'exp'?")


def test_function_used_as_a_name():
    check("attention a { score = exp }", 1, 23, "'exp' is a function")


def test_norm_called_inside_an_expression():
    check("attention a { score = softmax(1.0) }", 1, 23, "'softmax' is only allowed")


def test_v_in_an_expression():
    check("attention a { score = dot(q, v) }", 1, 30, "'v' cannot be used")


@pytest.mark.parametrize("src, line, col, name, stage", [
    ("attention a {\n  out = o * j\n}", 2, 13, "j", "the out stage"),
    ("attention a { q = q * j }", 1, 23, "j", "the q stage"),
    ("attention a { k = k * i }", 1, 23, "i", "the k stage"),
    ("attention a { score = p }", 1, 23, "p", "the score stage"),
    ("attention a { score = dot(o, k) }", 1, 27, "o", "the score stage"),
    ("attention a { weights = dot(q, k) }", 1, 29, "q", "the weights stage"),
    ("attention a { score = dot(q, kmean) }", 1, 30, "kmean", "the score stage"),
    ("attention a { select = topk(2, by = dot(q, k), block = 8) }", 1, 44, "k", "select's by="),
    ("attention a { select = topk(2, keep = j == 0, block = 8, by = jb) }", 1, 39, "j", "select's keep="),
    ("attention a { norm = softmax(sink = j) }", 1, 37, "j", "norm's sink="),
])
def test_name_not_available_in_stage(src, line, col, name, stage):
    check(src, line, col, f"'{name}' is not available in {stage}")


def test_h_not_available_in_k_prologue():
    check("attention a { input t: f32[H]\nk = k * t[h] }", 2, 11, "'h' is not available", hint="hk")


def test_causal_where_j_is_not_visible():
    check("attention a { out = where(causal, o, 0.0 * o) }", 1, 27, "'causal' needs 'j'")


# ---- stages

def test_stage_given_twice():
    check("attention a {\n  score = 1.0\n  score = 2.0\n}", 3, 3, "stage 'score' is given twice", "line 2")


def test_unknown_stage():
    check("attention a {\n  scroe = 1.0\n}", 2, 3, "unknown stage 'scroe'", hint="did you mean 'score'?")


def test_mask_not_boolean():
    check("attention a {\n  mask = i - j\n}", 2, 10, "mask must be a boolean", "got int", width=5)


def test_score_not_a_number():
    check("attention a { score = i < j }", 1, 23, "score stage must be a number", hint="where(")


def test_prologue_not_a_vector():
    check("attention a { q = dot(q, q) }", 1, 19, "q prologue must give a row vector")


def test_out_not_a_vector():
    check("attention a { out = 1.0 }", 1, 21, "out must be a row vector")


# ---- types

def test_index_not_integer():
    check("attention a { input s: f32[H]\n  score = s[1.5] }", 2, 13, "index expression is not an integer",
          hint="floor")
    check("attention a { input s: f32[H]\n  score = s[h / 2] }", 2, 13, "not an integer (it is float)")


def test_q_outside_a_vector_function():
    check("attention a {\n  score = q * 2\n}", 2, 11, "'q' is a row vector used outside a vector function",
          hint="dot()")
    # rows compare element by element (1.1); a row of booleans is still no mask
    check("attention a { mask = k > 0 }", 1, 22, "'k' is a row vector used outside a vector function in the mask")
    check("attention a { score = dot(q, k) + exp(k) }", 1, 39, "'k' is a row vector")


def test_rows_of_booleans_only_go_where_booleans_do():
    check("attention a {\n q = (q > 0.0) * 2.0\n}", 2, 7, "must be a number, got a row of booleans",
          hint="where(cond, a, b)")
    check("attention a {\n score = dot(q > 0.0, k)\n}", 2, 14, "dot() needs a row vector", "bvec[D]")
    check("attention a {\n q = q > 0.0\n}", 2, 6, "the q prologue must give a row vector, got bvec[D]")
    check("attention a {\n input w: f32[D]\n input u: f32[DV]\n score = dot(where(w > u, q, k), k)\n}",
          4, 20, "vector lengths differ")


def test_slices_take_constant_lanes_of_a_float_row():
    check("attention a {\n score = dot(q[0:i], k[0:8])\n}", 2, 18, "a slice bound must be a constant integer")
    check("attention a {\n score = dot(q[8:8], k[0:8])\n}", 2, 14, "a slice needs 0 <= lo < hi, got [8:8]")
    check("attention a {\n input w: f32[16]\n score = dot(w[8:24], k[0:16])\n}", 3, 14,
          "the slice [8:24] runs past the row's 16 lanes")
    check("attention a {\n score = dot(q, k)[0:4]\n}", 2, 10, "only a row can be sliced, got float")
    check("attention a {\n score = dot((q > 0.0)[0:4], k[0:4])\n}", 2, 15, "only a row can be sliced, got bvec[D]")
    check("attention a {\n score = dot(q[0:2000], k[0:2000])\n}", 2, 14, "longer than the 1024 a kernel row")
    check("attention a {\n score = dot(concat(q, q[0:4]), k[0:4])\n}", 2, 21, "concat() joins rows of integer lengths",
          hint="slice a row of length D or DV first")
    check("attention a {\n score = dot(concat(q[0:4], 1.0), k[0:4])\n}", 2, 29, "concat() needs a row vector")


PAIR_ROW = "a row that mixes the query and the key side (a pair vector)"


def test_what_moves_lanes_of_a_pair_row_is_refused():
    """The kernels evaluate pair rows (q - k, e[t] with t a pair index) lane by lane: a slice, concat or rope of one
    is refused at check time, with a caret on the row (rope: on the position that makes it one)."""
    check("attention a {\n score = sum(abs((q - k)[0:8]))\n}", 2, 19, "a slice of " + PAIR_ROW,
          hint="slice each side first: q[0:8] - k[0:8]", width=5)
    check("attention a {\n score = sum(concat(q[0:8], q[8:16] - k[8:16]))\n}", 2, 29, "concat() of " + PAIR_ROW,
          hint="join each side's rows first", width=17)
    check("attention a {\n score = dot(rope(q - k, i), q)\n}", 2, 19, "rope() of " + PAIR_ROW,
          hint="rope(q, i), rope(k, j)", width=5)
    check("attention a {\n score = dot(rope(q, j), k)\n}", 2, 22, "rope() of a row at a position of the other side",
          hint="rope(q, i), rope(k, j)", width=1)
    check("attention a {\n input e: f32[16, D]\n score = dot(rope(e[clamp(i - j, 0, 15)], i), q)\n}", 3, 19,
          "rope() of " + PAIR_ROW)
    # through a let, the caret is on the let's expression
    check("attention a {\n let d = q - k\n score = sum(d[0:4])\n}", 2, 10, "a slice of " + PAIR_ROW)


@pytest.mark.parametrize("score", ["-sum(abs(q - k)) * scale", "dot(w, tanh(q + k))", "dot(q, e[clamp(i - j, 0, 15)])",
                                   "dot(l2norm(q - k), w) + sum(rmsnorm(q + k, w))", "max(abs(q - k)) + norm(q - k)"])
def test_pair_vectors_pass_check(score):
    """Pair vectors (language 1.1) pass ``attngen check``, which also renders the kernels."""
    from attngen.codegen.render import render_module

    src = f"attention a {{\n input w: f32[D]\n input e: f32[16, D]\n score = {score}\n}}"
    render_module(compile_source(src, FILE), src, FILE, "check")


def test_one_dim_tensor_used_as_a_scalar():
    check("attention a { input slopes: f32[H]\nscore = dot(q, k) + slopes * (j - i) }", 2, 21,
          "'slopes' is a row vector", hint="slopes[...]")


def test_tensor_used_without_index():
    check("attention a { input bias: f32[H, N]\nscore = bias }", 2, 9, "input 'bias' is a tensor with 2 dim(s)",
          "bias[h, n]")


@pytest.mark.parametrize("index, got", [("s[h, j, j]", "not 3"), ("s[h, j, j, j]", "not 4")])
def test_too_many_indices(index, got):
    check(f"attention a {{ input s: f32[H, N]\n  score = {index} }}", 2, 11, "'s' has 2 dim(s)", got)


def test_too_few_indices():
    check("attention a { input s: f32[B, H, N]\n  score = dot(q, k) * s[b] }", 2, 23, "give 3 indices", "not 1")


def test_indexing_a_scalar_or_builtin():
    check("attention a { input t: f32\nscore = t[0] }", 2, 9, "'t' is a scalar and cannot be indexed")
    check("attention a { score = scale[0] }", 1, 23, "'scale' cannot be indexed")


def test_vector_length_mismatch():
    check("attention a { input w: f32[DV]\n  q = rmsnorm(q, w) }", 2, 18, "rmsnorm() weight length")


def test_wrong_argument_count():
    check("attention a { score = clamp(1.0, 2.0) }", 1, 23, "clamp() takes 3 argument(s), got 2")


def test_unknown_keyword_argument():
    check("attention a { k = rope(k, j, bas = 10.0) }", 1, 30, "rope() takes no keyword 'bas'",
          hint="did you mean 'base'?")


def test_boolean_arithmetic():
    check("attention a { score = (i < j) + 1.0 }", 1, 24, "left operand of '+' must be a number")


# ---- declarations

def test_unsupported_dtype_names_it():
    err = check("attention a {\n  input x: f64[H]\n}", 2, 12, "unsupported dtype 'f64'", width=3)
    assert "f32 f16 bf16 i32 i64 bool" in err.hint
    check("attention a { input x: u8[H] }", 1, 24, "unsupported dtype 'u8'")


def test_scalar_input_must_be_float():
    check("attention a { input n: i32 }", 1, 24, "scalar inputs must be f32")


def test_unknown_dimension():
    check("attention a { input x: f32[H, SEQ] }", 1, 31, "unknown dimension 'SEQ'")


def test_redeclared_builtin_and_duplicate_declaration():
    check("attention a { input scale: f32 }", 1, 21, "'scale' is a built-in name")
    check("attention a { const W = 1\nconst W = 2 }", 2, 7, "'W' is declared twice")


def test_const_must_be_literal():
    check("attention a { const W = 2 * 3 }", 1, 25, "a const must be a literal")


def test_duplicate_attention():
    check("attention a { }\nattention a { }", 2, 11, "attention 'a' is defined twice")


# ---- select and norm forms

@pytest.mark.parametrize("select, col, msg", [
    ("4", 24, "select must be topk("),
    ("topk(4, 5)", 24, "exactly one positional argument"),
    ("topk(0)", 29, "K must be a positive integer constant"),
    ("topk(2.5)", 29, "K must be a positive integer constant"),
    ("topk(4, bye = score)", 32, "topk() takes no keyword 'bye'"),
    ("topk(4, by = score, by = score)", 44, "topk() got 'by' twice"),
    ("topk(4, share = heads)", 40, "share must be 'group'"),
    ("topk(4, block = 0, by = jb)", 40, "block must be a positive integer constant"),
    ("topk(4, block = 16)", 24, "a block selection needs by="),
    ("topk(4, keep = i - j)", 39, "keep must be a boolean"),
])
def test_bad_select(select, col, msg):
    check(f"attention a {{ select = {select} }}", 1, col, msg)


@pytest.mark.parametrize("norm, col, msg, hint", [
    ("softmx", 22, "unknown norm 'softmx'", "did you mean 'softmax'?"),
    ("sigmoid(sink = 0.0)", 22, "unknown norm 'sigmoid'", None),
    ("softmax(2)", 22, "softmax takes one keyword", None),
    ("softmax(snk = 0.0)", 22, "softmax takes one keyword", None),
    ("3", 22, "norm must be one of", None),
    ("softmax(sink = i < 2)", 37, "sink stage must be a number", None),
])
def test_bad_norm(norm, col, msg, hint):
    check(f"attention a {{ norm = {norm} }}", 1, col, msg, hint=hint)


# ---- const overrides (from -D or consts=): no source location, but a clear message

def test_override_of_unknown_const():
    err = error("attention a { const WINDOW = 8 }", consts={"WINDW": 3})
    assert str(err).startswith(f"error: no const 'WINDW' in {FILE}")
    assert err.hint == "did you mean 'WINDOW'?"
    err = error("attention a { const A = 1 }", consts={"ZZZ": 3})
    assert "its consts are A" in err.hint
    assert "declares no const" in error("attention a { }", consts={"W": 1}).hint


def test_override_of_wrong_type():
    check_err = error("attention a { const W = 8 }", consts={"W": 1.5})
    assert "const 'W' is int, got 1.5" in str(check_err)


def test_unknown_attention_name():
    err = error("attention causal { }", name="casual")
    assert "no attention named 'casual'" in str(err) and err.hint == "did you mean 'causal'?"


def test_file_without_attention():
    assert "no 'attention' block" in str(error("# empty\n"))


# ---- presentation

def test_caret_follows_tabs():
    text = str(error("attention a {\n\tscore =\tscael\n}"))
    assert text.split("\n")[2] == "    \t       \t^~~~~"


def test_errors_are_attn_errors_not_tracebacks():
    """Each family of mistakes raises attngen.AttnError (never Lark's or Python's own errors)."""
    for src in ["attention a { score = exp(x = 1, 2) }", "attention a {", "attention a { input x: f64 }",
                "attention a { score = (1.0 }", "attention { }", "}", "attention a { score = 1 +\n }",
                "attention a { input x: f32[H]; score = x[h][h] }"]:
        assert isinstance(error(src), attngen.AttnError)


@pytest.mark.parametrize("src, fragment", [
    ("attention a { score = max(1.0) }", "max() of one argument reduces a row, got float"),
    ("attention a { score = mean(dot(q, k)) }", "mean() of one argument reduces a row, got float"),
    ("attention a { score = sum(dot(q, k)) }", "'sum' is only allowed as the whole value of the norm stage"),
])
def test_row_reductions_need_a_row(src, fragment):
    """sum/mean/max/min of one argument reduce a row (language 1.1); of a number they are refused."""
    with pytest.raises(attngen.AttnError, match=re.escape(fragment)):
        compile_source(src)

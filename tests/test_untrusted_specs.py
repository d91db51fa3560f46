"""Issue 15, item 3: hostile or odd spec text gives an AttnError with a caret, never a traceback,
and every spec that `attngen check` accepts renders, imports and runs (checked against the
reference on tiny shapes, forward and gradients)."""

from __future__ import annotations

import ast
import builtins
import glob
import re

import pytest
import torch

import attngen
from attngen.codegen.render import render_module
from attngen.frontend.limits import MAX_DEPTH
from attngen.ir import reserved
from attngen.driver import compile_source

FILE = "spec.attn"


def error(src: str, **kw) -> str:
    with pytest.raises(attngen.AttnError) as info:
        compile_source(src, FILE, **kw)
    text = str(info.value)
    assert text.startswith(f"{FILE}:"), text
    assert "^" in text.split("\n")[2], text
    return text


def located(src: str, at, fragment: str) -> None:
    """The error is at the first occurrence of the text ``at`` (or at (line, col))."""
    if isinstance(at, str):
        before = src[:src.index(at)]
        line, col = before.count("\n") + 1, len(before) - (before.rfind("\n") + 1) + 1
    else:
        line, col = at
    text = error(src)
    head, quoted, caret = text.split("\n")[:3]
    assert head.startswith(f"{FILE}:{line}:{col}: error: ") and fragment in head, text
    assert caret.index("^") == 4 + col - 1, text


# ---- tracebacks from `attngen check`

@pytest.mark.parametrize("op", ["-", "+", "not "])
def test_deep_unary_chains(op):
    atom = "true" if op == "not " else "1.0"
    stage = "mask" if op == "not " else "score"
    text = error(f"attention a {{ {stage} = {op * 490}{atom} }}")
    assert f"more than {MAX_DEPTH} levels" in text


def test_deep_calls_and_sums():
    assert "nested too deeply" in error("attention a { score = " + "abs(" * 246 + "1.0" + ")" * 246 + " }")
    assert "nested too deeply" in error("attention a { score = " + " + ".join(["1.0"] * 2000) + " }")
    # the caret is where the limit is passed: the 101st level
    located("attention a { score = " + "-" * (MAX_DEPTH + 1) + "1.0 }", (1, 23 + MAX_DEPTH), "nested too deeply")


def test_nesting_at_the_limit_compiles():
    src = "attention a { score = dot(q, k) + " + "abs(" * (MAX_DEPTH - 1) + "1.0" + ")" * (MAX_DEPTH - 1) + " }"
    attns = compile_source(src, FILE)
    compile(render_module(attns, src, FILE, "k"), "m.py", "exec")
    # parentheses alone are no level
    compile_source("attention a { score = " + "(" * 500 + "1.0" + ")" * 500 + " }", FILE)


def test_huge_literals():
    located("attention a { mask = i < " + "9" * 5000 + " }", "9", "integer literal out of range")
    located("attention a { score = dot(q, k) * 1" + "0" * 309 + " }", "10", "integer literal out of range")
    located("attention a { q = rope(q, i, base = 1" + "0" * 400 + ".0) }", "10", "too large for a float32")
    located("attention a { norm = softmax(sink = 1e39) }", "1e39", "too large for a float32")
    located("attention a { input s: f32[99999999999]\n score = dot(q, k) }", "9", "out of range")
    compile_source("attention a { mask = i < 2147483647 }", FILE)


@pytest.mark.parametrize("odd", ["\x0c", "\x85", "\u2028", "\x1c"])
def test_odd_line_breaks_before_a_syntax_error(odd):
    located(f"attention a {{ # {odd}\n  score = $ }}", "$", "unexpected character '$'")
    if odd == "\x0c":  # whitespace to the lexer (the others are only allowed in comments)
        located(f"attention a {{{odd}\n  score = ) }}", ")", "unexpected ')'")


def test_lone_surrogate():
    text = error("attention a { # \ud800\n mask = causal }")
    assert "surrogate" in text and "1:17" in text
    text.encode("utf-8")  # printable


# ---- crashes in code generation of checked specs

@pytest.mark.parametrize("base", ["-1.0", "0.0", "inf"])
def test_rope_base_must_be_positive(base):
    located(f"attention a {{ q = rope(q, i, base = {base}) }}", base, "positive finite")


@pytest.mark.parametrize("expr, why", [
    ("(-8.0) ** 0.5", "no real value"), ("1.0 / 0.0", "division by zero"),
    ("dot(q, k) / (1.0 - 1.0)", "division by zero"), ("log(-1.0)", "no real value"),
    ("exp(1000.0)", "no real value"), ("1e38 * 10.0", "float32 range"), ("inf - inf", "no real value"),
])
def test_constant_expressions_without_a_value(expr, why):
    located(f"attention a {{ score = dot(q, k) + ({expr}) }}", expr, why)


def test_integer_constants_stay_in_int32():
    located("attention a { mask = i * (65536 * 65536) > 0 }", "65536", "int32")
    located("attention a { mask = i < 2 ** 40 }", "2 **", "int32")
    # found by the fuzz campaign: folding this took minutes and gigabytes
    located("attention a { mask = i < 3 ** 2000000000 }", "3 **", "overflow")
    located("attention a { select = topk(" + "9" * 30 + ") }", "9", "out of range")
    located("attention a { select = topk(100000) }", "1000", "at most 65536")


def test_sink_must_be_finite():
    located("attention a { norm = softmax(sink = inf) }", "inf", "finite")
    located("attention a { norm = softmax(sink = inf + 1.0) }", "inf", "finite")


@pytest.mark.parametrize("value", [float("nan"), 2**40, 1e300])
def test_bad_const_overrides(value):
    src = "attention a { const W = 4.0\n score = dot(q, k) * W }"
    if isinstance(value, int):
        src = "attention a { const W = 4\n mask = window(W) }"
    with pytest.raises(attngen.AttnError, match="const 'W'"):
        compile_source(src, FILE, consts={"W": value})


def test_nan_override_on_the_command_line(tmp_path):
    from click.testing import CliRunner

    from attngen.cli import main

    p = tmp_path / "w.attn"
    p.write_text("attention a { const W = 4.0\n score = dot(q, k) * W }\n")
    res = CliRunner().invoke(main, ["show", str(p), "-D", "W=nan"])
    assert res.exit_code == 1 and "const 'W'" in res.output and "Traceback" not in res.output


# ---- names

@pytest.mark.parametrize("name", ["class", "lambda", "torch", "tl", "triton", "math", "os", "sys", "_x", "len",
                                  "sum"])
def test_reserved_attention_names(name):
    located(f"attention {name} {{}}", name, "")


@pytest.mark.parametrize("name", ["lambda", "None", "torch", "tl", "math", "ctx", "self", "fn", "return_lse",
                                  "prepared", "validate", "block_table", "seqlens_k", "cu_seqlens_q",
                                  "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "inputs", "seq", "_sel",
                                  "d_sel", "isinstance"])
def test_reserved_input_names(name):
    located(f"attention a {{ input {name}: f32[H] }}", name + ":", "")


def test_names_that_only_clash_together():
    located("attention a { input x: f32[H]; input dx: f32[H] }", "dx", "clash")
    located("attention a {}\nattention a_prepare {}", "a_prepare", "clash")
    located("attention a {}\nattention a_fwd {}", "a_fwd", "clash")  # a's forward kernel
    compile_source("attention a {}\nattention a_window {}\nattention ab {}\nattention AB {}", FILE)


def test_attention_names_never_meet_the_runtime():
    """An attention's description is ``_attention_NAME``, a prefix no name of the embedded runtime has,
    so attentions may be named like its helpers (sigmoid, tuned, choose)."""
    assert not any(n.startswith("_attention_") for n in reserved.runtime_names())
    for name in ("sigmoid", "tuned", "choose", "launch", "check"):
        compile_source(f"attention {name} {{}}", FILE)


def _module(path):
    src = open(path).read()
    attns = compile_source(src, path)
    return attns, ast.parse(render_module(attns, src, path, "k"))


@pytest.mark.parametrize("path", sorted(glob.glob("examples/*.attn")))
def test_reserved_lists_cover_the_generated_module(path):
    """Every name the rendered module binds, and every name a function taking the inputs uses,
    is reserved or derived from an attention's name: a template using a new one fails here."""
    attns, tree = _module(path)
    inputs = {d.name for a in attns for d in a.inputs}
    derived = set().union(*(reserved.generated_names(a.name) for a in attns))
    for node in tree.body:
        names = [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else \
            [t.id for t in getattr(node, "targets", []) if isinstance(t, ast.Name)] + \
            [(x.asname or x.name).split(".")[0] for x in getattr(node, "names", []) if isinstance(node, (ast.Import, ast.ImportFrom))]
        for n in names:
            if n in derived or n in reserved.MODULE_NAMES:
                continue
            assert n.startswith("_"), f"{n}: add it to reserved.MODULE_NAMES"
            # the embedded runtime's names are read from its source; anything else is the template's
            assert n in reserved.runtime_names() or n == "_MODULE_KEY", f"{n}: a template binds a new name"
    for f in ast.walk(tree):
        if isinstance(f, ast.FunctionDef) and {a.arg for a in f.args.args + f.args.kwonlyargs} & inputs:
            # names local to a comprehension or a lambda cannot meet an input's parameter
            local = {n.id for c in ast.walk(f) if isinstance(c, ast.comprehension) for n in ast.walk(c.target)
                     if isinstance(n, ast.Name)}
            local |= {x.arg for lam in ast.walk(f) if isinstance(lam, ast.Lambda) for x in lam.args.args}
            used = {n.id for n in ast.walk(f) if isinstance(n, ast.Name)} | {x.arg for x in f.args.args + f.args.kwonlyargs}
            for n in used - inputs - derived - local:
                if n.startswith("_") or n in reserved.MODULE_NAMES:
                    continue
                if hasattr(builtins, n):
                    assert n in reserved.CALL_BUILTINS, f"{f.name} uses {n}: add it to CALL_BUILTINS"
                else:
                    assert n in reserved.CALL_NAMES, f"{f.name} uses {n}: add it to CALL_NAMES"
    kernel_args = {n.arg for n in ast.walk(tree) if isinstance(n, ast.arg) and re.search(r"_ptr$|_s\d+$", n.arg)}
    for n in kernel_args:
        assert any(n.startswith((x + "_", "d" + x + "_")) for x in inputs | {"_sel"}), n


# ---- specs check accepts run correctly on both backends

def _run_both(src, inputs, consts=None):
    """o and gradients of q, k, v and the inputs: the kernels (float32) against the reference (float64)."""
    g = torch.Generator().manual_seed(0)
    B, H, M, N, D = 1, 2, 17, 17, 16
    base = [torch.randn(*s, generator=g, dtype=torch.float64) for s in ((B, H, M, D), (B, H, N, D), (B, H, N, D))]
    xs = {n: f(g) for n, f in inputs.items()}
    out = []
    for backend, dtype in (("reference", torch.float64), ("triton", torch.float32)):
        fn = attngen.jit(src, consts=consts, backend=backend)
        leaves = [t.detach().to(dtype).requires_grad_() for t in base]
        kw = {n: (x.detach().to(dtype).requires_grad_() if x.is_floating_point() and x.dim() else x) for n, x in xs.items()}
        o = fn(*leaves, **kw)
        w = torch.sin(torch.arange(o.numel(), dtype=dtype)).reshape(o.shape)
        (o * w).sum().backward()
        grads = [t.grad for t in leaves] + [x.grad for x in kw.values() if isinstance(x, torch.Tensor) and x.requires_grad]
        out.append([o] + [torch.zeros(()) if t is None else t for t in grads])
    for want, got in zip(*out):
        torch.testing.assert_close(got.double().expand_as(want) if got.dim() == 0 else got.double(),
                                   want.double() if want.dim() else want.double().expand_as(got), atol=2e-4, rtol=2e-4)


def test_row_weights_with_gradients():
    _run_both("attention a { input alpha: f32[B, H, M]\n weights = alpha[b, h, m] }",
              {"alpha": lambda g: torch.randn(1, 2, 17, generator=g, dtype=torch.float64)})


def test_row_score_with_gradients():
    _run_both("attention a { input alpha: f32[B, H, M]\n score = alpha[b, h, m] }",
              {"alpha": lambda g: torch.randn(1, 2, 17, generator=g, dtype=torch.float64)})


def test_empty_input_dim_runs():
    _run_both("attention a { input s: f32[0]\n score = dot(q, k) }", {"s": lambda g: torch.zeros(0, dtype=torch.float64)})


def test_constant_integer_division_by_zero_runs():
    _run_both("attention a { mask = i + 7 // 0 >= j + 7 % 0 }", {})


def test_a_vector_mixing_q_and_k_runs():
    """Found by the fuzz campaign: a vector mixing q and k, which the kernels refused at load time; a pair
    vector (language 1.1), it now runs lane by lane, in the mask too (a margin keeps float32 and float64 on
    the same side of it)."""
    _run_both("attention a { score = dot(q, k)\n mask = dot(q * k, q) > -1.5 or causal }", {})

"""Property: any text given to the compiler either compiles or raises AttnError (never another
exception, never over 5 s), and an accepted spec renders to a module that compiles as Python.

Specs come from the grammar (hypothesis' ``from_lark`` on grammar/attn.lark) and from mutations
of examples/*.attn: token insertions, deletions and swaps, deep nesting, huge literals, odd
unicode and names the generated module uses. CI runs a small deterministic budget; a campaign
runs ``pytest tests/test_fuzz.py --fuzz 20000 -p no:xdist`` (examples per property;
the option sets ``ATTNGEN_FUZZ``).
"""

from __future__ import annotations

import glob
import os
import re
import time

import lark
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.lark import from_lark

from attngen import paths
from attngen.codegen.analysis import CodegenError
from attngen.codegen.render import render_module
from attngen.frontend.errors import AttnError
from attngen.driver import compile_source

BUDGET = int(os.environ.get("ATTNGEN_FUZZ", "60"))
SETTINGS = settings(max_examples=BUDGET, deadline=None, derandomize=BUDGET <= 200, database=None,
                    suppress_health_check=list(HealthCheck))

EXAMPLES = [open(p).read() for p in sorted(glob.glob("examples/*.attn"))]
_TOKEN = re.compile(r"\*\*|//|==|!=|<=|>=|[A-Za-z_][A-Za-z0-9_]*|\d+\.\d*|\d+|\s+|#[^\n]*|.", re.S)
PIECES = ["(", ")", "[", "]", ",", "=", "-", "not ", "**", "//", "\n", ";", "{", "}", "causal", "q", "k",
          "topk(", "rope(", "where(", "dot(q, k)", "inf", "0", "0.0", "1e39", "9" * 40, "2147483648", "** 2000000000", "** 99",
          "\x0c", "\x85", "\u2028", "\ud800", "é", "\0", "class", "lambda", "torch", "tl", "ctx", "self",
          "return_lse", "prepared", "scale", "_x", "input ", "const ", "attention ", "score", "mask", "weights",
          "let ", "let x = ", " x ", "\nlet y = x + x\n",
          # language 1.1: slices, concat, rows of booleans
          ":", "[0:4]", "[4:2]", "[0:99999]", "concat(", "concat(q[0:4], k[0:4])", "q > 0.0", "where(q > 0.0, q, 1.0)",
          # row aggregates and key scans
          "rowsum(", "rowmax(score)", "rowcount()", "rowmean(score * score)", "suffixsum(", "suffixsum(1.0)",
          "suffixsum(sigmoid(dot(q, k)))", "norm = none\n"]
NESTERS = [("-", ""), ("not ", ""), ("abs(", ")"), ("(", ")"), ("sigmoid(", ")"), ("1.0 + ", "")]


@st.composite
def mutated(draw) -> str:
    toks = _TOKEN.findall(draw(st.sampled_from(EXAMPLES)))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["insert", "delete", "swap", "nest", "replace"]))
        at = draw(st.integers(0, max(0, len(toks) - 1)))
        if kind == "insert":
            toks.insert(at, draw(st.sampled_from(PIECES)))
        elif kind == "delete" and toks:
            del toks[at]
        elif kind == "swap" and len(toks) > 1:
            other = draw(st.integers(0, len(toks) - 1))
            toks[at], toks[other] = toks[other], toks[at]
        elif kind == "nest" and toks:
            left, right = draw(st.sampled_from(NESTERS))
            depth = draw(st.sampled_from([2, 99, 101, 600]))
            toks[at] = left * depth + toks[at] + right * depth
        elif toks:
            toks[at] = draw(st.sampled_from(PIECES))
    return "".join(toks)


def check_one(text: str) -> None:
    start = time.perf_counter()
    try:
        attns = compile_source(text, "fuzz.attn")
    except AttnError as err:
        str(err).encode("utf-8")  # the message prints
        return
    finally:
        assert time.perf_counter() - start < 5.0, f"compile took over 5 s: {text!r}"
    try:
        module = render_module(attns, text, "fuzz.attn", "fuzz")
    except CodegenError as err:  # a spec the kernels refuse at load time (README), with its caret
        assert err.span is not None, str(err)
        return
    compile(module, "fuzz_module.py", "exec")


@SETTINGS
@given(mutated())
def test_mutated_examples(text):
    check_one(text)


def _lark_strategy():
    g = lark.Lark(paths.grammar_file().read_text(), parser="lalr")
    return from_lark(g, start="start", explicit={"_NL": st.just("\n"), "COMMENT": st.just("# c\n")})


@SETTINGS
@given(st.deferred(_lark_strategy))
def test_grammar_generated(text):
    check_one(text)

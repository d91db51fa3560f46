"""A query row's dot with a table row picked per pair (codegen/tables.py: CoPE's ``dot(q, e[t])``): what
takes the path, and the kernels (TRITON_INTERPRET=1) against the float64 reference, forward and every
gradient, e's included."""

from __future__ import annotations

import pytest
import torch

from attngen.codegen import tables
from attngen.codegen.kernel_plan import choose
from attngen.codegen.plan import make_plan
from attngen.driver import compile_source, optimize
from attngen.ir import nodes as ir
from attngen.verify import assert_close, compare


def _attn(body: str):
    return optimize(compile_source(f"attention t {{\n{body}\n}}")[0])


def _dots(a):
    decls = {d.name: d for d in a.inputs}
    return [n for n in ir.walk(a.score) if tables.match(n, decls)]


@pytest.mark.parametrize("body,takes", [
    ("input e: f32[16, D]\n score = dot(q, e[min(i - j, 15)])", True),
    ("input e: f32[16, D]\n score = dot(e[min(i - j, 15)], l2norm(q))", True),  # either side, a value of q
    ("input e: f32[16, D]\n score = dot(k, e[min(i - j, 15)])", False),  # the key side: lane by lane
    ("input e: f32[N, D]\n score = dot(q, e[j])", False),  # not a pair index
    ("input e: f32[M, D]\n score = dot(q, e[i - j])", False),  # rows not a literal: lane by lane
    ("input e: f32[512, D]\n score = dot(q, e[i - j])", False),  # more rows than MAX_ROWS
])
def test_what_takes_the_table_path(body, takes):
    a = _attn("mask = causal\n " + body)
    assert bool(_dots(a)) == takes


SPECS = {
    # CoPE-like: indices capped at the table's last row, so tiles far from the diagonal pick one row; x a value
    # of q
    "capped": "input e: f32[16, D]\n score = dot(q, k) * scale + dot(l2norm(q), e[min(i - j, 15)])\n mask = causal",
    # indices outside the table pick 0; the table on the left
    "outside": "input e: f32[8, D]\n score = dot(q, k) * scale + 0.5 * dot(e[j - i + 4], q)\n mask = causal",
    # a table of 5 rows (16 in registers), two dots of one table, no mask
    "two": "input e: f32[5, D]\n score = dot(q, k) * scale + dot(q, e[(i + j) % 5]) - dot(q, e[(i * j) % 5]) * 0.3",
}


@pytest.mark.interpret
@pytest.mark.parametrize("name", sorted(SPECS))
def test_kernels(name):
    a = compile_source(f"attention t {{\n{SPECS[name]}\n}}", f"{name}.attn")[0]
    plan = make_plan(optimize(a))
    assert plan.table_dots and not plan.pair_rows
    assert any("table dots" in line for line in choose(plan).notes(plan))
    assert_close(compare(a, M=67, N=67, D=40, DV=24, dtype=torch.float32))
    assert_close(compare(a, B=1, H=2, HK=1, M=37, N=45, D=32, DV=16, dtype=torch.float32, seed=1))

"""Each kernel takes only the runtime arguments its body reads (codegen/params.py), and the runtime
binds them by name (launch._bind): the names the code generator may give a kernel are the names the
runtime provides."""

from __future__ import annotations

import textwrap

import pytest
import torch

from attngen.codegen import params
from attngen.codegen.plan import make_plan
from attngen.driver import compile_source, generate
from attngen.passes.pipeline import run_pipeline

from example_specs import EXAMPLES, shrunk


def test_lean_keeps_the_parameters_each_kernel_reads():
    names = ["Q", "stride_qm", "K", "DQ", "scale"]
    block = params.wrapped(names)
    text = textwrap.dedent("""\
        @triton.jit
        def a(
            {block},
            BLOCK: tl.constexpr,
        ):
            x = tl.load(Q + stride_qm)  # K and DQ only in a comment
            tl.store(Q, x * scale)


        @triton.jit
        def b(
            {block},
            KM, NB,
        ):
            tl.store(DQ, tl.load(K + NB))
        """).replace("{block}", block)
    lean = params.lean(text, names)
    assert "def a(\n    Q, stride_qm, scale,\n    BLOCK: tl.constexpr,\n):" in lean
    assert "def b(\n    K, DQ,\n    KM, NB,\n):" in lean


def test_a_kernel_that_reads_none_of_them_starts_with_its_own():
    text = f"def k(\n    {params.wrapped(['Q', 'K'])},\n    N,\n):\n    return N\n"
    assert params.lean(text, ["Q", "K"]) == "def k(\n    N,\n):\n    return N\n"


INPUTS = ("attention t {\n input slopes: f32[H]\n input g: f32\n"
          " score = dot(q, k) * scale * g + slopes[h] * (j - i)\n mask = causal\n}")


@pytest.mark.parametrize("path", [p for p in EXAMPLES if p.stem in ("moba", "dsa_indexer", "document_mask")],
                         ids=lambda p: p.stem)
def test_runtime_names_every_parameter_the_generator_may_give(path):
    """Block and token selections (their select, listed and block-sparse kernels), tile lists (classify)."""
    a = shrunk(path, None, {})
    _check(run_pipeline(a), generate([a]).render())


def test_runtime_names_the_parameters_of_inputs():
    a = compile_source(INPUTS)[0]
    _check(run_pipeline(a), generate([a]).render())


def _check(optimized, text):
    plan = make_plan(optimized)
    ns: dict = {"__name__": "generated"}
    exec(compile(text, "<generated>", "exec"), ns)
    at = ns[f"_attention_{plan.attn.name}"]
    q = torch.zeros(1, 2, 8, 16)
    dims = {n: len(d[1] or ()) for n, d in at.decls.items()} | {"_sel": 4}  # the selection: [B, heads, M, blocks or K]
    xs = {n: (1.0 if scalar else torch.zeros([2] * dims[n])) for n, scalar, _ in at.all_inputs}
    named = at.args(q, q, q, q, q, q, q, q, q, q, q, q, q, (q, q), q, q, q, xs, xs,
                    {"B": 1, "H": 2, "HK": 2, "M": 8, "N": 8, "TQ": 8}, 1.0)
    assert set(named) == set(params.shared(plan))
    for kernel in at.kernels.values():
        if kernel.arg_names[0] not in named:
            continue  # one with arguments of its own, launched by position (the block-sparse merge and place)
        shared = [n for n in kernel.arg_names if n in named]
        assert shared == [n for n in params.shared(plan) if n in shared]  # in the generator's order


def test_a_float_only_its_prelude_cast_reads_goes_with_the_cast():
    names = ["Q", "scale"]
    text = (f"def k(\n    {params.wrapped(names)},\n):\n"
            "    scale = tl.cast(scale, tl.float32)  # the prelude's pin\n    tl.store(Q, 1.0)\n\n\n"
            f"def r(\n    {params.wrapped(names)},\n):\n"
            "    scale = tl.cast(scale, tl.float32)\n    tl.store(Q, scale)\n")
    lean = params.lean(text, names)
    assert lean.startswith("def k(\n    Q,\n):\n    tl.store(Q, 1.0)\n")
    assert "def r(\n    Q, scale,\n):\n    scale = tl.cast(scale, tl.float32)\n    tl.store(Q, scale)\n" in lean

"""attngen attentions as torch.library operators (attngen.runtime.ops): opcheck, torch.compile with
fullgraph=True and no graph breaks, forward and backward matching eager, and no recompile for a
new sequence length with dynamic=True. On CPU the compiled graphs run with the aot_eager backend
(the operators stay opaque, their kernels run under TRITON_INTERPRET=1); the GPU suite compiles
with Inductor."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import attngen
from attngen.bench.inputs import make_inputs
from attngen.driver import compile_file

pytestmark = pytest.mark.interpret

SPECS = {
    # static mask, a float input with a gradient, a Python-float scalar input
    "alibi": "input slopes: f32[H]\n input t: f32\n score = dot(q, k) * scale * t + slopes[h] * (j - i)\n"
             " mask = causal",
    # data-dependent mask: tile lists built inside the operator, again in the backward
    "doc": "input doc: i32[B, N]\n mask = causal and doc[b, i] == doc[b, j]",
    # an out stage: o before it is a saved output of the forward operator
    "gated": "input g: f32[B, H, M]\n mask = causal\n out = o * sigmoid(g[b, h, m])",
    # block selection: the selection and the block-sparse entries (data-dependent sizes) are outputs
    "moba": "mask = causal\n select = topk(2, by = dot(q, kmean), block = 16, keep = jb == i // 16)",
}


def _fn(name):
    return attngen.jit(f"attention {name} {{\n {SPECS[name]}\n}}")


def _inputs(name, B=1, H=4, HK=2, M=40, N=40, D=16, grad=True):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, H, M, D, generator=g), torch.randn(B, HK, N, D, generator=g),
               torch.randn(B, HK, N, D, generator=g))
    xs = {"alibi": lambda: {"slopes": torch.rand(H, generator=g), "t": 0.7},
          "doc": lambda: {"doc": (torch.arange(N) * 3 // N).to(torch.int32).expand(B, N).contiguous()},
          "gated": lambda: {"g": torch.randn(B, H, M, generator=g)},
          "moba": lambda: {}}[name]()
    for t in (q, k, v, *xs.values()):
        if grad and isinstance(t, torch.Tensor) and t.is_floating_point():
            t.requires_grad_(True)
    return (q, k, v), xs


def _grads(out, tensors):
    return torch.autograd.grad(out.square().sum(), [t for t in tensors if t.requires_grad])


def _op(fn, name):
    module = fn.module
    return getattr(module, f"_attention_{name}").ops


@pytest.mark.parametrize("name", sorted(SPECS))
def test_opcheck(name):
    """The forward and backward operators' schemas, fake implementations and autograd registration."""
    fn = _fn(name)
    ops = _op(fn, name)
    (q, k, v), xs = _inputs(name)
    is_tensor = [isinstance(xs[n], torch.Tensor) for n in ops.names]
    tensors = [xs[n] for n, t in zip(ops.names, is_tensor) if t]
    floats = [float(xs[n]) for n, t in zip(ops.names, is_tensor) if not t]
    args = (q, k, v, 0.25, tensors, floats, is_tensor, None, None, 0, 0, 0)
    # the block-sparse entries have data-dependent sizes: no static shape to check there
    tests = ("test_schema", "test_autograd_registration") if ops.gathered else \
        ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(ops.fwd, args, test_utils=tests)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_fullgraph_matches_eager(name):
    fn = _fn(name)
    (q, k, v), xs = _inputs(name)
    tensors = (q, k, v, *[x for x in xs.values() if isinstance(x, torch.Tensor)])
    o = fn(q, k, v, **xs)
    want = _grads(o, tensors)
    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v, **xs: fn(q, k, v, **xs) * 2.0, fullgraph=True, backend="aot_eager")
    o2 = compiled(q, k, v, **xs)
    torch.testing.assert_close(o2, o * 2.0)
    for a, b in zip(_grads(o2 / 2.0, tensors), want):
        torch.testing.assert_close(a, b)


def test_no_graph_breaks_in_a_block():
    """A transformer block (projections, attention, output projection): one graph, no breaks."""
    fn = _fn("alibi")
    lin_in, lin_out = torch.nn.Linear(64, 3 * 64), torch.nn.Linear(64, 64)
    slopes = torch.rand(4)

    def block(x):
        B, S, _ = x.shape
        q, k, v = lin_in(x).view(B, S, 3, 4, 16).permute(2, 0, 3, 1, 4)
        o = fn(q, k, v, slopes=slopes, t=1.0)
        return lin_out(o.transpose(1, 2).reshape(B, S, 64))
    x = torch.randn(2, 24, 64)
    torch._dynamo.reset()
    explained = torch._dynamo.explain(block)(x)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_dynamic_sequence_length_does_not_recompile():
    fn = _fn("doc")
    torch._dynamo.reset()
    counts = torch._dynamo.utils.counters
    counts.clear()
    compiled = torch.compile(fn, fullgraph=True, backend="aot_eager", dynamic=True)
    for S in (24, 40, 56, 72, 88):
        (q, k, v), xs = _inputs("doc", M=S, N=S, grad=False)
        torch.testing.assert_close(compiled(q, k, v, **xs), fn(q, k, v, **xs))
    assert counts["stats"]["unique_graphs"] == 1, dict(counts["stats"])


def test_return_lse_and_prepared_under_compile():
    """lse comes out of the operator; tile lists given by prepare() are used by eager calls."""
    fn = _fn("doc")
    (q, k, v), xs = _inputs("doc", grad=False)
    o, lse = fn(q, k, v, return_lse=True, **xs)
    torch._dynamo.reset()
    o2, lse2 = torch.compile(lambda q, k, v, doc: fn(q, k, v, doc=doc, return_lse=True), fullgraph=True,
                             backend="aot_eager")(q, k, v, xs["doc"])
    torch.testing.assert_close((o2, lse2), (o, lse))
    (q, k, v), xs = _inputs("doc")
    prepared = fn.prepare(q.detach(), k.detach(), **xs)
    o3 = fn(q, k, v, prepared=prepared, **xs)
    torch.testing.assert_close(o3, o)
    _grads(o3, (q, k, v))  # the backward finds the prepared lists by their handle


def test_paged_decoding_step_compiles():
    """A decoding step on a paged cache (validate=False: no host sync) compiles whole and matches eager."""
    from seqcases import paged_case

    fn = _fn("alibi")
    q, _, _, k_cache, v_cache, table, lengths, xs = paged_case(fn.attention, 1, [150, 37, 192])
    xs = {"slopes": torch.rand(4), "t": 0.5}

    def step(q, k_cache, v_cache, table, lengths):
        return fn(q, k_cache, v_cache, block_table=table, seqlens_k=lengths, validate=False, return_lse=True, **xs)
    with torch.no_grad():
        want = step(q, k_cache, v_cache, table, lengths)
        torch._dynamo.reset()
        explained = torch._dynamo.explain(step)(q, k_cache, v_cache, table, lengths)
        assert explained.graph_break_count == 0, explained.break_reasons
        got = torch.compile(step, fullgraph=True, backend="aot_eager")(q, k_cache, v_cache, table, lengths)
    torch.testing.assert_close(got, want)
    ops = _op(fn, "alibi")
    torch.library.opcheck(ops.paged_op, (q, k_cache, v_cache, 0.25, [xs["slopes"]], [0.5], [True, False], table,
                                         lengths), test_utils=("test_schema", "test_faketensor"))


def test_backward_with_several_inputs_without_gradients():
    """Gradients not wanted come back as distinct empty tensors (an operator's outputs must not share
    storage: one empty tensor returned twice failed under Hugging Face's padded calls)."""
    fn = attngen.jit("attention two { input s: f32[H]\n input w: f32[H]\n score = dot(q, k) * scale + s[h] - w[h]\n"
                     " mask = causal }")
    (q, k, v), _ = _inputs("moba")
    o = fn(q, k, v, s=torch.rand(4), w=torch.rand(4))
    assert all(g is not None for g in _grads(o, (q, k, v)))


ALL = [(p, a.name) for p in sorted(Path("examples").glob("*.attn")) for a in compile_file(p)]
SMALL = {"W": 20, "WINDOW": 20, "CHUNK": 16, "STRIDE": 8, "SINKS": 4, "TRAIN_LEN": 16, "LOCAL": 12, "TOPK": 2,
         "BLOCK": 16, "NOPE": 8, "ROPE": 8, "HALF": 8}


@pytest.mark.parametrize("path, name", ALL, ids=[f"{p.stem}:{n}" for p, n in ALL])
def test_every_example_traces_whole(path, name):
    """Each example's function under torch.compile(fullgraph=True): one graph (no break), and its backward."""
    declared = dict(compile_file(path, name=name)[0].consts)
    consts = {k: v for k, v in SMALL.items() if k in declared}
    fn = attngen.load(path, name=name, consts=consts)
    sizes = dict(B=1, H=4, HK=2, M=32, N=32, D=16, DV=16)
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(1, h, 32, 16, generator=g, requires_grad=True) for h in (4, 2, 2))
    xs = make_inputs(fn.attention, sizes, "cpu", g)
    graphs = []

    def backend(gm, example_inputs):  # counts the graphs Dynamo hands over; fullgraph: a break raises
        graphs.append(gm)
        return gm.forward
    torch._dynamo.reset()
    o = torch.compile(lambda q, k, v: fn(q, k, v, **xs), fullgraph=True, backend=backend)(q, k, v)
    assert len(graphs) == 1 and o.shape == (1, 4, 32, 16)
    o.sum().backward()  # the operator's registered backward
    assert q.grad is not None

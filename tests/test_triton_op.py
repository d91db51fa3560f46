"""The triton_op operators (attngen.runtime.ops, launch._Traced): which attentions and calls take
them, their bodies traced into graphs of kernel nodes (torch.library.wrap_triton), and those graphs
matching eager, forward and backward.

On CPU the kernels are interpreted, and wrap_triton returns an interpreted kernel as it is (it
cannot be traced), so the modules' own operators are custom_op. The traced path is tested with the
same kernels as JITFunctions whose launch goes to the interpreter (``_Interpreted``), compiled with
aot_eager (Inductor needs a GPU driver to compile a user kernel); torch's analysis of what a kernel
writes needs that driver too, so ``written`` stands in for it with what the kernels store to. The
GPU test compiles with Inductor."""

from __future__ import annotations

import hashlib

import pytest
import torch
import torch._higher_order_ops.triton_kernel_wrap as triton_wrap
from functorch.compile import make_boxed_func
from torch._dynamo.backends.common import aot_autograd
from triton.runtime.jit import JITFunction

import attngen

from test_torch_compile import SPECS

HOP = torch.ops.higher_order.triton_kernel_wrapper_functional

# the kernel parameters each kernel stores to (templates/*.jinja), by the end of the kernel's name
WRITES = {"_fwd": {"O", "OR", "LSE"}, "_bwd_pre": {"DELTA", "DOR", "SBL", "SBG"}, "_bwd_dq": {"DQ"},
          "_bwd_dkdv": {"DK", "DVAL"}, "_classify": {"TL", "TLC"}, "_tiles_by_key": {"TLC"}}


class _Interpreted(JITFunction):
    """A kernel as wrap_triton takes it (a JITFunction), launched by Triton's interpreter."""

    def __init__(self, interpreted):
        super().__init__(interpreted.fn)
        self.interpreted = interpreted
        # triton's cache key walks the kernel's globals, where the helpers (triton_helpers) are interpreted
        # functions it rejects ("Unsupported function referenced"): the source stands for it
        self.hash = hashlib.sha256(self.src.encode()).hexdigest()

    def run(self, *args, grid, warmup, **kwargs):
        return self.interpreted.run(*args, grid=grid, warmup=warmup, **kwargs)


def written(kernel_idx, constant_args_idx, kwargs, tma_descriptor_metadata):
    """torch's get_mutated_tensors, from WRITES; the dq and dk/dv kernels add into d<name>_ptr where GRAD_<name>."""
    name = triton_wrap.kernel_side_table.get_kernel(kernel_idx).fn.__name__
    flags = {**kwargs, **triton_wrap.kernel_side_table.get_constant_args(constant_args_idx)}
    stores = next(v for end, v in WRITES.items() if name.endswith(end))
    grads = name.endswith(("_bwd_dq", "_bwd_dkdv"))
    return [n for n, x in kwargs.items() if isinstance(x, torch.Tensor)
            and (n in stores or grads and n.startswith("d") and n.endswith("_ptr") and flags.get(f"GRAD_{n[1:-4]}"))]


@pytest.fixture
def analysed(monkeypatch):
    monkeypatch.setattr(triton_wrap, "get_mutated_tensors", written)


_TRACED = {}


def _attention(name, monkeypatch):
    """(the module's attention, the same with JITFunction kernels, built with ATTNGEN_TRITON_OP=1)."""
    monkeypatch.setenv("ATTNGEN_TRITON_OP", "1")
    fn = attngen.jit(f"attention {name} {{\n {SPECS[name]}\n}}")
    module = fn.module
    at = getattr(module, f"_attention_{name}")
    monkeypatch.setattr(module, "_tiles_by_key", _Interpreted(module._tiles_by_key))
    if name not in _TRACED:  # operators register once a process, under the module's key
        kernels = {k: _Interpreted(v) for k, v in at.kernels.items()}
        _TRACED[name] = module._Attention(name, f"{module._MODULE_KEY}_jit", at.decls, at.all_inputs, kernels,
                                          at.plan, at.sel_name, at.ops.sel_shape)
    return at, _TRACED[name]


def _call(at):
    def call(q, k, v, prepared=None, **xs):
        return at(q, k, v, xs, None, False, prepared, None, None, None, None, None, None, True)
    return call


def _inputs(name, M=40, grad=True):
    g = torch.Generator().manual_seed(0)
    B, H, HK, D = 1, 4, 2, 16
    q, k, v = (torch.randn(B, h, M, D, generator=g) for h in (H, HK, HK))
    xs = {"alibi": lambda: {"slopes": torch.rand(H, generator=g), "t": 0.7},
          "doc": lambda: {"doc": (torch.arange(M) * 3 // M).to(torch.int32).expand(B, M).contiguous()},
          "gated": lambda: {"g": torch.randn(B, H, M, generator=g)},
          "moba": dict}[name]()
    for t in (q, k, v, *xs.values()):
        if grad and isinstance(t, torch.Tensor) and t.is_floating_point():
            t.requires_grad_(True)
    return (q, k, v), xs


def _grads(o, q, k, v, xs):
    tensors = [t for t in (q, k, v, *xs.values()) if isinstance(t, torch.Tensor) and t.requires_grad]
    return torch.autograd.grad(o.square().sum(), tensors)


def _ops_called(fn, *args, **kwargs):
    """The targets of the calls in the graph Dynamo makes of fn."""
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm.forward
    torch._dynamo.reset()
    torch.compile(fn, fullgraph=True, backend=backend)(*args, **kwargs)
    return [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]


def test_the_kind_is_explicit(monkeypatch):
    """Interpreted kernels and select stages give custom_op, with the reason; the header says it."""
    at, traced = _attention("alibi", monkeypatch)
    assert (at.ops.kind, at.ops.fwd_triton, at.ops.bwd_triton) == ("custom_op", None, None)
    assert "TRITON_INTERPRET=1" in at.ops.kind_reason
    assert traced.ops.kind == "triton_op" and traced.ops.fwd_triton is not None
    assert "with ATTNGEN_TRITON_OP=1 at import, triton_op ones" in \
        attngen.jit(f"attention alibi {{\n {SPECS['alibi']}\n}}").module.__doc__
    _, selected = _attention("moba", monkeypatch)
    assert selected.ops.kind == "custom_op" and selected.ops.kind_reason.startswith("select stage")
    assert selected.ops.fwd_triton is None


def test_triton_op_only_on_request(monkeypatch):
    """Without ATTNGEN_TRITON_OP=1 at import, kernels Inductor could take still get custom_op, saying why."""
    monkeypatch.delenv("ATTNGEN_TRITON_OP", raising=False)
    module = attngen.jit(f"attention alibi {{\n {SPECS['alibi']}\n}}").module
    at = module._attention_alibi
    plain = module._Attention("alibi", f"{module._MODULE_KEY}_plain", at.decls, at.all_inputs,
                              {k: _Interpreted(v) for k, v in at.kernels.items()}, at.plan, at.sel_name,
                              at.ops.sel_shape)
    assert (plain.ops.kind, plain.ops.fwd_triton) == ("custom_op", None)
    assert "ATTNGEN_TRITON_OP=1" in plain.ops.kind_reason


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
@pytest.mark.parametrize("name", ["alibi", "doc", "gated"])
def test_traced_graph_matches_eager(name, dynamic, monkeypatch, analysed):
    """The forward's and backward's graphs hold the kernels (and no opaque operator), and match eager."""
    at, traced = _attention(name, monkeypatch)
    graphs = []

    def keep(gm, example_inputs):
        graphs.append(gm)
        return make_boxed_func(gm)
    torch._dynamo.reset()
    compiled = torch.compile(_call(traced), fullgraph=True, dynamic=dynamic,
                             backend=aot_autograd(fw_compiler=keep, bw_compiler=keep))
    for M in (40, 56) if dynamic else (40,):
        (q, k, v), xs = _inputs(name, M=M)
        o = compiled(q, k, v, **xs)
        want = _call(at)(q, k, v, **xs)
        torch.testing.assert_close(o, want)
        for a, b in zip(_grads(o, q, k, v, xs), _grads(want, q, k, v, xs)):
            torch.testing.assert_close(a, b)
    assert len(graphs) == 2  # one forward and one backward graph: no recompile for the second length
    for gm, kernels in zip(graphs, (1, 3)):
        targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        assert sum(t is HOP for t in targets) >= kernels, gm.code
        assert not any(str(t).startswith("attngen.") for t in targets), gm.code


def test_forward_without_torch_knowing_the_writes(monkeypatch):
    """Where torch cannot analyse a kernel it takes every argument as written and clones each: the
    forward's unused parameters must not alias o or lse (they did: o came back all NaN)."""
    at, traced = _attention("gated", monkeypatch)
    (q, k, v), xs = _inputs("gated", grad=False)
    torch._dynamo.reset()
    o = torch.compile(_call(traced), fullgraph=True, backend="aot_eager")(q, k, v, **xs)
    torch.testing.assert_close(o, _call(at)(q, k, v, **xs))


def test_no_graph_breaks(monkeypatch, analysed):
    _, traced = _attention("alibi", monkeypatch)
    (q, k, v), xs = _inputs("alibi")
    torch._dynamo.reset()
    explained = torch._dynamo.explain(_call(traced))(q, k, v, **xs)
    assert explained.graph_break_count == 0, explained.break_reasons
    assert explained.graph_count == 1


def test_opcheck(monkeypatch, analysed):
    """Schemas, the shared fake implementations, the autograd registration and the traced body."""
    _, traced = _attention("alibi", monkeypatch)
    ops = traced.ops
    (q, k, v), xs = _inputs("alibi")
    args = (q, k, v, 0.25, [xs["slopes"]], [xs["t"]], [True, False], None, None, 0, 0, 0)
    tests = ("test_schema", "test_autograd_registration", "test_faketensor", "test_aot_dispatch_dynamic")
    torch.library.opcheck(ops.fwd_triton, args, test_utils=tests)
    with torch.no_grad():
        o, o_raw, lse, sel, extra = ops.fwd_triton(*args)
    do = torch.randn_like(o)
    bwd_args = (do, None, q.detach(), k.detach(), v.detach(), o, o_raw, lse, sel, extra, 0.25,
                [xs["slopes"].detach()], [xs["t"]], [True, False], [True], None, None, 0, 0, 0)
    torch.library.opcheck(ops.bwd_triton, bwd_args, test_utils=("test_schema", "test_faketensor",
                                                                 "test_aot_dispatch_dynamic"))


def test_calls_that_stay_custom_op(monkeypatch):
    """Decoding rows (the split-KV forward) and a scalar input given as a tensor take the custom_op
    forward; a plain dense call the triton_op one."""
    _, traced = _attention("alibi", monkeypatch)
    call = _call(traced)
    (q, k, v), xs = _inputs("alibi", grad=False)
    assert any(t.endswith("_jit_fwd_triton.default") for t in _ops_called(call, q, k, v, **xs))
    decoding = _ops_called(call, q[:, :, :8], k, v, **xs)
    assert any(t.endswith("_jit_fwd.default") for t in decoding), decoding
    tensor_scalar = _ops_called(call, q, k, v, slopes=xs["slopes"], t=torch.tensor(0.7))
    assert any(t.endswith("_jit_fwd.default") for t in tensor_scalar), tensor_scalar


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("name", ["alibi", "doc", "gated"])
def test_inductor_compiles_the_kernels(name, monkeypatch):
    """Inductor's code launches the attention's kernels itself (no opaque operator), forward and
    backward, and matches eager, also for a second sequence length (dynamic shapes)."""
    from torch._inductor.utils import run_and_get_code

    monkeypatch.setenv("ATTNGEN_TRITON_OP", "1")
    # a comment makes the key (and the module) this test's own: the kind is chosen at import
    fn = attngen.jit(f"# inductor\nattention {name} {{\n {SPECS[name]}\n}}")
    assert getattr(fn.module, f"_attention_{name}").ops.kind == "triton_op"

    torch._dynamo.reset()
    compiled = torch.compile(lambda q, k, v, xs: fn(q, k, v, **xs), fullgraph=True, backend="inductor",
                             dynamic=True)

    def step(q, k, v, xs):  # the backward graph is compiled at the first backward
        o = compiled(q, k, v, xs)
        return o, _grads(o, q, k, v, xs)
    for M in (256, 384):
        (q, k, v), xs = _inputs(name, M=M)
        q, k, v = (t.detach().cuda().half().requires_grad_() for t in (q, k, v))
        xs = {n: x.detach().cuda().requires_grad_(x.requires_grad) if isinstance(x, torch.Tensor) else x
              for n, x in xs.items()}
        (o, grads), codes = run_and_get_code(step, q, k, v, xs)
        want = fn(q, k, v, **xs)
        torch.testing.assert_close(o, want, atol=2e-3, rtol=2e-3)
        for a, b in zip(grads, _grads(want, q, k, v, xs)):
            torch.testing.assert_close(a, b, atol=2e-2, rtol=2e-2)
        if M == 256:
            code = "\n".join(codes)
            for kernel in ("_fwd", "_bwd_pre", "_bwd_dq", "_bwd_dkdv"):
                assert f"{name}{kernel}" in code
            assert "torch.ops.attngen" not in code

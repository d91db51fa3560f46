"""Each attention as ``torch.library`` operators (forward, backward, paged forward), so that models
calling it compile with ``torch.compile(fullgraph=True)``: Dynamo sees one opaque call with exact
output shapes (the fake implementations below) and a registered backward, never the Triton
launcher, the autotuner, the cache or a device query.

- ``attngen::<name>_<key>_fwd(q, k, v, scale, xs, fs, is_tensor, cu_q, cu_k, max_q, max_k, prepared)``
  returns ``(o, o_raw, lse, sel, extra)``: o [B, H, M, DV] (packed: [TQ, H, DV]) in q's dtype;
  o_raw, o before the out stage in float32 ([0] without one); lse [B, H, M] (packed: [H, TQ]) float32;
  sel, the kernels' selection ([0] without a select stage); extra, the block-sparse entries the
  backward walks (chunks [C, 3], rows [E], starts and counts [B * HS * NB], int32; C and E depend on
  the data), or a one-pass forward's row aggregates [B, H, M, C] and sums of its weights' terms
  [B, H, M, T, DV] (packed: [H, TQ, ...]) float32 (codegen/linear.py), or nothing.
- ``attngen::<name>_<key>_bwd(do, dlse, q, k, v, o, o_raw, lse, sel, extra, scale, xs, fs, is_tensor,
  wants, cu_q, cu_k, max_q, max_k, prepared)`` returns ``(dq, dk, dv, dxs)``, dxs one per tensor input:
  its gradient where ``wants`` says so, else an empty tensor. With a softmax norm lse is
  differentiable (merging partial results by their lse trains): dlse is its gradient, or None.
- ``attngen::<name>_<key>_paged(q, k_cache, v_cache, scale, xs, fs, is_tensor, block_table, seqlens_k)``
  returns ``(o, lse)`` of a call on a paged KV cache (forward only: decoding).

With ``kind == "triton_op"`` (:func:`_op_kind`, :meth:`_Ops.traceable`; only with ATTNGEN_TRITON_OP=1 when
the module is imported, until the Inductor path has run on a GPU) the dense calls take
``attngen::<name>_<key>_fwd_triton`` and ``_bwd_triton`` instead, the same schemas, fake
implementations and autograd formula, built with ``torch.library.triton_op``: Inductor traces their
bodies (the host code with ``launch._Traced``) and compiles the kernels into its graph. Findings
(torch 2.13 CPU, TRITON_INTERPRET=1, kernels as JITFunctions launched by the interpreter, with
aot_eager; the Inductor path itself is tests/test_triton_op.py's gpu test):

- The body is traced by AOTAutograd under fake tensors, with symbolic sizes under dynamic shapes.
  Host control flow on sizes, ``int()`` of a size, grids and buffers sized from shapes (the tile
  lists of a data-dependent mask) and ``torch.library.get_ctx()`` trace; a branch or ``int()`` on a
  symbolic size adds a guard (head counts and dims: constexprs of the kernels).
- A value read from a tensor does not trace: ``.item()``, ``.tolist()`` or ``int(t.sum())`` fail with
  "Could not extract specialized integer from data-dependent expression u0". So the select stage's
  block-sparse entries (counts read back to size the outputs) and scalar inputs given as tensors
  (their value is a kernel argument) stay custom_op.
- ``wrap_triton(kernel)[grid](...)`` is recorded, not run: timing (autotuning), tuning-file I/O or a
  device query would run at trace time on fake tensors, and a ``try`` around a launch never sees
  its OutOfResources. The body launches the fixed default config (ATTNGEN_AUTOTUNE=0's) once; the
  split-KV decoding forward, whose split count reads the SM count, and prepared tile lists (a Python
  object behind a handle, not a graph input) stay custom_op, packed and paged calls too.
- Functionalization clones each argument a kernel writes, separately, so no argument may alias a
  written one (torch's own TODO in triton_kernel_wrap: "if two kernel inputs are views of each
  other, and one gets mutated"); where torch cannot analyse a kernel (no GPU driver: "RuntimeError:
  0 active drivers ([]). There should only be one.") it assumes every argument written, and the
  forward's placeholders aliasing o gave o all NaN: the traced forward passes spares instead.
- Under TRITON_INTERPRET=1 @triton.jit gives an InterpretedFunction, which wrap_triton returns as
  it is (torch 2.13): a traced body launches it on fake tensors, "Cannot access data pointer of
  Tensor (e.g. FakeTensor, FunctionalTensor)", and Inductor needs a GPU driver to compile a user
  kernel (the error above): interpreted kernels make every operator custom_op.

The keyword inputs travel as ``xs`` (the tensors, in declaration order), ``fs`` (the Python floats)
and ``is_tensor`` (which of the declared inputs is which). ``prepared`` is 0 or the handle of tile
lists from ``NAME_prepare`` (eager calls; under torch.compile the lists are built inside the op).
The key in the operator's name is the module's cache key: two modules register distinct operators.

Shipped: the generated module embeds this file verbatim (after its imports).
"""

import os
import weakref

import torch
import triton

from .launch import SPLIT_ROWS, _Direct, _Traced

#: tile lists passed as ``prepared=``, by the handle the operators take instead of the object
_PREPARED = weakref.WeakValueDictionary()


def _prepared_handle(tiles):
    if tiles is None:
        return 0
    _PREPARED[id(tiles)] = tiles
    return id(tiles)


def _tiles_of_handle(handle):
    return _PREPARED.get(handle) if handle else None


_FWD_SCHEMA = ("(Tensor q, Tensor k, Tensor v, float scale, Tensor[] xs, float[] fs, bool[] is_tensor, Tensor? cu_q, "
               "Tensor? cu_k, int max_q, int max_k, int prepared) -> (Tensor, Tensor, Tensor, Tensor, Tensor[])")
_PAGED_SCHEMA = ("(Tensor q, Tensor k, Tensor v, float scale, Tensor[] xs, float[] fs, bool[] is_tensor, "
                 "Tensor table, Tensor lengths) -> (Tensor, Tensor)")
_BWD_SCHEMA = ("(Tensor do, Tensor? dlse, Tensor q, Tensor k, Tensor v, Tensor o, Tensor o_raw, Tensor lse, Tensor sel, "
               "Tensor[] extra, float scale, Tensor[] xs, float[] fs, bool[] is_tensor, bool[] wants, Tensor? cu_q, "
               "Tensor? cu_k, int max_q, int max_k, int prepared) -> (Tensor, Tensor, Tensor, Tensor[])")


class _Ops:
    """The operators of one attention. ``forward(q, k, v, scale, xs, seq, tiles, launcher)`` and
    ``backward(do, q, k, v, o, o_raw, lse, xs, extra, seq, scale, wants, tiles, dlse, launcher)`` are
    the module's kernels' host code (xs: the inputs by name, with the selection under ``sel_name``;
    seq: packed sequences or None; launcher: launch._Direct or launch._Traced); ``sel_shape(sizes)``
    gives the selection's shape and dtype, or None; ``has_out``: o_raw is returned; ``gathered``: the
    forward returns block-sparse entries; ``plan``: the attention's plan; ``kernels``: its kernels;
    ``scalars``: the names of its scalar inputs.

    ``kind`` ("triton_op" or "custom_op") and ``kind_reason`` say how torch.compile sees this
    attention's dense calls (see :func:`_op_kind`); with "triton_op", ``fwd_triton`` and
    ``bwd_triton`` are those operators and :meth:`traceable` says which calls take them."""

    def __init__(self, name, key, names, forward, backward, paged, varlen, sel_name, sel_shape, has_out, gathered,
                 lse_grad, plan, kernels, scalars):
        self.names, self.forward, self.backward, self.paged, self.varlen = names, forward, backward, paged, varlen
        self.sel_name, self.sel_shape, self.has_out, self.gathered = sel_name, sel_shape, has_out, gathered
        self.lse_grad, self.splittable, self.scalars = lse_grad, plan["splittable"], frozenset(scalars)
        # a one-pass forward's aggregate columns and sums of terms (AGG, ACC: codegen/linear.py)
        self.saved = (plan["aggregates"][0], plan["linear"], plan["fused"])
        self.kind, self.kind_reason = _op_kind(bool(plan["selection"]))
        if self.kind == "triton_op" and not isinstance(kernels["fwd"], triton.runtime.jit.JITFunction):
            self.kind, self.kind_reason = "custom_op", _INTERPRETED
        elif self.kind == "triton_op" and os.environ.get("ATTNGEN_TRITON_OP") != "1":
            self.kind, self.kind_reason = "custom_op", _NOT_REQUESTED
        prefix = f"attngen::{name}_{key}"
        self.fwd, new = _define(f"{prefix}_fwd", _FWD_SCHEMA, self._fwd_impl, self._fwd_fake)
        self.bwd, _ = _define(f"{prefix}_bwd", _BWD_SCHEMA, self._bwd_impl, self._bwd_fake)
        self.paged_op, _ = _define(f"{prefix}_paged", _PAGED_SCHEMA, self._paged_impl, self._paged_fake)
        if new:
            torch.library.register_autograd(f"{prefix}_fwd", self._backward, setup_context=self._setup_context)
        self.fwd_triton = self.bwd_triton = None
        if self.kind == "triton_op":
            self.fwd_triton, new = _define_triton(f"{prefix}_fwd_triton", self._fwd_traced, self._fwd_fake)
            self.bwd_triton, _ = _define_triton(f"{prefix}_bwd_triton", self._bwd_traced, self._bwd_fake)
            if new:
                torch.library.register_autograd(f"{prefix}_fwd_triton", self._backward,
                                                setup_context=self._setup_context)

    def traceable(self, is_tensor, cu_q, prepared, rows=None):
        """Whether a call takes the triton_op operators under torch.compile: a dense call (packed
        sequences stay custom_op) without prepared tile lists (a Python object found by its handle,
        not a graph input), whose scalar inputs are Python numbers (a tensor's value would be read on
        the host: a data-dependent float), and, for the forward (``rows``: its query rows), past
        SPLIT_ROWS rows where the attention splits the keys of decoding rows (the split count reads the
        device's SM count). Paged calls always stay custom_op (``call_paged``)."""
        return (self.kind == "triton_op" and cu_q is None and not prepared
                and not any(t for n, t in zip(self.names, is_tensor) if n in self.scalars)
                and (rows is None or not self.splittable or rows > SPLIT_ROWS))

    def inputs(self, xs, fs, is_tensor):
        """The declared inputs by name, from the operators' tensor and float lists."""
        it, fit = iter(xs), iter(fs)
        return {n: next(it) if t else next(fit) for n, t in zip(self.names, is_tensor)}

    def _seq(self, cu_q, cu_k, max_q, max_k):
        return None if cu_q is None else self.varlen(cu_q, cu_k, max_q, max_k)

    def _fwd_impl(self, q, k, v, scale, xs, fs, is_tensor, cu_q, cu_k, max_q, max_k, prepared, launcher=_Direct,
                  save=True):
        inputs = self.inputs(xs, fs, is_tensor)
        o, o_raw, lse, sel, extra = self.forward(q, k, v, scale, inputs, self._seq(cu_q, cu_k, max_q, max_k),
                                                 _tiles_of_handle(prepared), launcher, save)
        none = q.new_empty((0,))
        return (o, o_raw if self.has_out else none, lse, none.to(torch.int32) if sel is None else sel, list(extra))

    def _fwd_traced(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float, xs: list[torch.Tensor],
                    fs: list[float], is_tensor: list[bool], cu_q: torch.Tensor | None, cu_k: torch.Tensor | None,
                    max_q: int, max_k: int, prepared: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        # the triton_op's body (its schema is inferred from these annotations): the forward's host code with
        # launches recorded by wrap_triton; called only where traceable() holds
        return self._fwd_impl(q, k, v, scale, xs, fs, is_tensor, cu_q, cu_k, max_q, max_k, prepared, _Traced)

    def _fwd_fake(self, q, k, v, scale, xs, fs, is_tensor, cu_q, cu_k, max_q, max_k, prepared):
        if cu_q is None:
            B, H, M = q.shape[:3]
            o_shape, lse_shape = (B, H, M, v.shape[3]), (B, H, M)
        else:
            o_shape, lse_shape = (q.shape[0], q.shape[1], v.shape[2]), (q.shape[1], q.shape[0])
        o = q.new_empty(o_shape)
        o_raw = q.new_empty(o_shape if self.has_out else (0,), dtype=torch.float32)
        lse = q.new_empty(lse_shape, dtype=torch.float32)
        sizes = dict(B=q.shape[0], H=q.shape[1], HK=k.shape[1], M=q.shape[2], N=k.shape[2])
        shape = self.sel_shape(sizes)
        sel = q.new_empty((0,), dtype=torch.int32) if shape is None else q.new_empty(shape[0], dtype=shape[1])
        extra = []
        if self.gathered:
            ctx = torch.library.get_ctx()
            groups = sizes["B"] * shape[0][1] * shape[0][3]
            extra = [q.new_empty((ctx.new_dynamic_size(), 3), dtype=torch.int32),
                     q.new_empty((ctx.new_dynamic_size(),), dtype=torch.int32),
                     q.new_empty((groups,), dtype=torch.int32), q.new_empty((groups,), dtype=torch.int32)]
        elif self.saved[1] or self.saved[2]:  # a one-pass forward's row aggregates and sums of the weights' terms
            extra = [q.new_empty(lse_shape + (self.saved[0],), dtype=torch.float32)]
            if self.saved[1]:
                extra.append(q.new_empty(lse_shape + (self.saved[1], o_shape[-1]), dtype=torch.float32))
        return o, o_raw, lse, sel, extra

    def _paged_impl(self, q, k, v, scale, xs, fs, is_tensor, table, lengths):
        B, H, M, D = q.shape
        sizes = {"B": B, "H": H, "HK": k.shape[2], "M": M, "N": table.shape[1] * k.shape[1], "D": D,
                 "DV": v.shape[3]}
        return self.paged(q, k, v, scale, self.inputs(xs, fs, is_tensor), sizes, table, lengths)

    def _paged_fake(self, q, k, v, scale, xs, fs, is_tensor, table, lengths):
        return q.new_empty((*q.shape[:3], v.shape[3])), q.new_empty(q.shape[:3], dtype=torch.float32)

    def _bwd_impl(self, do, dlse, q, k, v, o, o_raw, lse, sel, extra, scale, xs, fs, is_tensor, wants, cu_q, cu_k,
                  max_q, max_k, prepared, launcher=_Direct):
        inputs = self.inputs(xs, fs, is_tensor)
        if self.sel_name is not None:
            inputs[self.sel_name] = sel
        tensor_names = [n for n, t in zip(self.names, is_tensor) if t]
        want = dict(zip(tensor_names, wants))
        dq, dk, dv, grads = self.backward(do, q, k, v, o, o if not self.has_out else o_raw, lse, inputs, list(extra),
                                          self._seq(cu_q, cu_k, max_q, max_k), scale, want,
                                          _tiles_of_handle(prepared), dlse, launcher)
        # a new empty tensor for each gradient not wanted: outputs must not share storage
        return dq, dk, dv, [grads[n] if want[n] else q.new_empty((0,), dtype=torch.float32) for n in tensor_names]

    def _bwd_traced(self, do: torch.Tensor, dlse: torch.Tensor | None, q: torch.Tensor, k: torch.Tensor,
                    v: torch.Tensor, o: torch.Tensor, o_raw: torch.Tensor, lse: torch.Tensor, sel: torch.Tensor,
                    extra: list[torch.Tensor], scale: float, xs: list[torch.Tensor], fs: list[float],
                    is_tensor: list[bool], wants: list[bool], cu_q: torch.Tensor | None, cu_k: torch.Tensor | None,
                    max_q: int, max_k: int, prepared: int
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list[torch.Tensor]]:
        # the backward triton_op's body, as _fwd_traced
        return self._bwd_impl(do, dlse, q, k, v, o, o_raw, lse, sel, extra, scale, xs, fs, is_tensor, wants, cu_q,
                              cu_k, max_q, max_k, prepared, _Traced)

    def _bwd_fake(self, do, dlse, q, k, v, o, o_raw, lse, sel, extra, scale, xs, fs, is_tensor, wants, cu_q, cu_k,
                  max_q, max_k, prepared):
        dxs = [x.new_empty(x.shape) if w else x.new_empty((0,), dtype=torch.float32) for x, w in zip(xs, wants)]
        return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dxs

    def _setup_context(self, ctx, inputs, output):
        q, k, v, scale, xs, fs, is_tensor, cu_q, cu_k, max_q, max_k, prepared = inputs
        o, o_raw, lse, sel, extra = output
        ctx.save_for_backward(q, k, v, o, o_raw, lse, sel, *extra, *xs, *(t for t in (cu_q, cu_k) if t is not None))
        ctx.n_extra, ctx.n_xs, ctx.varlen = len(extra), len(xs), cu_q is not None
        ctx.scale, ctx.fs, ctx.is_tensor = scale, fs, is_tensor
        ctx.max_q, ctx.max_k, ctx.prepared = max_q, max_k, prepared
        ctx.wants = [x.requires_grad for x in xs]
        ctx.traceable = self.traceable(is_tensor, cu_q, prepared)
        ctx.mark_non_differentiable(o_raw, sel, *extra, *(() if self.lse_grad else (lse,)))

    def _backward(self, ctx, do, do_raw, dlse, dsel, dextra):
        # shared by both forward operators: the backward follows the same rule as the forward it differentiates
        return self.gradients(ctx, do, dlse, self.bwd_triton if ctx.traceable else self.bwd)

    def gradients(self, ctx, do, dlse, bwd):
        """The forward's inputs' gradients from its outputs' (``bwd``: the backward operator, or its
        work called directly)."""
        q, k, v, o, o_raw, lse, sel, *rest = ctx.saved_tensors
        extra, xs, cu = rest[:ctx.n_extra], rest[ctx.n_extra:ctx.n_extra + ctx.n_xs], rest[ctx.n_extra + ctx.n_xs:]
        cu_q, cu_k = cu if ctx.varlen else (None, None)
        if do is None:  # the loss reads lse alone
            do = torch.zeros_like(o)
        dlse = dlse if self.lse_grad else None
        dq, dk, dv, dxs = bwd(do, dlse, q, k, v, o, o_raw, lse, sel, extra, ctx.scale, xs, ctx.fs, ctx.is_tensor,
                                   ctx.wants, cu_q, cu_k, ctx.max_q, ctx.max_k, ctx.prepared)
        grads = [g if w else None for g, w in zip(dxs, ctx.wants)]
        # an entry per input of the forward: a list of numbers gets None, an empty list itself
        fs, is_tensor = ([] if not x else None for x in (ctx.fs, ctx.is_tensor))
        return dq, dk, dv, None, grads, fs, is_tensor, None, None, None, None, None

    def _lists(self, inputs):
        is_tensor = [isinstance(inputs[n], torch.Tensor) for n in self.names]
        xs = [inputs[n] for n, t in zip(self.names, is_tensor) if t]
        fs = [float(inputs[n]) for n, t in zip(self.names, is_tensor) if not t]
        return xs, fs, is_tensor

    def call_paged(self, q, k, v, scale, inputs, table, lengths):
        """o and lse of a call on a paged cache, through its operator."""
        return self.paged_op(q, k, v, scale, *self._lists(inputs), table, lengths)

    def __call__(self, q, k, v, scale, inputs, seq, prepared):
        """o and lse of a dense or packed call, through the operators (a node in autograd's graph)."""
        xs, fs, is_tensor = self._lists(inputs)
        cu_q, cu_k, max_q, max_k = (None, None, 0, 0) if seq is None else (seq.cu_q, seq.cu_k, seq.max_q, seq.max_k)
        handle = _prepared_handle(prepared)
        if torch.compiler.is_compiling():
            fwd = self.fwd_triton if self.traceable(is_tensor, cu_q, handle, rows=q.shape[2]) else self.fwd
            o, _, lse, _, _ = fwd(q, k, v, scale, xs, fs, is_tensor, cu_q, cu_k, max_q, max_k, handle)
        else:
            meta = (scale, fs, is_tensor, cu_q, cu_k, max_q, max_k, handle)
            o, _, lse, *_ = _Eager.apply(self, meta, q, k, v, *xs)
        return o, lse


class _Eager(torch.autograd.Function):
    """An eager call that needs gradients: the operators' work and autograd formula, called directly.
    torch.library's autograd path runs in Python (argument pytrees, defaults, a Dynamo-disabled
    wrapper): about 110 us more host time a forward and 200 us more a forward+backward
    (tools/host_cpu.py --train), a sixth of a 4k-token layer's forward kernels (B 4, H 16, H100);
    this path costs what the autograd.Function does."""

    @staticmethod
    def forward(ctx, ops, meta, q, k, v, *xs):
        ctx.set_materialize_grads(False)  # an unused lse has no gradient (bwd_pre skips dlse)
        scale, fs, is_tensor, cu_q, cu_k, max_q, max_k, prepared = meta
        inputs = (q, k, v, scale, list(xs), fs, is_tensor, cu_q, cu_k, max_q, max_k, prepared)
        # without gradients to take, a one-pass forward keeps nothing for a backward (runtime/attention.py)
        out = ops._fwd_impl(*inputs, save=any(ctx.needs_input_grad[2:]))
        ops._setup_context(ctx, inputs, out)
        ctx.ops = ops
        o, o_raw, lse, sel, extra = out
        return o, o_raw, lse, sel, *extra

    @staticmethod
    def backward(ctx, do, do_raw, dlse, dsel, *dextra):
        dq, dk, dv, _, grads, *_ = ctx.ops.gradients(ctx, do, dlse, ctx.ops._bwd_impl)
        return None, None, dq, dk, dv, *grads


_INTERPRETED = ("interpreted kernels (TRITON_INTERPRET=1): wrap_triton cannot record them, and Inductor compiles "
                "user kernels only with a GPU driver")


_NOT_REQUESTED = ("the triton_op operators are taken with ATTNGEN_TRITON_OP=1 when the module is imported: Inductor "
                  "has not yet compiled these kernels on a GPU (tests/test_triton_op.py -m gpu), while the "
                  "custom_op ones passed pytest -m gpu")


def _op_kind(selected):
    """("triton_op", why) where Inductor can take the kernels of an attention (``selected``: whether it
    has a select stage), else ("custom_op", why); the module docstring gives the findings. With
    interpreted kernels the operators are custom_op whatever this says (_INTERPRETED)."""
    if selected:
        return "custom_op", ("select stage: its kernels choose blocks or keys per call, and with gather the "
                             "block-sparse entries' counts are read back to size the outputs (data-dependent)")
    return "triton_op", ("dense calls (the forward past SPLIT_ROWS query rows where the keys may split, no "
                         "prepared tiles, scalar inputs as numbers) launch the kernels through wrap_triton with the "
                         "fixed default configs; other calls take the custom_op operators")


def _define(qualname, schema, impl, fake):
    """A custom operator and True, or the one this process registered under the name already and
    False (a module imported again: the same cache key, so the same kernels)."""
    namespace, name = qualname.split("::")
    if hasattr(getattr(torch.ops, namespace), name):
        return getattr(getattr(torch.ops, namespace), name).default, False
    op = torch.library.custom_op(qualname, impl, mutates_args=(), schema=schema)
    op.register_fake(fake)
    return op, True


def _define_triton(qualname, body, fake):
    """A triton_op (schema from ``body``'s annotations) and True, or the one registered already and
    False. Its fake is the custom_op's: exact shapes without tracing the body under fake tensors
    (triton_op registers the body as the fake, and the shared fake keeps both kinds alike)."""
    namespace, name = qualname.split("::")
    if hasattr(getattr(torch.ops, namespace), name):
        return getattr(getattr(torch.ops, namespace), name).default, False
    op = torch.library.triton_op(qualname, body, mutates_args=())
    op.register_fake(fake)
    return op, True

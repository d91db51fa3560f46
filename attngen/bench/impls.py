"""The implementations of one benchmark case, as callables ``impl.call(q, k, v) -> o``.

q [B, H, M, D], k [B, HK, N, D], v [B, HK, N, DV] -> o [B, H, M, DV]; the keyword
inputs are bound when an implementation is made (flex captures them in its mods), so
every implementation reads the same tensors, including in-place updates of them.

    attngen      what attngen.load(...) returns (the Triton backend)
    attngen-prepared  the same with its data-dependent mask prepared ahead (attngen.prepare)
    dense        attngen on a selection spec's source without its select stage: the dense row the
                 selection is measured against (a different attention, so no error is taken)
    flex         flex_attention, compiled on CUDA and eager on CPU; the block mask is
                 built once, or on every call with fresh inputs
    sdpa-cudnn   F.scaled_dot_product_attention under sdpa_kernel(CUDNN_ATTENTION)
    sdpa-flash   the same under sdpa_kernel(FLASH_ATTENTION)

Decoding (:mod:`.decode`) uses flex and SDPA on a contiguous cache as they are (SDPA with its
causal mask aligned to the bottom right); packed sequences (:mod:`.varlen`) have their own flex.

A constructor raises :class:`~.peers.Unsupported` when its implementation cannot run
the case.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass, field
from typing import Callable, ContextManager, Mapping, Union

import torch

from ..ir import nodes as ir
from ..verify import rel_err
from .flexmods import translate
from .inputs import Layouts
from .peers import Unsupported, sdpa_causal, sdpa_end_aligned

Inputs = Mapping[str, Union[torch.Tensor, float]]
SDPA_BACKENDS = ("sdpa-cudnn", "sdpa-flash")


@dataclass
class Impl:
    name: str
    call: Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]
    grad_inputs: tuple[str, ...] = ()  # keyword inputs it differentiates in fwd+bwd
    context: Callable[[], ContextManager] = contextlib.nullcontext  # entered around every use (SDPA backend)
    prep: Callable[[], object] | None = None  # flex's create_block_mask, timed on its own
    no_backward: str | None = None  # why forward+backward cannot run


@dataclass
class Outputs:
    """o [B, H, M, DV] and, after a backward, the gradients by name (dq, dk, dv, d<input>)."""

    o: torch.Tensor
    grads: dict[str, torch.Tensor] = field(default_factory=dict)


def requiring_grad(inputs: Inputs) -> tuple[str, ...]:
    """The keyword inputs that require grad."""
    return tuple(n for n, x in inputs.items() if isinstance(x, torch.Tensor) and x.requires_grad)


def attngen_impl(fn: Callable, inputs: Inputs) -> Impl:
    """``fn``: what ``attngen.load`` returned for the attention."""
    return Impl("attngen", lambda q, k, v: fn(q, k, v, **inputs), requiring_grad(inputs))


def dense_impl(a: ir.Attention, inputs: Inputs) -> Impl:
    """attngen on ``a``'s spec with its select stage cut from the source (the stage's text, columns
    included), the same consts; the inputs only ``by`` read stay declared and are passed as they are."""
    from ..runtime.jit import TritonAttention
    from ..driver import compile_source

    span = dict(a.stage_spans)["select"]
    starts = [0]
    for line in a.source.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    cut = starts[span.line - 1] + span.col - 1, starts[span.end_line - 1] + span.end_col - 1
    source = a.source[:cut[0]] + a.source[cut[1]:]
    (dense,) = compile_source(source, a.filename, dict(a.consts), a.name)
    fn = TritonAttention(dense)
    return Impl("dense", lambda q, k, v: fn(q, k, v, **inputs), requiring_grad(inputs))


def prepared_impl(fn: Callable, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: Inputs,
                  layouts: Layouts) -> Impl | None:
    """attngen with its mask prepared ahead: one ``attngen.prepare`` handle per input layout, each
    warmed by a forward call (which builds its tile lists for the forward's block shape); a call
    uses the handle of the layout the inputs hold. None when the mask needs no per-call work.

    Leaves the inputs holding the layout they held before (a full cycle of ``layouts``).
    """
    from .. import prepare

    handles = {}
    with torch.no_grad():
        for _ in range(max(1, len(layouts))):
            layouts.refresh()
            handle = prepare(fn, q, k, **inputs)
            if handle is None:
                return None
            fn(q, k, v, prepared=handle, **inputs)
            handles[layouts.index] = handle
    return Impl("attngen-prepared", lambda q, k, v: fn(q, k, v, prepared=handles[layouts.index], **inputs))


@functools.lru_cache(maxsize=None)
def _compiled_flex():
    from torch.nn.attention.flex_attention import flex_attention

    # one static-shape compile per case; run.py resets dynamo between cases
    return torch.compile(flex_attention, dynamic=False)


def _eager_flex(*args, **kwargs):
    """flex_attention uncompiled (cpu smoke tests), without its warning that it is uncompiled."""
    from torch.nn.attention.flex_attention import flex_attention

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "flex_attention called without torch.compile")
        return flex_attention(*args, **kwargs)


def flex_impl(a: ir.Attention, sizes: Mapping[str, int], scale: float, inputs: Inputs, device: torch.device,
              fresh: bool) -> Impl:
    """FlexAttention running ``a``; with ``fresh`` the block mask is rebuilt inside every call."""
    from torch.nn.attention.flex_attention import create_block_mask

    mods = translate(a, sizes, scale, inputs)
    flex = _compiled_flex() if device.type == "cuda" else _eager_flex
    B, H, HK, M, N = (sizes[x] for x in ("B", "H", "HK", "M", "N"))

    def block_mask():
        return create_block_mask(mods.mask_mod, B if mods.mask_b else None, H if mods.mask_h else None, M, N,
                                 device=device)

    prep = block_mask if mods.mask_mod is not None else None
    fixed = None if fresh or prep is None else prep()

    def call(q, k, v):
        mask = prep() if fresh and prep is not None else fixed
        return flex(q, k, v, score_mod=mods.score_mod, block_mask=mask, scale=mods.scale, enable_gqa=H != HK)

    no_backward = "flex has no backward on cpu" if device.type == "cpu" else None
    return Impl("flex", call, requiring_grad(inputs), prep=prep, no_backward=no_backward)


def sdpa_impl(name: str, a: ir.Attention, sizes: Mapping[str, int], scale: float, dtype: torch.dtype,
              device: torch.device, decode: bool = False) -> Impl:
    """SDPA with the backend ``name`` (one of SDPA_BACKENDS), for plain full or causal attention.

    ``decode``: the M query rows are the last of N keys (a KV cache), and a causal mask is aligned
    to the bottom right as attngen aligns it: no mask with M = 1, ``causal_lower_right`` otherwise.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.nn.functional import scaled_dot_product_attention

    if decode:
        from torch.nn.attention.bias import causal_lower_right

        causal = False
        lower_right = sdpa_end_aligned(a, sizes["M"], sizes["N"])
        bias = {"attn_mask": causal_lower_right(sizes["M"], sizes["N"])} if lower_right else {}
    else:
        causal, bias = sdpa_causal(a, sizes["M"], sizes["N"]), {}
    backend = SDPBackend.CUDNN_ATTENTION if name == "sdpa-cudnn" else SDPBackend.FLASH_ATTENTION
    if device.type != "cuda" and name == "sdpa-cudnn":
        raise Unsupported("cuDNN attention needs CUDA")
    if device.type == "cuda" and dtype not in (torch.float16, torch.bfloat16):
        raise Unsupported("needs fp16 or bf16")
    gqa = {"enable_gqa": True} if sizes["H"] != sizes["HK"] else {}

    def call(q, k, v):
        return scaled_dot_product_attention(q, k, v, is_causal=causal, scale=scale, **bias, **gqa)

    return Impl(name, call, context=lambda: sdpa_kernel(backend))


def outputs(impl: Impl, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, inputs: Inputs,
            do: torch.Tensor | None) -> Outputs:
    """``impl``'s o, from a forward without grad; or with ``do`` [B, H, M, DV], from a forward
    with grad, and its gradients (those it produces)."""
    with impl.context():
        if do is None:
            with torch.no_grad():
                return Outputs(impl.call(q.detach(), k.detach(), v.detach()))
        names = ("q", "k", "v") + impl.grad_inputs
        leaves = [q, k, v] + [inputs[n] for n in impl.grad_inputs]
        o = impl.call(q, k, v)
        grads = torch.autograd.grad(o, leaves, do, allow_unused=True)
    return Outputs(o.detach(), {"d" + n: g for n, g in zip(names, grads) if g is not None})


def errors(mine: Outputs, peer: Outputs) -> dict[str, float]:
    """‖mine − peer‖ / ‖peer‖ of o and of every gradient both produced."""
    out = {"o": rel_err(mine.o, peer.o)}
    for n, g in peer.grads.items():
        if n in mine.grads:
            out[n] = rel_err(mine.grads[n], g)
    return out

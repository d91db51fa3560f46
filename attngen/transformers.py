"""Hugging Face transformers integration: an attngen attention as an ``attn_implementation``.

    import attngen.transformers
    attngen.transformers.register("examples/alibi.attn", "attngen_alibi", inputs={"slopes": slopes})
    model = AutoModelForCausalLM.from_config(cfg, attn_implementation="attngen_alibi")

``register`` puts an attention function into transformers' ``AttentionInterface`` and a mask
function into its ``AttentionMaskInterface`` under the same name. The mask function hands the
attention the batch's key padding alone ([B, kv_length] bool, True for a real token): the rest of
the mask (causal, windows) is the spec's. The attention then runs a variant of the spec whose mask
is ``(spec's mask) and attngen_kv_valid[b, j]`` (:func:`with_key_padding`), so left- and
right-padded batches give sdpa's outputs at the real positions, in training and in ``generate``
(queries end-aligned with the cache, as attngen's ``i`` is). Keys and values come with their
KV heads (GQA needs no repeat).

Without a spec (``register(None, name)``), the attention follows the model: causal when the
module is (``module.is_causal``), with its ``sliding_window`` (keys ``i - j < W``) and its logit
``softcap`` (``softcap * tanh(score / softcap)``) when the layer passes them; one spec a
combination, generated once. A given spec is used as written: a layer that passes a sliding
window or a softcap is refused with a ValueError (write them into the spec).

transformers is an optional extra (``pip install attngen[transformers]``); this module imports
it only inside ``register``. Needs transformers >= 4.56 (its ``masking_utils``).
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Callable, Mapping, Union

import torch

from .ir import nodes as ir
from .ir.verify import verify
from .driver import compile_source

#: the input :func:`with_key_padding` adds: bool [B, N], True for a real (not padding) key
PAD_INPUT = "attngen_kv_valid"

Inputs = Union[Mapping[str, object], Callable[[torch.nn.Module, torch.Tensor], Mapping[str, object]], None]


def with_key_padding(a: ir.Attention) -> ir.Attention:
    """``a`` with the input ``attngen_kv_valid: bool[B, N]`` and its mask and-ed with
    ``attngen_kv_valid[b, j]``. Its source gains a comment saying so (the source is part of the
    module's cache key and header, so the variant is a module of its own)."""
    if any(d.name == PAD_INPUT for d in a.inputs):
        raise ValueError(f"attention '{a.name}' already has an input named {PAD_INPUT}")
    probe = compile_source(f"attention p {{ input {PAD_INPUT}: bool[B, N]\n mask = {PAD_INPUT}[b, j] }}")[0]
    mask = probe.mask if a.mask is None else ir.Binary("and", a.mask, probe.mask, probe.mask.ty)
    note = (f"\n# attngen.transformers: input {PAD_INPUT}: bool[B, N]; mask = (the mask above) and "
            f"{PAD_INPUT}[b, j]\n")
    return verify(replace(a, inputs=a.inputs + probe.inputs, mask=mask, source=a.source.rstrip("\n") + note))


def model_spec(causal: bool, window: int | None, softcap: float | None) -> str:
    """The spec of :func:`register`'s default attention for one layer's options."""
    score = "dot(q, k) * scale"
    if softcap:
        score = f"{float(softcap)!r} * tanh({score} / {float(softcap)!r})"
    mask = [m for m in ("causal" if causal else "", f"i - j < {int(window)}" if window else "") if m]
    lines = [f"score = {score}"] + ([f"mask = {' and '.join(mask)}"] if mask else [])
    return "attention hf_attention {\n    " + "\n    ".join(lines) + "\n}\n"


def _backend_of(fn) -> str:
    from .reference.api import ReferenceAttention
    return "reference" if isinstance(fn, ReferenceAttention) else "triton"


def _callable(a: ir.Attention, backend: str):
    from . import _make  # load/jit's own dispatch to a backend
    return _make([a], None, backend, f"attention '{a.name}'")


class _Layer:
    """The attention function transformers calls: ``(module, query [B, H, S, D], key [B, HK, T, D],
    value, attention_mask, scaling=..., dropout=..., **kwargs) -> (o [B, S, H, DV], None)``."""

    def __init__(self, fn, inputs: Inputs):
        self.fn, self.inputs = fn, inputs
        self.padded = None if fn is None else _callable(with_key_padding(fn.attention), _backend_of(fn))

    def _pair(self, module, kwargs):
        """(plain, padded) callables for this layer."""
        if self.fn is not None:
            for opt in ("sliding_window", "softcap"):
                if kwargs.get(opt) is not None:
                    raise ValueError(f"attngen.transformers: the layer passes {opt}={kwargs[opt]!r}, which the "
                                     f"registered spec '{self.fn.name}' does not take: write it into the spec, or "
                                     "register(None, name) for the model's own")
            return self.fn, self.padded
        causal = bool(kwargs.get("is_causal", getattr(module, "is_causal", True)))
        return _default(causal, kwargs.get("sliding_window"), kwargs.get("softcap"))

    def __call__(self, module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
        if dropout:
            raise ValueError(f"attngen.transformers: attention dropout ({dropout}) is not supported; set the "
                             "config's attention_dropout to 0")
        plain, padded = self._pair(module, kwargs)
        xs = dict(self.inputs(module, query) if callable(self.inputs) else (self.inputs or {}))
        if attention_mask is None:
            o = plain(query, key, value, scale=scaling, **xs)
        else:
            if attention_mask.dim() != 2 or attention_mask.dtype != torch.bool:
                raise ValueError("attngen.transformers: expected the [B, kv_length] bool key padding of its mask "
                                 f"function, got {attention_mask.dtype} {tuple(attention_mask.shape)}; register the "
                                 "attention with attngen.transformers.register (it registers both)")
            o = padded(query, key, value, scale=scaling, **{PAD_INPUT: attention_mask[:, :key.shape[2]]}, **xs)
        return o.transpose(1, 2).contiguous(), None


#: the default attention's callables by (causal, window, softcap), generated before any trace where
#: register() can (torch.compile then reads this dict; it must not trace a module being generated)
_DEFAULTS: dict = {}


def _default(causal: bool, window: int | None, softcap: float | None):
    """The default attention's (plain, padded) callables for one layer's options: Triton's kernels."""
    key = (causal, window, softcap)
    if key not in _DEFAULTS:
        a = compile_source(model_spec(causal, window, softcap), "<attngen.transformers>")[0]
        _DEFAULTS[key] = (_callable(a, "triton"), _callable(with_key_padding(a), "triton"))
    return _DEFAULTS[key]


def _key_padding_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                      attention_mask=None, **kwargs):
    """transformers' mask function for attngen: the key padding ([B, kv_length] bool) or None."""
    if attention_mask is None:
        return None
    from transformers.masking_utils import prepare_padding_mask
    return prepare_padding_mask(attention_mask, kv_length, kv_offset)


def register(fn_or_path=None, name: str = "attngen", inputs: Inputs = None, config=None) -> str:
    """Register an attention with transformers under ``name`` (for ``attn_implementation=name``).

    fn_or_path: a callable from ``attngen.load`` / ``attngen.jit`` (either backend), a ``.attn``
    path, or None for the model's own causal / sliding-window / softcap attention. inputs: the
    spec's keyword inputs, a mapping or ``inputs(module, query) -> mapping`` (per layer, e.g.
    ``module.layer_idx``). config: with None, the model's config, whose ``sliding_window`` and
    ``attn_logit_softcapping`` select the specs generated now (others are generated at their first
    call, which must then come before any torch.compile trace). Returns ``name``."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    if isinstance(fn_or_path, (str, Path)):
        import attngen
        fn_or_path = attngen.load(fn_or_path)
    if fn_or_path is None:
        window, softcap = (getattr(config, "sliding_window", None), getattr(config, "attn_logit_softcapping", None))
        for key in {(True, None, None), (True, window, softcap), (True, None, softcap)}:
            _default(*key)
    AttentionInterface.register(name, _Layer(fn_or_path, inputs))
    AttentionMaskInterface.register(name, _key_padding_mask)
    return name

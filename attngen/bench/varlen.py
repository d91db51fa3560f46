"""Packed variable-length prefill: sequences of mixed lengths in one tensor, forward and backward.

A case is one attention on q [T, H, D], k [T, HK, D], v [T, HK, DV] holding the sequences
of ``Config.varlen_lengths`` one after another (T their total; M = N per sequence), with
the spec's keyword inputs sized for the longest sequence (B = the number of sequences).
attngen gets ``cu_seqlens_q = cu_seqlens_k`` (int32 [B + 1]) and the longest length;
FlexAttention (compiled on CUDA, eager on CPU) runs the concatenation as one sequence of T
tokens, [1, H, T, D] views of the same tensors, under a document mask: a pair is allowed
when both tokens are in the same sequence and the spec's mask allows it at the positions
counted from that sequence's start (its score likewise, with b = the sequence). Its block
mask is built inside every call (``create_block_mask``, compiled with torch.compile on
CUDA as its documentation recommends for long sequences, eager where that fails): the
packing changes with every batch, and attngen needs nothing ahead of its call either. The
mask's own time is also measured apart (``mask_prep_ms``). Specs whose score or mask reads
the size M or N have no flex peer here: in a packed call they are each sequence's own
lengths, which one flex call over the concatenation cannot give.

FLOPs count the pairs each sequence's mask allows, summed over the sequences
(:func:`.pairs.varlen_pairs`): 2 (D + DV) per pair forward, 3.5 times that forward+backward.

Records, one per pass (``fwd``, ``fwd+bwd``), as the dense mode's plus::

    {"mode": "varlen", "lengths": [...], "tokens": T, "seq": the longest length, "B": sequences,
     "density": allowed pairs / (H · Σ length²), ...}

with flex's ``mask_prep_ms`` part of its ``ms``.
"""

from __future__ import annotations

import functools
import warnings
from typing import Callable, Mapping

import torch

from ..ir import nodes as ir
from .flexmods import translate
from .impls import Impl, _compiled_flex, _eager_flex, attngen_impl, outputs, requiring_grad
from .inputs import Layouts, make_inputs
from .pairs import varlen_pairs
from .peers import Unsupported
from .run import BWD_FACTOR, DTYPE_NAMES, Case, Config, Target, _check, _tflops, _time, _time_peer, \
    fresh_compile_cache

#: the default packing: 8 sequences, 32768 tokens in all; drawn once (relative weights
#: 2 ** uniform(-2, 2) from random.Random(0), scaled to the total) and kept as numbers
DEFAULT_LENGTHS = (8086, 6360, 2495, 1594, 3209, 2389, 6832, 1803)


def run_varlen_case(t: Target, fn: Callable, cfg: Config, log: Callable[[str], None]) -> list[dict]:
    """The records (fwd, and fwd+bwd unless ``cfg.backward`` is off) of one attention on the packed lengths."""
    a, device = t.attention, torch.device(cfg.device)
    lengths = tuple(cfg.varlen_lengths) or DEFAULT_LENGTHS
    T, L, nseq, D = sum(lengths), max(lengths), len(lengths), cfg.dim
    H, HK = cfg.heads, cfg.kv_heads
    sizes = dict(B=nseq, H=H, HK=HK, M=L, N=L, D=D, DV=D)
    fresh_compile_cache(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    q, k, v = (torch.randn(shape, generator=gen, device=device).to(cfg.dtype).requires_grad_()
               for shape in ((T, H, D), (T, HK, D), (T, HK, D)))
    inputs = make_inputs(a, sizes, device, gen, requires_grad=cfg.input_grads)
    do = torch.randn((T, H, D), generator=gen, device=device).to(cfg.dtype)
    starts = [0]
    for n in lengths:
        starts.append(starts[-1] + n)
    cu = torch.tensor(starts, dtype=torch.int32, device=device)
    log(f"{a.name} ({t.path}) varlen {nseq} sequences, {T} tokens (longest {L}): checking and timing")
    seq = dict(cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=L, max_seqlen_k=L)
    mine = attngen_impl(lambda q, k, v, **xs: fn(q, k, v, **seq, **xs), inputs)
    case = Case(q, k, v, inputs, do, Layouts(inputs, []), device)
    pairs = varlen_pairs(a, q.detach(), k.detach(), v.detach(), inputs, starts, starts)
    base = {"mode": "varlen", "spec": a.name, "file": str(t.path), "lengths": list(lengths), "tokens": T, "seq": L,
            "B": nseq, "H": H, "HK": HK, "D": D, "DV": D, "dtype": DTYPE_NAMES[cfg.dtype], "device": device.type,
            "input_grads": cfg.input_grads, "allowed_pairs": pairs,
            "density": pairs / (H * sum(n * n for n in lengths))}
    fwd_flops = 2.0 * pairs * (D + D)
    passes = ["fwd"] + (["fwd+bwd"] if cfg.backward else [])
    records = [{**base, "pass": p, "flops": fwd_flops * (BWD_FACTOR if p == "fwd+bwd" else 1.0),
                "attngen": {}, "peers": {}} for p in passes]

    # every check before any timing (attngen autotunes inside its first calls)
    mine_out = outputs(mine, q, k, v, inputs, do if cfg.backward else None)
    peer: Impl | str | None = None
    if "flex" in cfg.peers:
        try:
            peer = flex_varlen_impl(a, sizes, D ** -0.5, inputs, starts, device, log)
        except Unsupported as why:
            peer = str(why)
        for rec in records:
            rec["peers"]["flex"] = _check(peer, rec["pass"], mine_out, case)
    for rec in records:
        ms = _time(mine, rec["pass"], case)
        rec["attngen"] = {"ms": ms, "tflops": _tflops(rec["flops"], ms)}
    if isinstance(peer, Impl):
        _time_peer(peer, records, case)
    return records


def check_flex_varlen(a: ir.Attention) -> None:
    """Raise :class:`Unsupported` when a packed call's semantics need more than flex's document mask."""
    for stage, e in (("score", a.score), ("mask", a.mask)):
        if ir.uses(e, "M", "N"):
            raise Unsupported(f"{stage} reads M or N, each sequence's own length in a packed call")


def flex_varlen_impl(a: ir.Attention, sizes: Mapping[str, int], scale: float, inputs: Mapping,
                     starts: list[int], device: torch.device, log: Callable[[str], None] = lambda _: None) -> Impl:
    """FlexAttention on the packed sequences (``starts``: cu_seqlens as a list) as one sequence under a
    document mask, its block mask built in every call; ``impl.call`` takes and returns packed tensors
    (q [T, H, D] -> o [T, H, DV]). ``sizes``: B = sequences, M = N = the longest, as attngen's call."""
    from torch.nn.attention.flex_attention import create_block_mask

    check_flex_varlen(a)
    mods = translate(a, sizes, scale, inputs)  # raises Unsupported for what flex cannot run at all
    T, H, HK = starts[-1], sizes["H"], sizes["HK"]
    lengths = torch.tensor([e - s for s, e in zip(starts, starts[1:])], device=device)
    doc = torch.repeat_interleave(torch.arange(len(lengths), device=device, dtype=torch.int32), lengths)
    start = torch.tensor(starts[:-1], dtype=torch.int32, device=device)

    def mask_mod(b, h, q_idx, kv_idx):
        dq, dk = doc[q_idx], doc[kv_idx]
        same = dq == dk
        if mods.mask_mod is None:
            return same
        return same & mods.mask_mod(dq, h, q_idx - start[dq], kv_idx - start[dk])

    def score_mod(s, b, h, q_idx, kv_idx):
        dq = doc[q_idx]
        return mods.score_mod(s, dq, h, q_idx - start[dq], kv_idx - start[doc[kv_idx]])

    heads = H if mods.mask_h else None
    builder = {"fn": _compiled_block_mask() if device.type == "cuda" else create_block_mask}

    def block_mask():
        try:
            return builder["fn"](mask_mod, None, heads, T, T, device=device)
        except Exception as err:  # noqa: BLE001 - torch.compile failing on the mask: build it eagerly instead
            if builder["fn"] is create_block_mask:
                raise
            log(f"{a.name}: compiled create_block_mask failed ({type(err).__name__}); building flex's mask eagerly")
            builder["fn"] = create_block_mask
            return create_block_mask(mask_mod, None, heads, T, T, device=device)

    flex = _compiled_flex() if device.type == "cuda" else _eager_flex

    def call(q, k, v):
        q4, k4, v4 = (x.permute(1, 0, 2).unsqueeze(0) for x in (q, k, v))  # [1, heads, T, dim] views
        o = flex(q4, k4, v4, score_mod=score_mod if mods.score_mod is not None else None, block_mask=block_mask(),
                 scale=mods.scale, enable_gqa=H != HK)
        return o[0].permute(1, 0, 2)

    no_backward = "flex has no backward on cpu" if device.type == "cpu" else None
    return Impl("flex", call, requiring_grad(inputs), prep=block_mask, no_backward=no_backward)


@functools.lru_cache(maxsize=None)
def _compiled_block_mask():
    from torch.nn.attention.flex_attention import create_block_mask

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.compile(create_block_mask)

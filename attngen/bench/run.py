"""The benchmark loop: for every attention and sequence length, one case, two records.

This docstring describes the dense mode (``Config.mode == "dense"``, the default); the
decode mode (:mod:`.decode`: M query rows against a KV cache, contiguous and paged, bandwidth)
and the varlen mode (:mod:`.varlen`: packed sequences of mixed lengths) run through the same
:func:`run` and describe their own records.

A case draws the inputs once (q [B, H, M, D], k [B, HK, N, D], v [B, HK, N, DV], M = N =
seq, B = tokens // seq), counts the pairs the mask allows on them, checks attngen's output
and gradients against each peer's on those same inputs, then times every implementation
forward (under no_grad) and forward+backward (``torch.autograd.grad(o, [q, k, v] + the
float inputs that require grad, do)``, so nothing accumulates). Where attngen's mask needs
per-call work (``attngen.prepare`` gives a handle), its forward is also timed with a warm
handle; the difference is attngen's mask preparation. A baseline attention, if given, runs
on the same shapes, attngen only (unless it is also one of the attentions benchmarked), and
every record gets its time over the baseline's.

Records (one per pass, ``fwd`` and ``fwd+bwd``) are plain dicts, ready for JSON::

    {"spec", "file", "seq", "B", "H", "HK", "D", "DV", "dtype", "device", "fresh_inputs",
     "input_grads", "allowed_pairs", "density", "pass", "flops",
     "attngen": {"ms", "tflops"[, "prepared_ms", "prep_ms"]},
     "peers": {"flex": {"rel_err", "errors", "ms", "tflops", "ratio", "mask_prep_ms"}
                       or {"skipped": reason},
               "sdpa-cudnn": ..., "sdpa-flash": ...,
               "dense": {"ms", "tflops", "ratio"} (selection specs: attngen without the select stage)}
     [, "vs_base"]}

``errors``: attngen's relative error against the peer for o (and, in fwd+bwd, for every
gradient both produce); ``rel_err`` the largest of them; ``ratio`` the peer's time over
attngen's (attngen TFLOP/s over the peer's: > 1 means attngen is faster). ``prepared_ms``
(fwd only, masks that need per-call work): attngen's time with a warm ``prepare`` handle;
``prep_ms``: ``ms - prepared_ms``, at least 0. ``vs_base``: the baseline's attngen ms over
this record's, same seq and pass (> 1: faster than the baseline). The baseline's own
records, when it is not one of the attentions benchmarked, have no peers.

With ``Config.startup``, :mod:`.startup` adds one startup record per attention.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Mapping

import torch

from .. import load
from ..frontend.errors import AttnError
from ..ir import nodes as ir
from ..ir.build import ConstValue
from .impls import (SDPA_BACKENDS, Impl, Outputs, attngen_impl, dense_impl, errors, flex_impl, outputs,
                    prepared_impl, sdpa_impl)
from .inputs import Layouts, discrete_names, make_inputs, make_qkv
from .pairs import allowed_pairs
from .peers import Unsupported
from .startup import measure as measure_startup
from .startup import scoped_environ
from .timing import time_ms

#: forward+backward FLOPs as a multiple of the forward's (2 matmuls forward, 5 backward)
BWD_FACTOR = 3.5
#: relative error above which attngen and a peer are reported as disagreeing
ERR_LIMIT = 2e-2
#: document layouts cycled through with fresh inputs
LAYOUTS = 8
DTYPE_NAMES = {torch.bfloat16: "bf16", torch.float16: "fp16", torch.float32: "fp32"}


@dataclass(frozen=True)
class Target:
    """One attention to benchmark: the file it came from, its IR and the const overrides it took."""

    path: Path
    attention: ir.Attention
    consts: Mapping[str, ConstValue] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    """What the benchmark was asked for (the options of ``attngen bench``)."""

    seqs: tuple[int, ...] = (4096, 16384)
    tokens: int = 16384
    heads: int = 16
    kv_heads: int = 16
    dim: int = 128
    dtype: torch.dtype = torch.bfloat16
    peers: tuple[str, ...] = ("flex", "sdpa")
    backward: bool = True
    input_grads: bool = True  # float keyword inputs require grad (their gradients are part of fwd+bwd)
    device: str = "cuda"
    fresh_inputs: bool = False
    locality: float = 0.0  # q and k share a signal smooth along the positions (inputs.make_qkv)
    seed: int = 0
    autotune: bool | None = None  # ATTNGEN_AUTOTUNE for the run; None: as the environment has it
    startup: bool = False  # also measure the startup figures (see .startup)
    mode: str = "dense"  # "dense", "decode" (.decode), "varlen" (.varlen) or "block" (.block)
    batch: int = 32  # decode: sequences in the batch (B)
    decode_rows: int = 1  # decode: query rows per sequence (M)
    page_sizes: tuple[int, ...] = (16, 64)  # decode: a paged cache per page size, besides the contiguous one
    varlen_lengths: tuple[int, ...] = ()  # varlen: the packed sequences' lengths

    def as_json(self) -> dict:
        """The options as JSON values, without those of the modes not run."""
        skip = {"dense": ("batch", "decode_rows", "page_sizes", "varlen_lengths"),
                "decode": ("tokens", "backward", "input_grads", "fresh_inputs", "startup", "varlen_lengths",
                           "locality"),
                "varlen": ("seqs", "tokens", "fresh_inputs", "startup", "batch", "decode_rows", "page_sizes",
                           "locality"),
                "block": ("backward", "startup", "batch", "decode_rows", "page_sizes", "varlen_lengths", "locality")}
        return {k: (str(v).removeprefix("torch.") if isinstance(v, torch.dtype) else v)
                for k, v in vars(self).items() if k not in skip[self.mode]}


@dataclass
class Results:
    """What :func:`run` measured."""

    records: list[dict] = field(default_factory=list)  # one per (attention, seq, pass); see the module docstring
    startup: list[dict] = field(default_factory=list)  # one per attention, with Config.startup


def run(targets: list[Target], cfg: Config, log: Callable[[str], None], baseline: Target | None = None) -> Results:
    """Every case of every target (and of ``baseline``); ``log`` gets one progress or skip line at a time.

    A baseline that is not among ``targets`` runs first, attngen only; one that attngen
    cannot run raises :class:`AttnError`.
    """
    if cfg.mode != "dense" and (baseline is not None or cfg.startup):
        raise ValueError(f"{cfg.mode} mode: no baseline and no startup figures (dense mode only)")
    cases = [(t, cfg) for t in targets]
    if baseline is not None and not any(_same(baseline, t) for t in targets):
        cases.insert(0, (baseline, replace(cfg, peers=(), startup=False)))
    out, base = Results(), None
    autotune = {} if cfg.autotune is None else {"ATTNGEN_AUTOTUNE": "1" if cfg.autotune else "0"}
    with scoped_environ(autotune):
        for t, c in cases:
            try:
                fn = load(t.path, name=t.attention.name, consts=t.consts)
            except AttnError as err:  # what the kernels cannot run yet (select stages) is a skip, not a failure
                if baseline is not None and _same(t, baseline):
                    raise
                log(f"{t.attention.name}: skipped (attngen: {err.message})")
                continue
            records = _run_target(t, fn, c, log)
            out.records += records
            if baseline is not None and _same(t, baseline):
                base = records
            if c.startup:
                log(f"{t.attention.name}: startup figures")
                out.startup.append(measure_startup(t, fn, c))
    if base is not None:
        base_ms = {(r["seq"], r["pass"]): r["attngen"]["ms"] for r in base}
        for r in out.records:
            r["vs_base"] = base_ms[(r["seq"], r["pass"])] / r["attngen"]["ms"]
    return out


def _run_target(t: Target, fn: Callable, cfg: Config, log: Callable[[str], None]) -> list[dict]:
    """The records of one attention in the mode asked for."""
    if cfg.mode == "decode":
        from .decode import run_decode_case

        return [r for seq in cfg.seqs for r in run_decode_case(t, fn, seq, cfg, log)]
    if cfg.mode == "varlen":
        from .varlen import run_varlen_case

        return run_varlen_case(t, fn, cfg, log)
    if cfg.mode == "block":
        from .block import run_block_case

        return [r for seq in cfg.seqs for r in run_block_case(t, fn, seq, cfg, log)]
    if cfg.mode != "dense":
        raise ValueError(f"unknown benchmark mode {cfg.mode!r}")
    return [r for seq in cfg.seqs for r in run_case(t, fn, seq, cfg, log)]


def fresh_compile_cache(device: torch.device) -> None:
    """A fresh torch.compile cache per case on CUDA: no recompile limits across many specs."""
    if device.type == "cuda":
        import torch._dynamo as dynamo

        dynamo.reset()


def _same(a: Target, b: Target) -> bool:
    """Whether two targets are the same attention of the same file with the same const overrides."""
    return (a.path.resolve(), a.attention.name, dict(a.consts)) == (b.path.resolve(), b.attention.name, dict(b.consts))


@dataclass
class Case:
    """The tensors of one case, shared by every implementation."""

    q: torch.Tensor  # [B, H, M, D], requires grad
    k: torch.Tensor  # [B, HK, N, D], requires grad
    v: torch.Tensor  # [B, HK, N, DV], requires grad
    inputs: dict  # the keyword inputs; float tensors require grad unless --no-input-grads
    do: torch.Tensor | None  # [B, H, M, DV], the output gradient (None: forward only)
    layouts: Layouts  # refreshed before every timed call: the next layout with fresh inputs, else nothing
    device: torch.device


def run_case(t: Target, fn: Callable, seq: int, cfg: Config, log: Callable[[str], None]) -> list[dict]:
    """The records of one case; ``fn``: attngen's callable for ``t``."""
    a, device = t.attention, torch.device(cfg.device)
    B = max(1, cfg.tokens // seq)
    sizes = dict(B=B, H=cfg.heads, HK=cfg.kv_heads, M=seq, N=seq, D=cfg.dim, DV=cfg.dim)
    fresh_compile_cache(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    q, k, v = make_qkv(sizes, cfg.dtype, device, gen, cfg.locality)
    inputs = make_inputs(a, sizes, device, gen, requires_grad=cfg.input_grads)
    do = torch.randn(q.shape[:3] + v.shape[3:], generator=gen, device=device).to(cfg.dtype)
    mine = attngen_impl(fn, inputs)
    log(f"{a.name} ({t.path}) seq={seq} B={B}: checking and timing")
    layouts = [make_inputs(a, sizes, device, gen, discrete_names(a)) for _ in range(LAYOUTS)] \
        if cfg.fresh_inputs and discrete_names(a) else []
    case = Case(q, k, v, inputs, do, Layouts(inputs, layouts), device)
    pairs = _count(a, case)
    base = {"spec": a.name, "file": str(t.path), "seq": seq, "B": B, "H": cfg.heads, "HK": cfg.kv_heads,
            "D": cfg.dim, "DV": cfg.dim, "dtype": DTYPE_NAMES[cfg.dtype], "device": device.type,
            "fresh_inputs": cfg.fresh_inputs, "locality": cfg.locality, "input_grads": cfg.input_grads,
            "allowed_pairs": pairs,
            "density": pairs / (B * cfg.heads * seq * seq)}
    fwd_flops = 2.0 * pairs * (sizes["D"] + sizes["DV"])
    passes = ["fwd"] + (["fwd+bwd"] if cfg.backward else [])
    records = [{**base, "pass": p, "flops": fwd_flops * (BWD_FACTOR if p == "fwd+bwd" else 1.0),
                "attngen": {}, "peers": {}} for p in passes]

    # Every check before any timing: attngen autotunes inside its first call (this check,
    # forward and backward), which must not be timed; and timing with fresh inputs changes them.
    mine_out = outputs(mine, q, k, v, inputs, do if cfg.backward else None)
    peers = list(_peers(a, sizes, inputs, cfg, device))
    for name, peer in peers:
        for rec in records:
            rec["peers"][name] = _check(peer, rec["pass"], mine_out, case)
    for rec in records:
        ms = _time(mine, rec["pass"], case)
        rec["attngen"] = {"ms": ms, "tflops": _tflops(rec["flops"], ms)}
    prepared = prepared_impl(fn, q.detach(), k.detach(), v.detach(), inputs, case.layouts)
    if prepared is not None:  # the mask needs per-call work: time the forward without it too
        fwd = records[0]["attngen"]
        fwd["prepared_ms"] = _time(prepared, "fwd", case)
        fwd["prep_ms"] = max(0.0, fwd["ms"] - fwd["prepared_ms"])
    for name, peer in peers:
        if isinstance(peer, Impl):
            _time_peer(peer, records, case)
    return records


def _peers(a: ir.Attention, sizes: dict, inputs: dict, cfg: Config, device: torch.device):
    """(name, Impl) for each peer asked for, or (name, reason) where it cannot run ``a``; for a
    selection, first the dense row beside it (``dense``: the spec without its select stage)."""
    scale = sizes["D"] ** -0.5
    makers = [("dense", lambda: dense_impl(a, inputs))] if a.select is not None else []
    if "flex" in cfg.peers:
        makers.append(("flex", lambda: flex_impl(a, sizes, scale, inputs, device, cfg.fresh_inputs)))
    if "sdpa" in cfg.peers:
        makers += [(n, lambda n=n: sdpa_impl(n, a, sizes, scale, cfg.dtype, device)) for n in SDPA_BACKENDS]
    for name, make in makers:
        try:
            yield name, make()
        except Unsupported as why:
            yield name, str(why)


def _check(peer: Impl | str, pass_: str, mine: Outputs, case: Case) -> dict:
    """``{"rel_err", "errors"}`` of attngen against ``peer`` for one pass, or ``{"skipped": reason}``."""
    if isinstance(peer, str):
        return {"skipped": peer}
    if peer.name == "dense":
        return {}  # another attention: timed, not compared
    backward = pass_ == "fwd+bwd"
    if backward and peer.no_backward:
        return {"skipped": peer.no_backward}
    try:
        errs = errors(mine, outputs(peer, case.q, case.k, case.v, case.inputs, case.do if backward else None))
    except RuntimeError as err:
        return {"skipped": _failure(err, case)}
    return {"rel_err": max(errs.values()), "errors": errs}


def _time_peer(peer: Impl, records: list[dict], case: Case) -> None:
    """Time ``peer`` in every pass it passed its check in; flex's mask preparation once, on its own."""
    prep = None
    for rec in records:
        res = rec["peers"][peer.name]
        if "skipped" in res:
            continue
        try:
            if peer.prep is not None and prep is None:
                prep = time_ms(peer.prep, case.device)
            ms = _time(peer, rec["pass"], case)
        except RuntimeError as err:
            rec["peers"][peer.name] = {"skipped": _failure(err, case)}
            continue
        res.update(ms=ms, tflops=_tflops(rec["flops"], ms), ratio=ms / rec["attngen"]["ms"])
        if peer.name == "flex":
            res["mask_prep_ms"] = prep


def _failure(err: RuntimeError, case: Case) -> str:
    """The reason to report for a peer that failed on a case (no kernel for it, a compile error, OOM)."""
    return failure(err, case.device)


def _time(impl: Impl, pass_: str, case: Case) -> float:
    """``impl``'s time for one pass, ``fwd`` (under no_grad) or ``fwd+bwd``."""
    refresh = case.layouts.refresh
    if pass_ == "fwd":
        q, k, v = case.q.detach(), case.k.detach(), case.v.detach()

        def step():
            refresh()
            with torch.no_grad():
                impl.call(q, k, v)
    else:
        q, k, v, do = case.q, case.k, case.v, case.do
        leaves = [q, k, v] + [case.inputs[n] for n in impl.grad_inputs]

        def step():
            refresh()
            torch.autograd.grad(impl.call(q, k, v), leaves, do, allow_unused=True)
    with impl.context():
        return time_ms(step, case.device)


def _count(a: ir.Attention, case: Case) -> float:
    """Allowed pairs on the case's inputs; with fresh inputs, their mean over the layouts."""
    if not case.layouts:
        return allowed_pairs(a, case.q, case.k, case.v, case.inputs)
    total = 0
    for _ in range(len(case.layouts)):
        case.layouts.refresh()
        total += allowed_pairs(a, case.q, case.k, case.v, case.inputs)
    return total / len(case.layouts)


def _tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def failure(err: Exception, device: torch.device) -> str:
    """The reason to report for an implementation that failed on a case (no kernel for it, a compile
    error, OOM), from any exception."""
    if device.type == "cuda":
        torch.cuda.empty_cache()
    first = (str(err).strip().splitlines() or [""])[0]
    return f"error: {type(err).__name__}: {first}"

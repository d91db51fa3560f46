"""Decoding: M query rows (default 1) per sequence against a KV cache, contiguous and paged.

A case is one attention and one cache length N: q [B, H, M, D], a contiguous cache
k [B, HK, N, D], v [B, HK, N, DV] (the query rows are the cache's last M positions:
i = m + N - M) and the spec's keyword inputs, without gradients. attngen runs on the
contiguous cache and on a paged copy of it per page size (:mod:`.paged`: shuffled pages,
``block_table`` and ``seqlens_k`` = N for every sequence); FlexAttention (its block mask
built once) and SDPA (no mask with M = 1 causal, bottom-right causal otherwise) run on the
contiguous cache, the only one they are given. Forward only, under no_grad.

Every output is checked first: attngen's on each layout against every peer's, and the
paged ones against attngen's contiguous one. Then each is timed (:func:`.timing.time_ms`,
the L2 cache flushed before every call); a peer is timed once and its time set against
attngen's on each layout.

The metric is bandwidth: ``kv_bytes`` are the bytes of K and V rows that some allowed pair
reads, once per (b, hk) however many heads of the group and query rows read them
(:func:`.pairs.allowed_keys` x (D + DV) x element size); for causal decoding that is the
whole cache, B·HK·N·(D + DV)·bytes; a window W reads only the last W (+ M - 1) keys. q, o
and the block table are not counted. TB/s = kv_bytes / time. ``cache_bytes`` is the whole
cache's size, for reference.

Records, one per (attention, N, layout)::

    {"mode": "decode", "spec", "file", "seq" (N), "B", "H", "HK", "M", "D", "DV", "dtype",
     "device", "pass": "fwd", "layout": "contiguous" | "paged", "page_size": None | int,
     "allowed_pairs", "density", "allowed_keys", "kv_bytes", "cache_bytes", "flops",
     "attngen": {"ms", "tbps", "tflops", "host_ms"[, "contiguous_err"]},
     "peers": {"flex": {"rel_err", "errors", "ms", "tbps", "ratio", "host_ms", "mask_prep_ms", "layout"}
                       or {"skipped": reason},
               "sdpa-cudnn": ..., "sdpa-flash": ...}}

``contiguous_err`` (paged layouts): attngen's relative error against its own contiguous
output. ``ratio``: the peer's ms (on the contiguous cache) over attngen's on the record's
layout, > 1 when attngen is faster. ``mask_prep_ms``: flex's create_block_mask, built
once and not part of its ms. ``layout`` (peers): always "contiguous". ``host_ms``: the host's
time for one call started with the GPU idle (argument checks and launches): where it
approaches ``ms``, the call is bound by the host, not by memory bandwidth. Paged calls are
timed as a decoding loop makes them, with ``validate=False``; their output is checked with
the block table validated, and ``validated_host_ms`` is the host time of such a call (the
validation copies a small result back from the GPU: a sync).
"""

from __future__ import annotations

from typing import Callable

import torch

from ..verify import rel_err
from .impls import SDPA_BACKENDS, Impl, Outputs, attngen_impl, errors, flex_impl, outputs, sdpa_impl
from .inputs import Layouts, make_inputs, make_qkv
from .paged import paged_cache
from .pairs import allowed_keys, allowed_pairs
from .peers import Unsupported
from .run import DTYPE_NAMES, Case, Config, Target, _tflops, _time, failure, fresh_compile_cache
from .timing import idle_host_ms, time_ms


def run_decode_case(t: Target, fn: Callable, seq: int, cfg: Config, log: Callable[[str], None]) -> list[dict]:
    """The records of one attention at cache length ``seq``: contiguous, then one per page size."""
    a, device = t.attention, torch.device(cfg.device)
    B, M, D = cfg.batch, cfg.decode_rows, cfg.dim
    sizes = dict(B=B, H=cfg.heads, HK=cfg.kv_heads, M=M, N=seq, D=D, DV=D)
    fresh_compile_cache(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    q, k, v = (x.detach() for x in make_qkv(sizes, cfg.dtype, device, gen))
    inputs = make_inputs(a, sizes, device, gen, requires_grad=False)
    log(f"{a.name} ({t.path}) cache={seq} B={B} M={M}: checking and timing")
    case = Case(q, k, v, inputs, None, Layouts(inputs, []), device)
    pairs, keys = allowed_pairs(a, q, k, v, inputs), allowed_keys(a, q, k, v, inputs)
    elem = q.element_size()
    base = {"mode": "decode", "spec": a.name, "file": str(t.path), "seq": seq, "B": B, "H": cfg.heads,
            "HK": cfg.kv_heads, "M": M, "D": D, "DV": D, "dtype": DTYPE_NAMES[cfg.dtype], "device": device.type,
            "pass": "fwd", "allowed_pairs": pairs, "density": pairs / (B * cfg.heads * M * seq),
            "allowed_keys": keys, "kv_bytes": keys * (D + D) * elem,
            "cache_bytes": B * cfg.kv_heads * seq * (D + D) * elem, "flops": 2.0 * pairs * (D + D)}

    # the peers' outputs first (and flex's compilation), kept to check every layout of attngen's against
    peers, peer_o = _peers(a, sizes, inputs, cfg, device), {}
    for name, peer in list(peers.items()):
        if isinstance(peer, Impl):
            try:
                peer_o[name] = outputs(peer, q, k, v, inputs, None).o
            except Exception as err:  # noqa: BLE001 - a peer's failure (no kernel, compile error, OOM) is a skip
                peers[name] = failure(err, device)
    mine = attngen_impl(fn, inputs)
    contiguous = None
    records = []
    for page_size in (None, *cfg.page_sizes):
        rec = {**base, "layout": "contiguous" if page_size is None else "paged", "page_size": page_size,
               "attngen": {}, "peers": {}}
        impl, checked, cache = mine, mine, None
        if page_size is not None:
            cache = paged_cache(k, v, page_size, gen)

            def paged(q, k, v, c=cache, validate=True):
                return fn(q, c.k, c.v, block_table=c.block_table, seqlens_k=c.seqlens_k, validate=validate, **inputs)
            checked = Impl("attngen", paged)
            impl = Impl("attngen", lambda q, k, v: paged(q, k, v, validate=False))  # as a decoding loop calls it
        o = outputs(checked, q, k, v, inputs, None).o  # attngen's first call: any autotuning happens here
        if page_size is None:
            contiguous = o
        else:
            rec["attngen"]["contiguous_err"] = rel_err(o, contiguous)
        for name, peer in peers.items():
            if name in peer_o:
                errs = errors(Outputs(o), Outputs(peer_o[name]))
                rec["peers"][name] = {"rel_err": max(errs.values()), "errors": errs}
            else:
                rec["peers"][name] = {"skipped": peer}
        ms = _time(impl, "fwd", case)
        rec["attngen"].update(ms=ms, tbps=_tbps(rec["kv_bytes"], ms), tflops=_tflops(rec["flops"], ms),
                              host_ms=_host_ms(impl, case))
        if page_size is not None:
            rec["attngen"]["validated_host_ms"] = _host_ms(checked, case)
        records.append(rec)
        del cache, impl  # one paged copy of the cache at a time
    for name, peer in peers.items():
        if name in peer_o:
            _time_peer(peer, records, case)
    return records


def _peers(a, sizes: dict, inputs: dict, cfg: Config, device: torch.device) -> dict[str, Impl | str]:
    """name -> Impl for each peer asked for, or the reason it cannot run ``a``."""
    scale = sizes["D"] ** -0.5
    makers = {}
    if "flex" in cfg.peers:
        makers["flex"] = lambda: flex_impl(a, sizes, scale, inputs, device, fresh=False)
    if "sdpa" in cfg.peers:
        for n in SDPA_BACKENDS:
            makers[n] = lambda n=n: sdpa_impl(n, a, sizes, scale, cfg.dtype, device, decode=True)
    out = {}
    for name, make in makers.items():
        try:
            out[name] = make()
        except Unsupported as why:
            out[name] = str(why)
        except Exception as err:  # noqa: BLE001 - e.g. flex's block mask failing to build
            out[name] = failure(err, device)
    return out


def _time_peer(peer: Impl, records: list[dict], case: Case) -> None:
    """Time ``peer`` once on the contiguous cache and set it against every record (layout) of the case."""
    try:
        prep = time_ms(peer.prep, case.device) if peer.prep is not None else None
        ms, host = _time(peer, "fwd", case), _host_ms(peer, case)
    except Exception as err:  # noqa: BLE001
        for rec in records:
            rec["peers"][peer.name] = {"skipped": failure(err, case.device)}
        return
    for rec in records:
        rec["peers"][peer.name].update(ms=ms, tbps=_tbps(rec["kv_bytes"], ms), ratio=ms / rec["attngen"]["ms"],
                                       host_ms=host, layout="contiguous")
        if peer.name == "flex":
            rec["peers"][peer.name]["mask_prep_ms"] = prep


def _host_ms(impl: Impl, case: Case) -> float:
    """The host's time for one forward call of ``impl`` started with the device idle (:func:`.timing.idle_host_ms`)."""
    q, k, v = case.q, case.k, case.v

    def call():
        with torch.no_grad():
            impl.call(q, k, v)

    with impl.context():
        return idle_host_ms(call, case.device)


def _tbps(nbytes: float, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e12

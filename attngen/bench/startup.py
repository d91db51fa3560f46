"""Startup figures of one attention: its first call with nothing cached, and the host time of a cached call.

first call   in this process (torch, triton and the device already initialized),
             ATTNGEN_CACHE_DIR and TRITON_CACHE_DIR point at a new empty directory and
             ATTNGEN_AUTOTUNE=0; the spec is loaded anew (``load_ms``: parse, check, plan,
             module generation and import) and its first forward call timed to the end of its
             device work (``first_call_ms``: Triton compilation, the run), at B=1, M=N=128 and
             the benchmark's heads, head dim and dtype. The environment is restored afterwards.
host         on B=1 H=1 M=N=128 D=64, the mean host time of a cached forward call issued back
             to back without synchronizing (``call_us``), less the same for one launch of a
             trivial Triton copy kernel (``launch_us``): ``overhead_us``, attngen's own cost
             per call on the host (argument checks, autograd, tile lists, its launches).
             Autotuning is off for it (the launch config hardly matters to the host, and
             tuning this tiny shape would compile every candidate).
"""

from __future__ import annotations

import contextlib
import os
import sys
import tempfile
import time
from typing import TYPE_CHECKING, Callable, Iterator, Mapping

import torch
import triton
import triton.language as tl

from .. import load
from .inputs import make_inputs, make_qkv
from .timing import host_us

if TYPE_CHECKING:
    from .run import Config, Target

FIRST_CALL_SEQ = 128
HOST_SIZES = dict(B=1, H=1, HK=1, M=128, N=128, D=64, DV=64)
#: calls timed for the host figures (the interpreter is slow: a few on CPU)
HOST_CALLS = {"cuda": 1000, "cpu": 3}
_COPY_BLOCK = 1024


@triton.jit
def _copy_kernel(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs, mask=offs < n), mask=offs < n)


def measure(t: Target, fn: Callable, cfg: Config) -> dict:
    """The startup record of ``t`` (in the benchmark's dtype and device); ``fn``: its callable from
    ``attngen.load``, used for the cached calls."""
    device = torch.device(cfg.device)
    first = dict(B=1, H=cfg.heads, HK=cfg.kv_heads, M=FIRST_CALL_SEQ, N=FIRST_CALL_SEQ, D=cfg.dim, DV=cfg.dim)
    load_ms, first_ms = first_call(lambda: load(t.path, name=t.attention.name, consts=t.consts), fn.key,
                                   _args(t, first, cfg, device), device)
    q, k, v, inputs = _args(t, HOST_SIZES, cfg, device)
    calls = HOST_CALLS[device.type]
    with torch.no_grad(), scoped_environ({"ATTNGEN_AUTOTUNE": "0"}):
        call_us = host_us(lambda: fn(q, k, v, **inputs), device, calls)
    src = q.flatten()
    dst = torch.empty_like(src)
    grid = (triton.cdiv(src.numel(), _COPY_BLOCK),)
    launch_us = host_us(lambda: _copy_kernel[grid](src, dst, src.numel(), BLOCK=_COPY_BLOCK), device, calls)
    return {"spec": t.attention.name, "file": str(t.path), "first_call_sizes": first, "load_ms": load_ms,
            "first_call_ms": first_ms, "host_sizes": HOST_SIZES, "host_calls": calls, "call_us": call_us,
            "launch_us": launch_us, "overhead_us": call_us - launch_us}


def _args(t: Target, sizes: Mapping[str, int], cfg: Config, device: torch.device):
    """q, k, v and the keyword inputs at ``sizes``, without grad."""
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    q, k, v = (x.detach() for x in make_qkv(sizes, cfg.dtype, device, gen))
    return q, k, v, make_inputs(t.attention, sizes, device, gen, requires_grad=False)


def first_call(load_fn: Callable[[], Callable], key: str, args: tuple,
               device: torch.device) -> tuple[float, float]:
    """(ms of ``load_fn()``: generating, checking and importing the module of cache key ``key``; ms of
    the first forward call of what it returns: compiling the kernels), with nothing cached."""
    q, k, v, inputs = args
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    with tempfile.TemporaryDirectory(prefix="attngen-startup-") as tmp, _cold_caches(tmp), _fresh_import(key):
        sync()
        start = time.perf_counter()
        fn = load_fn()
        loaded = time.perf_counter()
        with torch.no_grad():
            fn(q, k, v, **inputs)
            sync()
            done = time.perf_counter()
    return (loaded - start) * 1e3, (done - loaded) * 1e3


@contextlib.contextmanager
def scoped_environ(values: Mapping[str, str]) -> Iterator[None]:
    """Set the environment variables ``values`` for the block, then restore (or unset) them."""
    saved = {n: os.environ.get(n) for n in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for n, old in saved.items():
            if old is None:
                os.environ.pop(n, None)
            else:
                os.environ[n] = old


@contextlib.contextmanager
def _cold_caches(tmp: str) -> Iterator[None]:
    """Empty attngen and Triton caches under ``tmp`` and no autotuning, for the block.

    Triton before 3.4 reads TRITON_CACHE_DIR from the environment whenever it opens its
    cache; from 3.4 (3.6 and the newest alike) it reads ``triton.knobs.cache.dir``, which
    reads the environment unless a value was set in Python, which then wins: so the knob is
    set too, inside its own ``scope()``, which restores it.
    """
    triton_dir = os.path.join(tmp, "triton")
    knobs = getattr(triton, "knobs", None)
    with contextlib.ExitStack() as stack:
        if knobs is not None:
            stack.enter_context(knobs.cache.scope())
        stack.enter_context(scoped_environ({"ATTNGEN_CACHE_DIR": os.path.join(tmp, "attngen"),
                                            "TRITON_CACHE_DIR": triton_dir, "ATTNGEN_AUTOTUNE": "0"}))
        if knobs is not None:
            knobs.cache.dir = triton_dir
        yield


@contextlib.contextmanager
def _fresh_import(key: str) -> Iterator[None]:
    """Hide the generated module of cache key ``key`` from ``sys.modules`` for the block, so that
    loading generates and imports it anew (new kernel objects, no compiled kernels in memory); the
    module the process had (if any) is back afterwards."""
    name = f"attngen_generated_{key}"  # the name attngen/runtime/cache.py imports it under
    saved = sys.modules.pop(name, None)
    try:
        yield
    finally:
        sys.modules.pop(name, None)
        if saved is not None:
            sys.modules[name] = saved

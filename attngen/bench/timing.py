"""Wall time of one call, in milliseconds, and host time per call, in microseconds.

:func:`time_ms` on CUDA: ``triton.testing.do_bench`` (CUDA events, the L2 cache flushed
before every call, the median of the repetitions). On CPU, where the kernels run under
the Triton interpreter and only smoke tests make sense, the median of a few perf_counter
calls. :func:`host_us`: the host's side only, calls issued back to back. :func:`idle_host_ms`:
the host's side of one call started with the device idle.
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch

#: do_bench's warm-up and measurement budgets, in ms of run time
WARMUP_MS, REP_MS = 25, 100
#: timed calls on CPU
CPU_REPS = 3
#: untimed calls before host_us times (fewer when it times fewer)
HOST_WARMUP = 20
#: calls idle_host_ms times
IDLE_CALLS = {"cuda": 20, "cpu": 3}


def time_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median time of ``fn()``; one untimed call first, so compilation is never measured."""
    fn()
    if device.type == "cuda":
        from triton.testing import do_bench

        return float(do_bench(fn, warmup=WARMUP_MS, rep=REP_MS, return_mode="median"))
    times = []
    for _ in range(CPU_REPS):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def host_us(fn: Callable[[], object], device: torch.device, calls: int) -> float:
    """Mean host wall time of ``fn()`` over ``calls`` calls issued back to back without
    synchronizing: for calls whose GPU work is shorter than their launch, the host's cost
    per call. A few untimed calls first; the device is idle when the timing starts."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(min(calls, HOST_WARMUP)):
        fn()
    sync()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    elapsed = time.perf_counter() - start
    sync()
    return elapsed / calls * 1e6


def idle_host_ms(fn: Callable[[], object], device: torch.device) -> float:
    """Median host wall time of one ``fn()`` started with the device idle and not waited for at its
    end: launch costs, argument checks and any host work before its last launch, including waits
    for the device inside it (short here, the device being idle). Where this approaches
    :func:`time_ms`, the call's time is the host's, not the kernels'."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    times = []
    for _ in range(IDLE_CALLS[device.type]):
        sync()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    sync()
    return statistics.median(times) * 1e3

"""Launching generated kernels: launch configs, autotuning with a tuning file, retries on resource
errors, tile lists of data-dependent masks, split-KV sizing, output buffers.

Shipped: the generated module embeds this file verbatim (after its imports); the module then binds
``_MODULE_KEY`` to its cache key, which names its tuning file.
"""

import functools
import json
import os
import sys
import warnings

import torch
import triton
import triton.language as tl

from .triton_helpers import _tiles_by_key

_DOT_DTYPES = {torch.float16: tl.float16, torch.bfloat16: tl.bfloat16, torch.float32: tl.float32}
#: the module's cache key, which names its tuning file (the generated module rebinds it)
_MODULE_KEY = "runtime"


#: id(kernel) -> (kernel, the runtime arguments it takes, by name, in its order)
_BOUND = {}


def _bind(kernel, named):
    """A generated kernel's leading runtime arguments, from a call's ``named`` ones (every argument a
    kernel of the attention may read: ``_Attention.args``); each kernel takes only those it reads."""
    hit = _BOUND.get(id(kernel))
    if hit is None or hit[0] is not kernel:
        hit = _BOUND[id(kernel)] = (kernel, [n for n in kernel.arg_names if n in named])
    return [named[n] for n in hit[1]]


def _launch(kernel, grid, args, cfg, **constexprs):
    """Launch with ``cfg`` (``args(cfg)`` gives the arguments); on a shared-memory overflow retry with
    fewer pipeline stages, then a smaller BLOCK_M (BLOCK_N stays: stick-breaking's suffix buffers are
    laid out per key tile). A config that crashes ptxas (as triton 3.6's did on one narrow-head
    kernel) is retried the same way, with a warning: the fault is the assembler's, not the call's."""
    retries = ({}, {"num_stages": 1}, {"num_stages": 1, "BLOCK_M": min(cfg["BLOCK_M"], 32)})
    for n, retry in enumerate(retries):
        c = {**cfg, **retry} if retry else cfg  # copies only when retrying
        try:
            return kernel[grid(c) if callable(grid) else grid](*_bind(kernel, args(c)), **c, **constexprs)
        except (triton.runtime.errors.OutOfResources, triton.runtime.errors.PTXASError) as err:
            if n == len(retries) - 1:
                raise
            if isinstance(err, triton.runtime.errors.PTXASError):
                warnings.warn(f"attngen: ptxas failed on {getattr(kernel, '__name__', 'a kernel')} with {c}; "
                              f"retrying with {retries[n + 1]}", RuntimeWarning, stacklevel=2)


class _Direct:
    """Launches from host code that runs with real tensors (eager calls, the custom_op operators):
    configs autotuned (``choose``), launches retried on resource errors (``_launch``)."""

    traced = False

    @staticmethod
    def kernel(kernel):
        return kernel

    @staticmethod
    def choose(key_of, candidates, run):
        """The config for a launch: ``key_of()`` gives the tuning key, ``run(cfg)`` launches with one."""
        return _autotune(key_of(), candidates, run)

    launch = staticmethod(_launch)

    @staticmethod
    def spare(tensor):
        """A tensor for kernel parameters a launch leaves alone: the one at hand."""
        return tensor


class _Traced:
    """Launches in the body of a ``torch.library.triton_op`` while Inductor traces it (fake tensors,
    symbolic sizes): each one is recorded as a kernel node through ``torch.library.wrap_triton``,
    compiled and run later by the graph, so nothing here may time, read files or query the device,
    and an error of the launch would surface outside any ``try`` here. The config is therefore the
    fixed default (the first candidate, what ATTNGEN_AUTOTUNE=0 takes), launched once as given."""

    traced = True

    @staticmethod
    def kernel(kernel):
        return torch.library.wrap_triton(kernel)

    @staticmethod
    def choose(key_of, candidates, run):
        return candidates[0]

    @staticmethod
    def spare(tensor):
        """A tensor of its own for kernel parameters a launch leaves alone (one element: never read)."""
        return tensor.new_empty((1,))

    @staticmethod
    def launch(kernel, grid, args, cfg, **constexprs):
        torch.library.wrap_triton(kernel)[grid(cfg) if callable(grid) else grid](*_bind(kernel, args(cfg)), **cfg,
                                                                                 **constexprs)


class _TileLists:
    """Per-call lists of the key tiles (for each query tile) and query tiles (for each key tile)
    that a data-dependent mask allows, partly or fully, for each block shape a kernel launches with.
    Built by the attention's classification kernel on first use; reusable across calls with the
    same mask inputs (``prepare``)."""

    def __init__(self, fn, classify, args_for, sizes, heads, constexprs, launcher=_Direct):
        self.fn, self.classify, self.args_for = fn, classify, args_for
        self.sizes, self.heads, self.constexprs = dict(sizes), heads, constexprs
        self.launcher = launcher
        self.lists = {}

    def check(self, fn, sizes):
        for dim in ("B", "H", "M", "N"):
            if self.fn != fn or sizes[dim] != self.sizes[dim]:
                raise ValueError(f"{fn}: prepared tiles are for {self.fn} with {dim}={self.sizes[dim]}, "
                                 f"this call has {dim}={sizes[dim]}")

    def get(self, cfg):
        """(row lists, column lists) for cfg's BLOCK_M x BLOCK_N tiles."""
        key = (cfg["BLOCK_M"], cfg["BLOCK_N"])
        if key not in self.lists:
            bm, bn = key
            m_tiles, n_tiles = _cdiv(self.sizes["M"], bm), _cdiv(self.sizes["N"], bn)
            rows = self.sizes["B"] * self.heads
            dev = self.constexprs["device"]
            tl_rows = torch.empty(rows * m_tiles * (2 + 2 * n_tiles), device=dev, dtype=torch.int32)
            classes = torch.empty(rows * m_tiles * n_tiles, device=dev, dtype=torch.int32)
            tl_cols = torch.empty(rows * n_tiles * (2 + 2 * m_tiles), device=dev, dtype=torch.int32)
            kw = {k: v for k, v in self.constexprs.items() if k != "device"}
            wrap = self.launcher.kernel
            wrap(self.classify)[(m_tiles, rows)](*_bind(self.classify, self.args_for(tl_rows, classes)), BLOCK_M=bm,
                                                 BLOCK_N=bn, **kw)
            wrap(_tiles_by_key)[(n_tiles, rows)](classes, tl_cols, self.sizes["M"], self.sizes["N"], BLOCK_M=bm,
                                                 BLOCK_N=bn, SCAN=kw["SCAN"])
            self.lists[key] = (tl_rows, tl_cols)
        return self.lists[key]


_POISON = os.environ.get("ATTNGEN_POISON") == "1"


def _empty(shape, device, dtype):
    """An output buffer the kernels must fill; ATTNGEN_POISON=1 (the tests; read at import) fills it
    with NaN first (integers: their largest value), so an element a kernel forgets to write shows up."""
    t = torch.empty(shape, device=device, dtype=dtype)
    if not _POISON:
        return t
    return t.fill_(float("nan") if dtype.is_floating_point or dtype == torch.bool else torch.iinfo(dtype).max)


def _no_grads(xs, q):
    """The kernels' input-gradient arguments where no input gradient is written: each tensor input
    stands in for its own, a scalar input's slot takes q."""
    return {n: (x if isinstance(x, torch.Tensor) else q) for n, x in xs.items()}


def _cdiv(a, b):
    # host-side arithmetic in plain Python: triton.cdiv is a constexpr function, microseconds a call
    return -(-a // b)


def _pow2(n):
    return 1 << max(n - 1, 0).bit_length()


def _blocks(length):
    # A padded head dim gets at least 64 columns: on triton 3.6 (H100) the forward returned wrong
    # values for D=40/56 with DV=20..28 padded to 32 (and was right with 64); powers of two are exact.
    block = _pow2(length)
    return max(16, block) if block == length else max(64, block)


def _cfg(bm, bn, warps, stages):
    return dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages)


def _config(D, DV, q):
    """Candidate launch settings, the fixed default (ATTNGEN_AUTOTUNE=0) first, and the constexprs
    every kernel shares. A backward candidate gives the dq kernel's settings (also the preprocess
    kernel's) and the dk/dv kernel's. Callers must not modify what it returns (it is cached)."""
    return _config_of(D, DV, q.dtype, q.device.type)


@functools.lru_cache(maxsize=None)
def _config_of(D, DV, dtype, device_type):
    width = max(_blocks(D), _blocks(DV))
    big = width > 128
    if device_type == "cpu":
        fwd = [_cfg(32, 32, 4, 1)]
        bwd = [dict(dq=_cfg(32, 32, 4, 1), dkdv=_cfg(32, 32, 4, 1))]
    elif big:
        fwd = [_cfg(64, 32, 4, 2), _cfg(64, 64, 4, 2), _cfg(32, 64, 4, 2), _cfg(64, 32, 8, 2)]
        bwd = [dict(dq=_cfg(32, 32, 4, 1), dkdv=_cfg(32, 32, 4, 1)), dict(dq=_cfg(64, 32, 4, 1), dkdv=_cfg(32, 64, 4, 1)),
               dict(dq=_cfg(32, 32, 4, 2), dkdv=_cfg(32, 32, 4, 2))]
    else:
        fwd = [_cfg(128, 64, 8, 3), _cfg(128, 128, 8, 3), _cfg(128, 64, 4, 3), _cfg(128, 128, 8, 2),
               _cfg(64, 64, 4, 3), _cfg(128, 64, 8, 4), _cfg(64, 128, 4, 3)]
        # H200 sweep of the transposed dk/dv kernel (causal, D 128): 64 x 128 keys, 8 warps, 3 stages best at
        # 16k, 64 x 64, 4 warps, 2 stages at 4k; the dq kernel 128 x 64, 8 warps, 3 stages at both
        bwd = [dict(dq=_cfg(128, 64, 8, 3), dkdv=_cfg(64, 128, 8, 3)), dict(dq=_cfg(128, 64, 8, 3), dkdv=_cfg(64, 64, 4, 2)),
               dict(dq=_cfg(64, 64, 4, 2), dkdv=_cfg(64, 64, 4, 2)), dict(dq=_cfg(128, 64, 8, 2), dkdv=_cfg(64, 128, 8, 2)),
               dict(dq=_cfg(128, 64, 8, 3), dkdv=_cfg(32, 128, 8, 3)), dict(dq=_cfg(64, 64, 4, 3), dkdv=_cfg(64, 64, 4, 3))]
        if width <= 32:
            # narrow heads gain nothing from the wide tiles, and triton 3.6's ptxas crashed (SIGSEGV) on the
            # stick-breaking dq kernel at 128 x 64, 8 warps, D 16: the 64 x 64 pair goes first
            bwd.insert(0, bwd.pop(2))
    # the Triton interpreter (the CPU) multiplies bf16 operands wrongly (triton 3.9: tl.dot of bf16 tiles returns
    # garbage), so there the products take float32 operands: exact where the GPU's bf16 ones round
    f32_dots = dtype == torch.float32 or (device_type == "cpu" and dtype == torch.bfloat16)
    common = dict(D=D, DV=DV, BLOCK_D=_blocks(D), BLOCK_DV=_blocks(DV),
                  DOT_DTYPE=tl.float32 if f32_dots else _DOT_DTYPES[dtype], SCAN=64,
                  PAGED=False, PAGE_SIZE=1, PACK=False, MERGE_M=SPLIT_ROWS,
                  DOT_PRECISION="ieee" if f32_dots else "tf32")
    return fwd, bwd, common


def _tune_file():
    """This module's tuning file, under ATTNGEN_CACHE_DIR as it is now (it may change after import)."""
    return _tune_file_in(os.environ.get("ATTNGEN_CACHE_DIR"))


@functools.lru_cache(maxsize=None)
def _tune_file_in(root):
    return os.path.join(root or os.path.join(os.path.expanduser("~"), ".cache", "attngen"), f"tune-{_MODULE_KEY}.json")


_TUNED = {}  # tuning file -> chosen configs by key


def _progress(items, desc):
    """Iterate the configs being timed; attngen.load replaces this with a progress bar."""
    print(f"attngen: tuning {desc} ({len(items)} configs)", file=sys.stderr, flush=True)
    return items


def _tuned():
    """Chosen configs by key, read once from this module's tuning file."""
    path = _tune_file()
    if path not in _TUNED:
        _TUNED[path] = _tuned_on_disk(path)
    return _TUNED[path]


@functools.lru_cache(maxsize=None)
def _device_name(index):
    return torch.cuda.get_device_name(index)


def _tune_key(name, kind, sizes, q):
    """Shape bucket (powers of two of M and N), head dims, GQA group, dtype and GPU."""
    return _tune_key_of(name, kind, max(16, _pow2(sizes["M"])), max(16, _pow2(sizes["N"])), sizes["D"], sizes["DV"],
                        sizes["H"] // sizes["HK"], q.dtype, q.device.index if q.device.type == "cuda" else None)


@functools.lru_cache(maxsize=None)
def _tune_key_of(name, kind, m, n, D, DV, G, dtype, index):
    dev = "cpu" if index is None else _device_name(index)
    return f"{name}/{kind}/M{m}/N{n}/D{D}/DV{DV}/G{G}/{str(dtype).split('.')[-1]}/{dev}"


#: query rows up to which the forward may split the keys over several programs (decoding)
SPLIT_ROWS = 16


def _split_config(sizes, q, rows):
    # decoding reads keys at the memory's speed: long key tiles, 3 stages in flight (H100 sweep:
    # 128 x 4 warps x 3 stages beat 64 x 2 stages by 2-4% at 8k-32k keys, contiguous and paged)
    rows = max(rows, 16)
    if q.device.type == "cpu":
        return _cfg(rows, 32, 4, 1)
    return _cfg(rows, 128 if max(_blocks(sizes["D"]), _blocks(sizes["DV"])) <= 128 else 32, 4, 3)


@functools.lru_cache(maxsize=None)
def _sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def _splits(programs, M, N, cfg, q):
    """How many programs share one (b, h)'s keys: enough to fill the GPU (2 programs per SM: more
    only added merge work in the H100 sweep; 64 under the interpreter, so that tests split), at least
    two key tiles each; 1 (no split) past SPLIT_ROWS."""
    if M > SPLIT_ROWS:
        return 1
    target = 2 * _sm_count(q.device.index) if q.device.type == "cuda" else 64
    return max(1, min(_cdiv(target, programs), _cdiv(N, cfg["BLOCK_N"]) // 2))


def _autotune(key, candidates, run):
    """The fastest of ``candidates`` for ``key``: timed once (``run(cfg)`` launches with a config),
    then remembered in memory and on disk (written atomically; a concurrent writer loses nothing
    but its own entry). ATTNGEN_AUTOTUNE=0 takes the first, a fixed good default."""
    if len(candidates) == 1 or os.environ.get("ATTNGEN_AUTOTUNE", "1") == "0":
        return candidates[0]
    table = _tuned()
    if key in table and table[key] in candidates:
        return table[key]
    times = []
    for n, c in enumerate(_progress(candidates, key)):
        try:
            times.append((triton.testing.do_bench(lambda: run(c), warmup=5, rep=25, return_mode="median"), n))
        except (triton.runtime.errors.OutOfResources, triton.runtime.errors.PTXASError):
            continue  # a candidate the GPU or its assembler cannot take is not a result
    table[key] = candidates[min(times)[1]] if times else candidates[0]
    try:
        path = _tune_file()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        with open(tmp, "w") as f:
            json.dump({**_tuned_on_disk(path), key: table[key]}, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
    except OSError:
        pass  # a read-only cache directory only costs re-tuning in the next process
    return table[key]


def _tuned_on_disk(path):
    """The tuning file's entries (a missing or corrupt file has none)."""
    try:
        with open(path) as f:
            found = json.load(f)
        return found if isinstance(found, dict) else {}
    except (OSError, ValueError):
        return {}

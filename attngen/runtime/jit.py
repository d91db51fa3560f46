"""The Triton backend behind ``attngen.load`` / ``attngen.jit``: generate, cache, import, call."""

from __future__ import annotations

from ..driver import generate
from ..ir import nodes as ir
from .cache import load_module


def _progress(items, desc):
    """A progress bar over the configs the autotuner times (first call per shape bucket)."""
    from tqdm.auto import tqdm
    return tqdm(items, desc=f"attngen: tuning {desc}", leave=False)


class TritonAttention:
    """Callable running one attention's generated kernels: ``fn(q, k, v, scale=None, return_lse=False, **inputs)``."""

    def __init__(self, attention: ir.Attention):
        self.attention = attention
        self.name = attention.name
        # generated (the one path, attngen/driver.py; a spec the kernels cannot run fails here, at load
        # time), verified and imported now: under torch.compile a call must be the module's function
        # alone, with no rendering or cache I/O for Dynamo to trace
        module = generate([attention])
        self.key = module.key
        self.module = load_module(self.key, module.render, self.name)
        self.module._progress = _progress
        self._fn = getattr(self.module, self.name)

    def __call__(self, q, k, v, *, scale=None, return_lse=False, prepared=None, **inputs):
        return self._fn(q, k, v, scale=scale, return_lse=return_lse, prepared=prepared, **inputs)

    def prepare(self, q, k, **inputs):
        """Tile lists of a data-dependent mask for these shapes and inputs, to reuse across calls
        (``fn(q, k, v, prepared=handle, ...)``); None when the mask needs none."""
        return getattr(self.module, f"{self.name}_prepare")(q, k, **inputs)

    def __repr__(self) -> str:
        return f"<attngen {self.name} (triton)>"

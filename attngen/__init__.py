"""attngen: compile attention specs (``.attn``) into fused Triton kernels.

    fn = attngen.load("examples/alibi_window.attn")
    o = fn(q, k, v, slopes=s)                        # q: [B, H, M, D], k: [B, HK, N, D], v: [B, HK, N, DV]
    o, lse = fn(q, k, v, slopes=s, return_lse=True)  # lse: [B, H, M] float32 (softmax norms)
    ref = attngen.load("examples/alibi_window.attn", backend="reference")
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .frontend.errors import AttnError
from .ir.build import ConstValue
from .distributed import context_parallel, shard_sequence, star_context, star_query, unshard_sequence
from .merge import merge_by_lse
from .runtime.cache import CacheError

__version__ = "0.1.0"
BACKENDS = ("triton", "reference")

__all__ = ["AttnError", "CacheError", "context_parallel", "load", "jit", "merge_by_lse", "prepare", "shard_sequence",
           "star_context", "star_query", "unshard_sequence", "__version__"]


def _make(attns, name: str | None, backend: str, origin: str):
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if len(attns) > 1:
        names = ", ".join(a.name for a in attns)
        raise ValueError(f"{origin} defines several attentions ({names}); pick one with name=...")
    a = attns[0]
    if backend == "reference":
        from .reference.api import ReferenceAttention
        return ReferenceAttention(a)
    from .runtime.jit import TritonAttention
    return TritonAttention(a)


def load(path: str | Path, name: str | None = None, consts: Mapping[str, ConstValue] | None = None,
         backend: str = "triton"):
    """Compile the attention in the ``.attn`` file at ``path`` into a callable."""
    from .driver import compile_file
    return _make(compile_file(path, consts, name), name, backend, str(path))


def jit(source: str, name: str | None = None, consts: Mapping[str, ConstValue] | None = None,
        backend: str = "triton"):
    """Like :func:`load`, for spec text given as a string."""
    from .driver import compile_source
    return _make(compile_source(source, "<jit>", consts, name), name, backend, "the source")


def prepare(fn, q, k, **inputs):
    """Classify the tiles of ``fn``'s data-dependent mask (document ids, flags) once, for calls
    that share shapes and mask inputs: ``h = attngen.prepare(fn, q, k, doc=doc)`` then
    ``fn(q, k, v, doc=doc, prepared=h)`` in every layer. Returns None for masks that need
    no per-call work (affine masks are bounded in closed form inside the kernels)."""
    if not hasattr(fn, "prepare"):
        raise TypeError(f"prepare needs a callable from attngen.load/jit with backend='triton', got {fn!r}")
    return fn.prepare(q, k, **inputs)

"""Dependence analysis for code generation.

The axes of a value (``ir/axes.py``: ``row``, ``col``, ``h``) decide where a kernel computes
it (hoisted or per tile) and which kernel owns the gradient of each leaf: a kernel iterates
one axis in its program and another in its loop.
"""

from __future__ import annotations

from ..frontend.errors import AttnError
from ..ir.axes import COL, HEAD, ROW, axes, is_pair, is_pair_row

__all__ = ["COL", "HEAD", "ROW", "CodegenError", "axes", "is_pair", "is_pair_row"]


class CodegenError(AttnError):
    """A valid spec that this code generator cannot compile (says why)."""

"""What code generation refuses, and the IR's axes (``attngen.ir.axes``) as codegen uses them."""

from __future__ import annotations

from ..frontend.errors import AttnError
from ..ir import nodes as ir
from ..ir.axes import COL, HEAD, ROW, axes, is_pair

__all__ = ["COL", "HEAD", "ROW", "axes", "is_pair", "CodegenError", "check_vector_sides"]


class CodegenError(AttnError):
    """A valid spec that this code generator cannot compile (says why)."""


def check_vector_sides(stage: str, e: ir.Expr) -> None:
    """Vector values must live on one side (query or key): a [M, N, D] tile is never built."""
    for n in ir.walk(e):
        if n.ty.is_vec and is_pair(n):
            raise CodegenError(f"{stage}: the vector expression mixes query and key positions; "
                               "the kernels need each vector to depend on one side only", n.span)

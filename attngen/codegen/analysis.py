"""Dependence analysis for code generation.

Every IR node varies along a subset of the axes ``row`` (the query row: m, i, q),
``col`` (the key: j, k) and ``h`` (the query head). A kernel iterates one axis in its
program and another in its loop; the axes decide where a value is computed (hoisted
or per tile) and which kernel owns the gradient of each leaf.
"""

from __future__ import annotations

from functools import lru_cache

from ..frontend.errors import AttnError
from ..ir import nodes as ir

ROW, COL, HEAD = "row", "col", "h"

_SYM_AXES = {"i": {ROW}, "m": {ROW}, "j": {COL}, "jb": {COL}, "h": {HEAD},
             "score": {ROW, COL, HEAD}, "p": {ROW, COL, HEAD}}
_ROW_AXES = {"q": {ROW, HEAD}, "q_raw": {ROW, HEAD}, "o": {ROW, HEAD}, "k": {COL}, "k_raw": {COL}, "kmean": {COL}}


@lru_cache(maxsize=None)
def axes(e: ir.Expr) -> frozenset[str]:
    if isinstance(e, ir.Sym):
        return frozenset(_SYM_AXES.get(e.name, ()))
    if isinstance(e, ir.Row):
        return frozenset(_ROW_AXES[e.name])
    out: frozenset[str] = frozenset()
    for c in ir.children(e):
        out |= axes(c)
    return out


def is_pair(e: ir.Expr) -> bool:
    a = axes(e)
    return ROW in a and COL in a


class CodegenError(AttnError):
    """A valid spec that this code generator cannot compile (says why)."""


def check_vector_sides(stage: str, e: ir.Expr) -> None:
    """Vector values must live on one side (query or key): a [M, N, D] tile is never built."""
    for n in ir.walk(e):
        if n.ty.is_vec and is_pair(n):
            raise CodegenError(f"{stage}: the vector expression mixes query and key positions; "
                               "the kernels need each vector to depend on one side only", n.span)

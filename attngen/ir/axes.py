"""Dependence axes of IR expressions.

Every IR node varies along a subset of the axes ``row`` (the query row: m, i, q),
``col`` (the key: j, k) and ``h`` (the query head). The checker reads them to tell a pair
row (language 1.1's pair vectors: ``q - k``, ``e[t]`` with t a pair index) from a one-sided
one; the code generator, to place each value (hoisted or per tile) and to give each leaf's
gradient to one kernel.
"""

from __future__ import annotations

from functools import lru_cache

from . import nodes as ir

ROW, COL, HEAD = "row", "col", "h"
#: not an axis of the grid: the value reads a row aggregate, which the kernels know only after a pass over
#: the row's keys (so they place it after that pass)
AGG = "agg"
#: nor this: the value reads a key scan, which the kernels compute after the tile's mask (with a carry)
SCAN = "scan"

_SYM_AXES = {"i": {ROW}, "m": {ROW}, "j": {COL}, "jb": {COL}, "h": {HEAD},
             "score": {ROW, COL, HEAD}, "p": {ROW, COL, HEAD}}
_ROW_AXES = {"q": {ROW, HEAD}, "q_raw": {ROW, HEAD}, "o": {ROW, HEAD}, "k": {COL}, "k_raw": {COL}, "kmean": {COL}}


@lru_cache(maxsize=None)
def axes(e: ir.Expr) -> frozenset[str]:
    if isinstance(e, ir.Sym):
        return frozenset(_SYM_AXES.get(e.name, ()))
    if isinstance(e, ir.Row):
        return frozenset(_ROW_AXES[e.name])
    if isinstance(e, ir.Agg):
        return frozenset((ROW, HEAD, AGG))  # reduced over the keys: one value per query row and head
    if isinstance(e, ir.Scan):
        return frozenset((ROW, COL, HEAD, SCAN)) | axes(e.x)
    out: frozenset[str] = frozenset()
    for c in ir.children(e):
        out |= axes(c)
    return out


def is_pair(e: ir.Expr) -> bool:
    """Varies by the query row and by the key."""
    a = axes(e)
    return ROW in a and COL in a


def is_pair_row(e: ir.Expr) -> bool:
    """A row (vector) that mixes the query and the key side: a pair vector (language 1.1)."""
    return e.ty.is_vec and is_pair(e)

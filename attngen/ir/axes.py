"""The axes an IR value varies along.

Every IR node varies along a subset of the axes ``row`` (the query row: m, i, q),
``col`` (the key: j, k) and ``h`` (the query head). A kernel iterates one axis in its
program and another in its loop; the axes decide where a value is computed (hoisted
or per tile), which kernel owns the gradient of each leaf, and for how many heads a
selection is made.
"""

from __future__ import annotations

from functools import lru_cache

from . import nodes as ir

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

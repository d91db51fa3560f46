"""Classify tiles of the mask: which boxes of pairs are empty, full or partial.

Why: a causal or windowed kernel that visits every key tile does up to twice (or, for a
1024 window over 16k keys, sixteen times) the work it needs, and a tile that is entirely
allowed need not evaluate the mask per element.

The pass derives, from the mask expression, two boolean expressions over a box of pairs
(query positions ``i_lo..i_hi``, keys ``j_lo..j_hi``) by interval arithmetic:

    tiles.any   false => no pair in the box is allowed   (sound: never false wrongly)
    tiles.all   true  => every pair in the box is allowed (sound: never true wrongly)

Integer and float arithmetic, ``//`` and ``%`` by positive literals, min/max/clamp/abs,
comparisons and ``and``/``or``/``not`` are covered; ``m`` is ``i - (N - M)``. A value that
depends on one side only through a tensor input (``doc[b, i]``) becomes
``tile_min(...)``/``tile_max(...)``, its extremes over the box's rows or keys: such masks
are *dynamic* and get a per-call classification kernel. Anything else (``score``, a load
indexed by both i and j) is unknown: its comparisons are "maybe" (any true, all false).

A mask that is a conjunction of integer bounds on ``i - j`` (``causal``, a window) is also a band
``lo <= i - j <= hi`` (``tiles.band``): from it the kernels compute each program's tile ranges
directly instead of testing every tile.

The kernels evaluate these closed forms per tile (no mask is materialized for static
masks); a mask the analysis cannot bound still runs correctly, tile by tile, with the mask.
"""

from __future__ import annotations

from dataclasses import replace

from ..ir import nodes as ir
from ..ir.builtins import UNARY
from ..ir.types import BOOL, INT
from .fold_constants import _fold

_SIDES = {"i": "row", "m": "row", "j": "col"}
_TRUE, _FALSE = ir.Const(True, BOOL), ir.Const(False, BOOL)
Range = tuple[ir.Expr, ir.Expr]


def _sides(e: ir.Expr) -> set[str]:
    return {_SIDES[n.name] for n in ir.walk(e) if isinstance(n, ir.Sym) and n.name in _SIDES}


def _opaque(e: ir.Expr) -> bool:
    """Depends on the score, p or q/k rows: no bounds."""
    return any(isinstance(n, ir.Row) or (isinstance(n, ir.Sym) and n.name in ("score", "p")) for n in ir.walk(e))


def _bin(op: str, a: ir.Expr, b: ir.Expr) -> ir.Expr:
    ty = BOOL if op in ("and", "or", "eq", "ne", "lt", "le", "gt", "ge") else a.ty
    return ir.transform(ir.Binary(op, a, b, ty), _fold)


def _call(fn: str, *args: ir.Expr) -> ir.Expr:
    ty = INT if fn in ("floor", "ceil") else args[-1].ty if fn == "where" else args[0].ty  # floor, ceil: float -> int
    return ir.transform(ir.Call(fn, tuple(args), ty), _fold)


def _not(a: ir.Expr) -> ir.Expr:
    return ir.transform(ir.Unary("not", a, BOOL), _fold)


def _range(e: ir.Expr) -> Range | None:
    """(lo, hi) bounds of a number over the box, or None when unknown."""
    if _opaque(e) or e.ty.is_vec:
        return None
    if not _sides(e):
        return e, e
    if isinstance(e, ir.Sym):
        if e.name == "i":
            return ir.Sym("i_lo", INT), ir.Sym("i_hi", INT)
        if e.name == "j":
            return ir.Sym("j_lo", INT), ir.Sym("j_hi", INT)
        shift = _bin("sub", ir.Sym("N", INT), ir.Sym("M", INT))  # m = i - (N - M)
        return _bin("sub", ir.Sym("i_lo", INT), shift), _bin("sub", ir.Sym("i_hi", INT), shift)
    if isinstance(e, ir.Load):
        if len(_sides(e)) == 1:
            return _call("tile_min", e), _call("tile_max", e)
        return None
    if isinstance(e, ir.Cast):
        r = _range(e.x)
        return None if r is None else tuple(ir.transform(ir.Cast(x, e.ty), _fold) for x in r)
    if isinstance(e, ir.Unary) and e.op == "neg":
        r = _range(e.x)
        return None if r is None else (ir.transform(ir.Unary("neg", r[1], e.ty), _fold),
                                       ir.transform(ir.Unary("neg", r[0], e.ty), _fold))
    if isinstance(e, ir.Binary):
        return _binary_range(e)
    if isinstance(e, ir.Call):
        return _call_range(e)
    return None


def _binary_range(e: ir.Binary) -> Range | None:
    ra, rb = _range(e.a), _range(e.b)
    if ra is None or rb is None:
        return None
    if e.op == "add":
        return _bin("add", ra[0], rb[0]), _bin("add", ra[1], rb[1])
    if e.op == "sub":
        return _bin("sub", ra[0], rb[1]), _bin("sub", ra[1], rb[0])
    if e.op == "mul":
        for x, r in ((e.a, rb), (e.b, ra)):
            if isinstance(x, ir.Const):
                lo, hi = (r if x.value >= 0 else (r[1], r[0]))
                return _bin("mul", lo, x), _bin("mul", hi, x)
        prods = [_bin("mul", a, b) for a in ra for b in rb]
        return (_call("min", _call("min", prods[0], prods[1]), _call("min", prods[2], prods[3])),
                _call("max", _call("max", prods[0], prods[1]), _call("max", prods[2], prods[3])))
    positive = isinstance(e.b, ir.Const) and not isinstance(e.b.value, bool) and e.b.value > 0
    if e.op == "floordiv" and positive:  # non-decreasing in a
        return _bin("floordiv", ra[0], e.b), _bin("floordiv", ra[1], e.b)
    if e.op == "mod" and positive and e.ty == INT:
        # one period: the residues are in order; across a period boundary: anything
        same = _bin("eq", _bin("floordiv", ra[0], e.b), _bin("floordiv", ra[1], e.b))
        top = ir.Const(e.b.value - 1, INT)
        return (_call("where", same, _bin("mod", ra[0], e.b), ir.Const(0, INT)),
                _call("where", same, _bin("mod", ra[1], e.b), top))
    return None


def _call_range(e: ir.Call) -> Range | None:
    rs = [_range(x) for x in e.args]
    if any(r is None for r in rs):
        return None
    if e.fn in ("min", "max", "clamp"):  # non-decreasing in every argument
        return _call(e.fn, *(r[0] for r in rs)), _call(e.fn, *(r[1] for r in rs))
    if e.fn == "abs":
        (lo, hi), zero = rs[0], ir.Const(0, e.ty) if e.ty == INT else ir.Const(0.0, e.ty)
        neg = _bin("sub", zero, hi)
        low = _call("where", _bin("ge", lo, zero), lo, _call("where", _bin("le", hi, zero), neg, zero))
        return low, _call("max", _bin("sub", zero, lo), hi)
    if e.fn in ("relu", "floor", "ceil") or (e.fn in UNARY and UNARY[e.fn].increasing):
        return _call(e.fn, rs[0][0]), _call(e.fn, rs[0][1])  # non-decreasing
    return None


def classify(e: ir.Expr) -> tuple[ir.Expr, ir.Expr]:
    """(any, all) of a boolean expression over the box."""
    if not _sides(e) and not _opaque(e):
        return e, e
    if isinstance(e, ir.Binary) and e.op in ("and", "or"):
        (a1, l1), (a2, l2) = classify(e.a), classify(e.b)
        return _bin(e.op, a1, a2), _bin(e.op, l1, l2)
    if isinstance(e, ir.Unary) and e.op == "not":
        a, al = classify(e.x)
        return _not(al), _not(a)
    if isinstance(e, ir.Load) and e.ty == BOOL and len(_sides(e)) == 1 and not _opaque(e):
        return _call("tile_max", e), _call("tile_min", e)
    if isinstance(e, ir.Binary) and e.op in ("eq", "ne", "lt", "le", "gt", "ge"):
        ra, rb = _range(e.a), _range(e.b)
        if ra is not None and rb is not None:
            return _compare(e.op, ra, rb)
    return _TRUE, _FALSE


def _compare(op: str, ra: Range, rb: Range) -> tuple[ir.Expr, ir.Expr]:
    if op in ("gt", "ge"):
        op, ra, rb = {"gt": "lt", "ge": "le"}[op], rb, ra
    if op in ("lt", "le"):
        return _bin(op, ra[0], rb[1]), _bin(op, ra[1], rb[0])
    overlap = _bin("and", _bin("le", ra[0], rb[1]), _bin("le", rb[0], ra[1]))
    same = _bin("and", _bin("and", _bin("eq", ra[0], ra[1]), _bin("eq", rb[0], rb[1])), _bin("eq", ra[0], rb[0]))
    return (overlap, same) if op == "eq" else (_not(same), _not(overlap))


def tiles_of(mask: ir.Expr | None) -> ir.Tiles | None:
    """The classification of ``mask``, or None when nothing is known (every tile runs with the mask)."""
    if mask is None:
        return None
    any_, all_ = classify(mask)
    if isinstance(any_, ir.Const) and any_.value and isinstance(all_, ir.Const) and not all_.value:
        return None
    return ir.Tiles(any_, all_, band(mask))


def band(mask: ir.Expr) -> tuple[int | None, int | None] | None:
    """(lo, hi) when ``mask`` is a conjunction of comparisons that bound i - j by integer constants
    (``j <= i``, ``i - j < W``, ...), lo <= hi; else None."""
    lo, hi = None, None
    for c in _conjuncts(mask):
        if not (isinstance(c, ir.Binary) and c.op in ("lt", "le", "gt", "ge")):
            return None
        d = _affine(ir.Binary("sub", c.a, c.b, c.a.ty))  # c.a - c.b = s * (i - j) + k
        if d is None or set(d) - {"i", "j", 1} or d.get("i") not in (1, -1) or d.get("j") != -d["i"]:
            return None
        s, k = d["i"], d.get(1, 0)
        op = c.op if s == 1 else {"lt": "gt", "le": "ge", "gt": "lt", "ge": "le"}[c.op]
        bound = -k if s == 1 else k  # i - j (op) bound
        if op in ("lt", "le"):
            hi = min(x for x in (hi, bound - (op == "lt")) if x is not None)
        else:
            lo = max(x for x in (lo, bound + (op == "gt")) if x is not None)
    if lo is not None and hi is not None and lo > hi:
        return None
    return lo, hi


def _conjuncts(e: ir.Expr) -> list[ir.Expr]:
    if isinstance(e, ir.Binary) and e.op == "and":
        return _conjuncts(e.a) + _conjuncts(e.b)
    return [e]


def _affine(e: ir.Expr) -> dict | None:
    """{"i": a, "j": b, 1: k} for an integer expression a*i + b*j + k, or None."""
    if isinstance(e, ir.Const) and isinstance(e.value, int) and not isinstance(e.value, bool):
        return {1: e.value}
    if isinstance(e, ir.Sym) and e.name in ("i", "j"):
        return {e.name: 1}
    if isinstance(e, ir.Unary) and e.op == "neg":
        x = _affine(e.x)
        return None if x is None else {n: -v for n, v in x.items()}
    if isinstance(e, ir.Binary) and e.op in ("add", "sub"):
        x, y = _affine(e.a), _affine(e.b)
        if x is None or y is None:
            return None
        sign = 1 if e.op == "add" else -1
        return {n: x.get(n, 0) + sign * y.get(n, 0) for n in set(x) | set(y)}
    return None



def run(a: ir.Attention) -> ir.Attention:
    return replace(a, tiles=tiles_of(a.mask))

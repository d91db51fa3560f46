"""IR invariants, checked after building and after every pass.

A failure here is a compiler bug, not a user error, so it raises
:class:`IRVerifyError` (an AssertionError) naming the stage and the node.
"""

from __future__ import annotations

from . import nodes as ir
from .check_expr import _STAGE_NAMES, SIZES
from .printer import expr_str
from .builtins import UNARY
from .types import BOOL, FLOAT, INT

_COMMON = set(SIZES) | {"b", "h", "hk", "scale"}
_FLOAT_FNS = set(UNARY)


#: weights (and an aggregate's argument) may read q and k through a let (check_expr._name)
_LET_ROWS = {"q", "k", "q_raw", "k_raw"}


class IRVerifyError(AssertionError):
    pass


def _fail(stage: str, e: ir.Expr, why: str):
    raise IRVerifyError(f"IR verify failed in {stage}: {why}: {expr_str(e)}")


def _check_node(stage: str, e: ir.Expr, a: ir.Attention, names: set[str]) -> None:
    if isinstance(e, (ir.Sym, ir.Row)) and e.name not in names and e.name not in _COMMON:
        _fail(stage, e, f"'{e.name}' is not in scope")
    if isinstance(e, (ir.Param, ir.Load)):
        try:
            d = a.input(e.name)
        except KeyError:
            _fail(stage, e, f"undeclared input '{e.name}'")
        if isinstance(e, ir.Param) and d.dims is not None:
            _fail(stage, e, "tensor input used as a scalar")
        if isinstance(e, ir.Load):
            if d.dims is None or not len(d.dims) - 1 <= len(e.indices) <= len(d.dims):
                _fail(stage, e, "wrong number of indices")
            if any(x.ty != INT for x in e.indices):
                _fail(stage, e, "non-integer index")
            if e.ty.is_vec != (len(e.indices) < len(d.dims)):
                _fail(stage, e, "load type does not match its index count")
    if isinstance(e, ir.Binary):
        rows = e.a.ty.is_vec or e.b.ty.is_vec  # rows combine element by element (1.1)
        if e.op in ("and", "or") and not (e.a.ty.is_bool and e.b.ty.is_bool and e.ty.is_bool):
            _fail(stage, e, "boolean op on non-booleans")
        elif e.op in ("eq", "ne", "lt", "le", "gt", "ge"):
            if not e.ty.is_bool or e.ty.is_vec != rows or e.a.ty.is_bool != e.b.ty.is_bool \
                    or (not rows and e.a.ty != e.b.ty):
                _fail(stage, e, "comparison operands differ in type")
        elif e.op not in ("and", "or"):
            if e.a.ty.is_bool or e.b.ty.is_bool:
                _fail(stage, e, "arithmetic on booleans")
            kinds = {e.a.ty.kind, e.b.ty.kind} - {"vec"}
            if len(kinds) > 1:
                _fail(stage, e, "mixed int/float operands without a cast")
    if isinstance(e, ir.Cast) and e.x.ty == e.ty:
        _fail(stage, e, "no-op cast")
    if isinstance(e, ir.Slice) and (not e.x.ty.is_vec or e.x.ty.is_bool or not 0 <= e.lo < e.hi
                                    or e.ty.length != str(e.hi - e.lo)
                                    or (e.x.ty.length.isdigit() and e.hi > int(e.x.ty.length))):
        _fail(stage, e, "a slice must take lanes 0 <= lo < hi <= length of a float row")
    if isinstance(e, ir.Call) and e.fn in _FLOAT_FNS and e.args[0].ty == INT:
        _fail(stage, e, "float function of an int without a cast")
    if isinstance(e, ir.Call) and e.fn == "concat" and (
            not all(x.ty.is_vec and not x.ty.is_bool and x.ty.length.isdigit() for x in e.args)
            or e.ty.length != str(sum(int(x.ty.length) for x in e.args))):
        _fail(stage, e, "concat() joins float rows of integer lengths into a row of their total length")


def _check_tree(stage: str, e: ir.Expr, a: ir.Attention, names: set[str]) -> None:
    """Check every node; a row aggregate's argument is in the pair scope, whatever the stage."""
    _check_node(stage, e, a, names)
    if isinstance(e, ir.Agg):
        if stage not in ("weights", "out") or e.kind not in ir.AGG_KINDS or e.x.ty.is_vec or e.x.ty.is_bool:
            _fail(stage, e, "a row aggregate reduces a number per key in the weights or out stage")
        names = set(_STAGE_NAMES["aggregate"]) | _LET_ROWS
    if isinstance(e, ir.Scan):
        if stage not in ("score", "weights", "score2") or e.x.ty != FLOAT:
            _fail(stage, e, "a key scan sums a float per key in the score or weights stage")
        names = set(_STAGE_NAMES["scan"]) | _LET_ROWS
    for c in ir.children(e):
        _check_tree(stage, c, a, names)


def verify(a: ir.Attention) -> ir.Attention:
    """Check ``a``; return it unchanged so calls can be chained."""
    for stage, e in a.exprs():
        key = stage + (".block" if stage.startswith("select") and a.select.block else "")
        names = set(_STAGE_NAMES[key]) | (_LET_ROWS if stage == "weights" else set())
        # after substitute_prologue a stage reads the loaded rows, with the prologue inlined
        names |= {raw for row, raw in (("q", "q_raw"), ("k", "k_raw")) if row in names}
        _check_tree(stage, e, a, names)
    expect = {"score": FLOAT, "mask": BOOL, "weights": FLOAT, "select.by": FLOAT,
              "select.keep": BOOL, "norm.sink": FLOAT, "score2": FLOAT, "tiles.any": BOOL, "tiles.all": BOOL}
    for stage, e in a.exprs():
        if stage in expect and e.ty != expect[stage]:
            _fail(stage, e, f"stage type is {e.ty}, expected {expect[stage]}")
        if stage in ("q", "k") and e.ty.length != "D":
            _fail(stage, e, "prologue must give a row of length D")
        if stage == "out" and e.ty.length != "DV":
            _fail(stage, e, "out must give a row of length DV")
    if a.select is not None and (a.select.k < 1 or (a.select.block is not None and a.select.block < 1)):
        raise IRVerifyError("IR verify failed in select: K and block must be positive")
    return a

"""Fold constant subexpressions and trivial identities.

Why: consts are inlined by the builder, so ``CAP * tanh(x / CAP)`` or ``log(2048.0)``
leave arithmetic on literals that every kernel tile would otherwise recompute.
Folds: operations whose operands are all constants (Python semantics, so ``//`` and
``%`` floor), ``x * 1``, ``1 * x``, ``x + 0``, ``0 + x``, ``x - 0``, ``x / 1``, ``--x``,
``not not b``, ``true and b``, ``false or b``, casts of constants; ``x / c`` becomes ``x * (1/c)``.
"""

from __future__ import annotations

import math
from dataclasses import replace

from ..frontend.errors import AttnError
from ..frontend.limits import FLOAT32_MAX, INT32_MAX, INT32_MIN
from ..ir import nodes as ir
from ..ir.builtins import UNARY
from ..ir.types import BOOL, INT


def _pow(a, b):
    # an integer power past int32 is refused anyway: never compute 3 ** 2000000000 (minutes, gigabytes)
    if isinstance(a, int) and isinstance(b, int) and abs(a) > 1 and b > 64:
        raise OverflowError
    return a ** b


_BIN = {
    "add": lambda a, b: a + b, "sub": lambda a, b: a - b, "mul": lambda a, b: a * b,
    "div": lambda a, b: a / b if b != 0 else None, "floordiv": lambda a, b: a // b if b != 0 else None,
    "mod": lambda a, b: a % b if b != 0 else None, "pow": _pow,
    "eq": lambda a, b: a == b, "ne": lambda a, b: a != b, "lt": lambda a, b: a < b,
    "le": lambda a, b: a <= b, "gt": lambda a, b: a > b, "ge": lambda a, b: a >= b,
    "and": lambda a, b: a and b, "or": lambda a, b: a or b,
}



_FN = {
    **{n: u.fold for n, u in UNARY.items()},  # ir/builtins.py
    "abs": abs, "floor": lambda x: int(math.floor(x)), "ceil": lambda x: int(math.ceil(x)), "relu": lambda x: max(x, 0 * x),
    "min": min, "max": max, "clamp": lambda x, lo, hi: min(max(x, lo), hi),
}


def _is(e: ir.Expr, v) -> bool:
    return isinstance(e, ir.Const) and not isinstance(e.value, bool) and e.value == v


def _fold(e: ir.Expr) -> ir.Expr:
    if isinstance(e, ir.Cast) and isinstance(e.x, ir.Const) and not e.ty.is_vec:
        return ir.Const(float(e.x.value), e.ty, e.span)
    if isinstance(e, ir.Unary):
        if isinstance(e.x, ir.Const):
            return ir.Const((not e.x.value) if e.op == "not" else -e.x.value, e.ty, e.span)
        if isinstance(e.x, ir.Unary) and e.x.op == e.op:
            return e.x.x
        return e
    if isinstance(e, ir.Binary):
        a, b = e.a, e.b
        if isinstance(a, ir.Const) and isinstance(b, ir.Const):
            try:
                v = _BIN[e.op](a.value, b.value)
            except (OverflowError, ZeroDivisionError):
                v = None
            if isinstance(v, complex):  # (-8.0) ** 0.5: not a real number
                v = None
            if v is not None and not (isinstance(v, float) and math.isnan(v)):
                v = bool(v) if e.ty == BOOL else int(v) if e.ty == INT else float(v)
                return ir.Const(v, e.ty, e.span)
            return e
        if e.op == "and" and isinstance(a, ir.Const):
            return b if a.value else a
        if e.op == "and" and isinstance(b, ir.Const):
            return a if b.value else b
        if e.op == "or" and isinstance(a, ir.Const):
            return a if a.value else b
        if e.op == "or" and isinstance(b, ir.Const):
            return b if b.value else a
        keeps_type = lambda x: x.ty == e.ty  # noqa: E731 - an identity may not change the result type
        if e.op == "mul" and _is(a, 1) and keeps_type(b):
            return b
        if e.op in ("mul", "div", "pow") and _is(b, 1) and keeps_type(a):
            return a
        if e.op == "div" and isinstance(b, ir.Const) and e.ty.kind == "float" and b.value != 0:
            return ir.Binary("mul", a, ir.Const(1.0 / b.value, b.ty, b.span), e.ty, e.span)  # a multiply per pair, not a divide
        if e.op == "add" and _is(a, 0) and keeps_type(b):
            return b
        if e.op in ("add", "sub") and _is(b, 0) and keeps_type(a):
            return a
        return e
    if isinstance(e, ir.Call) and e.fn in _FN and all(isinstance(x, ir.Const) for x in e.args):
        try:
            v = _FN[e.fn](*(x.value for x in e.args))
        except (OverflowError, ValueError):
            v = None
        if v is not None:
            return ir.Const(int(v) if e.ty == INT else float(v), e.ty, e.span)
    return e


def run(a: ir.Attention) -> ir.Attention:
    out = a.replace_exprs(lambda stage, e: ir.transform(e, _fold))
    if out.mask is not None and isinstance(out.mask, ir.Const):
        # a constant-true mask is no mask; a constant-false one stays (every row is empty)
        out = replace(out, mask=None) if out.mask.value else out
    return out


def _undefined(e: ir.Expr) -> str | None:
    """Why a node of folded IR has no value the kernels could compute, or None."""
    if isinstance(e, ir.Const) and e.ty == INT and not INT32_MIN <= e.value <= INT32_MAX:
        return f"this integer constant ({e.value}) is out of the int32 range of the kernels"
    if isinstance(e, ir.Const) and e.ty.kind == "float" and math.isfinite(e.value) and abs(e.value) > FLOAT32_MAX:
        return f"this constant ({e.value:g}) is out of the float32 range of the kernels"
    if isinstance(e, ir.Binary) and e.op in ("div", "floordiv", "mod") and e.ty.kind == "float" \
            and isinstance(e.b, ir.Const) and e.b.value == 0:
        return "division by zero"
    if isinstance(e, ir.Binary) and e.op in _BIN and isinstance(e.a, ir.Const) and isinstance(e.b, ir.Const) \
            and not (e.ty == INT and e.op in ("floordiv", "mod")):  # an integer // 0 or % 0 is 0 (README)
        return "this constant expression has no real value (a NaN, a complex number or an overflow)"
    if isinstance(e, ir.Call) and e.fn in _FN and all(isinstance(x, ir.Const) for x in e.args):
        return f"{e.fn}() of these constants has no real value"
    return None


def check_constants(a: ir.Attention) -> None:
    """Fold ``a`` and refuse what the kernels cannot compute: constant expressions that overflow
    int32 or float32, divide a float by zero or have no real value, and a constant sink that is
    not finite. Run at check time, so ``attngen check`` reports them with a caret."""
    folded = run(a)
    for stage, e in folded.exprs():
        for n in ir.walk(e):
            why = _undefined(n)
            if why is not None:
                raise AttnError(why, n.span or a.stage_span(stage.split(".")[0]))
    sink = folded.norm.sink
    if isinstance(sink, ir.Const) and not math.isfinite(sink.value):
        raise AttnError("the sink must be finite (a sink of -inf is no sink: drop it)",
                        sink.span or a.stage_span("norm"))

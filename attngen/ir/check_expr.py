"""Expression checking: AST expressions -> typed IR in one stage's scope.

Every user mistake raises :class:`AttnError` at the offending span. The rules are
those of LANGUAGE.md; where it is silent, the README's language section records the
decision taken here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Union

from ..frontend import ast
from ..frontend.errors import AttnError, Span, suggest
from . import nodes as ir
from .axes import is_pair_row
from .builtins import UNARY
from .types import BOOL, DTYPES, FLOAT, INT, Ty, vec

#: the most lanes a slice may take: a kernel holds a row as one [rows, lanes] tile
MAX_ROW = 1024

SIZES = ("B", "H", "HK", "M", "N", "D", "DV")
INDICES = ("b", "h", "hk", "i", "j", "m", "jb")
BUILTIN_NAMES = set(SIZES) | set(INDICES) | {"q", "k", "v", "o", "kmean", "scale", "score", "p", "causal"}

UNARY_FLOAT_FNS = tuple(UNARY)  # ir/builtins.py: float -> float, elementwise on rows
#: one-argument reductions of a row (language 1.1) and their IR names (sum, max and min mean other things
#: with another number of arguments, or as a norm)
ROW_REDUCTIONS = {"sum": "row_sum", "mean": "row_mean", "max": "row_max", "min": "row_min"}
#: row aggregates (language 1.1) and their ir.Agg kinds; allowed in weights and out (and in their arguments)
AGGREGATES = {"rowsum": "sum", "rowmean": "mean", "rowmax": "max", "rowmin": "min", "rowcount": "count"}
_AGG_STAGES = ("weights", "out", "aggregate")
NORMS = ("softmax", "sigmoid", "relu", "relu2", "none", "sum", "stickbreaking")
FUNCTIONS = set(UNARY_FLOAT_FNS) | {"relu", "abs", "floor", "ceil", "min", "max", "clamp", "where", "dot", "sqdist",
                                    "norm", "rope", "l2norm", "rmsnorm", "window", "concat", "suffixsum"} | set(AGGREGATES)

# names visible in each stage, beyond sizes, b/h/hk, scale, inputs and consts
_STAGE_NAMES = {
    "q": {"q", "i", "m"},
    "k": {"k", "j"},
    "score": {"q", "k", "i", "j", "m"},
    "mask": {"q", "k", "i", "j", "m", "score"},
    "select.by": {"q", "k", "i", "j", "m", "score"},
    "select.by.block": {"q", "i", "m", "kmean", "jb"},
    "select.keep": {"i", "j", "m"},
    "select.keep.block": {"i", "m", "jb"},
    "select.kmean.block": {"k_raw", "j"},  # set by substitute_prologue: k's prologue of the loaded key row
    "norm.sink": {"i", "m"},
    "weights": {"i", "j", "m", "score", "p"},
    "out": {"i", "m", "o"},
    "aggregate": {"i", "j", "m", "score", "p"},
    "scan": {"q", "k", "i", "j", "m"},
    "score2": {"q", "k", "i", "j", "m"},
    "tiles.any": {"i_lo", "i_hi", "j_lo", "j_hi", "i", "j", "m"},  # i, j, m only inside tile_min/max
    "tiles.all": {"i_lo", "i_hi", "j_lo", "j_hi", "i", "j", "m"},
}
_STAGE_WHY = {
    "q": "the q prologue sees one query row",
    "k": "the k prologue sees one key row",
    "select.by.block": "a block selection scores whole key blocks (use kmean and jb)",
    "select.keep.block": "a block keep is an expression of jb, i and m",
    "norm.sink": "the sink is one value per query row",
    "out": "out is applied once per query row",
    "weights": "weights see p, score and positions, not the q/k rows",
    "aggregate": "a row aggregate reduces an expression of score, p and positions over the row's keys",
    "scan": "a key scan sums an expression of the q and k rows and positions over the row's later keys",
}


def _stage_title(stage: str) -> str:
    """How errors name a scope: 'the out stage', "select's by=", "norm's sink="."""
    stage = stage.removesuffix(".block")
    if stage == "aggregate":
        return "a row aggregate's argument"
    if stage == "scan":
        return "suffixsum()'s argument"
    if "." in stage:
        owner, arg = stage.split(".")
        return f"{owner}'s {arg}="
    return f"the {stage} stage"


@dataclass
class _Scope:
    stage: str
    names: set[str]
    inputs: Mapping[str, ir.InputDecl]
    consts: Mapping[str, Union[int, float, bool]]


def _err(msg: str, span: Span | None, hint: str | None = None) -> AttnError:
    return AttnError(msg, span, hint)


class _ExprBuilder:
    """Builds and type-checks one expression in one stage's scope."""

    def __init__(self, scope: _Scope):
        self.s = scope

    # ---- helpers
    def numeric(self, e: ir.Expr, what: str, span: Span) -> ir.Expr:
        if e.ty.is_bool:
            raise _err(f"{what} must be a number, got {'a row of booleans' if e.ty.is_vec else 'a boolean'}",
                       span, "use where(cond, a, b)")
        return e

    def to_float(self, e: ir.Expr) -> ir.Expr:
        if e.ty.kind == "int":
            if isinstance(e, ir.Const):
                return ir.Const(float(e.value), FLOAT, e.span)
            return ir.Cast(e, FLOAT, e.span)
        return e

    def promote(self, a: ir.Expr, b: ir.Expr, span: Span) -> tuple[ir.Expr, ir.Expr, Ty]:
        """Common type of two numeric/vector operands (ints promote to float)."""
        if a.ty.is_vec or b.ty.is_vec:
            if a.ty.is_vec and b.ty.is_vec and not _same_len(a.ty, b.ty):
                raise _err(f"vector lengths differ: {a.ty} and {b.ty}", span)
            ty = a.ty if a.ty.is_vec else b.ty
            return self.to_float(a), self.to_float(b), ty
        if a.ty.kind == "float" or b.ty.kind == "float":
            return self.to_float(a), self.to_float(b), FLOAT
        return a, b, INT

    def need_bool(self, e: ir.Expr, what: str, span: Span) -> ir.Expr:
        """A boolean or a row of booleans (1.1: comparisons of rows work element by element)."""
        if not e.ty.is_bool:
            raise _err(f"{what} must be boolean, got {e.ty}", span)
        return e

    def bool_result(self, parts: list[ir.Expr], span: Span) -> Ty:
        """The type of a boolean operation of ``parts``: a row of booleans if any is a row."""
        rows = [x for x in parts if x.ty.is_vec]
        for r in rows[1:]:
            if not _same_len(rows[0].ty, r.ty):
                raise _err(f"vector lengths differ: {rows[0].ty} and {r.ty}", span)
        return vec(rows[0].ty.length, "bool") if rows else BOOL

    # ---- dispatch
    def build(self, node: ast.Expr) -> ir.Expr:
        return getattr(self, "_" + type(node).__name__.lower())(node)

    def _literal(self, n: ast.Literal) -> ir.Expr:
        v = n.value
        ty = BOOL if isinstance(v, bool) else INT if isinstance(v, int) else FLOAT
        return ir.Const(v, ty, n.span)

    def _name(self, n: ast.Name) -> ir.Expr:
        name, s = n.id, self.s
        if name in s.consts:
            v = s.consts[name]
            ty = BOOL if isinstance(v, bool) else INT if isinstance(v, int) else FLOAT
            return ir.Const(v, ty, n.span)
        if name in s.inputs:
            d = s.inputs[name]
            if d.dims is not None and len(d.dims) == 1 and DTYPES[d.dtype] == "float":
                # zero indices into a 1-d tensor: the tensor itself is the row (rmsnorm(q, w))
                return ir.Load(name, (), vec(d.dims[0]), n.span)
            if d.dims is not None:
                raise _err(f"input '{name}' is a tensor with {len(d.dims)} dim(s); index it, e.g. "
                           f"{name}[{', '.join(str(x).lower() if isinstance(x, str) else '0' for x in d.dims)}]",
                           n.span)
            return ir.Param(name, Ty(DTYPES[d.dtype]), n.span)
        if name == "causal":
            return self._causal(n.span)
        if name in SIZES:
            return ir.Sym(name, INT, n.span)
        if name == "scale":
            return ir.Sym(name, FLOAT, n.span)
        if name in ("b", "h", "hk"):
            if name == "h" and s.stage == "k":
                raise _err("'h' is not available in the k prologue: a key row is shared by the query heads "
                           "of its group", n.span, "use 'hk', the key/value head")
            return ir.Sym(name, INT, n.span)
        if name in INDICES or name in ("score", "p", "q", "k", "o", "kmean"):
            # a let's q and k are where its value is needed: in weights, a pair value per (i, j)
            let_row = name in ("q", "k") and n.from_let and s.stage in ("weights", "aggregate")
            if name not in s.names and not let_row:
                where = _STAGE_WHY.get(s.stage, "")
                raise _err(f"'{name}' is not available in {_stage_title(s.stage)}", n.span,
                           where or None)
            if name in ("q", "k", "kmean"):
                return ir.Row(name, vec("D"), n.span)
            if name == "o":
                return ir.Row(name, vec("DV"), n.span)
            return ir.Sym(name, FLOAT if name in ("score", "p") else INT, n.span)
        if name == "v":
            raise _err("'v' cannot be used in expressions: values only enter through the weighted sum", n.span)
        if name in FUNCTIONS or name in NORMS or name == "topk":
            raise _err(f"'{name}' is a function; call it", n.span)
        known = set(s.consts) | set(s.inputs) | set(SIZES) | {"b", "h", "hk", "scale", "causal"} | s.names
        raise _err(f"unknown name '{name}'", n.span, suggest(name, known))

    def _causal(self, span: Span) -> ir.Expr:
        for nm in ("i", "j"):
            if nm not in self.s.names:
                raise _err(f"'causal' needs '{nm}', which is not available in {_stage_title(self.s.stage)}", span)
        return ir.Binary("le", ir.Sym("j", INT, span), ir.Sym("i", INT, span), BOOL, span)

    def _unary(self, n: ast.Unary) -> ir.Expr:
        x = self.build(n.operand)
        if n.op == "not":
            return ir.Unary("not", self.need_bool(x, "the operand of 'not'", n.operand.span), x.ty, n.span)
        self.numeric(x, f"the operand of unary '{n.op}'", n.operand.span)
        if n.op == "+":
            return x
        if isinstance(x, ir.Const):
            return ir.Const(-x.value, x.ty, n.span)
        return ir.Unary("neg", x, x.ty, n.span)

    def _binary(self, n: ast.Binary) -> ir.Expr:
        a, b = self.build(n.left), self.build(n.right)
        if n.op in ("and", "or"):
            self.need_bool(a, f"the left operand of '{n.op}'", n.left.span)
            self.need_bool(b, f"the right operand of '{n.op}'", n.right.span)
            return ir.Binary(n.op, a, b, self.bool_result([a, b], n.span), n.span)
        self.numeric(a, f"the left operand of '{n.op}'", n.left.span)
        self.numeric(b, f"the right operand of '{n.op}'", n.right.span)
        op = ir.ARITH_OPS[n.op]
        if op in ("floordiv", "mod") and (a.ty.is_vec or b.ty.is_vec):
            raise _err(f"'{n.op}' is not defined on vectors", n.span)
        if op == "div":
            a, b, ty = self.promote(self.to_float(a), self.to_float(b), n.span)
        elif op == "pow":
            int_pow = a.ty == INT and isinstance(b, ir.Const) and b.ty == INT and b.value >= 0
            a, b, ty = self.promote(a, b, n.span)
            if not int_pow:
                a, b = self.to_float(a), self.to_float(b)
                ty = ty if ty.is_vec else FLOAT
        else:
            a, b, ty = self.promote(a, b, n.span)
        return ir.Binary(op, a, b, ty, n.span)

    def _compare(self, n: ast.Compare) -> ir.Expr:
        vals = [self.build(x) for x in n.operands]
        out = None
        for op, (a, b), (sa, sb) in zip(n.ops, zip(vals, vals[1:]), zip(n.operands, n.operands[1:])):
            # rows compare element by element (language 1.1), giving a row of booleans
            if a.ty.is_bool != b.ty.is_bool or (a.ty.is_bool and op not in ("==", "!=")):
                raise _err(f"cannot compare {a.ty} with {b.ty} using '{op}'", n.span)
            ty = self.bool_result([a, b], n.span)
            if not a.ty.is_bool:
                a, b, _ = self.promote(a, b, n.span)
            c = ir.Binary(ir.COMPARE_OPS[op], a, b, ty, n.span)
            out = c if out is None else ir.Binary("and", out, c, self.bool_result([out, c], n.span), n.span)
        return out

    def _slice(self, n: ast.Slice) -> ir.Expr:
        """``x[lo:hi]`` (1.1): constant integer bounds 0 <= lo < hi <= len(x) on a float row; against a
        size (D, DV) the length is checked at call time."""
        x = self.build(n.base)
        if not x.ty.is_vec or x.ty.is_bool:
            raise _err(f"only a row can be sliced, got {x.ty}", n.base.span,
                       "slice q, k, a prologue's value or a row of an input: q[0:64]")
        _one_sided(x, "a slice", n.base.span, "slice each side first: q[0:8] - k[0:8]")
        lo, hi = (self._bound(b) for b in (n.lo, n.hi))
        if not 0 <= lo < hi:
            raise _err(f"a slice needs 0 <= lo < hi, got [{lo}:{hi}]", n.span)
        L = x.ty.length
        if L.isdigit() and hi > int(L):
            raise _err(f"the slice [{lo}:{hi}] runs past the row's {L} lanes", n.span)
        if not L.isdigit() and L not in ("D", "DV"):
            raise _err(f"a row of length {L} cannot be sliced (only rows of length D, DV or an integer)",
                       n.base.span)
        if hi - lo > MAX_ROW:
            raise _err(f"a slice of {hi - lo} lanes is longer than the {MAX_ROW} a kernel row holds", n.span)
        return ir.Slice(x, lo, hi, vec(hi - lo), n.span)

    def _bound(self, node: ast.Expr) -> int:
        value = _int_value(self.build(node))
        if value is None:
            raise _err("a slice bound must be a constant integer (literals, consts, + - *)", node.span)
        return value

    def _index(self, n: ast.Index) -> ir.Expr:
        name = n.base.id
        if name not in self.s.inputs:
            if name in self.s.consts or name in BUILTIN_NAMES:
                raise _err(f"'{name}' cannot be indexed; only input tensors can", n.base.span)
            raise _err(f"unknown input tensor '{name}'", n.base.span, suggest(name, self.s.inputs))
        d = self.s.inputs[name]
        if d.dims is None:
            raise _err(f"input '{name}' is a scalar and cannot be indexed", n.span)
        if len(n.indices) > len(d.dims) or len(n.indices) < len(d.dims) - 1:
            raise _err(f"'{name}' has {len(d.dims)} dim(s) {list(d.dims)}; give {len(d.dims)} indices "
                       f"(or {len(d.dims) - 1} for a row of its last dim), not {len(n.indices)}", n.span)
        idx = []
        for x in n.indices:
            e = self.build(x)
            if e.ty.kind != "int":
                raise _err(f"index expression is not an integer (it is {e.ty})", x.span,
                           "floor(x) turns a float into an integer")
            idx.append(e)
        kind = DTYPES[d.dtype]
        ty = Ty(kind) if len(idx) == len(d.dims) else vec(d.dims[-1])
        if ty.is_vec and kind != "float":
            raise _err(f"a row of '{name}' ({d.dtype}) would be a non-float vector", n.span)
        return ir.Load(name, tuple(idx), ty, n.span)

    def _call(self, n: ast.Call) -> ir.Expr:
        fn = n.func.id
        if fn in ROW_REDUCTIONS and len(n.args) == 1 and not n.kwargs:
            x = self.build(n.args[0])
            if x.ty.is_vec:
                return ir.Call(ROW_REDUCTIONS[fn], (x,), FLOAT, n.span)
            if fn != "sum":
                raise _err(f"{fn}() of one argument reduces a row, got {x.ty}", n.args[0].span,
                           "two numbers: min(a, b) / max(a, b)" if fn != "mean" else None)
        if fn not in FUNCTIONS:
            if fn in NORMS or fn == "topk":
                raise _err(f"'{fn}' is only allowed as the whole value of the "
                           f"{'select' if fn == 'topk' else 'norm'} stage", n.func.span)
            if fn in self.s.inputs:
                raise _err(f"'{fn}' is an input tensor; index it with [...]", n.func.span)
            raise _err(f"unknown function '{fn}'", n.func.span, suggest(fn, FUNCTIONS))
        kwargs = {k.name: k for k in n.kwargs}
        allowed_kw = {"rope": {"base"}}.get(fn, set())
        for k in n.kwargs:
            if k.name not in allowed_kw:
                raise _err(f"{fn}() takes no keyword '{k.name}'", k.span,
                           suggest(k.name, allowed_kw) if allowed_kw else None)
        arity = {"rowcount": 0, "min": 2, "max": 2, "clamp": 3, "where": 3, "dot": 2, "sqdist": 2, "rmsnorm": 2, "window": 1,
                 "concat": 2, "rope": (2, 3)}.get(fn, 1)
        lo, hi = arity if isinstance(arity, tuple) else (arity, arity)
        if not lo <= len(n.args) <= hi:
            want = f"{lo}" if lo == hi else f"{lo} to {hi}"
            raise _err(f"{fn}() takes {want} argument(s), got {len(n.args)}", n.span)
        if fn == "window":
            return self._window(n)
        if fn in AGGREGATES:
            return self._aggregate(n)
        if fn == "suffixsum":
            return self._scan(n)
        args = [self.build(a) for a in n.args]
        spans = [a.span for a in n.args]
        return getattr(self, "_fn_" + fn, self._fn_elementwise)(fn, args, spans, kwargs, n.span)

    def _aggregate(self, n: ast.Call) -> ir.Expr:
        """``rowsum(E)`` ... ``rowcount()``: E is built in a pair scope (score, p, i, j, m, inputs)."""
        fn, kind = n.func.id, AGGREGATES[n.func.id]
        if self.s.stage not in _AGG_STAGES:
            raise _err(f"{fn}() is only allowed in the weights and out stages, not in {_stage_title(self.s.stage)}",
                       n.func.span, "a row aggregate needs every key of the row")
        if kind == "count":
            return ir.Agg("count", ir.Const(1, INT, n.span), INT, n.span)
        outer, self.s = self.s, _Scope("aggregate", _STAGE_NAMES["aggregate"], self.s.inputs, self.s.consts)
        try:
            x = self.numeric(self.build(n.args[0]), f"the argument of {fn}()", n.args[0].span)
        finally:
            self.s = outer
        if x.ty.is_vec:
            raise _err(f"{fn}() aggregates a number per key, got {x.ty}", n.args[0].span,
                       "reduce the row first: sum(x), dot(a, b)")
        ty = FLOAT if kind == "mean" else x.ty
        return ir.Agg(kind, x, ty, n.span)

    def _scan(self, n: ast.Call) -> ir.Expr:
        """``suffixsum(E)``: E is built in the score's scope (q, k, i, j, m, inputs), j being the summed key."""
        if self.s.stage not in ("score", "weights"):
            raise _err(f"suffixsum() is only allowed in the score and weights stages (and lets they use), not in "
                       f"{_stage_title(self.s.stage)}", n.func.span,
                       "a mask may not use a scan" if self.s.stage == "mask" else None)
        outer, self.s = self.s, _Scope("scan", _STAGE_NAMES["scan"], self.s.inputs, self.s.consts)
        try:
            x = self.numeric(self.build(n.args[0]), "the argument of suffixsum()", n.args[0].span)
        finally:
            self.s = outer
        if x.ty.is_vec:
            raise _err(f"suffixsum() sums a number per key, got {x.ty}", n.args[0].span,
                       "reduce the row first: sum(x), dot(a, b)")
        return ir.Scan(self.to_float(x), FLOAT, n.span)

    def _window(self, n: ast.Call) -> ir.Expr:
        w = self.build(n.args[0])
        if w.ty != INT:
            raise _err("window(W) needs an integer W", n.args[0].span)
        causal = self._causal(n.span)
        i, j = ir.Sym("i", INT, n.span), ir.Sym("j", INT, n.span)
        near = ir.Binary("lt", ir.Binary("sub", i, j, INT, n.span), w, BOOL, n.span)
        return ir.Binary("and", near, causal, BOOL, n.span)

    def _fn_elementwise(self, fn, args, spans, kwargs, span):
        x = self.numeric(args[0], f"the argument of {fn}()", spans[0])
        if fn in ("abs", "relu"):
            return ir.Call(fn, (x,), x.ty, span)
        if fn in ("floor", "ceil"):  # float -> int (ceil: language 1.1)
            if x.ty.is_vec:
                raise _err(f"{fn}() of a vector", spans[0])
            return x if x.ty == INT else ir.Call(fn, (x,), INT, span)
        x = self.to_float(x)
        return ir.Call(fn, (x,), x.ty, span)

    def _fn_min(self, fn, args, spans, kwargs, span):
        a = self.numeric(args[0], f"the arguments of {fn}()", spans[0])
        b = self.numeric(args[1], f"the arguments of {fn}()", spans[1])
        a, b, ty = self.promote(a, b, span)
        return ir.Call(fn, (a, b), ty, span)

    _fn_max = _fn_min

    def _fn_clamp(self, fn, args, spans, kwargs, span):
        x, lo, hi = (self.numeric(a, "the arguments of clamp()", s) for a, s in zip(args, spans))
        if x.ty.kind == "float" or lo.ty.kind == "float" or hi.ty.kind == "float" or x.ty.is_vec:
            x, lo, hi = self.to_float(x), self.to_float(lo), self.to_float(hi)
        for bound, s in ((lo, spans[1]), (hi, spans[2])):
            if bound.ty.is_vec:
                raise _err("clamp() bounds must be scalars", s)
        return ir.Call("clamp", (x, lo, hi), x.ty, span)

    def _fn_where(self, fn, args, spans, kwargs, span):
        c, a, b = args
        self.need_bool(c, "the condition of where()", spans[0])
        if a.ty.is_bool or b.ty.is_bool:
            if not (a.ty.is_bool and b.ty.is_bool):
                raise _err(f"where() branches differ: {a.ty} and {b.ty}", span)
            return ir.Call("where", (c, a, b), self.bool_result([c, a, b], span), span)
        a, b, ty = self.promote(a, b, span)
        if c.ty.is_vec:  # a row condition makes a row; a scalar branch is broadcast onto it
            if ty.is_vec and not _same_len(c.ty, ty):
                raise _err(f"vector lengths differ: {c.ty} and {ty}", span)
            if not ty.is_vec:
                a, b, ty = self.to_float(a), self.to_float(b), vec(c.ty.length)
        return ir.Call("where", (c, a, b), ty, span)

    def _vec_arg(self, fn, e, s):
        if not e.ty.is_vec or e.ty.is_bool:
            raise _err(f"{fn}() needs a row vector (q, k, kmean, o or a row of an input), got {e.ty}", s)
        return e

    def _fn_dot(self, fn, args, spans, kwargs, span):
        a, b = (self._vec_arg(fn, x, s) for x, s in zip(args, spans))
        if not _same_len(a.ty, b.ty):
            raise _err(f"{fn}() of vectors of different lengths: {a.ty} and {b.ty}", span)
        return ir.Call(fn, (a, b), FLOAT, span)

    _fn_sqdist = _fn_dot

    def _fn_concat(self, fn, args, spans, kwargs, span):
        """concat(x, y) (1.1): the row of x's lanes then y's; both of integer length (a slice, an input row)."""
        x, y = (self._vec_arg(fn, a, s) for a, s in zip(args, spans))
        for r, s in ((x, spans[0]), (y, spans[1])):
            _one_sided(r, "concat()", s, "join each side's rows first: concat(q[0:8], q[8:16]) - "
                                         "concat(k[0:8], k[8:16])")
            if not r.ty.length.isdigit():
                raise _err(f"concat() joins rows of integer lengths, got {r.ty}", s,
                           "slice a row of length D or DV first: q[0:64]")
        n = int(x.ty.length) + int(y.ty.length)
        if n > MAX_ROW:
            raise _err(f"concat() of {n} lanes is longer than the {MAX_ROW} a kernel row holds", span)
        return ir.Call("concat", (x, y), vec(n), span)

    def _fn_norm(self, fn, args, spans, kwargs, span):
        return ir.Call("norm", (self._vec_arg(fn, args[0], spans[0]),), FLOAT, span)

    def _fn_l2norm(self, fn, args, spans, kwargs, span):
        x = self._vec_arg(fn, args[0], spans[0])
        return ir.Call("l2norm", (x,), x.ty, span)

    def _fn_rmsnorm(self, fn, args, spans, kwargs, span):
        x = self._vec_arg(fn, args[0], spans[0])
        w = self._vec_arg(fn, args[1], spans[1])
        if not _same_len(x.ty, w.ty):
            raise _err(f"rmsnorm() weight length {w.ty} differs from {x.ty}", spans[1])
        return ir.Call("rmsnorm", (x, w), x.ty, span)

    def _fn_rope(self, fn, args, spans, kwargs, span):
        x = self._vec_arg(fn, args[0], spans[0])
        pos = self.to_float(self.numeric(args[1], "the position of rope()", spans[1]))
        if pos.ty.is_vec:
            raise _err("the position of rope() must be a scalar", spans[1])
        if len(args) == 3 and "base" in kwargs:
            raise _err("rope() got 'base' twice", span)
        base_node = args[2] if len(args) == 3 else self.build(kwargs["base"].value) if "base" in kwargs else None
        if base_node is None:
            base = ir.Const(10000.0, FLOAT, span)
        elif isinstance(base_node, ir.Const) and base_node.ty.is_numeric:
            base = ir.Const(float(base_node.value), FLOAT, base_node.span)
        else:
            raise _err("rope() base must be a constant number", base_node.span)
        if not 0 < base.value < float("inf"):  # the angles take log(base)
            raise _err(f"rope() base must be a positive finite number, got {base.value!r}", base.span)
        if any(isinstance(n, ir.Call) and n.fn == "rope" for n in ir.walk(x)):
            raise _err("rope() cannot be nested inside rope()", spans[0])
        out = ir.Call("rope", (x, pos, base), x.ty, span)
        hint = "rotate each side by its own position: rope(q, i), rope(k, j)"
        _one_sided(x, "rope()", spans[0], hint)
        if is_pair_row(out):
            raise _err("rope() of a row at a position of the other side would make a pair vector whose lanes "
                       "it moves; the kernels evaluate pair vectors lane by lane", spans[1], hint)
        return out


def _one_sided(e: ir.Expr, what: str, span: Span, hint: str) -> None:
    """Refuse ``what`` of (or giving) a pair row: the kernels evaluate a row that mixes the query and the key
    side lane by lane (codegen/lanes.py), and ``what`` moves lanes."""
    if is_pair_row(e):
        raise _err(f"{what} of a row that mixes the query and the key side (a pair vector): the kernels evaluate "
                   "such rows lane by lane, and this would move lanes", span, hint)


def _int_value(e: ir.Expr) -> int | None:
    """The value of an integer expression of literals and consts (``NOPE + ROPE``), else None."""
    if isinstance(e, ir.Const):
        return e.value if e.ty == INT else None
    if isinstance(e, ir.Unary) and e.op == "neg":
        x = _int_value(e.x)
        return None if x is None else -x
    if isinstance(e, ir.Binary) and e.op in ("add", "sub", "mul"):
        a, b = _int_value(e.a), _int_value(e.b)
        if a is None or b is None:
            return None
        return a + b if e.op == "add" else a - b if e.op == "sub" else a * b
    return None


def _same_len(a: Ty, b: Ty) -> bool:
    # an integer length against a size name is checked at call time
    return a.length == b.length or a.length.isdigit() != b.length.isdigit()


def first_row(e: ir.Expr) -> ir.Row | ir.Load | None:
    """The row that makes ``e`` a vector (not one already reduced inside dot() etc.)."""
    if not e.ty.is_vec:
        return None
    if isinstance(e, (ir.Row, ir.Load)):
        return e
    return next((r for c in ir.children(e) if (r := first_row(c)) is not None), None)


def _row_hint(r: ir.Row | ir.Load | None) -> str:
    if isinstance(r, ir.Load) and not r.indices:
        return f"'{r.name}' is a 1-d tensor; index it for a scalar, e.g. {r.name}[...]"
    return "reduce rows with dot(), sqdist() or norm()"


def _scalar_stage(e: ir.Expr, stage: str, want: str, span: Span) -> ir.Expr:
    """Check a stage expects a ``want`` ('float' or 'bool') scalar; explain vector misuse."""
    if e.ty.is_vec:
        r = first_row(e)
        name = r.name if r is not None else "a vector"
        raise _err(f"'{name}' is a row vector used outside a vector function in the {stage} stage",
                   r.span if r is not None and r.span else span, _row_hint(r))
    if want == "bool":
        if e.ty.kind != "bool":
            raise _err(f"the {stage} must be a boolean expression, got {e.ty}", span)
        return e
    if e.ty.kind == "bool":
        raise _err(f"the {stage} stage must be a number, got a boolean", span, "use where(cond, a, b)")
    return ir.Cast(e, FLOAT, e.span) if e.ty == INT else e

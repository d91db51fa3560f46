"""Typed IR of one attention: expression nodes and the stage record.

Expressions are immutable trees. Structural equality ignores source spans, so
equal subtrees compare (and hash) equal, which the passes use for CSE and folding.

Names (``Sym``) of the IR:
    b h hk i j m jb          integer indices (jb: key block, only in block select)
    B H HK M N D DV          sizes, bound at call time
    scale                    runtime softmax scale
    score p                  the score stage's value; the normalized weight (weights stage)
Rows (``Row``), all vectors:
    q k                      query/key row (raw inside the prologue, transformed after it)
    o                        the output row, inside the out stage
    kmean                    the mean key of a block (block select only)
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Callable, Iterator, Union

from ..frontend.errors import Span
from .types import Ty


def _span_field():
    return field(default=None, compare=False, hash=False, repr=False)


@dataclass(frozen=True)
class Const:
    value: Union[int, float, bool]
    ty: Ty
    span: Span | None = _span_field()


@dataclass(frozen=True)
class Sym:
    name: str
    ty: Ty
    span: Span | None = _span_field()


@dataclass(frozen=True)
class Row:
    name: str
    ty: Ty
    span: Span | None = _span_field()


@dataclass(frozen=True)
class Param:
    """A scalar runtime input (``input t: f32``)."""

    name: str
    ty: Ty
    span: Span | None = _span_field()


@dataclass(frozen=True)
class Load:
    """``name[indices]``: a scalar, or a row vector when one index is left off."""

    name: str
    indices: tuple["Expr", ...]
    ty: Ty
    span: Span | None = _span_field()


@dataclass(frozen=True)
class Unary:
    op: str  # 'neg' | 'not'
    x: "Expr"
    ty: Ty
    span: Span | None = _span_field()


@dataclass(frozen=True)
class Binary:
    op: str  # add sub mul div floordiv mod pow  eq ne lt le gt ge  and or
    a: "Expr"
    b: "Expr"
    ty: Ty
    span: Span | None = _span_field()


@dataclass(frozen=True)
class Call:
    """A built-in function; ``rope``'s third argument is its constant base."""

    fn: str
    args: tuple["Expr", ...]
    ty: Ty
    span: Span | None = _span_field()


@dataclass(frozen=True)
class Cast:
    """Numeric promotion (int -> float); the only implicit conversion."""

    x: "Expr"
    ty: Ty
    span: Span | None = _span_field()


@dataclass(frozen=True)
class Slice:
    """``x[lo:hi]`` (language 1.1): lanes lo .. hi - 1 of the row x, a row of length hi - lo. The
    kernels load a slice of q, k or an input row at its offset, and take one of a computed row by
    a product with a 0/1 matrix."""

    x: "Expr"
    lo: int
    hi: int
    ty: Ty
    span: Span | None = _span_field()


@dataclass(frozen=True)
class Agg:
    """A row aggregate (language 1.1): ``kind`` (sum mean max min count) of the pair expression
    ``x`` over the row's kept keys; 0 over an empty row. ``rowcount()`` is ``Agg("count", 1)``.
    A value per (b, h, i), whatever ``x`` depends on."""

    kind: str
    x: "Expr"
    ty: Ty
    span: Span | None = _span_field()


AGG_KINDS = ("sum", "mean", "max", "min", "count")


@dataclass(frozen=True)
class Scan:
    """``suffixsum(x)`` (language 1.1): for the pair (i, j), the sum of the pair expression ``x`` over the
    keys t >= j that the mask allows in row i (``x`` read at (i, t))."""

    x: "Expr"
    ty: Ty
    span: Span | None = _span_field()

Expr = Union[Const, Sym, Row, Param, Load, Unary, Binary, Call, Cast, Slice, Agg, Scan]

ARITH_OPS = {"+": "add", "-": "sub", "*": "mul", "/": "div", "//": "floordiv", "%": "mod", "**": "pow"}
COMPARE_OPS = {"==": "eq", "!=": "ne", "<": "lt", "<=": "le", ">": "gt", ">=": "ge"}
BOOL_OPS = ("and", "or")
OP_TEXT = {v: k for k, v in {**ARITH_OPS, **COMPARE_OPS}.items()} | {"and": "and", "or": "or"}


def children(e: Expr) -> tuple[Expr, ...]:
    if isinstance(e, Load):
        return e.indices
    if isinstance(e, (Unary, Cast, Slice, Agg, Scan)):
        return (e.x,)
    if isinstance(e, Binary):
        return (e.a, e.b)
    if isinstance(e, Call):
        return e.args
    return ()


def with_children(e: Expr, new: tuple[Expr, ...]) -> Expr:
    """``e`` with its children replaced (same order as :func:`children`)."""
    if isinstance(e, Load):
        return replace(e, indices=tuple(new))
    if isinstance(e, (Unary, Cast, Slice, Agg, Scan)):
        return replace(e, x=new[0])
    if isinstance(e, Binary):
        return replace(e, a=new[0], b=new[1])
    if isinstance(e, Call):
        return replace(e, args=tuple(new))
    return e


def walk(e: Expr) -> Iterator[Expr]:
    """Pre-order traversal."""
    yield e
    for c in children(e):
        yield from walk(c)


def transform(e: Expr, fn: Callable[[Expr], Expr]) -> Expr:
    """Bottom-up rewrite: ``fn`` sees each node after its children were rewritten."""
    kids = children(e)
    if kids:
        new = tuple(transform(c, fn) for c in kids)
        if any(n is not o for n, o in zip(new, kids)):
            e = with_children(e, new)
    return fn(e)


def uses(e: Expr | None, *names: str) -> bool:
    """Whether ``e`` mentions any Sym/Row/Param/Load called one of ``names``."""
    if e is None:
        return False
    return any(isinstance(n, (Sym, Row, Param, Load)) and n.name in names for n in walk(e))


@dataclass(frozen=True)
class InputDecl:
    name: str
    dtype: str  # f32 f16 bf16 i32 i64 bool
    dims: tuple[Union[str, int], ...] | None  # None: scalar
    span: Span | None = _span_field()

    @property
    def is_float(self) -> bool:
        return self.dtype in ("f32", "f16", "bf16")


#: the internal input a lowered selection writes and the mask reads (block: bool [B, HS, M, NB]; token:
#: the chosen keys, int32 [B, HS, M, K], ascending, -1 after the last), and the token membership test
SEL, IN_LIST = "_sel", "_in_list"


@dataclass(frozen=True)
class Select:
    """``topk(k, by=..., block=..., keep=..., share=group)``. After the ``lower_select`` pass the
    attention's mask holds the choice (``lowered``): the selection kernels compute ``by`` and ``keep``
    into the internal input ``_sel`` that the mask reads. ``kmean_of``, set by ``substitute_prologue``
    for a block selection: the key row whose block means ``kmean`` is (k's prologue of ``k_raw``)."""

    k: int
    by: Expr
    block: int | None
    keep: Expr | None
    share: bool
    span: Span | None = _span_field()
    lowered: bool = False
    kmean_of: Expr | None = None


@dataclass(frozen=True)
class Norm:
    kind: str  # softmax sigmoid relu relu2 none sum stickbreaking
    sink: Expr | None = None
    span: Span | None = _span_field()


@dataclass(frozen=True)
class Tiles:
    """The mask over a box of pairs, from the ``mask_tiles`` pass: query positions
    ``i_lo..i_hi`` (inclusive) against keys ``j_lo..j_hi``.

    ``any`` is false only if no pair of the box is allowed (the kernels skip the tile);
    ``all`` is true only if every pair is allowed (the kernels drop the mask there).
    ``tile_min(x)`` / ``tile_max(x)`` of a one-sided value (``doc[b, i]``) are its extremes
    over the box's rows or keys: such tiles are classified per call by a generated kernel.
    """

    any: Expr
    all: Expr
    band: tuple[int | None, int | None] | None = None  # lo <= i - j <= hi (None: unbounded) when the mask is one

    @property
    def dynamic(self) -> bool:
        return any(isinstance(n, Call) and n.fn in ("tile_min", "tile_max")
                   for e in (self.any, self.all) for n in walk(e))


@dataclass(frozen=True)
class ScaledDot:
    """Set by the ``scaled_dot`` pass: ``score2 = dot * factor2`` (base 2) and ``score = dot * scale *
    literal`` (natural log), with q and scale read nowhere else."""

    dot: Expr
    factor2: Expr
    literal: float


STAGES = ("q", "k", "score", "mask", "select", "norm", "weights", "out")


@dataclass(frozen=True)
class Attention:
    """One checked attention. Absent stages are None (score and norm always set)."""

    name: str
    inputs: tuple[InputDecl, ...]
    consts: tuple[tuple[str, Union[int, float, bool]], ...]
    q: Expr | None
    k: Expr | None
    score: Expr
    mask: Expr | None
    select: Select | None
    norm: Norm
    weights: Expr | None
    out: Expr | None
    tiles: Tiles | None = None  # set by the mask_tiles pass
    score2: Expr | None = None  # log2(e) * score, set by the exp2_scores pass (softmax)
    scaled_dot: ScaledDot | None = None  # score2 as a raw dot times a factor, set by the scaled_dot pass
    filename: str = field(default="<string>", compare=False)
    source: str = field(default="", compare=False, repr=False)
    stage_spans: tuple[tuple[str, Span], ...] = field(default=(), compare=False, repr=False)

    @property
    def public_inputs(self) -> tuple[InputDecl, ...]:
        """The inputs a caller passes: all but the internal selection of a lowered IR (``SEL``), which
        the call makes itself."""
        return tuple(d for d in self.inputs if d.name != SEL)

    def input(self, name: str) -> InputDecl:
        for d in self.inputs:
            if d.name == name:
                return d
        raise KeyError(name)

    def stage_span(self, stage: str) -> Span | None:
        return dict(self.stage_spans).get(stage)

    def exprs(self) -> Iterator[tuple[str, Expr]]:
        """Every expression of the attention, tagged with its stage name."""
        for st in ("q", "k", "score", "mask", "weights", "out"):
            e = getattr(self, st)
            if e is not None:
                yield st, e
        if self.select is not None:
            yield "select.by", self.select.by
            if self.select.keep is not None:
                yield "select.keep", self.select.keep
            if self.select.kmean_of is not None:
                yield "select.kmean", self.select.kmean_of
        if self.norm.sink is not None:
            yield "norm.sink", self.norm.sink
        if self.score2 is not None:
            yield "score2", self.score2
        if self.tiles is not None:
            yield "tiles.any", self.tiles.any
            yield "tiles.all", self.tiles.all

    @property
    def is_softmax(self) -> bool:
        return self.norm.kind == "softmax"

    def replace_exprs(self, fn: Callable[[str, Expr], Expr]) -> "Attention":
        """Apply ``fn(stage, expr)`` to every expression, keeping everything else."""
        kw = {st: (fn(st, getattr(self, st)) if getattr(self, st) is not None else None)
              for st in ("q", "k", "score", "mask", "weights", "out", "score2")}
        if self.select is not None:
            s = self.select
            kw["select"] = replace(s, by=fn("select.by", s.by),
                                   keep=fn("select.keep", s.keep) if s.keep is not None else None,
                                   kmean_of=fn("select.kmean", s.kmean_of) if s.kmean_of is not None else None)
        if self.norm.sink is not None:
            kw["norm"] = replace(self.norm, sink=fn("norm.sink", self.norm.sink))
        if self.tiles is not None:
            kw["tiles"] = replace(self.tiles, any=fn("tiles.any", self.tiles.any), all=fn("tiles.all", self.tiles.all))
        return replace(self, **kw)


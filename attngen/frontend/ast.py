"""Abstract syntax of ``.attn`` files: frozen dataclasses, each with its source span.

The AST is exactly what was written (no defaults, no name resolution); the IR
builder (``attngen.ir.build``) gives it meaning.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union

from .errors import Span


@dataclass(frozen=True)
class Name:
    id: str
    span: Span
    #: q or k written in a let: the let's value may be a pair value that weights read (language 1.1)
    from_let: bool = field(default=False, compare=False)


@dataclass(frozen=True)
class Literal:
    """An int, float or bool literal (``inf`` is the float ``inf``)."""

    value: Union[int, float, bool]
    span: Span


@dataclass(frozen=True)
class Unary:
    op: str  # '-', '+', 'not'
    operand: "Expr"
    span: Span


@dataclass(frozen=True)
class Binary:
    op: str  # + - * / // % ** and or
    left: "Expr"
    right: "Expr"
    span: Span


@dataclass(frozen=True)
class Compare:
    """A (possibly chained) comparison ``a < b <= c``, as in Python."""

    ops: tuple[str, ...]
    operands: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True)
class Keyword:
    name: str
    value: "Expr"
    span: Span


@dataclass(frozen=True)
class Call:
    func: Name
    args: tuple["Expr", ...]
    kwargs: tuple[Keyword, ...]
    span: Span


@dataclass(frozen=True)
class Index:
    base: Name
    indices: tuple["Expr", ...]
    span: Span


@dataclass(frozen=True)
class Slice:
    """``base[lo:hi]``: lanes lo .. hi - 1 of a row (language 1.1)."""

    base: "Expr"
    lo: "Expr"
    hi: "Expr"
    span: Span


Expr = Union[Name, Literal, Unary, Binary, Compare, Call, Index, Slice]


@dataclass(frozen=True)
class Dim:
    value: Union[str, int]
    span: Span


@dataclass(frozen=True)
class InputDecl:
    name: Name
    dtype: Name  # checked by the IR builder, so an unsupported dtype is named in the error
    dims: tuple[Dim, ...] | None  # None: a scalar input
    span: Span


@dataclass(frozen=True)
class ConstDecl:
    name: Name
    value: Expr
    span: Span


@dataclass(frozen=True)
class LetDecl:
    """``let NAME = EXPR``: a named value for the statements after it."""

    name: Name
    value: Expr
    span: Span


@dataclass(frozen=True)
class Assign:
    target: Name
    value: Expr
    span: Span


Stmt = Union[InputDecl, ConstDecl, LetDecl, Assign]


@dataclass(frozen=True)
class Attention:
    name: Name
    body: tuple[Stmt, ...]
    span: Span


@dataclass(frozen=True)
class Module:
    attentions: tuple[Attention, ...]
    filename: str
    source: str

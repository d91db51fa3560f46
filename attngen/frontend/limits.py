"""Limits on spec text, checked before anything recursive or numeric runs on it.

Why: the front end, the IR builder and the passes walk expressions recursively, so an
expression nested a few hundred levels deep would end in a RecursionError; integer
literals feed int32 index arithmetic in the kernels and float literals float32 tiles;
and a spec is text, so a lone UTF-16 surrogate (which no encoding can write out) is a
mistake in the file. Each limit raises :class:`AttnError` at the offending place.
"""

from __future__ import annotations

import math

from lark import Token, Tree

from .errors import AttnError, Span

#: operators, calls and indexings nested deeper than this are refused (README, "Language decisions")
MAX_DEPTH = 100
INT32_MIN, INT32_MAX = -2**31, 2**31 - 1
FLOAT32_MAX = 3.4028234663852886e38

# the parse-tree rules that nest expressions; a ``(...)`` alone adds no level
_NESTING = {"or_op", "and_op", "not_op", "compare", "binop", "unary", "call", "index", "slice"}


def offset_span(source: str, filename: str, offset: int) -> Span:
    """The one-character span at ``offset``; lines are counted by '\\n', as the lexer does."""
    line = source.count("\n", 0, offset) + 1
    col = offset - (source.rfind("\n", 0, offset) + 1) + 1
    return Span(filename, line, col, line, col + 1, source)


def check_text(source: str, filename: str) -> None:
    """Refuse lone surrogates (even in a comment): they cannot be encoded, hashed or printed."""
    for offset, ch in enumerate(source):
        if "\ud800" <= ch <= "\udfff":
            # the quoted line must print: every surrogate shown as '?'
            shown = "".join("?" if "\ud800" <= c <= "\udfff" else c for c in source)
            raise AttnError(f"invalid character {ch!r} (a lone UTF-16 surrogate)",
                            offset_span(shown, filename, offset))


def check_depth(tree: Tree, filename: str, source: str) -> None:
    """Refuse expressions nested more than MAX_DEPTH levels, without recursing (the tree may be deep)."""
    stack = [(tree, 0)]
    while stack:
        node, depth = stack.pop()
        if not isinstance(node, Tree):
            continue
        if node.data in _NESTING:
            depth += 1
            if depth > MAX_DEPTH:
                m = node.meta
                raise AttnError(f"expression nested too deeply (more than {MAX_DEPTH} levels of operators, "
                                "calls and indexing)", Span(filename, m.line, m.column, m.line, m.column + 1, source),
                                "split it with a const or simplify it")
        stack.extend((c, depth) for c in node.children)


def int_literal(tok: Token, span: Span) -> int:
    """An integer literal, at most INT32_MAX (the kernels index and compute in int32)."""
    digits = str(tok).lstrip("0") or "0"
    if len(digits) > len(str(INT32_MAX)) or int(digits) > INT32_MAX:
        raise AttnError(f"integer literal out of range (at most {INT32_MAX}, the int32 maximum)", span)
    return int(digits)


def float_literal(tok: Token, span: Span) -> float:
    """A float literal within float32's range (the kernels compute in float32); ``inf`` is written as such."""
    value = float(str(tok))
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise AttnError(f"number too large for a float32 (at most {FLOAT32_MAX:.7g})", span,
                        "write inf for an infinite value")
    return value

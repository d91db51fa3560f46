"""Lark front end: ``.attn`` text -> :class:`attngen.frontend.ast.Module`.

Syntax errors become :class:`AttnError` with the offending token's position.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Iterator

from lark import Lark, Token, Transformer, v_args
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken, VisitError

from .. import paths
from . import ast
from .errors import AttnError, Span
from .limits import check_depth, check_text, float_literal, int_literal

_TOKEN_NAMES = {
    "_NL": "end of line", "NAME": "a name", "INT": "an integer", "FLOAT": "a number",
    "COMP_OP": "a comparison",
    "ADD_OP": "'+' or '-'", "MUL_OP": "'*', '/', '//' or '%'", "POW_OP": "'**'",
    "LBRACE": "'{'", "RBRACE": "'}'", "LPAR": "'('", "RPAR": "')'", "LSQB": "'['",
    "RSQB": "']'", "COMMA": "','", "COLON": "':'", "EQUAL": "'='", "SEMICOLON": "';'",
    "$END": "end of file",
}


class _ParenPostLex:
    """Drop newlines inside () and [] so expressions continue across lines."""

    always_accept = ("_NL",)

    def process(self, stream: Iterator[Token]) -> Iterator[Token]:
        depth = 0
        for tok in stream:
            if tok.type in ("LPAR", "LSQB"):
                depth += 1
            elif tok.type in ("RPAR", "RSQB"):
                depth = max(0, depth - 1)
            elif tok.type == "_NL" and depth > 0:
                continue
            yield tok


@lru_cache(maxsize=1)
def _lark() -> Lark:
    return Lark(
        paths.grammar_file().read_text(),
        parser="lalr",
        postlex=_ParenPostLex(),
        propagate_positions=True,
        maybe_placeholders=True,
    )


class _ToAst(Transformer):
    def __init__(self, filename: str, source: str):
        super().__init__()
        self.filename = filename
        self.source = source

    def _span(self, meta_or_tok) -> Span:
        m = meta_or_tok
        if isinstance(m, Token):
            return Span(self.filename, m.line, m.column, m.end_line, m.end_column, self.source)
        return Span(self.filename, m.line, m.column, m.end_line, m.end_column, self.source)

    def _join(self, a, b) -> Span:
        return Span(self.filename, a.span.line, a.span.col, b.span.end_line, b.span.end_col, self.source)

    # --- top level
    def start(self, items):
        return [a for a in items if isinstance(a, ast.Attention)]

    @v_args(meta=True)
    def attention(self, meta, items):
        name, *body = [x for x in items if x is not None]
        return ast.Attention(ast.Name(str(name), self._span(name)), tuple(body), self._span(meta))

    @v_args(meta=True)
    def input_decl(self, meta, items):
        name, dtype, dims = items
        return ast.InputDecl(ast.Name(str(name), self._span(name)), ast.Name(str(dtype), self._span(dtype)),
                             tuple(dims) if dims is not None else None, self._span(meta))

    def dims(self, items):
        return list(items)

    def dim_name(self, items):
        return ast.Dim(str(items[0]), self._span(items[0]))

    def dim_int(self, items):
        span = self._span(items[0])
        return ast.Dim(int_literal(items[0], span), span)

    @v_args(meta=True)
    def const_decl(self, meta, items):
        name, value = items
        return ast.ConstDecl(ast.Name(str(name), self._span(name)), value, self._span(meta))

    @v_args(meta=True)
    def let_decl(self, meta, items):
        name, value = items
        return ast.LetDecl(ast.Name(str(name), self._span(name)), value, self._span(meta))

    @v_args(meta=True)
    def assign(self, meta, items):
        name, value = items
        return ast.Assign(ast.Name(str(name), self._span(name)), value, self._span(meta))

    # --- expressions
    @v_args(meta=True)
    def or_op(self, meta, items):
        return ast.Binary("or", items[0], items[1], self._span(meta))

    @v_args(meta=True)
    def and_op(self, meta, items):
        return ast.Binary("and", items[0], items[1], self._span(meta))

    @v_args(meta=True)
    def not_op(self, meta, items):
        return ast.Unary("not", items[0], self._span(meta))

    @v_args(meta=True)
    def compare(self, meta, items):
        operands = tuple(items[0::2])
        ops = tuple(str(t) for t in items[1::2])
        return ast.Compare(ops, operands, self._span(meta))

    @v_args(meta=True)
    def binop(self, meta, items):
        left, op, right = items
        return ast.Binary(str(op), left, right, self._span(meta))

    @v_args(meta=True)
    def unary(self, meta, items):
        op, operand = items
        return ast.Unary(str(op), operand, self._span(meta))

    @v_args(meta=True)
    def call(self, meta, items):
        func, args = items
        if not isinstance(func, ast.Name):
            raise AttnError("only named functions can be called", func.span)
        args = args or []
        pos = tuple(a for a in args if not isinstance(a, ast.Keyword))
        kws = tuple(a for a in args if isinstance(a, ast.Keyword))
        seen_kw = False
        for a in args:
            if isinstance(a, ast.Keyword):
                seen_kw = True
            elif seen_kw:
                raise AttnError("positional argument after a keyword argument", a.span)
        return ast.Call(func, pos, kws, self._span(meta))

    @v_args(meta=True)
    def index(self, meta, items):
        base, args = items
        if not isinstance(base, ast.Name):
            raise AttnError("only named tensors can be indexed", base.span)
        for a in args:
            if isinstance(a, ast.Keyword):
                raise AttnError("keyword inside an index", a.span)
        return ast.Index(base, tuple(args), self._span(meta))

    @v_args(meta=True)
    def slice(self, meta, items):
        base, lo, hi = items
        return ast.Slice(base, lo, hi, self._span(meta))

    def args(self, items):
        return list(items)

    @v_args(meta=True)
    def kwarg(self, meta, items):
        name, value = items
        return ast.Keyword(str(name), value, self._span(meta))

    def name(self, items):
        return ast.Name(str(items[0]), self._span(items[0]))

    def int_lit(self, items):
        span = self._span(items[0])
        return ast.Literal(int_literal(items[0], span), span)

    def float_lit(self, items):
        span = self._span(items[0])
        return ast.Literal(float_literal(items[0], span), span)

    @v_args(meta=True)
    def true_lit(self, meta, items):
        return ast.Literal(True, self._span(meta))

    @v_args(meta=True)
    def false_lit(self, meta, items):
        return ast.Literal(False, self._span(meta))

    @v_args(meta=True)
    def inf_lit(self, meta, items):
        return ast.Literal(float("inf"), self._span(meta))


def _describe(tok_type: str) -> str:
    return _TOKEN_NAMES.get(tok_type, f"'{tok_type.lower()}'" if tok_type.isupper() else tok_type)


def _syntax_error(err: UnexpectedInput, filename: str, source: str) -> AttnError:
    line, col = max(1, err.line), max(1, err.column)
    if isinstance(err, UnexpectedCharacters):
        ch = source[err.pos_in_stream] if 0 <= err.pos_in_stream < len(source) else "?"
        span = Span(filename, line, col, line, col + 1, source)
        return AttnError(f"unexpected character {ch!r}", span)
    if isinstance(err, UnexpectedEOF) or (isinstance(err, UnexpectedToken) and err.token.type == "$END"):
        # point just past the last non-blank line, where the missing '}' or ')' belongs
        lines = source.rstrip().split("\n")  # lines as the lexer counts them (not splitlines())
        span = Span(filename, len(lines), len(lines[-1]) + 1, len(lines), len(lines[-1]) + 2, source)
        return AttnError("unexpected end of file (is a '}' or ')' missing?)", span)
    assert isinstance(err, UnexpectedToken)
    tok = err.token
    expected = sorted({_describe(t) for t in err.expected if not t.startswith("__")})
    shown = "end of line" if tok.type == "_NL" else repr(str(tok))
    end = col + max(1, len(str(tok))) if tok.type != "_NL" else col + 1
    span = Span(filename, line, col, line, end, source)
    hint = ("expected " + ", ".join(expected[:8])) if expected else None
    return AttnError(f"unexpected {shown}", span, hint)


def parse(source: str, filename: str = "<string>") -> ast.Module:
    """Parse ``.attn`` source text into an AST module."""
    check_text(source, filename)
    try:
        tree = _lark().parse(source if source.endswith("\n") else source + "\n")
    except UnexpectedInput as err:
        raise _syntax_error(err, filename, source) from None
    check_depth(tree, filename, source)
    try:
        attentions = _ToAst(filename, source).transform(tree)
    except VisitError as err:  # Lark wraps what the transformer raises
        if isinstance(err.orig_exc, AttnError):
            raise err.orig_exc from None
        raise
    return ast.Module(tuple(attentions), filename, source)

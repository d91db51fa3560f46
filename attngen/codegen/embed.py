"""Untrusted text in generated code: the one escaping function every spec text and path goes through.

A spec's source and its file name reach a generated module only as prose: the module docstring
(the header, "Spec source:"), the ``# attention NAME  (from FILE)`` banner and the ``# from
FILE:LINE stage`` notes on emitted statements. :func:`inert` makes any text safe in both places,
``#`` comments and plain (not raw, not f-) ``\"\"\"`` strings, because its result

- has printable characters only (``str.isprintable``) and tabs, plus ``\\n`` where the caller asks
  for lines (a docstring): no other line break of any kind (``\\r``, ``\\x0b``, ``\\x0c``,
  ``\\x1c``-``\\x1e``, ``\\x85``, U+2028, U+2029: everything ``str.splitlines`` splits on), no NUL,
  no lone surrogate, no bidi control; so a comment cannot end early and each line of the module is
  one line to Python, to ``splitlines`` and to an editor;
- has a backslash only as the start of a valid escape (``\\\\``, ``\\"``, ``\\xNN``, ``\\uNNNN``,
  ``\\UNNNNNNNN``, ``\\r``, ``\\n``), so a docstring never holds a malformed ``\\N{...}`` or ``\\x``;
- never has two unescaped ``"`` in a row nor ends with one, so it cannot close a ``\"\"\"``.

Everything else is kept as written: a normal spec's header reads like the spec (its quotes, its
non-ASCII letters), and in a docstring the escapes decode back to the original text.
"""

from __future__ import annotations

from ..ir import nodes as ir
from ..ir.printer import expr_str


def inert(text: str, lines: bool = False) -> str:
    """``text`` escaped so that it cannot end (or break) a ``#`` comment or a ``\"\"\"`` string. With
    ``lines``, ``\\n`` stays a line break: for docstrings only (a comment would end there)."""
    keep = "\t\n" if lines else "\t"
    out = []
    for n, c in enumerate(text):
        if c == "\\" or not (c.isprintable() or c in keep):
            out.append(c.encode("unicode_escape").decode("ascii"))
        elif c == '"' and (n + 1 == len(text) or text[n + 1] == '"'):
            out.append('\\"')  # a quote before another, or at the end, could be part of a closing \"\"\"
        else:
            out.append(c)
    return "".join(out)


def expr_note(e: ir.Expr) -> str:
    """An IR expression as a comment's text (an aggregate's or a key scan's): printed from the IR, whose
    names and numbers came from the spec, and made inert like any spec text."""
    return inert(expr_str(e))

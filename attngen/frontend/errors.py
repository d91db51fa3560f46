"""User-facing errors: ``FILE:LINE:COL: message``, the source line, and a caret.

Every mistake in a spec (syntax, names, types, stages) is an :class:`AttnError`
carrying a :class:`Span`; the CLI prints ``str(err)`` and exits 1, never a traceback.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Iterable


@dataclass(frozen=True)
class Span:
    """A region of source text; lines and columns are 1-based."""

    file: str
    line: int
    col: int
    end_line: int
    end_col: int
    text: str = ""  # the whole source, so errors can quote the line

    def __repr__(self) -> str:  # keep dataclass reprs of AST/IR short
        return f"{self.file}:{self.line}:{self.col}"

    def source_line(self) -> str:
        # lines as the lexer counts them: splitlines() would also split on \f, \x85, U+2028...
        lines = self.text.split("\n")
        return lines[self.line - 1].removesuffix("\r") if 0 < self.line <= len(lines) else ""


class AttnError(Exception):
    """An error in a user's spec, located at a source span."""

    def __init__(self, message: str, span: Span | None = None, hint: str | None = None):
        self.message = message
        self.span = span
        self.hint = hint
        super().__init__(self.format())

    def format(self) -> str:
        if self.span is None:
            out = f"error: {self.message}"
        else:
            s = self.span
            line = s.source_line()
            width = max(1, (s.end_col - s.col) if s.end_line == s.line else len(line) - s.col + 1)
            # keep the line's tabs in the indent so the caret lines up in a terminal
            indent = "".join(c if c == "\t" else " " for c in line[: s.col - 1])
            caret = indent + "^" + "~" * (width - 1)
            out = f"{s.file}:{s.line}:{s.col}: error: {self.message}\n    {line}\n    {caret}"
        if self.hint:
            out += f"\n  hint: {self.hint}"
        return out


def suggest(name: str, known: Iterable[str]) -> str | None:
    """A 'did you mean' hint for an unknown ``name``, or None."""
    match = difflib.get_close_matches(name, sorted(set(known)), n=1, cutoff=0.6)
    return f"did you mean '{match[0]}'?" if match else None

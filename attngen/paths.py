"""Where the grammar, the templates and the shipped runtime live.

In a wheel they are packaged under ``attngen/_data/``; in a source checkout or an
editable install they are the top-level ``grammar/`` and ``templates/`` folders.
Everything that needs them asks this module, so both layouts behave the same.
"""

from __future__ import annotations

from pathlib import Path

_PKG = Path(__file__).resolve().parent


def _data_dir(name: str) -> Path:
    for candidate in (_PKG / "_data" / name, _PKG.parent / name):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"attngen installation is missing its '{name}/' folder")


def grammar_file() -> Path:
    return _data_dir("grammar") / "attn.lark"


def templates_dir() -> Path:
    return _data_dir("templates")


#: the runtime modules every generated module embeds (attngen/codegen/shipped.py), each after the ones
#: it imports from
SHIPPED_RUNTIME = ("triton_helpers", "launch", "checks", "ops", "selection", "attention")


def runtime_file(name: str) -> Path:
    """A shipped runtime module's source (``name`` in SHIPPED_RUNTIME)."""
    return _PKG / "runtime" / f"{name}.py"

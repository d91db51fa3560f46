"""The runtime a generated module carries with it: attngen/runtime's shipped modules, verbatim.

A module written by ``attngen compile`` must run where attngen is not installed (torch and triton
only), so the host code that is the same for every spec is not template text but plain modules
under ``attngen/runtime/``, tested there, which every generated module embeds after its own
imports. A shipped module may import only what the generated module imports (the names in
``MODULE_IMPORTS``) and, relatively, other shipped modules: in the embedding they share one
namespace, so those relative imports are dropped. What is embedded is the file from the first
line after its imports to its end, unchanged (tests/test_runtime_shipped.py checks both).
"""

from __future__ import annotations

import ast
from functools import lru_cache

from .. import __version__
from ..paths import SHIPPED_RUNTIME as SHIPPED
from ..paths import runtime_file
#: the imports at the top of every generated module (templates/module.py.jinja)
MODULE_IMPORTS = frozenset({"collections", "difflib", "functools", "json", "math", "os", "sys", "warnings", "weakref", "torch",
                            "triton", "triton.language"})


def body(text: str) -> str:
    """A shipped module's text after its docstring and imports (the part that is embedded)."""
    tree = ast.parse(text)
    end = 0
    for node in tree.body:
        is_doc = isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant) and isinstance(node.value.value, str)
        if not (is_doc or isinstance(node, (ast.Import, ast.ImportFrom))):
            break
        end = node.end_lineno
    return "".join(text.splitlines(keepends=True)[end:]).strip("\n") + "\n"


@lru_cache(maxsize=1)
def embedded() -> str:
    """Every shipped module's body under a banner naming its file and attngen's version."""
    parts = []
    for name in SHIPPED:
        banner = f"# ---- attngen.runtime.{name} (attngen {__version__}; embedded verbatim) ----"
        parts.append(f"{banner}\n\n{body(runtime_file(name).read_text())}")
    return "\n\n".join(parts)

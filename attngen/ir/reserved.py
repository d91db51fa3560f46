"""Names a spec cannot give an attention or an input, because the generated module uses them.

Why: an attention ``NAME`` becomes the module's function ``NAME`` (and ``NAME_prepare``, its
kernels ``NAME_fwd``..., its description ``_NAME``), and an input becomes a keyword parameter of
that function and a ``NAME_ptr`` / ``dNAME_ptr`` kernel argument. A Python keyword, a builtin or
module name the module calls, a name of the embedded runtime, or a parameter the call already has
would make the module fail to import or silently misbehave. tests/test_untrusted_specs.py checks
these lists against the rendered modules of the examples, so a template that starts using a new
name fails there.
"""

from __future__ import annotations

import ast
import builtins
import functools
import keyword

from ..frontend.errors import AttnError, Span
from ..paths import SHIPPED_RUNTIME, runtime_file

#: names the generated module binds at module level (imports and constants)
MODULE_NAMES = frozenset({"collections", "difflib", "functools", "json", "math", "os", "sys", "warnings", "weakref",
                          "torch", "triton", "tl", "LN2", "LOG2E", "SPLIT_ROWS"})
#: names of the call (attngen.prepare, the callables, the generated function and its autograd forward)
CALL_NAMES = frozenset({
    "q", "k", "v", "scale", "return_lse", "prepared", "validate", "block_table", "seqlens_k", "cu_seqlens_q",
    "cu_seqlens_k", "max_seqlen_q", "max_seqlen_k", "self", "fn", "ctx", "inputs", "unexpected", "seq", "sizes",
    "tiles", "xs", "o", "lse", "stat", "o_buf", "o_raw_buf", "o_shape", "d_sel"})
#: builtins those generated functions call (a parameter of the same name would hide them)
CALL_BUILTINS = frozenset({"any", "isinstance", "staticmethod", "TypeError", "ValueError"})
#: what the module appends to an attention's name: its kernels and public functions (and it binds
#: ``_attention_NAME``, the attention's description for the runtime, which names nothing else so)
PUBLIC_SUFFIXES = ("_prepare", "_selected", "_fwd", "_bwd_pre", "_bwd_dq", "_bwd_dkdv", "_classify",
                   "_kmean", "_select", "_topk", "_listed", "_merge", "_place", "_attend", "_attend_dq",
                   "_attend_dkdv")


@functools.lru_cache(maxsize=1)
def runtime_names() -> frozenset[str]:
    """The module-level names of the shipped runtime every module embeds (read from its source; none
    starts with ``_attention_``, the prefix of the attentions' descriptions)."""
    names = set()
    for f in SHIPPED_RUNTIME:
        for node in ast.parse(runtime_file(f).read_text()).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                names.add(node.name)
            elif isinstance(node, ast.Assign):
                names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return frozenset(names)


def _common(name: str, span: Span, what: str) -> None:
    if keyword.iskeyword(name):
        raise AttnError(f"'{name}' is a Python keyword and cannot name {what}", span)
    if name.startswith("_"):
        raise AttnError(f"names starting with '_' are reserved for the generated module; rename {what}", span)
    if name in MODULE_NAMES:
        raise AttnError(f"'{name}' is a name of the generated module and cannot name {what}", span)


def check_input_name(name: str, span: Span, others: set[str]) -> None:
    """An input's name: not a keyword, module name, call parameter, nor ``d`` + another input's name."""
    _common(name, span, "an input")
    if name in CALL_NAMES or name in CALL_BUILTINS:
        raise AttnError(f"'{name}' is a name of the generated call and cannot name an input", span)
    for other in others:
        for grad, base in ((name, other), (other, name)):
            if grad == "d" + base:
                raise AttnError(f"inputs '{base}' and '{grad}' clash: the kernels take the gradient of "
                                f"'{base}' as 'd{base}'", span)


def generated_names(name: str) -> set[str]:
    """The module-level names the module defines for attention ``name``."""
    return {name, f"_attention_{name}"} | {name + s for s in PUBLIC_SUFFIXES}


def check_attention_names(names: list[tuple[str, Span]]) -> None:
    """Each attention's name alone, then every pair of one file (their generated names must not meet)."""
    for name, span in names:
        _common(name, span, "an attention")
        if hasattr(builtins, name):
            raise AttnError(f"'{name}' is a name the generated module uses and cannot name an attention", span)
    seen: dict[str, str] = {}
    for name, span in names:
        for g in generated_names(name):
            if g in seen and seen[g] != name:
                raise AttnError(f"attentions '{seen[g]}' and '{name}' clash: both would define '{g}' in the "
                                "generated module", span)
        seen.update((g, name) for g in generated_names(name))

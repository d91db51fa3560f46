"""Names a spec cannot give an attention or an input, because the generated module uses them.

Why: an attention ``NAME`` becomes the module's function ``NAME`` (and ``NAME_prepare``,
``NAME_fwd``, ``_NAME_apply``, ``_NAME_INPUTS``...), and an input becomes a keyword parameter
of that function and of its autograd ``forward`` and a ``NAME_ptr`` / ``dNAME_ptr`` kernel
argument. A Python keyword, a builtin or module name the module calls, or a parameter the call
already has would make the module fail to import or silently misbehave. tests/test_untrusted_specs.py
checks these lists against the rendered modules of the examples, so a template that starts using
a new name fails there.
"""

from __future__ import annotations

import builtins
import keyword

from ..frontend.errors import AttnError, Span

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
#: what the module appends to an attention's name: public functions and kernels ...
PUBLIC_SUFFIXES = ("_prepare", "_selected", "_fwd", "_fwd_split", "_bwd_pre", "_bwd_dq", "_bwd_dkdv", "_classify",
                   "_kmean", "_select", "_topk", "_listed", "_merge", "_place", "_attend", "_attend_dq",
                   "_attend_dkdv")
#: ... and private helpers ``_NAME_<suffix>``
PRIVATE_SUFFIXES = ("apply", "args", "choose", "flags", "forward", "gather_backward", "gather_forward", "layout",
                    "listed_forward", "lists", "op_backward", "op_forward", "ops", "out", "paged", "run_forward",
                    "select_args", "tiles", "Gathered")
#: attention names whose private helpers would be the module's own (``_check_flags``, ``_check_paged``)
HELPER_PREFIXES = frozenset({"check"})


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
    return ({name, f"_{name.upper()}_INPUTS"} | {name + s for s in PUBLIC_SUFFIXES}
            | {f"_{name}_{s}" for s in PRIVATE_SUFFIXES})


def check_attention_names(names: list[tuple[str, Span]]) -> None:
    """Each attention's name alone, then every pair of one file (their generated names must not meet)."""
    for name, span in names:
        _common(name, span, "an attention")
        if hasattr(builtins, name) or name in HELPER_PREFIXES:
            raise AttnError(f"'{name}' is a name the generated module uses and cannot name an attention", span)
    seen: dict[str, str] = {}
    for name, span in names:
        for g in generated_names(name):
            if g in seen and seen[g] != name:
                raise AttnError(f"attentions '{seen[g]}' and '{name}' clash: both would define '{g}' in the "
                                "generated module", span)
        seen.update((g, name) for g in generated_names(name))

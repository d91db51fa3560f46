"""Render a module of Triton kernels + autograd wrappers from checked IR (Jinja, StrictUndefined)."""

from __future__ import annotations

import hashlib
import re
from functools import lru_cache
from pathlib import Path

import jinja2

from .. import __version__, paths
from ..ir import nodes as ir
from ..passes.pipeline import run_pipeline
from . import shipped
from .context import module_context
from .plan import make_plan


@lru_cache(maxsize=1)
def _env() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(paths.templates_dir())),
        undefined=jinja2.StrictUndefined, keep_trailing_newline=True, trim_blocks=False,
        lstrip_blocks=False, autoescape=False,
    )


def _render(template: str, **ctx) -> str:
    return _env().get_template(template).render(**ctx)


@lru_cache(maxsize=1)
def generator_digest() -> str:
    """Hash of the code generator itself, so edits invalidate caches: everything between spec text and
    module text (grammar, frontend, IR, passes, codegen modules, templates, the shipped runtime)."""
    h = hashlib.sha256()
    pkg = Path(__file__).resolve().parent.parent
    parts = [pkg / d for d in ("frontend", "ir", "passes", "codegen")]
    shipped_files = [shipped.runtime_file(n) for n in shipped.SHIPPED]
    for f in sorted([*(f for d in parts for f in d.glob("*.py")), *paths.templates_dir().glob("*.jinja"),
                     paths.grammar_file(), *shipped_files]):
        h.update(f.read_bytes())
    return h.hexdigest()[:16]


def cache_key(source: str, consts: dict, extra: str = "") -> str:
    """Spec text, constants, versions and the generator's digest: what makes generated code differ."""
    import torch
    import triton
    h = hashlib.sha256()
    for part in (source, repr(sorted(consts.items())), __version__, generator_digest(), triton.__version__,
                 torch.__version__, extra):
        h.update(part.encode("utf-8", "surrogatepass"))  # jit() text may hold lone surrogates
        h.update(b"\0")
    return h.hexdigest()[:20]


def module_key(attns: list[ir.Attention], source: str, filename: str) -> str:
    """The key of ``render_module(attns, source, filename, key)``: besides the versions, its text depends
    on the source, the file name, which attentions it holds and their constants (overrides included)."""
    consts = {(a.name, k): v for a in attns for k, v in a.consts}
    return cache_key(source, consts, f"{filename}:{','.join(a.name for a in attns)}")


def render_module(attns: list[ir.Attention], source: str, filename: str, key: str) -> str:
    """Python source of a standalone module with one function per attention."""
    plans = [make_plan(run_pipeline(a)) for a in attns]
    text = _render("module.py.jinja", **module_context(plans, source, filename, key, _render))
    # split at "\n" only: spec text and paths come in through embed.inert, with no other line break
    lines = [line.rstrip() for line in text.removesuffix("\n").split("\n")]
    assert all(line.replace("\t", " ").isprintable() for line in lines), "a template took spec text unescaped"
    text = "\n".join(lines) + "\n"
    # optional parts that render empty leave runs of blank lines: two at most, as between functions
    return re.sub(r"\n{4,}", "\n\n\n", text)

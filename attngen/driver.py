"""The one path from spec text to kernels, shared by every command and the JIT:

    compile_source(text, file, consts, name)  text -> checked IR (parse, build, verify, constants)
    optimize(a, after)                        the pass pipeline (passes/pipeline.py), or its first passes
    generate(attns)                           -> Module(key, render): the cache key (one recipe) and, on
                                              demand, the kernel plans (codegen/plan.py) and the module's
                                              text (codegen/render.py)

``attngen check`` / ``show`` / ``compile`` and ``attngen.load`` / ``jit`` (runtime/jit.py; ``verify``
and ``bench`` load through it) call these and nothing below them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping, NamedTuple

from .frontend.parser import parse
from .ir import nodes as ir
from .ir.build import ConstValue, build_module
from .ir.verify import verify
from .passes.fold_constants import check_constants


def compile_source(source: str, filename: str = "<string>", consts: Mapping[str, ConstValue] | None = None,
                   name: str | None = None) -> list[ir.Attention]:
    """Parse and check ``source``; one IR attention per block (or only ``name``). Constant
    expressions are evaluated here too, so that a value the kernels cannot compute is a check error."""
    attns = [verify(a) for a in build_module(parse(source, filename), consts, name)]
    for a in attns:
        check_constants(a)
    return attns


def compile_file(path: str | Path, consts: Mapping[str, ConstValue] | None = None,
                 name: str | None = None) -> list[ir.Attention]:
    p = Path(path)
    return compile_source(p.read_text(), str(path), consts, name)


def optimize(a: ir.Attention, after: str | None = "all") -> ir.Attention:
    """``a`` after the pipeline's passes up to ``after`` ('all': every pass; None: none). An unknown
    pass name is a ValueError listing the passes."""
    from .passes.pipeline import run_pipeline
    return run_pipeline(a, after)


class Module(NamedTuple):
    key: str  # the cache key: spec text, file name, attentions, constants, versions, the generator itself
    render: Callable[[], str]  # Python source of a standalone module with one function per attention


def generate(attns: list[ir.Attention]) -> Module:
    """The module of ``attns`` (checked IR of one source text). ``render()`` optimizes, plans and renders
    each (a cache hit needs the key alone); a spec the kernels cannot run raises its AttnError there."""
    from .codegen.render import module_key, render_module
    source, filename = attns[0].source, attns[0].filename
    key = module_key(attns, source, filename)
    return Module(key, lambda: render_module(attns, source, filename, key))

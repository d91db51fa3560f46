"""Source text -> checked IR, the front door shared by the API and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

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

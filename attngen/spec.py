"""Source text -> checked IR, the front door shared by the API and the CLI."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

from .frontend.parser import parse
from .ir import nodes as ir
from .ir.build import ConstValue, build_module
from .ir.verify import verify


def compile_source(source: str, filename: str = "<string>", consts: Mapping[str, ConstValue] | None = None,
                   name: str | None = None) -> list[ir.Attention]:
    """Parse and check ``source``; one IR attention per block (or only ``name``)."""
    return [verify(a) for a in build_module(parse(source, filename), consts, name)]


def compile_file(path: str | Path, consts: Mapping[str, ConstValue] | None = None,
                 name: str | None = None) -> list[ir.Attention]:
    p = Path(path)
    return compile_source(p.read_text(), str(path), consts, name)

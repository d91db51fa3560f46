"""The examples/ specs the kernel suites run end to end (DENSE): every attention without a select
stage or with token top-k (chosen per call by the topk kernel, then run by the dense kernels
through the chosen lists); block top-k examples have their own suite (test_kernels_select)."""

from __future__ import annotations

from pathlib import Path

from attngen.driver import compile_file

EXAMPLES = sorted(Path(__file__).resolve().parent.parent.joinpath("examples").glob("*.attn"))
DENSE = [(p, a.name) for p in EXAMPLES for a in compile_file(p) if a.select is None or a.select.block is None]
DENSE_IDS = [f"{p.stem}:{n}" for p, n in DENSE]


def shrunk(path: Path, name: str | None, table: dict):
    """The attention ``name`` of ``path`` with the consts it declares overridden from ``table``."""
    declared = dict(compile_file(path)[0].consts)
    return compile_file(path, consts={k: v for k, v in table.items() if k in declared}, name=name)[0]

"""Statement blocks of a kernel and the accumulators its loops share: what every kernel builder
(kernels.py) and the aggregates' backward loops (agg_adjoints.py) fill."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import nodes as ir
from .autodiff import reduce_to
from .layout import statements, vec_block

_ZEROS = {
    "row": "tl.zeros([BLOCK_M, 1], dtype=tl.float32)",
    "kcol": "tl.zeros([BLOCK_N, 1], dtype=tl.float32)",
    "none": "0.0",
}


def _zeros(shape: str, n: ir.Expr) -> str:
    if shape in _ZEROS:
        return _ZEROS[shape]
    rows = {"vrow": "BLOCK_M", "vcol": "BLOCK_N", "vnone": "1"}[shape]
    return f"tl.zeros([{rows}, {vec_block(n.ty.length)}], dtype=tl.float32)"


@dataclass
class Blocks:
    stmts: dict[str, list[str]] = field(default_factory=dict)
    vars: dict[str, str] = field(default_factory=dict)

    def text(self, name: str) -> str:
        return statements(self.stmts.get(name, []))

    def stmts_names(self, name: str) -> set[str]:
        """Variables assigned in one statement list."""
        return {line.split(" = ", 1)[0] for line in self.stmts.get(name, []) if " = " in line}


def frontier(acc: dict, blocks: Blocks, init_level: str, prefix: str):
    """Accumulate frontier nodes' adjoints across the loop: ``update(node, adj, layout, level, factor)``
    records one (its value adj * factor), ``flush()`` declares each accumulator (in ``init_level``)
    and adds its updates in their levels. A factor every update of a node shares stays out of the
    loop: ``acc`` maps node -> (name, layout, factor), the accumulator's value being name * factor."""
    pending: dict[ir.Expr, list[tuple[str, str, str, str | None]]] = {}

    def update(n: ir.Expr, g: str, shape: str, level: str, factor: str | None) -> None:
        pending.setdefault(n, []).append((g, shape, level, factor))

    def flush() -> None:
        for n, updates in pending.items():
            name, shape = f"{prefix}{len(acc)}", updates[0][1]
            common = updates[0][3] if all(u[3] == updates[0][3] for u in updates) else None
            acc[n] = (name, shape, common)
            blocks.stmts[init_level].append(f"{name} = {_zeros(shape, n)}")
            for g, gshape, level, factor in updates:
                code = reduce_to(g, gshape, shape)
                scaled = code if factor is None or factor == common else f"{code} * {factor}"
                blocks.stmts[level].append(f"{name} += {scaled}")
        pending.clear()

    return update, flush


"""Code for the tile classes of the ``mask_tiles`` pass: which key (or query) tiles a program
visits, and which of them skip the mask.

Every kernel loops over tiles in three segments, ``[lo, f_lo)`` and ``[f_hi, hi)`` with the
mask and ``[f_lo, f_hi)`` without it; tiles outside ``[lo, hi)`` are never visited.

    none     no mask: every tile is full but a ragged last one
    static   the pass's closed forms ``tiles.any`` / ``tiles.all``, evaluated by each program
             over all tile indices at once (``SCAN`` tiles a step), no per-call data; for a
             band mask (constant bounds on i - j: causal, windows) the ranges themselves in
             closed form, from the program id and sizes alone, so they stay warp-uniform (a
             SCAN's reductions are not: ptxas then keeps the loop and pipeline counters in
             vector registers, moving them to uniform ones for every wgmma)
    dynamic  per-call lists of partial and full tiles, written by a generated classification
             kernel from per-tile extremes of the mask's tensor inputs (document ids, flags)
    masked   a mask the pass cannot bound: every tile, with the mask
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import nodes as ir
from ..ir.printer import band_text
from .analysis import ROW, axes
from .emit import Emitter, KernelEnv
from .layout import statements

_BOX = {"i_lo": "ti_lo", "i_hi": "ti_hi", "j_lo": "tj_lo", "j_hi": "tj_hi"}


def tiles_kind(a: ir.Attention) -> str:
    if a.mask is None:
        return "none"
    if a.tiles is None:
        return "masked"
    return "dynamic" if a.tiles.dynamic else "static"


@dataclass
class TileCode:
    """Statements evaluating ``tiles.any`` / ``tiles.all`` over a box bound to ti_lo, ti_hi, tj_lo,
    tj_hi (scalars or [SCAN] vectors), and the names of the two results; ``band``: the mask is
    ``lo <= i - j <= hi`` (None: unbounded on that side)."""

    kind: str
    stmts: str = "pass"
    any: str = "True"
    all: str = "False"
    band: tuple[int | None, int | None] | None = None

    @property
    def key_band(self) -> str:
        """A query-tile program's key ranges from the band (ti_lo, ti_hi: its first and last row in key
        coordinates)."""
        lo, hi = self.band
        return _closed_ranges(
            f"band {band_text(lo, hi)}: key ranges in closed form (non-negative operands of every //)",
            "j", "key", "row", "BLOCK_N",
            first="0" if hi is None else f"tl.maximum({_minus('ti_lo', hi)}, 0)",
            last="N - 1" if lo is None else f"tl.minimum({_minus('ti_hi', lo)}, N - 1)",
            f_lo="0" if hi is None else f"(tl.maximum({_minus('ti_hi', hi)}, 0) + BLOCK_N - 1) // BLOCK_N",
            f_hi="N // BLOCK_N" if lo is None else
            f"tl.minimum(tl.maximum({_minus('ti_lo', lo - 1)}, 0) // BLOCK_N, N // BLOCK_N)")

    @property
    def query_band(self) -> str:
        """A key-tile program's query-tile ranges from the band (tj_lo, tj_hi: its first and last key;
        rows m = i - (N - M))."""
        lo, hi = self.band
        return _closed_ranges(
            f"band {band_text(lo, hi)}: query ranges in closed form (rows m = i - (N - M); non-negative operands "
            "of every //)", "m", "row", "key", "BLOCK_M",
            first="0" if lo is None else f"tl.maximum({_minus('tj_lo', -lo)} - (N - M), 0)",
            last="M - 1" if hi is None else f"tl.minimum({_minus('tj_hi', -hi)} - (N - M), M - 1)",
            f_lo="0" if lo is None else f"(tl.maximum({_minus('tj_hi', -lo)} - (N - M), 0) + BLOCK_M - 1) // BLOCK_M",
            f_hi="M // BLOCK_M" if hi is None else
            f"tl.minimum(tl.maximum({_minus('tj_lo', -hi)} - (N - M) + 1, 0) // BLOCK_M, M // BLOCK_M)")

    @property
    def heavy_last(self) -> bool:
        """Keys bounded above by the row and not below (causal): the last query tiles see the most
        key tiles, so the query-tile kernels start them first and the short ones fill the tail."""
        return self.band is not None and self.band[0] is not None and self.band[1] is None


def static_code(a: ir.Attention) -> TileCode:
    kind = tiles_kind(a)
    if kind != "static":
        return TileCode(kind)
    lines: list[str] = []
    env = KernelEnv(a, lambda ax: "scan", {"scan": lines}, binds=dict(_BOX))
    em = Emitter(env, "z")
    any_, all_ = em.value(a.tiles.any), em.value(a.tiles.all)
    return TileCode(kind, statements(lines), any_, all_, a.tiles.band if a.tiles is not None else None)


def _closed_ranges(comment: str, v: str, thing: str, other: str, block: str, *, first: str, last: str, f_lo: str,
                   f_hi: str) -> str:
    """The statements of a program's tile ranges from a band: ``{v}_first`` .. ``{v}_last``, the positions
    (keys or rows) some ``other`` allows; tiles [lo, hi) visited and [f_lo, f_hi) full."""
    return "\n".join([
        f"# {comment}",
        f"{v}_first = {first}  # the first {thing} any {other} allows",
        f"{v}_last = {last}",
        f"lo = {v}_first // {block}",
        f"hi = tl.where({v}_last >= {v}_first, tl.maximum({v}_last, 0) // {block} + 1, lo)",
        f"f_lo = {f_lo}  # {thing}s every {other} allows",
        f"f_hi = {f_hi}"])


def _minus(x: str, k: int) -> str:
    """``x - k`` as code, without a ``- 0`` or a ``- -k``."""
    return x if k == 0 else f"{x} - {k}" if k > 0 else f"{x} + {-k}"


class _TileEmitter(Emitter):
    """Emits ``tile_min`` / ``tile_max`` of one-sided values as reductions over the box's rows
    ([BLOCK_M] vectors, giving scalars) or keys ([SCAN, BLOCK_N] blocks, giving [SCAN])."""

    def __init__(self, env: KernelEnv):
        super().__init__(env, "y")

    def _call(self, e: ir.Call, orient: str, perm: bool, lvl: str, note: str) -> str:
        if e.fn not in ("tile_min", "tile_max"):
            return super()._call(e, orient, perm, lvl, note)
        x = e.args[0]
        valid, axis = ("rmask", 0) if ROW in axes(x) else ("cmask", 1)
        v = self.value(x, orient)
        if x.ty.kind == "bool":
            v = f"{v}.to(tl.int32)"
        big = "float('inf')" if x.ty.kind == "float" else "2147483647"
        fn = "min" if e.fn == "tile_min" else "max"
        fill = big if fn == "min" else f"-{big}"
        red = f"tl.{fn}(tl.where({valid}, {v}, {fill}), axis={axis})"
        return self.put(lvl, f"({red} != 0)" if x.ty.kind == "bool" else red, fn)


@dataclass
class ClassifyCode:
    """The classification kernel's statements: ``stmts`` defines ``any_t`` / ``all_t`` [SCAN]."""

    stmts: str
    any: str
    all: str
    per_head: bool


def classify_code(a: ir.Attention) -> ClassifyCode:
    """Code for the dynamic classification kernel: rows i/m are [BLOCK_M] vectors (``i_v``,
    ``m_v``, valid where ``rmask``), keys j a [SCAN, BLOCK_N] block (``j_v``, valid where ``cmask``)."""
    lines: list[str] = []
    binds = dict(_BOX, i="i_v", m="m_v", j="j_v")
    env = KernelEnv(a, lambda ax: "body", {"body": lines}, binds=binds)
    em = _TileEmitter(env)
    any_, all_ = em.value(a.tiles.any), em.value(a.tiles.all)
    per_head = any(isinstance(n, ir.Sym) and n.name in ("h", "hk") for e in (a.tiles.any, a.tiles.all) for n in ir.walk(e))
    return ClassifyCode(statements(lines), any_, all_, per_head)

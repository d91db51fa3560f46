"""Key scans in the kernels (language 1.1: ``suffixsum(E)``, for the pair (i, j) the sum of E(i, t) over
the keys t >= j that the mask allows).

Each kernel walks the keys in order and keeps a carry per scan and row ([BLOCK_M, 1]):
    fwd   from the last key tile to the first (as stick-breaking does): within a tile, the carry (the
          sum over later tiles) plus the tile's reverse cumulative sum
    dq    from the first key tile: the row's total (stored by the pre kernel, as a row aggregate) less
          the sum over earlier keys; the adjoint of E at key t is the sum of the scan's adjoints at
          keys j <= t, a carry plus the tile's cumulative sum. It stores both carries per (row, key
          tile) in SBL / SBG [rows, key tiles, scans] for the dk/dv kernel
    dk/dv reads them for its key tile (transposed tiles: cumulative sums down axis 0)
The mask's pairs are computed before the scan (it sums over the allowed keys), so a score that reads a
scan is computed after ``allowed`` (the ``inner_scan`` statements, ir/axes.py's SCAN pseudo-axis).
"""

from __future__ import annotations

from ..ir import nodes as ir
from ..ir.axes import SCAN
from .analysis import CodegenError
from .embed import expr_note

__all__ = ["SCAN", "of", "refuse", "value", "adjoint"]


def of(a: ir.Attention) -> list[ir.Scan]:
    """The distinct scans of the score and weights stages, in order of first use."""
    out: list[ir.Scan] = []
    for stage in (a.score, a.weights):
        for n in ir.walk(stage) if stage is not None else ():
            if isinstance(n, ir.Scan) and n not in out:
                out.append(n)
    return out


def refuse(a: ir.Attention) -> None:
    """A CodegenError (with the scan's span) for what the kernels do not run with a scan."""
    found = of(a)
    if not found:
        return
    why = ("a selection" if a.select is not None else
           "stick-breaking (its keys are walked in order already)" if a.norm.kind == "stickbreaking" else
           "row aggregates" if any(isinstance(n, ir.Agg) for st in (a.weights, a.out) if st is not None
                                   for n in ir.walk(st)) else "")
    if why:
        raise CodegenError(f"the kernels do not run a key scan (suffixsum) together with {why}", found[0].span)


def _zeros(em, orient: str) -> str:
    return f"tl.zeros([{em.tile(orient)}], dtype=tl.float32)"


def value(em, n: ir.Scan, orient: str) -> str:
    """The scan's value in the current tile (emitted after ``allowed``), carries updated after it."""
    scans = of(em.env.attn)
    s = f"scan{scans.index(n)}"
    mode = em.env.scan_mode
    x = em.f32(n.x, orient)
    level = em.level(n)
    out = em.env.stmts[level]
    axis = 0 if orient == "t" else 1
    out.append(f"{s}_x = tl.where(allowed, {x}, 0.0) + {_zeros(em, orient)}  # {expr_note(n)}: the allowed keys' terms")
    if mode == "fwd":  # keys from the last: the carry is the sum over later tiles
        out.append(f"{s} = {s}_c + tl.cumsum({s}_x, axis=1, reverse=True)")
    else:  # keys from the first: the row's total less the earlier keys
        out.append(f"{s} = {s}_t - {s}_c - tl.cumsum({s}_x, axis={axis}) + {s}_x")
    if mode != "dkdv":
        out.append(f"{s}_c += tl.sum({s}_x, axis=1)[:, None]")
    return s


def adjoint(em, n: ir.Scan, g: str, orient: str, level: str) -> str:
    """E's adjoint at key t: the scan's adjoints at keys j <= t (a carry and the tile's cumulative sum)."""
    s = f"scan{of(em.env.attn).index(n)}"
    axis = 0 if orient == "t" else 1
    d = em.put(level, f"tl.where(allowed, {s}_dc + tl.cumsum({g}, axis={axis}), 0.0)", "g")
    if em.env.scan_mode == "dq":
        em.env.stmts[level].append(f"{s}_dc += tl.sum({g}, axis=1)[:, None]")
    return d


def carries(em, aggs, mode: str) -> dict[str, str]:
    """Per-kernel statements: 'init' (before the key loop), 'tile' (at a tile's start: the dq kernel stores
    its carries for the dk/dv kernel; the dk/dv kernel loads them)."""
    scans = of(em.env.attn)
    ns = len(scans)
    init, tile = [], []
    for k, n in enumerate(scans):
        s = f"scan{k}"
        if mode == "fwd":
            init.append(f"{s}_c = tl.zeros([BLOCK_M, 1], dtype=tl.float32)  # sum over the later key tiles")
            continue
        col = aggs.value_col[aggs.total[n]]
        m, rmask = ("m_c", "rmask_c") if mode == "dkdv" else ("m_r", "rmask")
        total = f"{s}_t = tl.load(AGG + (lse_row0 + {m}) * {aggs.ncol} + {col}, mask={rmask}, other=0.0)"
        at = f"((lse_row0 + {m}) * tl.cdiv(N_MAX, BLOCK_N) + {'pid_n' if mode == 'dkdv' else 'tile'}) * {ns} + {k}"
        if mode == "dq":
            init += [total, f"{s}_c = tl.zeros([BLOCK_M, 1], dtype=tl.float32)  # sum over the earlier keys",
                     f"{s}_dc = tl.zeros([BLOCK_M, 1], dtype=tl.float32)  # the scan's adjoints at the earlier keys"]
            tile += [f"tl.store(SBL + {at}, {s}_c, mask=rmask)  # carries for the dk/dv kernel",
                     f"tl.store(SBG + {at}, {s}_dc, mask=rmask)"]
        else:
            tile += [total, f"{s}_c = tl.load(SBL + {at}, mask=rmask_c, other=0.0)",
                     f"{s}_dc = tl.load(SBG + {at}, mask=rmask_c, other=0.0)"]
    return {"init": "\n".join(init), "tile": "\n".join(tile)}



"""Adjoints of reductions of pair rows (language 1.1's pair vectors, lanes.py: the slow path), for
autodiff.Differentiator: one loop over the lanes recomputes each lane and takes its adjoint back."""

from __future__ import annotations

from ..ir import nodes as ir
from .analysis import COL, ROW, axes, is_pair, is_pair_row
from .emit import LaneEmitter
from .lanes import length, loop, seeds
from .layout import vec_block, vec_offs


def rules(diff, n: ir.Call, g: str, orient: str, level: str) -> list[tuple]:
    """A reduction of pair rows (lanes.py): one loop over the lanes recomputes each lane, takes its
    adjoint back through the lane's elementwise expression, and sums it into what the pair rows read:
    a one-sided row's column d, a scalar's tile (over the lanes); a pair row of an input is added to
    memory per pair. Returns those sums as the contributions of the rows and scalars (not n's
    children: the pair rows between get none). ``diff``: the autodiff.Differentiator running."""
    em = diff.em
    rows, inputs = _lane_graph(n)
    wanted = [x for x in inputs if diff.live(x) and diff.want_child(x)
              and not (isinstance(x, ir.Load) and is_pair(x) and not diff.sinks.pair_loads)]
    need: dict[ir.Expr, bool] = {}
    for x in reversed(rows):  # children first
        if isinstance(x, ir.Load):
            need[x] = diff.sinks.pair_loads and diff.live(x)
        else:
            need[x] = diff.live(x) and any(need.get(c, False) or c in wanted for c in diff._diff_children(x))
    lanes = LaneEmitter(em, orient)
    tile = em.tile(orient)
    acc = {}
    for x in wanted:
        acc[x] = em.put(level, _lane_zeros(x, tile), "lacc")
    terms: dict[ir.Expr, list[str]] = {}
    vals = [lanes.value(a) for a in n.args]
    for a, code in zip(n.args, seeds(n, g, em.value(n, orient), vals)):
        if a in acc or need.get(a, False):
            terms.setdefault(a, []).append(code)
    inner = type(diff)(lanes, diff.wants_grad)  # the lanes' own differentiator
    for x in rows:
        if not need[x] or x not in terms:
            continue
        gx = lanes.put(level, " + ".join(f"({t})" for t in terms.pop(x)), "gl")
        if isinstance(x, ir.Load):
            off, mask = em.load_address(x, orient, strides=f"d{x.name}_s", lane=lanes.d)
            lanes.body.append(f"if GRAD_{x.name}:\n    tl.atomic_add(d{x.name}_ptr + {off}, "
                              f"{diff._guard(gx, 'pair', diff.pair_guard)}, mask={mask})")
            continue
        for child, code, *_ in inner._rules(x, gx, orient, level):
            if child in acc or need.get(child, False):
                terms.setdefault(child, []).append(code)
    for x, name in acc.items():
        if x in terms:
            gx = diff._guard(" + ".join(f"({t})" for t in terms[x]), "pair", diff.pair_guard)
            lanes.body.append(f"{name} += {_lane_place(x, gx, orient, lanes.d)}")
    note = "; ".join(filter(None, ("adjoints lane by lane: pair rows, the slow path", em.provenance(n))))
    em.env.stmts[level].append(loop(lanes.d, length(n), lanes.body, note))
    return [(x, name, True) if x.ty.is_vec else (x, name) for x, name in acc.items()]


def _lane_graph(n: ir.Call) -> tuple[list[ir.Expr], list[ir.Expr]]:
    """The pair rows under reduction ``n`` (each before the rows it reads) and what they read that is not
    a pair row: one-sided rows and scalars (n's own one-sided operand among them)."""
    rows: list[ir.Expr] = []
    inputs: list[ir.Expr] = []
    seen: set = set()

    def visit(x: ir.Expr) -> None:
        if x in seen:
            return
        seen.add(x)
        if not is_pair_row(x):
            inputs.append(x)
            return
        for c in ir.children(x):
            if c.ty.kind in ("float", "vec"):
                visit(c)
        rows.append(x)

    for a in n.args:
        visit(a)
    return rows[::-1], inputs


def _lane_zeros(x: ir.Expr, tile: str) -> str:
    """The accumulator of an input's adjoint over the lanes: a row's [R, BLOCK_L], a scalar's tile."""
    if not x.ty.is_vec:
        return f"tl.zeros([{tile}], dtype=tl.float32)"
    ax = axes(x)
    rows = "BLOCK_N" if COL in ax else "BLOCK_M" if ROW in ax else "1"
    return f"tl.zeros([{rows}, {vec_block(x.ty.length)}], dtype=tl.float32)"


def _lane_place(x: ir.Expr, g: str, orient: str, d: str) -> str:
    """A lane's adjoint ``g`` (a pair tile) added to input ``x``'s accumulator: a scalar's as it is, a
    one-sided row's summed over the other side into its column d."""
    if not x.ty.is_vec:
        return g
    ax = axes(x)
    if not ax & {ROW, COL}:
        col = f"tl.sum({g})"
    else:  # the pair tile's axis of the other side: keys are axis 1 in [BM, BN], axis 0 in 't'
        keys_axis = 0 if orient == "t" else 1
        col = f"tl.sum({g}, axis={keys_axis if ROW in ax else 1 - keys_axis})[:, None]"
    return f"tl.where({vec_offs(x.ty.length)}[None, :] == {d}, {col}, 0.0)"

"""Pair rows (language 1.1's pair vectors) in the kernels: the slow path, without tensor cores.

A pair row mixes the query and the key side (``q - k``, ``tanh(q + k)``, ``e[t]`` with ``t`` a pair
index); a reduction of one (``sum(abs(q - k))``, ``dot(w, tanh(q + k))``, ``dot(q, e[t])``) is a pair
scalar. No product of a [BLOCK_M, L] and an [L, BLOCK_N] tile computes it, so the kernels build its
tile as a loop over the row's lanes d, each lane a tile of elementwise operations:

    acc = tl.zeros([BLOCK_M, BLOCK_N])              # [BLOCK_N, BLOCK_M] in the dk/dv kernel
    for d in range(0, L):
        lane d of each one-sided row: its column   # [BLOCK_M, 1] query side, [1, BLOCK_N] key side,
                                                   # a scalar for a row of every query and key (w)
        lane d of a pair row of an input (e[t]):   # gathered per pair, [BLOCK_M, BLOCK_N]
        the lane's elementwise expression          # [BLOCK_M, BLOCK_N]
        acc += its term                            # sum, mean, dot, sqdist, norm; max and min keep the extreme

``emit.LaneEmitter`` gives the lane values. The backward runs the same loop (``autodiff``): the
reduction's adjoint g [BLOCK_M, BLOCK_N] gives each lane's adjoint, which goes back through the lane's
expression elementwise; a one-sided row's lane adjoint is summed over the other side into its column d
(dq over the keys, dk over the query rows, a row like w over both), a pair row of an input is added to
memory per pair (``tl.atomic_add``, dq kernel), and a scalar the lane reads gets the sum over the lanes.

Lane-wise means every operation inside a pair row works lane by lane: rope, concat and slices of a pair
row mix lanes and are refused by ``attngen check``; l2norm and rmsnorm of one are written out with
their norm as a pair scalar (the lanewise_norms pass).
"""

from __future__ import annotations

from ..ir import nodes as ir
from ..ir.axes import is_pair_row
from . import tables

#: reductions of rows to a scalar
REDUCTIONS = ("dot", "sqdist", "norm", "row_sum", "row_mean", "row_max", "row_min")


def is_lane_reduction(e: ir.Expr, decls: dict) -> bool:
    """A reduction of a pair row: its tile is a loop over lanes (but a query row's dot with a table row
    picked per pair: tables.py). ``decls``: the attention's inputs by name."""
    return (isinstance(e, ir.Call) and e.fn in REDUCTIONS and any(is_pair_row(x) for x in e.args)
            and tables.match(e, decls) is None)


def length(e: ir.Call) -> str:
    """The lanes a reduction runs over (an integer length where one operand has it: both agree at call
    time)."""
    lengths = [x.ty.length for x in e.args]
    return next((L for L in lengths if L.isdigit()), lengths[0])


def accumulate(e: ir.Call, acc: str, lanes: list[str]) -> tuple[str, str, str | None]:
    """(initial value, loop statement, final value or None) of reduction ``e`` into tile ``acc``, with the
    lane values ``lanes`` of its operands (``{tile}`` stands for the tile's shape)."""
    fn, zeros = e.fn, "tl.zeros([{tile}], dtype=tl.float32)"
    a = lanes[0]
    if fn in ("row_max", "row_min"):
        fill, op = ('-float("inf")', "maximum") if fn == "row_max" else ('float("inf")', "minimum")
        return f"tl.full([{{tile}}], {fill}, tl.float32)", f"{acc} = tl.{op}({acc}, {a})", None
    if fn in ("row_sum", "row_mean"):
        a = f"{a}.to(tl.float32)" if e.args[0].ty.is_bool else a
        return zeros, f"{acc} += {a}", f"{acc} / {length(e)}" if fn == "row_mean" else None
    if fn == "dot":
        return zeros, f"{acc} += {a} * {lanes[1]}", None
    if fn == "sqdist":
        return zeros, f"{acc} += ({a} - {lanes[1]}) * ({a} - {lanes[1]})", None
    return zeros, f"{acc} += {a} * {a}", f"tl.sqrt({acc})"  # norm


def seeds(e: ir.Call, g: str, y: str, lanes: list[str]) -> list[str]:
    """The adjoint of each operand's lane from the reduction's adjoint ``g`` (``y``: its value)."""
    fn, a = e.fn, lanes[0]
    if fn == "row_sum":
        return [g]
    if fn == "row_mean":
        return [f"{g} / {length(e)}"]
    if fn in ("row_max", "row_min"):  # to the lanes that attain it, as a row's reduction does
        return [f"tl.where({a} == {y}, {g}, 0.0)"]
    if fn == "dot":
        return [f"{g} * {lanes[1]}", f"{g} * {a}"]
    if fn == "sqdist":
        return [f"2.0 * {g} * ({a} - {lanes[1]})", f"-2.0 * {g} * ({a} - {lanes[1]})"]
    return [f"tl.where({y} > 0, {g} / {y}, 0.0) * {a}"]  # norm


def loop(d: str, L: str, body: list[str], note: str = "") -> str:
    """``for d in range(0, L)`` around ``body`` (statements, some of several lines)."""
    inner = "\n".join("    " + line for stmt in body for line in stmt.split("\n"))
    return f"for {d} in range(0, {L}):{f'  # {note}' if note else ''}\n{inner}"

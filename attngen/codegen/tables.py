"""A query row's dot with a table row picked per pair: ``dot(x, e[t])`` (CoPE's position embeddings).

``x`` is a row of the query side (q, or a value of it), ``e`` a 2-D input of a literal number of rows R
(the table) and ``t`` a pair index. Written as a pair vector it is the slow path (lanes.py: a loop over
the row's lanes, e's row gathered per pair and lane). But every pair of a query row reads the same R
products x . e[r], so the kernels take them once per query tile with the tensor cores and pick per pair:

    X = x_tile @ e^T                      # [BLOCK_M, R]: one tl.dot per query tile
    value_ij = X[i, t_ij]                 # a loop over the tile's distinct t, usually one

The pick loops over t from the tile's least index to its greatest: CoPE's indices are capped at R - 1,
so every tile farther than about 2R keys from the diagonal has the one index R - 1 and takes one step.
The dq kernel scatters the adjoint g the same way into dX [BLOCK_M, R] (dX[i, r] = sum_j g_ij [t_ij = r]),
summed over the key tiles; after the loop x's adjoint is dX @ e and e's dX^T @ x, two tensor-core
products per program (e's added to memory). An index outside the table picks 0, as the row's load would.
"""

from __future__ import annotations

from ..ir import nodes as ir
from ..ir.axes import COL, ROW, axes, is_pair
from ..ir.types import INT, vec
from .layout import lane_mask, vec_block, vec_offs

#: the most table rows held per query tile ([BLOCK_M, R] float32 registers)
MAX_ROWS = 256
#: the dq kernel's row node of a table dot's adjoint by table row (rules, post_rules)
ROWS = "_table_rows"


def match(e: ir.Expr, decls: dict) -> tuple[ir.Expr, ir.Load] | None:
    """(x, e[t]) where ``e`` is such a dot, else None."""
    if not (isinstance(e, ir.Call) and e.fn == "dot"):
        return None
    for x, row in (e.args, e.args[::-1]):
        if (isinstance(row, ir.Load) and len(row.indices) == 1 and is_pair(row.indices[0])
                and len(decls[row.name].dims) == 2 and isinstance(decls[row.name].dims[0], int)
                and 0 < decls[row.name].dims[0] <= MAX_ROWS
                and ROW in axes(x) and COL not in axes(x) and not isinstance(x, ir.Load)):
            return x, row  # (an input's row by the query, x = w[b, i], stays lane by lane)
    return None


def rows_of(e: ir.Expr, decls: dict) -> int:
    """The table's rows in registers for table dot ``e``."""
    return _rows_block(decls[match(e, decls)[1].name].dims[0])


def _rows_block(n: int) -> int:
    """n rows in registers: a power of two, at least 16 (tl.dot's least)."""
    return max(16, 1 << (n - 1).bit_length())


def _block(em, row: ir.Load) -> int:
    return _rows_block(em.decls[row.name].dims[0])


def value(em, e: ir.Call, orient: str, lvl: str, note: str) -> str:
    """The pair tile of ``dot(x, e[t])``: X = x_tile @ e^T at x's level, then the pick."""
    x, row = match(e, em.decls)
    table = _products(em, x, row, orient)
    idx = em.value(row.indices[0], orient)
    out = em.fresh("tdot")
    lo, hi, body = _range(em, row, idx)
    r = em.fresh("r")
    col = f"tl.sum(tl.where(tl.arange(0, {_block(em, row)})[None, :] == {r}, {table}, 0.0), axis=1)"
    em.env.stmts[lvl].append(
        f"{out} = tl.zeros([{em.tile(orient)}], dtype=tl.float32)  # {_why(note)}\n"
        + body + f"for {r} in range({lo}, {hi} + 1):  # the tile's table rows, usually one\n"
        f"    {out} = tl.where({idx} == {r}, {_place(col, orient)}, {out})")
    return out


def rules(diff, n: ir.Call, g: str, orient: str, level: str) -> list[tuple]:
    """Inside the dq kernel's loop: ``dot(x, e[t])``'s adjoint g scattered by t into dX [BLOCK_M, R]
    (dX[i, r] = sum_j g_ij [t_ij = r]), the adjoint of a row node (:func:`rows_node`) that the loop
    accumulates like any row's; after the loop, :func:`post_rules` turns it into x's and e's."""
    em = diff.em
    x, row = match(n, em.decls)
    node = rows_node(em, n)
    if orient == "t" or not (diff.live(node) and diff.want_child(node)):  # (dk/dv: x and e are the dq kernel's)
        return []
    block = _block(em, row)
    idx = em.value(row.indices[0], orient)
    gg = em.put(level, diff._guard(g, "pair", diff.pair_guard), "tg")
    lo, hi, body = _range(em, row, idx, gg)
    dx, r = em.fresh("dtab"), em.fresh("r")
    em.env.stmts[level].append(
        f"{dx} = tl.zeros([BLOCK_M, {block}], dtype=tl.float32)  # {_why(em.provenance(n))}: the adjoint by row\n"
        + body + f"for {r} in range({lo}, {hi} + 1):\n"
        f"    {dx} += tl.where(tl.arange(0, {block})[None, :] == {r}, "
        f"tl.sum(tl.where({idx} == {r}, {gg}, 0.0), axis=1)[:, None], 0.0)")
    return [(node, dx, True)]


def post_rules(diff, n: ir.Call, g: str, level: str) -> list[tuple]:
    """After the dq kernel's loop, the table rows' adjoint g = sum over the tiles of dX: x's is g @ e (a
    contribution in x's layout), e's g^T @ x, added to memory once per program."""
    em = diff.em
    x, load = n.args
    block, lanes = _block(em, load), vec_block(load.ty.length)
    table = _table(em, load)
    out = []
    if diff.live(x) and diff.want_child(x):
        gx = em.put(level, f"tl.dot({g}.to(DOT_DTYPE), {table}.to(DOT_DTYPE), input_precision=DOT_PRECISION)",
                    "tabx", f"[BLOCK_M, {block}] @ [{block}, {lanes}] -> [BLOCK_M, {lanes}]")
        out.append((x, gx, True))
    if diff.live(load):
        de = em.put(level, f"tl.dot(tl.trans({g}).to(DOT_DTYPE), {em.value(x)}.to(DOT_DTYPE), "
                           "input_precision=DOT_PRECISION)",
                    "dtabe", f"[{block}, BLOCK_M] @ [BLOCK_M, {lanes}] -> [{block}, {lanes}]")
        rows, offs, mask = _rows(em, load)
        em.env.stmts[level].append(f"if GRAD_{load.name}:\n    tl.atomic_add(d{load.name}_ptr + {rows} * "
                                   f"d{load.name}_s0 + {offs} * d{load.name}_s1, {de}, mask={mask})")
    return out


def rows_node(em, n: ir.Call) -> ir.Call:
    """Table dot ``n``'s row value whose adjoint is dX (autodiff's only child of ``n``): a call of x and
    (for e's gradient) a load of e's first row, of the table's rows in registers as its length."""
    x, row = match(n, em.decls)
    first = ir.Load(row.name, (ir.Const(0, INT),), row.ty)
    return ir.Call(ROWS, (x, first), vec(str(_block(em, row))))


def _why(note: str) -> str:
    return "; ".join(filter(None, ("a query row's dot with table rows picked per pair (tables.py)", note)))


def _rows(em, row: ir.Load) -> tuple[str, str, str]:
    """The table's row and lane offsets ([R, 1], [1, BLOCK_L]) and its bounds."""
    d = em.decls[row.name]
    rows = f"tl.arange(0, {_block(em, row)})[:, None]"
    return rows, f"{vec_offs(row.ty.length)}[None, :]", f"({rows} < {d.dims[0]}) & {lane_mask(row.ty.length)}"


def _table(em, row: ir.Load) -> str:
    """The whole table [R, BLOCK_L] in registers, once per program (fp32: DOT_DTYPE rounds it per use)."""
    rows, lanes, mask = _rows(em, row)
    return em.cached(("table", row.name), em.env.level_of(frozenset()), f"tl.load({row.name}_ptr + {rows} * "
                     f"{row.name}_s0 + {lanes} * {row.name}_s1, mask={mask}, other=0.0).to(tl.float32)", row.name)


def _products(em, x: ir.Expr, row: ir.Load, orient: str) -> str:
    """X = x_tile @ e^T [BLOCK_M, R], where x's tile is computed."""
    table = _table(em, row)
    xv = em.value(x, orient)
    block, lanes = _block(em, row), vec_block(row.ty.length)
    note = f"  # [BLOCK_M, {lanes}] @ [{lanes}, {block}] -> [BLOCK_M, {block}]"
    return em.cached(("table_products", x, row.name, orient), em.level(x), f"tl.dot({xv}.to(DOT_DTYPE), "
                     f"tl.trans({table}.to(DOT_DTYPE)), input_precision=DOT_PRECISION){note}", "tab")


def _range(em, row: ir.Load, idx: str, live: str | None = None) -> tuple[str, str, str]:
    """(lo, hi, statements): the least and greatest index of the tile inside the table (of the pairs
    whose ``live`` tile is not 0, when given)."""
    n = em.decls[row.name].dims[0]
    keep = f"({idx} >= 0) & ({idx} < {n})" + (f" & ({live} != 0.0)" if live else "")
    lo, hi = em.fresh("rlo"), em.fresh("rhi")
    return lo, hi, (f"{lo} = tl.min(tl.where({keep}, {idx}, {n}))\n"
                    f"{hi} = tl.max(tl.where({keep}, {idx}, -1))\n")


def _place(col: str, orient: str) -> str:
    """A [BLOCK_M] value per query row against the pair tile ([BLOCK_N, BLOCK_M] in 't')."""
    return f"{col}[None, :]" if orient == "t" else f"{col}[:, None]"

"""Row aggregates in the kernels (language 1.1: ``rowsum(E)``, ``rowmean``, ``rowmax``, ``rowmin``,
``rowcount()``).

An aggregate of nesting level L is known after L passes over the row's keys, so the forward runs one
pass per level before its main loop, each a loop over the same key tiles accumulating [BLOCK_M, 1]
registers (a sum, the kept keys' count, a running max or min with the first key attaining it), and
everything that reads an aggregate is computed after its pass (the ``agg`` pseudo-axis of ir/axes.py).

The backward:
    pre   recomputes the aggregates by the same passes and stores them in AGG [rows, NCOL] (the value,
          and for max/min the key attaining it); then one loop over the keys reduces each aggregate's
          adjoint  dA = sum_j dW_ij * dW/dA  (W: the weights, dW = do . v_j), adds the out stage's part,
          and one more loop per nesting level takes the adjoints of the aggregates inside another's
          argument (agg_adjoints.py); it stores them in DAGG [rows, NAGG], divided by the count for a mean
    dq, dk/dv  read both and seed each aggregate's argument E with dA on the kept keys (on the one key
          attaining it for max/min), next to the weights' own adjoint, so E's gradient reaches the score,
          q, k and inputs with no other pass
The kernels compute E with the same code in every pass, so ``score == rowmax(score)`` holds at the max.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..ir import nodes as ir
from ..ir.axes import AGG
from ..ir.types import INT
from . import linear, scans
from .analysis import COL, CodegenError
from .embed import expr_note

__all__ = ["AGG", "Aggregates", "of", "refuse"]


@dataclass
class Aggregates:
    """The aggregates of one attention by nesting level (inner first), and their buffer columns."""

    levels: list[list[ir.Agg]] = field(default_factory=list)
    value_col: dict[ir.Agg, int] = field(default_factory=dict)  # AGG's column of each value
    arg_col: dict[ir.Agg, int] = field(default_factory=dict)  # AGG's column of max/min's key
    grad_col: dict[ir.Agg, int] = field(default_factory=dict)  # DAGG's column of each adjoint
    total: dict[ir.Scan, ir.Agg] = field(default_factory=dict)  # a key scan's row total (scans.py)
    count_col: int | None = None  # AGG's column of the kept keys' count: a one-pass forward's (linear.py)

    @property
    def user(self) -> bool:
        """Whether the spec itself has aggregates (not only scan totals)."""
        return len(self.total) < len(self.value_col)

    @property
    def all(self) -> list[ir.Agg]:
        return [x for level in self.levels for x in level]

    @property
    def ncol(self) -> int:
        return len(self.value_col) + len(self.arg_col) + (self.count_col is not None)


def _level(e: ir.Agg) -> int:
    return 1 + max((_level(n) for n in ir.walk(e.x) if isinstance(n, ir.Agg)), default=0)


def of(a: ir.Attention, totals: bool = False) -> Aggregates:
    """``totals``: with each key scan's row total, a sum over the allowed keys (the backward's scans
    start from it: scans.py)."""
    found: list[ir.Agg] = []
    for stage in (a.weights, a.out):
        for n in ir.walk(stage) if stage is not None else ():
            if isinstance(n, ir.Agg) and n not in found:
                found.append(n)
    out = Aggregates()
    for scan in scans.of(a) if totals else ():
        out.total[scan] = ir.Agg("sum", scan.x, scan.ty, scan.span)
        if out.total[scan] not in found:
            found.append(out.total[scan])
    for n in sorted(found, key=_level):  # stable: first use first within a level
        lv = _level(n)
        while len(out.levels) < lv:
            out.levels.append([])
        out.levels[lv - 1].append(n)
    for n in out.all:
        out.value_col[n] = len(out.value_col)
        out.grad_col[n] = len(out.grad_col)
    for n in out.all:
        if n.kind in ("max", "min"):
            out.arg_col[n] = len(out.value_col) + len(out.arg_col)
    if linear.of(a)[0] is not None or linear.fused(a):  # the pre kernel's means divide by it
        out.count_col = len(out.value_col) + len(out.arg_col)
    return out


def reads_p(a: ir.Attention) -> bool:
    """Whether an aggregate reads p: its passes then follow the norm's statistics, and delta (sum_j p dp)
    takes its adjoint's part."""
    return any(ir.uses(n.x, "p") for n in of(a).all)


def after(a: ir.Attention) -> str:
    """The statement list after the last aggregate pass (a value reading an aggregate goes there)."""
    return f"agg_rows{len(of(a).levels)}"


def refuse(a: ir.Attention) -> None:
    """A CodegenError (with the aggregate's span) for what the kernels do not run yet."""
    aggs = of(a)
    if not aggs.levels:
        return
    first = aggs.all[0]
    if a.norm.kind == "stickbreaking":
        raise CodegenError("the kernels do not run row aggregates with stick-breaking (its keys are walked in "
                           "order)", first.span)


def forward_passes(em, env, bl, aggs: Aggregates, lin: linear.Linear | None = None) -> list[dict]:
    """Emit one pass per level into ``bl.stmts`` (levels ``agg_init{L}``, ``agg_tile{L}``, ``agg_rows{L}``)
    and bind each aggregate to its register; returns the template's pass records. A value that reads
    aggregates of levels up to L is placed in ``agg_rows{L}`` (after pass L). ``lin``: the weights' pair
    terms, whose sums over the keys (sum_j t_ij v_j) the pass accumulates too (linear.py)."""
    passes = []
    base = env.level_of
    for lv, level_aggs in enumerate(aggs.levels, start=1):
        init, tile, rows = f"agg_init{lv}", f"agg_tile{lv}", f"agg_rows{lv}"
        for n in (init, tile, rows):
            bl.stmts.setdefault(n, [])
        known = set(em.memo)
        env.level_of = lambda ax, lv=lv: (f"agg_tile{lv}" if COL in ax else f"agg_rows{lv - 1}" if AGG in ax
                                          else base(ax))
        cnt = f"agg_n{lv}"
        bl.stmts[init] += [f"{cnt} = tl.zeros([BLOCK_M, 1], dtype=tl.float32)  # kept keys of the row",
                           "zero_t = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)"]
        bl.stmts[tile].append(f"{cnt} += tl.sum(tl.where(allowed, 1.0, 0.0) + zero_t, axis=1)[:, None]")
        for n in level_aggs:
            _accumulate(em, bl, n, aggs.value_col[n], lv, cnt)
        sums = {n.x: f"agg{aggs.value_col[n]}_acc" for n in level_aggs if n.kind in ("sum", "mean")}
        terms = linear.accumulate(em, bl.stmts[init], bl.stmts[tile], lin, cnt, sums) if lin else []
        em.forget(known, bl.stmts_names(tile))  # the pass's pair values: later loops compute their own
        env.level_of = base
        what = ", ".join([expr_note(n) for n in level_aggs] + (["sum_j t v_j of each pair term t"] if terms else []))
        passes.append({"init": init, "tile": tile, "rows": rows, "what": what, "lin": terms})
    return passes


def _accumulate(em, bl, n: ir.Agg, col: int, lv: int, cnt: str) -> None:
    init, tile, rows = bl.stmts[f"agg_init{lv}"], bl.stmts[f"agg_tile{lv}"], bl.stmts[f"agg_rows{lv}"]
    name = f"agg{col}"
    if n.kind == "count":
        rows.append(f"{name} = {cnt}  # {expr_note(n)}")
    else:
        x = em.f32(n.x) if n.x.ty.kind == "float" else f"({em.value(n.x)}).to(tl.float32)"
        if n.kind in ("sum", "mean"):
            init.append(f"{name}_acc = tl.zeros([BLOCK_M, 1], dtype=tl.float32)")
            tile.append(f"{name}_acc += tl.sum(tl.where(allowed, {x}, 0.0) + zero_t, axis=1)[:, None]")
            value = f"{name}_acc" if n.kind == "sum" else f"{name}_acc / tl.maximum({cnt}, 1.0)"
            rows.append(f"{name} = {value}  # {expr_note(n)}")
        else:
            worse, pick = ("-", "tl.maximum") if n.kind == "max" else ("", "tl.minimum")
            better = ">" if n.kind == "max" else "<"
            init += [f"{name}_ext = tl.zeros([BLOCK_M, 1], dtype=tl.float32) {worse or '+'} float(\"inf\")",
                     f"{name}_at = tl.zeros([BLOCK_M, 1], dtype=tl.float32) + N_MAX  # the first key attaining it"]
            red = "tl.max" if n.kind == "max" else "tl.min"
            tile += [f"{name}_t = tl.where(allowed, {x}, {worse}float(\"inf\")) + zero_t",
                     f"{name}_te = {red}({name}_t, axis=1)[:, None]",
                     f"{name}_tj = tl.min(tl.where(allowed & ({name}_t == {name}_te), j_c.to(tl.float32), N_MAX) "
                     f"+ zero_t, axis=1)[:, None]",
                     f"{name}_at = tl.where({name}_te {better} {name}_ext, {name}_tj, tl.where({name}_te == "
                     f"{name}_ext, tl.minimum({name}_at, {name}_tj), {name}_at))",
                     f"{name}_ext = {pick}({name}_ext, {name}_te)"]
            rows.append(f"{name} = tl.where({cnt} > 0, {name}_ext, 0.0)  # {expr_note(n)}")
    if n.ty.kind == "int":
        rows.append(f"{name} = {name}.to(tl.int32)")
    em.memo[(n, "pair", False)] = name


def load(em, n: ir.Agg, orient: str, buffer: str = "AGG", col: int | None = None) -> str:
    """A stored aggregate's value (or ``col`` of ``buffer``) for the rows of ``orient`` ('t': [1, BLOCK_M])."""
    aggs = of(em.env.attn, totals=True)
    width = aggs.ncol if buffer == "AGG" else len(aggs.grad_col)
    col = aggs.value_col[n] if col is None else col
    m, rmask = ("m_c", "rmask_c") if orient == "t" else ("m_r", "rmask")
    code = f"tl.load({buffer} + (lse_row0 + {m}) * {width} + {col}, mask={rmask}, other=0.0)"
    return code + (".to(tl.int32)" if buffer == "AGG" and col == aggs.value_col.get(n) and n.ty.kind == "int" else "")


def argument_seeds(em, env, orient: str, regs: dict | None = None) -> dict[ir.Expr, list[tuple[str, str]]]:
    """Seeds of aggregates' arguments: the adjoint on the kept keys, on the first key attaining it for
    max/min. The dq and dk/dv kernels seed every aggregate's, from the pre kernel's DAGG; the pre kernel
    those of ``regs`` (aggregate -> its adjoint's register), with its registers."""
    aggs = of(env.attn, totals=True)
    tile = "tpair" if orient == "t" else "pair"
    zeros = f"tl.zeros([{em.tile(orient)}], dtype=tl.float32)"
    level = env.level_of(frozenset({"row", "h"}))
    seeds: dict[ir.Expr, list[tuple[str, str]]] = {}
    for n in aggs.all if regs is None else regs:
        if n.kind == "count" or n.x.ty.kind != "float" or n in aggs.total.values():
            continue
        d = regs[n] if regs is not None else em.put(level, load(em, n, orient, "DAGG", aggs.grad_col[n]), "dagg")
        keep = "allowed"
        if n.kind in ("max", "min"):
            at = (f"agg{aggs.value_col[n]}_at" if regs is not None else
                  em.put(level, load(em, n, orient, "AGG", aggs.arg_col[n]), "at"))
            keep = f"allowed & ({em.value(ir.Sym('j', INT), orient)}.to(tl.float32) == {at})"
        seeds.setdefault(n.x, []).append((f"tl.where({keep}, {d} + {zeros}, 0.0)", tile))
    return seeds


def adjoint_total(aggs: Aggregates, n: ir.Agg, dagg: dict[ir.Agg, list[str]]) -> str:
    """An aggregate's adjoint from its ``dagg`` terms, divided by the count for a mean (the adjoint of
    its argument's terms)."""
    lv = next(k for k, level in enumerate(aggs.levels, start=1) if n in level)
    total = " + ".join(dagg.get(n, [])) or "tl.zeros([BLOCK_M, 1], dtype=tl.float32)"
    return f"({total}) / tl.maximum(agg_n{lv}, 1.0)" if n.kind == "mean" else total


def value_stores(aggs: Aggregates) -> list[str]:
    """Each aggregate (and max/min's key, and the one-pass forward's count) into AGG: the pre kernel's,
    or the one-pass forward's (linear.py)."""
    row = "(lse_row0 + m_r)"
    values = []
    for n in aggs.all:
        name = f"agg{aggs.value_col[n]}"
        values.append(f"tl.store(AGG + {row} * {aggs.ncol} + {aggs.value_col[n]}, {name}.to(tl.float32), mask=rmask)")
        if n in aggs.arg_col:
            values.append(f"tl.store(AGG + {row} * {aggs.ncol} + {aggs.arg_col[n]}, {name}_at, mask=rmask)")
    if aggs.count_col is not None:
        values.append(f"tl.store(AGG + {row} * {aggs.ncol} + {aggs.count_col}, agg_n1, mask=rmask)")
    return values


def grad_stores(aggs: Aggregates, dagg: dict[ir.Agg, list[str]], regs: dict) -> list[str]:
    """The pre kernel's stores of each aggregate's adjoint (a register of ``regs`` or from the ``dagg``
    terms: adjoint_total) into DAGG."""
    row = "(lse_row0 + m_r)"
    return [f"tl.store(DAGG + {row} * {len(aggs.grad_col)} + {aggs.grad_col[n]}, "
            f"{regs.get(n) or adjoint_total(aggs, n, dagg)}, mask=rmask)  # d {expr_note(n)}" for n in aggs.all]


def count_load(aggs: Aggregates) -> str:
    """The one-pass forward's kept-keys count of the rows (the pre kernel's means divide by it)."""
    return f"tl.load(AGG + (lse_row0 + m_r) * {aggs.ncol} + {aggs.count_col}, mask=rmask, other=0.0)"

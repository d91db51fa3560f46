"""Weights linear in pair terms: one pass over the keys forward, none in the pre kernel.

With ``norm = none``, row aggregates of one level (none inside another's argument) and weights of the
form ``W_ij = sum_t c_t,i * t_ij`` (each factor c_t a row value, which may read the aggregates; each
term t a pair value that reads none, or one centred by its own row mean, ``x - rowmean(x)``), the
output is

    o_i = sum_t c_t,i * S_t,i        S_t,i = sum_j t_ij v_j   over row i's kept keys j

so the forward accumulates every S_t ([BLOCK_M, DV], a ``tl.dot`` per tile) in the aggregates' own pass
and combines them once the aggregates are known, instead of a second pass over the keys. The
aggregates' adjoints are row values too: with dW_ij = do_i . v_j,

    dA_i = sum_j dW_ij dW_ij/dA = sum_t dc_t/dA * (do_i . S_t,i)

so the pre kernel reads A and S from the forward (AGG, ACC) and walks no keys. A centred term
t = x - A also has A's own adjoint -c_t * (do_i . sum_j v_j). NAP's ``(score - mean) / std`` is the
one term ``score - rowmean(score)`` with the factor ``1 / std``: the forward keeps its sum and that of v.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..ir import nodes as ir
from ..ir.axes import AGG, COL, axes
from ..ir.types import FLOAT
from . import scans
from .embed import expr_note

#: each sum is a [BLOCK_M, BLOCK_DV] fp32 accumulator beside the kernel's own registers (slots())
MAX_TERMS = 2
ONE = ir.Const(1.0, FLOAT)


@dataclass(frozen=True)
class Linear:
    terms: tuple[tuple[ir.Expr, ir.Expr], ...]  # (row factor c_t, pair term t); t == ONE: the kept keys' v


def _aggs(a: ir.Attention) -> list[ir.Agg]:
    return [n for stage in (a.weights, a.out) if stage is not None for n in ir.walk(stage) if isinstance(n, ir.Agg)]


def _one_level(a: ir.Attention) -> str:
    """Why the aggregates cannot be taken in one pass whatever the weights, or ""."""
    aggs = _aggs(a)
    if not aggs:
        return "no row aggregates"
    if any(isinstance(m, ir.Agg) for n in aggs for m in ir.walk(n.x)):
        return "an aggregate inside another's argument needs a pass per nesting level"
    if scans.of(a):
        return "a key scan"
    return ""


def fused(a: ir.Attention) -> bool:
    """Aggregates that only the out stage reads, none of p, with a norm other than none (which :func:`of`
    takes): the forward's own loop accumulates them beside o, and keeps them for the backward, whose
    pre kernel then walks no keys for them (their adjoints are the out stage's, row values)."""
    return (not _one_level(a) and a.norm.kind not in ("none", "stickbreaking")
            and not any(isinstance(n, ir.Agg) for n in (ir.walk(a.weights) if a.weights is not None else ()))
            and not any(ir.uses(n.x, "p") for n in _aggs(a)))


def of(a: ir.Attention) -> tuple[Linear | None, str]:
    """The decomposition, or None, and why (the kernel plan's note)."""
    why = _one_level(a)
    if why:
        return None, why
    if a.norm.kind != "none":
        return None, f"norm = {a.norm.kind} (the one-pass forward takes norm = none)"
    terms = _split(a.weights if a.weights is not None else ir.Sym("p", FLOAT))
    if terms is None:
        return None, "the weights are not a sum of pair terms with row factors"
    lin = Linear(tuple(terms))
    if len(slots(lin)) > MAX_TERMS:
        return None, f"the weights need {len(slots(lin))} sums of pair terms (at most {MAX_TERMS} accumulators)"
    return lin, f"the weights are {len(terms)} pair term(s) with row factors"


def _split(e: ir.Expr) -> list[tuple[ir.Expr, ir.Expr]] | None:
    """``e`` as [(row factor, pair term)], equal terms merged; None where it is not linear in such terms."""
    ax = axes(e)
    if COL not in ax:
        return [(e, ONE)]
    if AGG not in ax or (centered(e) and AGG not in axes(e.a)):
        return [(ONE, e)]
    if isinstance(e, ir.Unary) and e.op == "neg":
        x = _split(e.x)
        return None if x is None else [(_neg(c), t) for c, t in x]
    if not isinstance(e, ir.Binary):
        return None
    if e.op in ("add", "sub"):
        a, b = _split(e.a), _split(e.b)
        if a is None or b is None:
            return None
        return _merge(a + [((_neg(c) if e.op == "sub" else c), t) for c, t in b])
    if e.op == "mul" and COL not in axes(e.a):
        b = _split(e.b)
        return None if b is None else [(_mul(e.a, c), t) for c, t in b]
    if e.op in ("mul", "div") and COL not in axes(e.b):
        a = _split(e.a)
        return None if a is None else [(_mul(c, e.b) if e.op == "mul" else _div(c, e.b), t) for c, t in a]
    return None


def _merge(terms: list[tuple[ir.Expr, ir.Expr]]) -> list[tuple[ir.Expr, ir.Expr]]:
    out: dict[ir.Expr, ir.Expr] = {}
    for c, t in terms:
        out[t] = ir.Binary("add", out[t], c, FLOAT) if t in out else c
    return [(c, t) for t, c in out.items()]


def _neg(c: ir.Expr) -> ir.Expr:
    return ir.Unary("neg", c, FLOAT, c.span)


def _mul(a: ir.Expr, b: ir.Expr) -> ir.Expr:
    return b if a == ONE else a if b == ONE else ir.Binary("mul", a, b, FLOAT, b.span)


def _div(a: ir.Expr, b: ir.Expr) -> ir.Expr:
    return ir.Binary("div", a, b, FLOAT, b.span)


# ---- the kernels' code (aggregates.forward_passes, kernels.forward and kernels.preprocess call these)

def centered(t: ir.Expr) -> bool:
    """``t - rowmean(t)``: a term the pass sums around its running mean, which is the mean at the end."""
    return (isinstance(t, ir.Binary) and t.op == "sub" and isinstance(t.b, ir.Agg) and t.b.kind == "mean"
            and t.b.x == t.a)


def slots(lin: Linear) -> list[ir.Expr]:
    """The terms whose sums the forward keeps (ACC's slots): each term's, and the term 1's (the kept
    keys' sum of v) where a shifted sum needs it (:func:`_shifts`)."""
    ts = [t for _, t in lin.terms]
    needs_one = any(centered(t) for t in ts) or (ONE in ts and len(ts) > 1)
    return ts + ([ONE] if needs_one and ONE not in ts else [])


def _shifts(lin: Linear) -> list[int]:
    """The slots summed around their term's running mean r: S = sum_j (t_ij - r) v_j, moved to the new
    mean each tile with the sum of v (the term 1's slot). The tile's terms go into tl.dot rounded to
    DOT_DTYPE (bf16: 8 bits): around the row's mean they keep their spread's bits, which a row whose
    mean is large against its spread would lose. A centred term t - rowmean(t) stays so (no sum of the
    mean to add back: o needs no difference of large sums); another is moved back after the pass."""
    ss = slots(lin)
    return [k for k, t in enumerate(ss) if t != ONE and ONE in ss]


def accumulate(em, init: list[str], tile: list[str], lin: Linear, cnt: str, sums: dict[ir.Expr, str]) -> list[dict]:
    """The aggregates' pass accumulates each slot's sum_j t_ij v_j (``lin_acc{k}``); returns the template's
    records (a term tile ``w`` and its accumulator, for norms.weighted_sum; for the term 1, a full tile
    adds its column sums of v to ``lin_col`` instead: no tl.dot). ``cnt``: the kept keys' count register;
    ``sums``: registers that already hold a term's running sum (rowsum or rowmean of it)."""
    ss = slots(lin)
    for k, t in enumerate(ss):
        init.append(f"lin_acc{k} = tl.zeros([BLOCK_M, BLOCK_DV], dtype=tl.float32)  # sum_j t_ij v_j, t = "
                    + expr_note(t))
    if ONE in ss:
        one = ss.index(ONE)
        init.append("lin_col = tl.zeros([1, BLOCK_DV], dtype=tl.float32)  # sum_j v_j over the full tiles")
    records = []
    for k, t in enumerate(ss):
        if t == ONE:  # (only partial tiles take its tl.dot)
            records.append({"w": "(tl.where(allowed, 1.0, 0.0) + zero_t)", "acc": f"lin_acc{k}", "ones": True})
            continue
        x = t.a if centered(t) else t
        around = ""
        if k in _shifts(lin):
            total = sums.get(x)
            if total is None:
                init.append(f"lin_sum{k} = tl.zeros([BLOCK_M, 1], dtype=tl.float32)")
                tile.append(f"lin_sum{k} += tl.sum(tl.where(allowed, {em.f32(x)}, 0.0) + zero_t, axis=1)[:, None]")
                total = f"lin_sum{k}"
            init.append(f"lin_r{k} = tl.zeros([BLOCK_M, 1], dtype=tl.float32)  # the running mean of the sum's "
                        "term")
            tile += [f"lin_new = {total} / tl.maximum({cnt}, 1.0)",
                     f"lin_acc{k} += (lin_r{k} - lin_new) * (lin_acc{one} + lin_col)  # around the new mean",
                     f"lin_r{k} = lin_new"]
            around = f" - lin_r{k}"
        tile.append(f"lin{k} = tl.where(allowed, {em.f32(x)}{around}, 0.0)")
        records.append({"w": f"lin{k}", "acc": f"lin_acc{k}", "ones": False})
    return records


def combine(em, lin: Linear, cnt: str, values: list[str]) -> list[str]:
    """After the pass: o's accumulator from the sums and their row factors, then, with SAVE (a call that
    needs gradients), the forward's stores of the aggregates (``values``: aggregates.value_stores) and
    the sums (ACC [rows, slots, DV]) for the pre kernel."""
    ss = slots(lin)
    out = [f"lin_acc{k} += lin_col" for k, t in enumerate(ss) if t == ONE]
    for k in _shifts(lin):
        if not centered(ss[k]):
            out.append(f"lin_acc{k} += lin_r{k} * lin_acc{ss.index(ONE)}  # the sum itself")
    parts = [f"{em.f32(c)} * lin_acc{k}" if c != ONE else f"lin_acc{k}" for k, (c, _) in enumerate(lin.terms)]
    out += [f"acc = {' + '.join(parts)}",
            f"acc = tl.where({cnt} > 0, acc, 0.0)  # a row without kept keys: 0, whatever its factors"]
    saves = values + [f"tl.store(ACC + ((lse_row0 + m_r) * {len(ss)} + {k}) * DV + offs_DV[None, :], lin_acc{k}, "
                      "mask=rmask & dmask_DV[None, :])" for k in range(len(ss))]
    out.append(when_saving(saves))
    return out


def when_saving(stores: list[str]) -> str:
    """``stores`` under the one-pass forward's SAVE (a call that needs gradients keeps them)."""
    return "if SAVE:  # (a call that needs gradients)\n" + "\n".join("    " + line for line in stores)


def adjoint_seeds(em, lin: Linear, count_load: str) -> tuple[list[str], dict[ir.Expr, list[tuple[str, str]]]]:
    """The pre kernel's loads (the kept keys' count ``agg_n1``, for means; do . S per slot) and the seeds
    for dA = sum_t dc_t/dA * (do . S_t), by backpropagating do . S_t from c_t, and for a centred term
    c * (t - A), A's own -c * (do . S_1). ``em`` places c's value in the current level."""
    ss = slots(lin)
    stmts = [f"agg_n1 = {count_load}"]
    for k, t in enumerate(ss):
        s = f"tl.load(ACC + ((lse_row0 + m_r) * {len(ss)} + {k}) * DV + offs_DV[None, :], mask=omask, other=0.0)"
        stmts.append(f"lin_x{k} = tl.sum(do_raw * {s}, axis=1)[:, None]  # do . sum_j t_ij v_j, t = {expr_note(t)}")
    seeds: dict[ir.Expr, list[tuple[str, str]]] = {}
    for k, (c, t) in enumerate(lin.terms):
        seeds.setdefault(c, []).append((f"lin_x{k}", "row"))
        if centered(t):
            factor = "" if c == ONE else f"{em.f32(c)} * "
            seeds.setdefault(t.b, []).append((f"-{factor}lin_x{ss.index(ONE)}", "row"))
    return stmts, seeds

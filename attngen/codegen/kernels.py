"""Statement blocks of each generated kernel, built from the IR by the emitter and the
differentiator. Templates place the blocks; everything computed lives here.

Kernels (all over tiles of BLOCK_M query rows and BLOCK_N keys):
    fwd    program (query tile, b, h), loop over key tiles: o, lse / row statistic
    pre    program (query tile, b, h): out-stage backward, delta = sum_j p dp, sink gradient
    dq     program (query tile, b, h), loop over key tiles: dq and query-side input gradients
    dkdv   program (key tile, b, hk), loops over the group's heads and query tiles: dk, dv;
           its tiles are transposed ([BLOCK_N, BLOCK_M], emit's 't' orientation), as its products
           take the tile's keys as rows: dv += p^T do, dk += ds^T q with no register transpose
"""

from __future__ import annotations

from ..ir import nodes as ir
from . import agg_adjoints, aggregates, linear, scans
from .aggregates import AGG
from .scans import SCAN
from .analysis import COL, HEAD, ROW, axes, is_pair
from .autodiff import (Differentiator, GradSinks, owned_by_col_kernel, owned_by_row_kernel, reduce_to)
from .blocks import Blocks, frontier
from .emit import Emitter, KernelEnv
from .layout import statements
from .plan import Plan

#: a gathered table this small gets its gradient summed per entry in registers (see _table_grad)
SMALL_TABLE = 128


def _small_table(em: Emitter, n: ir.Expr) -> int | None:
    """Position of the one pair-varying index of a scalar load from a dim of constant extent
    <= SMALL_TABLE whose other indices are per program (``rel[h, bucket(i - j)]``), or None."""
    if not isinstance(n, ir.Load) or n.ty.is_vec or not is_pair(n):
        return None
    varying = [p for p, x in enumerate(n.indices) if {ROW, COL} & axes(x)]
    if len(varying) != 1:
        return None
    extent = em.decls[n.name].dims[varying[0]]
    return varying[0] if isinstance(extent, int) and extent <= SMALL_TABLE else None


def _table_grad(em: Emitter, bl: Blocks, n: ir.Load, pos: int, g: str, level: str) -> None:
    """Gradient of a small gathered table: each tile's adjoints are summed per table entry into a
    register vector, added to memory once per program. One atomic add per pair instead would
    collide on a few addresses from every program at once (T5 buckets: 8192 adds per tile into
    32 entries)."""
    d = em.decls[n.name]
    T = d.dims[pos]
    TB = 1 << max(T - 1, 1).bit_length()
    acc = em.fresh(f"d{n.name}")
    idx = em.value(n.indices[pos])
    lane = f"tl.arange(0, {TB})"
    bl.stmts["init"].append(f"{acc} = tl.zeros([{TB}], dtype=tl.float32)  # d{n.name} by table entry")
    em.env.stmts[level].append(
        f"if GRAD_{n.name}:\n    for t in tl.static_range({T}):\n"
        f"        {acc} += tl.where({lane} == t, tl.sum(tl.where(({idx} == t) & rmask & cmask, {g}, 0.0)), 0.0)")
    terms, checks = [f"{lane} * d{n.name}_s{pos}"], [f"({lane} < {T})"]
    for p, x in enumerate(n.indices):
        if p != pos:
            code = em.value(x)
            terms.append(f"{code} * d{n.name}_s{p}")
            checks.append(f"({code} >= 0) & ({code} < {d.dims[p]})")
    # "!= 0": the interpreter widens a scalar & vector of bools to int, which a mask may not be
    bl.stmts["post"].append(f"if GRAD_{n.name}:\n    tl.atomic_add(d{n.name}_ptr + {' + '.join(terms)}, {acc}, "
                            f"mask=({' & '.join(checks)}) != 0)")


def _grad_sink(plan: Plan, em: Emitter, kernel: str, dq_var: str = "dq", dk_var: str = "dk",
               do_var: str | None = None, bl: Blocks | None = None) -> GradSinks:
    """Leaf gradient updates: q/k rows into accumulators, inputs by atomic adds (guarded).
    ``bl``: the dq kernel's blocks, where small gathered tables accumulate per program."""

    def leaf(n: ir.Expr, g: str, orient: str, level: str) -> None:
        out = em.env.stmts[level]
        if isinstance(n, ir.Row):
            target = {"q_raw": dq_var, "k_raw": dk_var, "o": do_var}[n.name]
            out.append(f"{target} += {g}")
            return
        if kernel == "dkdv" and is_pair(n):
            return  # pair-level inputs belong to the dq kernel
        pos = _small_table(em, n) if bl is not None else None
        if pos is not None:
            _table_grad(em, bl, n, pos, g, level)
            return
        flag = f"GRAD_{n.name}"
        if isinstance(n, ir.Param):
            out.append(f"if {flag}:\n    tl.atomic_add(d{n.name}_ptr, tl.sum({g}))")
            return
        off, mask = em.load_address(n, orient, strides=f"d{n.name}_s")
        mask_arg = f", mask={mask}" if mask else ""
        if n.ty.is_vec and not axes(n) & {ROW, COL}:
            # one row for every query and key (w[h] in dot(w, k)): the tile's rows each add to it
            g = f"tl.sum({g}, axis=0)[None, :]"
        out.append(f"if {flag}:\n    tl.atomic_add(d{n.name}_ptr + {off}, {g}{mask_arg})")

    return GradSinks(leaf, pair_loads=kernel != "dkdv")


def forward(plan: Plan, split_scale: bool = True) -> Blocks:
    """``split_scale``: a score the ``scaled_dot`` pass factored as the raw dot and its factor (the
    module then passes a positive scale)."""
    bl = Blocks()
    for n in ("outer", "inner", "inner_scan", "inner_mask", "inner_w", "epi"):
        bl.stmts[n] = []
    after = aggregates.after(plan.attn)
    env = KernelEnv(plan.attn, lambda ax: _inner(ax) if COL in ax else after if AGG in ax else "outer", bl.stmts)
    em = Emitter(env, "f")
    a = plan.attn
    bl.vars.update(_recompute(em, env, plan, bl, split_scale=split_scale, passes="fwd"))
    if plan.linear is not None:
        # o from the pass's sums (codegen/linear.py): no second loop over the keys
        bl.stmts["lin_out"] = linear.combine(em, plan.linear, "agg_n1", aggregates.value_stores(aggregates.of(a)))
    elif plan.fused:
        # the aggregates in the forward's own loop (only the out stage reads them), kept for the backward
        bl.vars["agg_fused"] = "1"
        bl.stmts["agg_save"] = [linear.when_saving(aggregates.value_stores(aggregates.of(a)))]
    bl.vars["scan_init"] = scans.carries(em, None, "fwd")["init"]
    if a.norm.sink is not None:
        bl.vars["sink"] = em.f32(a.norm.sink)
    if a.out is not None:
        env.binds["o"] = "o"
        env.level_of = lambda ax: "epi"
        bl.vars["out"] = em.f32(a.out)
    return bl


def preprocess(plan: Plan) -> Blocks:
    """Out-stage backward (do -> do_raw and gate-like gradients) and the sink gradient."""
    bl = Blocks()
    for n in ("pre", "sink_bwd", "outer", "inner", "inner_scan", "inner_mask", "inner_w", "agg_wb", "agg_dinit",
              "agg_dpost"):
        bl.stmts[n] = []
    cur = {"lvl": "pre"}
    env = KernelEnv(plan.attn, lambda ax: cur["lvl"], bl.stmts, binds={"o": "o_raw"})
    em = Emitter(env, "u")
    diff = Differentiator(em, plan.wants_grad)
    a = plan.attn
    aggs = aggregates.of(a, totals=True)
    dagg: dict[ir.Agg, list[str]] = {}  # the row adjoint terms of each aggregate

    def to_dagg(n: ir.Expr, g: str, shape: str, factor: str | None) -> None:
        code = reduce_to(g, shape, "row")
        dagg.setdefault(n, []).append(f"{code} * {factor}" if factor else code)
    if aggs.levels and plan.linear is None and not plan.fused:
        # the aggregates first, by the forward's passes: the out stage's backward may read them
        after = aggregates.after(plan.attn)
        env.level_of = lambda ax: _inner(ax) if COL in ax else after if AGG in ax else "outer"
        bl.vars.update(_recompute(em, env, plan, bl, passes="pre"))
        env.level_of = lambda ax: cur["lvl"]
    if a.out is not None:
        sinks = _grad_sink(plan, em, "pre", do_var="do_raw")
        diff.backprop({a.out: [("do", "vrow")]}, "pair", "pre", lambda n: isinstance(n, ir.Agg), to_dagg, sinks)
    regs: dict = {}
    if plan.linear is not None:
        # the aggregates' adjoints from the forward's sums (codegen/linear.py): no loop over the keys
        bl.stmts["agg_lin"] = []
        env.level_of = lambda ax: "agg_lin"
        loads, seeds = linear.adjoint_seeds(em, plan.linear, aggregates.count_load(aggs))
        bl.stmts["agg_lin"][:0] = loads
        Differentiator(em, lambda n: False).backprop(seeds, "pair", "agg_lin", lambda n: isinstance(n, ir.Agg), to_dagg,
                                                     GradSinks(lambda *args: None))
        env.level_of = lambda ax: cur["lvl"]
    elif plan.fused:  # the forward kept them; their adjoints are the out stage's (above)
        bl.stmts["agg_lin"] = [f"agg_n1 = {aggregates.count_load(aggs)}"]
    elif aggs.user:
        bl.vars["agg_nested"] = agg_adjoints.adjoints(em, env, plan, bl, to_dagg, dagg)
    if aggs.user:
        regs = agg_adjoints.registers(aggs, bl, dagg)
    if aggs.levels:
        if plan.linear is None and not plan.fused:
            bl.vars["agg_values"] = statements(aggregates.value_stores(aggs))
        if aggs.user:
            bl.vars["agg_grads"] = statements(aggregates.grad_stores(aggs, dagg, regs))
    if a.norm.sink is not None:
        cur["lvl"] = "sink_bwd"
        sink = em.f32(a.norm.sink)
        seed = em.put("sink_bwd", f"tl.where(rmask, -tl.exp({sink} - lse_safe) * delta[:, None], 0.0)", "dsink")
        diff.backprop({a.norm.sink: [(seed, "row")]}, "pair", "sink_bwd", lambda n: False, None,
                      _grad_sink(plan, em, "pre"))
    if plan.delta_loop:
        # delta = sum_j p dp needs the weights' derivative (and the aggregates' of p), so walk the keys once
        cur["lvl"] = "outer"
        after = aggregates.after(a)
        env.level_of = lambda ax: "inner" if COL in ax else after if AGG in ax else "outer"
        loop = _recompute(em, env, plan, bl)
        bl.vars.update(loop)
        bl.vars["dp"] = "dw"
        seeds = {a.weights: [("tl.where(allowed, dw, 0.0)", "pair")]} if a.weights is not None else {}
        bl.stmts["delta_wb"] = []  # the loop's adjoints, after the weights' values
        env.level_of = lambda ax: "delta_wb" if COL in ax else after if AGG in ax else "outer"
        for n, terms in aggregates.argument_seeds(em, env, "pair", {n: r for n, r in regs.items()
                                                                     if ir.uses(n.x, "p")}).items():
            seeds.setdefault(n, []).extend(terms)
        if not seeds:
            del bl.stmts["delta_wb"]
        else:
            sinks = GradSinks(lambda *args: None)
            Differentiator(em, lambda n: False).backprop(seeds, "pair", "delta_wb", lambda n: not is_pair(n),
                                                         lambda n, g, s, f: None, sinks, want_child=is_pair,
                                                         pair_guard="allowed")
            bl.vars["dp"] = _dp(a, sinks)
    return bl


def _dp(a: ir.Attention, sinks: GradSinks) -> str:
    """p's adjoint: through the weights when there are any (else p is the weights: dw), plus what
    aggregates of p add."""
    if a.weights is not None:
        return sinks.bound.get("p", "0.0")
    return " + ".join(["dw", *([sinks.bound["p"]] if "p" in sinks.bound else [])])


def _inner(ax) -> str:
    """A pair value's statement list: after the tile's mask if it reads a key scan (scans.py)."""
    return "inner_scan" if SCAN in ax else "inner"


def _recompute(em: Emitter, env: KernelEnv, plan: Plan, bl: Blocks, orient: str = "pair",
               split_scale: bool = False, passes: str = "") -> dict[str, str]:
    """Score and mask of a tile (into 'inner'), and the weights' value (into 'inner_w');
    ``orient`` 't': transposed tiles (the dk/dv kernel). ``split_scale``: for a score the
    ``scaled_dot`` pass factored, "s" is the raw dot and "s_scale" its program-level factor.
    ``passes`` ('fwd' or 'pre', the latter with the key scans' totals): compute the row aggregates by
    passes over the keys ("agg_passes"), else load them."""
    a = plan.attn
    # softmax works on log2(e) * score (exp2_scores pass); the natural score only where named
    uses_score = a.weights is not None and ir.uses(a.weights, "score")
    sd = a.scaled_dot if split_scale else None
    if sd is not None:
        out = {"s": em.f32(sd.dot, orient), "s_scale": em.f32(sd.factor2, orient), "mask": ""}
    else:
        out = {"s": em.f32(a.score2 if a.score2 is not None else a.score, orient), "mask": ""}
    if not is_pair(a.score):
        tile = "BLOCK_N, BLOCK_M" if orient == "t" else "BLOCK_M, BLOCK_N"
        out["s_fill"] = f" + tl.zeros([{tile}], dtype=tl.float32)"  # broadcast to a tile
    if a.mask is not None:
        # mask-only values go to 'inner_mask', which only partial tiles run; forgetting them
        # afterwards keeps later stages from naming a value that full tiles never compute
        saved, known = env.level_of, set(em.memo)
        env.level_of = lambda ax: "inner_mask" if saved(ax) == "inner" else saved(ax)
        out["mask"] = em.value(a.mask, orient)
        env.level_of = saved
        em.forget(known, bl.stmts_names("inner_mask"))
    aggs = aggregates.of(a, totals=passes == "pre")
    if aggs.levels:
        # the natural score (s is log2(e) times it for softmax); p only with norm = none, where it is s
        env.binds.update(p="p", score=em.f32(a.score, orient) if a.score2 is not None else "s")
        if passes:
            out["agg_passes"] = aggregates.forward_passes(em, env, bl, aggs, plan.linear if passes == "fwd" else None)
            out["agg_p"] = "1" if aggregates.reads_p(a) else ""
    if a.weights is not None and not (passes == "fwd" and plan.linear is not None):  # (linear: the pass's sums)
        env.binds.update(p="p", score=em.f32(a.score, orient) if uses_score and a.score2 is not None else "s")
        saved = env.level_of
        env.level_of = lambda ax: "inner_w" if COL in ax else saved(ax)
        out["w"] = em.f32(a.weights, orient)
        env.level_of = saved
    return out


def _loop_backward(em: Emitter, env: KernelEnv, plan: Plan, bl: Blocks, level_of, on_stop, sinks: GradSinks,
                   want, orient: str = "pair") -> None:
    """Inside the key (or query) loop: weights backward (dw -> dp, ds_w), then score backward (ds).

    ``level_of(part)`` is the kernel's placement with the loop part ``part``;
    ``on_stop(part)`` the frontier handler filling that part.
    """
    diff = Differentiator(em, plan.wants_grad)
    stop = lambda n: not is_pair(n)  # noqa: E731
    a = plan.attn
    tile = "tpair" if orient == "t" else "pair"
    env.level_of = level_of("inner_wb")
    seeds = {a.weights: [("tl.where(allowed, dw, 0.0)", tile)]} if a.weights is not None else {}
    for n, terms in aggregates.argument_seeds(em, env, orient).items():
        seeds.setdefault(n, []).extend(terms)  # an argument may be the weights themselves
    if seeds:
        # an aggregate's adjoint is the pre kernel's: only what reads no aggregate is differentiated here
        diff.backprop(seeds, orient, "inner_wb", stop, on_stop("inner_wb"), sinks,
                      lambda c: want(c) and (is_pair(c) or AGG not in axes(c)), "allowed")
        bl.vars["dp"] = _dp(a, sinks)
        bl.vars["ds_w"] = sinks.bound.get("score", "")
    env.level_of = level_of("inner_s")
    diff.backprop({a.score: [("ds", tile)]}, orient, "inner_s", stop, on_stop("inner_s"), sinks, want,
                  "allowed")


def _post_backward(em: Emitter, plan: Plan, acc: dict, orient: str, level: str, sinks: GradSinks) -> None:
    """After the loop: differentiate the accumulated frontier adjoints down to the leaves."""
    if acc:
        seeds = {n: [(f"{name} * {factor}" if factor else name, shape)] for n, (name, shape, factor) in acc.items()}
        Differentiator(em, plan.wants_grad).backprop(seeds, orient, level, lambda n: False, None, sinks)


def dq_kernel(plan: Plan) -> Blocks:
    bl = Blocks()
    for n in ("outer", "init", "inner", "inner_scan", "inner_mask", "inner_w", "inner_wb", "inner_s", "post"):
        bl.stmts[n] = []
    env = KernelEnv(plan.attn, lambda ax: _inner(ax) if COL in ax else "outer", bl.stmts, scan_mode="dq")
    em = Emitter(env, "r")
    carry = scans.carries(em, aggregates.of(plan.attn, totals=True), "dq")
    bl.vars["scan_init"], bl.vars["scan_tile"] = carry["init"], carry["tile"]
    bl.vars.update(_recompute(em, env, plan, bl))
    acc: dict = {}
    sinks = _grad_sink(plan, em, "dq", bl=bl)
    update, flush = frontier(acc, bl, "init", "acc_r")
    _loop_backward(em, env, plan, bl,
                   level_of=lambda part: (lambda ax: part if COL in ax else "outer"),
                   on_stop=lambda part: (lambda n, g, shape, factor: update(n, g, shape, part, factor)),
                   sinks=sinks, want=lambda c: is_pair(c) or owned_by_row_kernel(c))
    flush()
    env.level_of = lambda ax: "post"
    _post_backward(em, plan, acc, "pair", "post", sinks)
    return bl


def dkdv_kernel(plan: Plan) -> Blocks:
    bl = Blocks()
    for n in ("outer", "init", "head", "init_h", "inner", "inner_scan", "inner_mask", "inner_w", "inner_wb", "inner_s",
              "post_h", "post"):
        bl.stmts[n] = []

    def level(part: str):
        return lambda ax: ((_inner(ax) if part == "inner" else part) if ROW in ax else "head" if HEAD in ax
                           else "outer")

    env = KernelEnv(plan.attn, level("inner"), bl.stmts, scan_mode="dkdv")
    em = Emitter(env, "c")
    bl.vars["scan_tile"] = scans.carries(em, aggregates.of(plan.attn, totals=True), "dkdv")["tile"]
    bl.vars.update(_recompute(em, env, plan, bl, "t"))
    acc_h: dict = {}  # key-side frontiers that depend on the query head: reset per head
    acc_p: dict = {}
    sinks = _grad_sink(plan, em, "dkdv")
    per_head, flush_head = frontier(acc_h, bl, "init_h", "acc_h")
    per_prog, flush_prog = frontier(acc_p, bl, "init", "acc_c")

    def on_stop(part: str):
        def f(n, g, shape, factor):  # key-side frontiers of transposed tiles are kcol already
            (per_head if HEAD in axes(n) else per_prog)(n, g, shape, part, factor)
        return f

    _loop_backward(em, env, plan, bl, level_of=level, on_stop=on_stop, sinks=sinks,
                   want=lambda c: is_pair(c) or owned_by_col_kernel(c), orient="t")
    flush_head()
    flush_prog()
    env.level_of = lambda ax: "post_h" if HEAD in ax else "outer"
    _post_backward(em, plan, acc_h, "k", "post_h", sinks)
    env.level_of = lambda ax: "post"
    _post_backward(em, plan, acc_p, "k", "post", sinks)
    # the raw key tile, where the kernel loads one (the block-sparse dk/dv kernel's dq reuses it)
    bl.vars["k_tile"] = next((v for key, v in em.memo.items() if isinstance(key[0], ir.Row)
                              and key[0].name == "k_raw" and key[1] == "k"), "")
    return bl

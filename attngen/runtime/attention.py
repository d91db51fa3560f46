"""One attention's host code, the same for every spec: layouts, kernel arguments, tile lists, the
forward (dense, split-KV, paged), the backward, and the work of its torch.library operators.

A generated module describes its attention as data and hands it to :class:`_Attention`: the input
declarations, the kernels, and the plan (which kernels exist and what they need), for example

    _Attention("alibi", decls, inputs=[("slopes", False, True)], kernels={"fwd": alibi_fwd, ...},
               plan=dict(norm="softmax", has_out=False, stick=False, dynamic=False, splittable=True,
                         packable=True, scaled_dot=True, tile_heads="1", literal_blocks={}, selection=None))

``inputs``: (name, scalar, float) of every input the kernels take, in their argument order (the
internal selection ``sel_name`` included); ``selection``: see attngen/runtime/selection.py.

Shipped: the generated module embeds this file verbatim (after its imports).
"""

import torch

from .checks import _Varlen, _check_call, _check_flags, _check_paged, _check_scale, _check_varlen, _empty_result, _packed
from .launch import (SPLIT_ROWS, _Direct, _TileLists, _bind, _blocks, _cdiv, _config, _empty, _launch, _no_grads, _pow2,
                     _split_config, _splits, _tune_key)
from .ops import _Ops
from .selection import _Gathered, _choose, _gather_backward, _gather_forward, _listed_forward
from .triton_helpers import _merge_splits


class _Attention:
    """The host side of one generated attention (see the module docstring)."""

    def __init__(self, name, key, decls, inputs, kernels, plan, sel_name, sel_shape):
        self.name, self.decls, self.kernels, self.plan, self.sel_name = name, decls, kernels, plan, sel_name
        self.all_inputs = inputs  # (name, scalar, float), the kernels' order
        self.public = [n for n, _, _ in inputs if n != sel_name]
        self.sel = plan["selection"]
        # what every call reads, looked up once (a decoding step's host time is a few microseconds)
        self.has_out, self.stick, self.scaled_dot = plan["has_out"], plan["stick"], plan["scaled_dot"]
        self.heads_per_tile = plan["tile_heads"] == "H"
        self.literal_blocks = {block: _blocks(length) for block, length in plan["literal_blocks"].items()}
        self.float_inputs = [n for n, _, is_float in inputs if is_float and n != sel_name]
        self.sliced = plan["sliced"]  # {"D": 192}: the spec slices rows of length D up to lane 192
        gathered = bool(self.sel and self.sel["gather"] and self.sel["gather_bwd"])
        self.ops = _Ops(name, key, self.public, self.op_forward, self.op_backward, self.paged, _Varlen,
                        sel_name if self.sel else None, sel_shape, has_out=plan["has_out"], gathered=gathered,
                        lse_grad=plan["norm"] == "softmax", plan=plan, kernels=kernels,
                        scalars={n for n, scalar, _ in inputs if scalar})

    # ---- kernel arguments

    def flags(self, sizes, varlen=False, heads=None, wants=None):
        """The per-call constexprs of the kernels: the heads of the tile lists (``heads``), the GQA
        group, packed sequences, literal vector blocks, and the input gradients wanted (``wants``)."""
        heads = (sizes["H"] if self.heads_per_tile else 1) if heads is None else heads
        out = dict(TILE_HEADS=heads, GROUP=sizes["H"] // sizes["HK"], VARLEN=varlen, **self.literal_blocks)
        for n in self.float_inputs:
            out[f"GRAD_{n}"] = bool(wants and wants.get(n, False))
        return out

    def args(self, q, k, v, o, o_raw, do, do_raw, stat, delta, sbl, sbg, tl_rows, tl_cols, cu, dq, dk, dv, xs, gxs,
             sizes, scale, table=None, split=None, dlse=None, hole=None, aggs=(None, None, None)):
        """Every runtime argument a kernel may take, by name (launch._bind gives each kernel its own). cu:
        cu_seqlens of q and k (packed sequences), or (unused, cache lengths) with a paged cache, or
        placeholders; table: the paged cache's block table; split: the split-KV forward's partial
        buffers and their count; dlse: the gradient of lse (a backward whose loss reads it); hole: the
        placeholder of the pointers the kernels do not read without those (default stat); aggs: the row
        aggregates, their adjoints and a one-pass forward's sums of the weights' terms (AGG, DAGG, ACC),
        None where not used."""
        hole = stat if hole is None else hole
        table = (hole, 0, 1) if table is None else (table, table.stride(0), k.shape[0])
        split = (hole, hole, hole, 1) if split is None else split
        agg, dagg, acc = (hole if t is None else t for t in aggs)
        qs, ks, vs, ost, dqs, dks, dvs = (t.stride() for t in (q, k, v, o, dq, dk, dv))
        named = {"Q": q, "stride_qb": qs[0], "stride_qh": qs[1], "stride_qm": qs[2], "stride_qd": qs[3],
                 "K": k, "stride_kb": ks[0], "stride_kh": ks[1], "stride_kn": ks[2], "stride_kd": ks[3],
                 "V": v, "stride_vb": vs[0], "stride_vh": vs[1], "stride_vn": vs[2], "stride_vd": vs[3],
                 "O": o, "OR": o_raw, "DO": do, "DOR": do_raw,
                 "stride_ob": ost[0], "stride_oh": ost[1], "stride_om": ost[2], "stride_od": ost[3],
                 "LSE": stat, "DELTA": delta, "DLSE": hole if dlse is None else dlse, "SBL": sbl, "SBG": sbg,
                 "AGG": agg, "DAGG": dagg, "ACC": acc, "TL": tl_rows, "TLC": tl_cols, "CU_Q": cu[0], "CU_K": cu[1],
                 "BT": table[0], "stride_btb": table[1], "BT_PAGES": table[2], "OP": split[0], "MP": split[1],
                 "LP": split[2],
                 "DQ": dq, "stride_dqb": dqs[0], "stride_dqh": dqs[1], "stride_dqm": dqs[2], "stride_dqd": dqs[3],
                 "DK": dk, "stride_dkb": dks[0], "stride_dkh": dks[1], "stride_dkn": dks[2], "stride_dkd": dks[3],
                 "DVAL": dv, "stride_dvb": dvs[0], "stride_dvh": dvs[1], "stride_dvn": dvs[2], "stride_dvd": dvs[3],
                 "B": sizes["B"], "H": sizes["H"], "HK": sizes["HK"], "M": sizes["M"], "N": sizes["N"],
                 "M_MAX": sizes["M"], "N_MAX": sizes["N"], "TQ": sizes["TQ"], "SPLITS": split[3], "scale": scale}
        for n, scalar, _ in self.all_inputs:
            if scalar:
                named[f"x_{n}"], named[f"d{n}_ptr"] = float(xs[n]), gxs[n]
            else:
                named[f"{n}_ptr"], named[f"d{n}_ptr"] = xs[n], gxs[n]
                named.update((f"{n}_s{i}", s) for i, s in enumerate(xs[n].stride()))
                named.update((f"d{n}_s{i}", s) for i, s in enumerate(gxs[n].stride()))
        return named

    def tiles(self, q, k, xs, sizes, common, cu, varlen, launcher=_Direct):
        """The tile lists of this call's mask: built per call (or once by prepare) for a data-dependent
        mask, None where the kernels bound the mask in closed form. q, k: as the kernels index them
        ([B, heads, rows, D]); launcher: how the classification kernels launch (launch._Direct, _Traced)."""
        if not self.plan["dynamic"]:
            return None
        gxs = _no_grads(xs, q)

        def args_for(tl_rows, classes):
            return self.args(q, k, k, q, q, q, q, q, q, q, q, tl_rows, classes, cu, q, k, k, xs, gxs, sizes, 1.0)
        flags = self.flags(sizes, varlen)
        constexprs = dict(common, device=q.device, **flags)
        return _TileLists(self.name, self.kernels["classify"], args_for, sizes, flags["TILE_HEADS"], constexprs,
                          launcher)

    @staticmethod
    def lists(tiles, stat):
        """Row and column tile lists for a launch config (placeholders when the mask needs none)."""
        if tiles is None:
            return lambda c: (stat, stat)
        return tiles.get

    @staticmethod
    def layout(q, k, v, seq):
        """Sizes, and q, k, v as the kernels index them: dense [B, heads, rows, D] as given; packed
        [T, heads, D] as [B, heads, T, D] views with batch stride 0."""
        if seq is None:
            B, H, M, D = q.shape
            # head counts and dims are the kernels' constexprs (GROUP, TILE_HEADS, D, DV): where a triton_op's
            # body is traced with symbolic sizes, int() specializes them (a guard) and M, N, B stay symbolic
            H, D, HK, DV = int(H), int(D), int(k.shape[1]), int(v.shape[3])
            sizes = {"B": B, "H": H, "HK": HK, "M": M, "N": k.shape[2], "D": D, "DV": DV, "TQ": M}
            return sizes, q, k, v
        TQ, H, D = q.shape
        B, HK, DV = seq.batch, k.shape[1], v.shape[2]
        sizes = {"B": B, "H": H, "HK": HK, "M": seq.max_q, "N": seq.max_k, "D": D, "DV": DV, "TQ": TQ}
        return sizes, _packed(q, B), _packed(k, B), _packed(v, B)

    @staticmethod
    def out(shape_of, sizes, seq, device, dtype):
        """An output buffer (kept, returned) and its view as the kernels index it."""
        B, H, M, TQ = sizes["B"], sizes["H"], sizes["M"], sizes["TQ"]
        if seq is None:
            buf = _empty((B, H, M, shape_of), device, dtype)
            return buf, buf
        buf = _empty((TQ, H, shape_of), device, dtype)
        return buf, _packed(buf, B)

    def saved(self, rows, DV, device):
        """A one-pass forward's buffers for the backward (codegen/linear.py), else (): the row aggregates
        AGG [*rows, columns] and the sums of the weights' terms ACC [*rows, terms, DV] (none for
        aggregates only the out stage reads), fp32."""
        terms = self.plan["linear"]
        if not (terms or self.plan["fused"]):
            return ()
        agg = _empty(tuple(rows) + (self.plan["aggregates"][0],), device, torch.float32)
        return (agg, _empty(tuple(rows) + (terms, DV), device, torch.float32)) if terms else (agg,)

    # ---- the forward

    def apply(self, q, k, v, scale, tiles, seq, xs, launcher=_Direct, save=True):
        """The forward of a dense or packed call: o, o before the out stage, the row statistic, the tile
        lists (or the block-sparse entries), the inputs the kernels read (with the selection) and what a
        one-pass forward saves for the backward (run_forward). launcher: launch._Direct, or launch._Traced in
        a triton_op's body (dense, no selection); save: keep what the backward reads (a call that needs
        gradients)."""
        sizes, q4, k4, v4 = self.layout(q, k, v, seq)
        cu = (seq.cu_q, seq.cu_k) if seq is not None else (q, q)
        common = _config(sizes["D"], sizes["DV"], q)[2]
        if self.sel:
            if seq is not None:
                raise ValueError(f"{self.name}: selection (select) runs on dense batches, not packed sequences")
            if self.sel["gather"]:
                sel, *counts = _choose(self, q, k, xs, sizes, common, scale, counts=True)
                xs = dict(xs, **{self.sel_name: sel})
                o, stat, gathered = _gather_forward(self, q4, k4, v4, xs, *counts, sizes, scale, common)
                return o, o, stat, gathered if self.sel["gather_bwd"] else tiles, xs, ()
            xs = dict(xs, **{self.sel_name: _choose(self, q, k, xs, sizes, common, scale)})
            if self.sel["listed"]:
                o, stat = _listed_forward(self, q4, k4, v4, xs, sizes, scale, common)
                return o, o, stat, tiles, xs, ()
        o_buf, o_raw_buf, stat, tiles, saved = self.run_forward(q, q4, k4, v4, xs, sizes, scale, tiles, cu, common,
                                                                seq=seq, launcher=launcher, save=save)
        return o_buf, o_raw_buf, stat, tiles, xs, saved

    def run_forward(self, q, q4, k4, v4, xs, sizes, scale, tiles, cu, common, seq=None, table=None, kind="fwd",
                    launcher=_Direct, save=False):
        """Allocate o (and o before the out stage) and the row statistic, build the tile lists unless
        given, and run the forward. q4, k4, v4: as the kernels index them; seq: packed sequences;
        table: a paged cache's block table; save: keep what the backward reads. Returns (o, o_raw, stat,
        tiles, saved), o packed for seq; saved: what a one-pass forward keeps for the backward with save (the
        row aggregates and the sums of the weights' terms, codegen/linear.py), else ()."""
        B, H, M, DV = sizes["B"], sizes["H"], sizes["M"], sizes["DV"]
        if tiles is None:
            tiles = self.tiles(q4, k4, xs, sizes, common, cu, seq is not None, launcher)
        o_buf, o = self.out(DV, sizes, seq, q.device, q.dtype)
        if self.has_out:
            o_raw_buf, o_raw = self.out(DV, sizes, seq, q.device, torch.float32)
        else:
            o_raw_buf, o_raw = o_buf, o  # no out stage: o is the norm's result
        stat = _empty((B, H, M) if seq is None else (H, sizes["TQ"]), q.device, torch.float32)
        saved = self.saved(stat.shape, DV, q.device) if save else ()
        kept = (*saved, None, None)[:2]  # AGG and ACC, or None
        gxs = _no_grads(xs, q)
        # the parameters this launch writes nothing to and reads nothing from: o and stat themselves in eager
        # calls; in a traced body (a triton_op) other tensors, since functionalization clones each argument it
        # finds written separately (where torch cannot analyse the kernel, every argument), and a clone of an
        # alias of o or stat, unwritten but committed last, would replace them (observed: o all NaN)
        spare = launcher.spare
        hole = spare(stat)
        lists = self.lists(tiles, hole)
        if self.scaled_dot:
            # the forward takes its running max of dot(q, k) before scaling, which needs a positive factor
            if scale < 0:
                q4, scale = -q4, -scale  # the same scores
            elif scale == 0:
                scale = 1e-30  # every allowed pair weighs the same, as with 0

        def args(c, split=None):
            return self.args(q4, k4, v4, o, o_raw if self.has_out else spare(o), spare(o), spare(o_raw), stat, hole,
                             hole, hole, *lists(c), cu, q4, k4, v4, xs, gxs, sizes, scale, table, split, hole=hole,
                             aggs=(kept[0], None, kept[1]))
        flags = self.flags(sizes, seq is not None)
        if self.plan["linear"] or self.plan["fused"]:
            flags["SAVE"] = bool(saved)
        fwds = _config(sizes["D"], DV, q)[0]
        self.forward(args, sizes, q, o, stat, fwds, common, flags, kind, seq is None, launcher)
        return o_buf, o_raw_buf, stat, tiles, saved

    def forward(self, args, sizes, q, o, stat, fwds, common, flags, kind, may_split, launcher):
        """Run the forward: with few query rows, the keys split over several programs per (b, h) and the
        partial results merged exactly (split-KV decoding); otherwise one program per query tile."""
        B, H, M, N = sizes["B"], sizes["H"], sizes["M"], sizes["N"]
        # a traced body (a triton_op) runs only for calls past SPLIT_ROWS rows (ops._Ops.traceable): no split there,
        # and no shape guard or device query (the split count reads the SM count) in the traced code
        if self.plan["splittable"] and not launcher.traced:
            G = H // sizes["HK"]
            # one program for all heads of a GQA group when their rows fit one tile (keys read once per group);
            # without packable, the tile bounds depend on the head: one program per head
            pack = self.plan["packable"] and G > 1 and G * M <= 2 * SPLIT_ROWS  # (_launch may retry with 32 rows)
            cfg = _split_config(sizes, q, _pow2(G * M) if pack else SPLIT_ROWS)
            programs = B * (sizes["HK"] if pack else H)
            splits = _splits(programs, M, N, cfg, q) if may_split else 1
            if splits > 1:
                rows = B * H * splits * SPLIT_ROWS
                parts = (torch.empty((rows, common["BLOCK_DV"]), device=q.device, dtype=torch.float32),
                         torch.empty(rows, device=q.device, dtype=torch.float32),
                         torch.empty(rows, device=q.device, dtype=torch.float32), splits)
                _launch(self.kernels["fwd"], (splits, programs), lambda c: args(c, parts), cfg,
                        **dict(common, PACK=pack, SPLIT=True), **flags)
                _merge_splits[(B * H,)](*parts[:3], o, stat, *o.stride(), H, M, splits, NORM=self.plan["norm"],
                                        DV=sizes["DV"], BLOCK_M=SPLIT_ROWS, BLOCK_DV=common["BLOCK_DV"])
                return
        fwd = self.kernels["fwd"]  # (SPLIT=False: one program per query tile)
        grid = lambda c: (_cdiv(M, c["BLOCK_M"]), B * H)  # noqa: E731
        cfg = launcher.choose(lambda: _tune_key(self.name, kind, sizes, q), fwds,
                              lambda c: fwd[grid(c)](*_bind(fwd, args(c)), **c, **common, **flags))
        launcher.launch(fwd, grid, args, cfg, **common, **flags)

    def paged(self, q, k_cache, v_cache, scale, xs, sizes, table, lengths):
        """Forward on a paged cache (inference; no autograd): o [B, H, M, DV] and the row statistic."""
        tensors = [q, k_cache, v_cache, *[x for x in xs.values() if isinstance(x, torch.Tensor)]]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tensors):
            raise ValueError(f"{self.name}: calls on a paged KV cache are forward-only; run them under "
                             "torch.no_grad() or pass tensors that do not require grad")
        k4, v4 = k_cache.permute(0, 2, 1, 3), v_cache.permute(0, 2, 1, 3)  # [pages, HK, page_size, D]
        common = dict(_config(sizes["D"], sizes["DV"], q)[2], PAGED=True, PAGE_SIZE=k_cache.shape[1])
        o, _, stat, _, _ = self.run_forward(q, q, k4, v4, xs, dict(sizes, TQ=sizes["M"]), scale, None, (lengths, lengths),
                                         common, table=table, kind="fwd-paged")
        return o, stat

    # ---- the operators' work

    def op_forward(self, q, k, v, scale, xs, seq, tiles, launcher=_Direct, save=True):
        """The forward operator's work (attngen.runtime.ops): o, o before the out stage, the row
        statistic, the selection (or None) and what the backward reads beside them: the entries a
        block-sparse backward walks, or a one-pass forward's aggregates and sums (or none)."""
        o_buf, o_raw_buf, stat, tiles, xs, saved = self.apply(q, k, v, scale, tiles, seq, xs, launcher, save)
        extra = tuple(tiles[:4]) if isinstance(tiles, _Gathered) else saved
        return o_buf, o_raw_buf, stat, xs[self.sel_name] if self.sel else None, extra

    def op_backward(self, do, q, k, v, o_buf, o_raw_buf, stat, xs, extra, seq, scale, wants, tiles, dlse=None,
                    launcher=_Direct):
        """The backward operator's work: dq, dk, dv and the wanted input gradients by name. xs: the
        inputs (with the forward's selection); extra: the forward's block-sparse entries; tiles:
        prepared tile lists, else built here (the forward's were for its own launch configs); dlse:
        lse's gradient (softmax), or None; launcher: launch._Direct, or launch._Traced in a triton_op."""
        sizes, q4, k4, v4 = self.layout(q, k, v, seq)
        B, H, HK, M, N, DV = (sizes[x] for x in ("B", "H", "HK", "M", "N", "DV"))
        view = (lambda t: t) if seq is None else (lambda t: _packed(t, B))  # noqa: E731
        cu = (seq.cu_q, seq.cu_k) if seq is not None else (q, q)
        o, o_raw = view(o_buf), view(o_raw_buf)
        _, bwds, common = _config(sizes["D"], DV, q)
        stick = self.stick
        nscan = self.plan["scans"]
        if stick or nscan:  # dq and dk/dv index the suffix (or key scan) buffers by key tile: one BLOCK_N
            bwds = [c for c in bwds if c["dq"]["BLOCK_N"] == c["dkdv"]["BLOCK_N"]]
        do = view(do.contiguous())
        do_raw = view(_empty(o_raw_buf.shape, q.device, torch.float32)) if self.has_out else do
        delta = _empty(stat.shape, q.device, torch.float32)
        dq_buf, dk_buf, dv_buf = (_empty(t.shape, q.device, t.dtype) for t in (q, k, v))
        dq, dk, dv = view(dq_buf), view(dk_buf), view(dv_buf)
        pre = {"LSE_GRAD": dlse is not None}  # bwd_pre's own constexpr, always passed
        dlse = None if dlse is None else dlse.contiguous()
        wants = {n: wants.get(n, False) for n in xs}  # an internal input (the selection) has no gradient
        gxs = {}
        for n, x in xs.items():
            if wants[n]:
                gxs[n] = torch.zeros(x.shape, device=q.device, dtype=torch.float32)
            else:
                gxs[n] = x if isinstance(x, torch.Tensor) else q
        one_pass = self.plan["linear"] or self.plan["fused"]
        if extra and not one_pass:  # the forward was block-sparse: so is the backward
            sel = xs[self.sel_name]
            g = _Gathered(*extra, sel.shape[1], sel.shape[3], 16 if q.device.type == "cpu" else 64)
            _gather_backward(self, g, q4, k4, v4, o, do, stat, delta, dq, dk, dv, xs, sizes, scale, common,
                             dict(bwds[0]["dq"], **pre), dlse)
            return dq_buf, dk_buf, dv_buf, {}
        if tiles is None:
            tiles = self.tiles(q4, k4, xs, sizes, common, cu, seq is not None, launcher)
        lists = self.lists(tiles, stat)
        flags = self.flags(sizes, seq is not None, wants=wants)
        kernels = self.kernels
        ncol, ngrad = self.plan["aggregates"]  # the row aggregates' columns (values, adjoints): the pre kernel's
        # (a one-pass forward's values and sums come in extra: the pre kernel reads them)
        agg, acc = (*extra, None)[:2] if one_pass else (_empty(stat.shape + (ncol,), q.device, torch.float32), None)
        aggs = (agg, _empty(stat.shape + (max(ngrad, 1),), q.device, torch.float32), acc) if ncol else (None,) * 3

        def launch(c, go):
            # suffix sums per row and key tile (stick-breaking), or the key scans' carries (one set per scan)
            sb = (stat.numel(), _cdiv(N, c["dkdv"]["BLOCK_N"]) * max(nscan, 1)) if stick or nscan else (1,)
            sbl = _empty(sb, q.device, torch.float32)
            sbg = _empty(sb, q.device, torch.float32)

            def args(kc):
                return self.args(q4, k4, v4, o, o_raw, do, do_raw, stat, delta, sbl, sbg, *lists(kc), cu, dq, dk, dv,
                                 xs, gxs, sizes, scale, dlse=dlse, aggs=aggs)
            rows = lambda kc: (_cdiv(M, kc["BLOCK_M"]), B * H)  # noqa: E731
            go(kernels["bwd_pre"], rows, args, dict(c["dq"], **pre))
            go(kernels["bwd_dq"], rows, args, c["dq"])
            go(kernels["bwd_dkdv"], lambda kc: (_cdiv(N, kc["BLOCK_N"]), B * HK), args, c["dkdv"])

        def direct(kernel, grid, args, kc):
            kernel[grid(kc)](*_bind(kernel, args(kc)), **kc, **common, **flags)
        cfg = launcher.choose(lambda: _tune_key(self.name, "bwd", sizes, q), bwds, lambda c: launch(c, direct))
        for n, g in gxs.items():
            if wants[n]:
                g.zero_()  # tuning runs accumulated into the input gradients
        launch(cfg, lambda kernel, grid, args, kc: launcher.launch(kernel, grid, args, kc, **common, **flags))
        return dq_buf, dk_buf, dv_buf, {n: gxs[n].reshape(xs[n].shape).to(xs[n].dtype) for n in xs if wants[n]}

    # ---- the public functions

    def prepare(self, q, k, inputs):
        """Tile lists of the mask for these shapes and mask inputs, or None (see NAME_prepare)."""
        sizes = _check_call(self.name, self.decls, q, k, k[..., :1], inputs)
        if self.sel:
            inputs = dict(inputs, **{self.sel_name: q})  # a placeholder: the tile classes are the mask's alone
        sizes.update(DV=sizes["D"], TQ=sizes["M"])
        common = _config(sizes["D"], sizes["D"], q)[2]
        return self.tiles(q, k, inputs, sizes, common, (q, q), False)

    def selected(self, q, k, scale, inputs):
        """The selection the kernels make for these q, k and inputs (see NAME_selected)."""
        sizes = dict(_check_call(self.name, self.decls, q, k, k, inputs), TQ=q.shape[2])
        self.check_lanes(sizes, which=("D",))
        scale = _check_scale(self.name, scale, sizes["D"])
        return _choose(self, q, k, inputs, sizes, _config(sizes["D"], sizes["D"], q)[2], scale)

    def check_lanes(self, sizes, which=("D", "DV")):
        """A slice of a row of length D or DV (``q[128:192]``) must lie inside the call's rows."""
        for size, end in self.sliced.items():
            if size in which and sizes[size] < end:
                rows = "q's and k's" if size == "D" else "v's"
                raise ValueError(f"{self.name}: the spec slices rows of length {size} up to lane {end}, but "
                                 f"{rows} last dim is {size} = {sizes[size]}")

    def __call__(self, q, k, v, inputs, scale, return_lse, prepared, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                 max_seqlen_k, block_table, seqlens_k, validate):
        """The public function's work (see its docstring in the module): checks, then the operators."""
        name = self.name
        _check_flags(name, return_lse=return_lse, validate=validate)
        if return_lse and self.plan["norm"] != "softmax":
            raise ValueError(f"{name}: return_lse is only defined for softmax norms (this one is {self.plan['norm']})")
        seq = None
        if block_table is not None or seqlens_k is not None:
            if block_table is None or seqlens_k is None or cu_seqlens_q is not None or cu_seqlens_k is not None:
                raise TypeError(f"{name}: a paged cache needs block_table and seqlens_k (and no cu_seqlens)")
            if prepared is not None:
                raise ValueError(f"{name}: prepared tiles are for dense batches, not a paged cache")
            if self.sel:
                raise ValueError(f"{name}: selection (select) runs on dense batches, not a paged cache")
            sizes, block_table, seqlens_k = _check_paged(name, self.decls, q, k, v, inputs, block_table, seqlens_k,
                                                         validate)
            self.check_lanes(sizes)
            scale = _check_scale(name, scale, sizes["D"])
            if sizes["M"] == 0:
                o, lse = _empty_result((*q.shape[:3], v.shape[3]), q.shape[:3], q, ())
            elif torch.compiler.is_compiling():  # one opaque call to Dynamo
                o, lse = self.ops.call_paged(q, k, v, scale, inputs, block_table, seqlens_k)
            else:
                o, lse = self.paged(q, k, v, scale, inputs, sizes, block_table, seqlens_k)
            return (o, lse) if return_lse else o
        if cu_seqlens_q is not None or cu_seqlens_k is not None:
            if cu_seqlens_q is None or cu_seqlens_k is None:
                raise TypeError(f"{name}: packed sequences need both cu_seqlens_q and cu_seqlens_k")
            if prepared is not None:
                raise ValueError(f"{name}: prepared tiles are for dense batches, not packed sequences")
            sizes = _check_varlen(name, self.decls, q, k, v, inputs, cu_seqlens_q, cu_seqlens_k, max_seqlen_q,
                                  max_seqlen_k)
            seq = _Varlen(cu_seqlens_q, cu_seqlens_k, max_seqlen_q, max_seqlen_k)
        else:
            sizes = _check_call(name, self.decls, q, k, v, inputs)
        if prepared is not None:
            prepared.check(name, sizes)
        self.check_lanes(sizes)
        scale = _check_scale(name, scale, sizes["D"])
        if q.numel() == 0:  # no query rows (B, M or the packed TQ = 0): nothing to launch
            o_shape = (*q.shape[:-1], v.shape[-1])
            o, lse = _empty_result(o_shape, o_shape[:-1] if seq is None else (q.shape[1], q.shape[0]), q,
                                   (q, k, v, *inputs.values()))
            return (o, lse) if return_lse else o
        grad = torch.is_grad_enabled() and any(isinstance(t, torch.Tensor) and t.requires_grad
                                               for t in (q, k, v, *inputs.values()))
        if grad or torch.compiler.is_compiling():  # the operators: an autograd node, one opaque call to Dynamo
            o, lse = self.ops(q, k, v, scale, inputs, seq, prepared)
        else:  # eager, no autograd: the same work without the dispatcher (a decoding step's host time)
            o, _, lse, *_ = self.apply(q, k, v, scale, prepared, seq, inputs, save=False)
        return (o, lse) if return_lse else o


"""Rows in the kernels: whole q and k rows, slices, concat, the reductions of rows (dot, sqdist, sum,
norms) and rope, as methods the :class:`~attngen.codegen.emit.Emitter` inherits.

A query-side row is a [BLOCK_M, BLOCK_L] tile, a key-side one [BLOCK_N, BLOCK_L]; a pair dot of the two
is one ``tl.dot`` (tensor cores). Lanes past a row's length (tiles are powers of two wide) are 0 when
the row is loaded; a derived row is masked before a reduction over the whole tile (``lanes``).
"""

from __future__ import annotations

import math

from ..ir import nodes as ir
from .analysis import COL, ROW, CodegenError, axes
from .layout import _lanes, _pick, lane_mask, pick_note, vec_block, vec_offs, zero_at_pad


#: (position, side of the rotated row) -> the rows of its tiles, whose positions are contiguous: a key
#: tile's (a query tile's rows may be a GQA group's heads, each from row 0: split-KV's PACK)
_POSITION_ROWS = {("j", "key"): "BLOCK_N"}


def _side(x: ir.Expr) -> str:
    ax = axes(x)
    return "key" if COL in ax and ROW not in ax else "query" if ROW in ax and COL not in ax else ""


class RowEmitter:
    """The row methods of :class:`~attngen.codegen.emit.Emitter` (which provides ``put``, ``cached``,
    ``value``, ``f32``, ``level``, ``orient_of``, ``provenance``, ``load_address`` and ``env``)."""

    def lanes(self, x: ir.Expr, orient: str, perm: bool = False) -> str:
        """Row ``x`` (float32) with the lanes past its length 0, for a reduction over the whole tile (a
        dot, a norm): a mask only where they may not be 0 already (``zero_at_pad``)."""
        v = self.f32(x, orient, perm)
        if zero_at_pad(x):
            return v
        return self.cached(("lanes", x, self.orient_of(x, orient), perm), self.level(x),
                           f"tl.where({lane_mask(x.ty.length)}, {v}, 0.0)", "lanes")

    def row_reduction(self, e: ir.Call, orient: str) -> str:
        """sum, mean, max or min of each row of ``e``'s argument, [R]: the lanes past its length
        (a power-of-two tile) are left out, as a derived row (exp(q)) is not 0 there."""
        x, L = e.args[0], e.args[0].ty.length
        v = self.f32(x, self.orient_of(x, orient))
        fill, op = {"row_sum": ("0.0", "sum"), "row_mean": ("0.0", "sum"), "row_max": ('-float("inf")', "max"),
                    "row_min": ('float("inf")', "min")}[e.fn]
        out = f"tl.{op}(tl.where({lane_mask(L)}, {v}, {fill}), axis=1)"
        return f"({out} / {L})" if e.fn == "row_mean" else out

    def row_sumsq(self, x: ir.Expr, orient: str, level: str) -> str:
        """sum(x * x) over each row [R, 1]; a column permutation does not change it, so the
        rotate-half copy of a row shares it."""
        orient = self.orient_of(x, orient)
        v = self.lanes(x, orient)
        return self.cached(("sumsq", x, orient), level, f"tl.sum({v} * {v}, axis=1)[:, None]", "sumsq")

    def _slice(self, e: ir.Slice, orient: str, perm: bool) -> str:
        """x[lo:hi] as a [rows, BLOCK_L] tile: q, k and input rows loaded at the slice's offset (no copy of
        the row), a computed row through a 0/1 product (exact in float32)."""
        L = e.ty.length
        lanes = _lanes(e.lo, L, perm)
        if isinstance(e.x, ir.Row) and e.x.name in ("q_raw", "k_raw"):
            return self._raw_row(e.x, lanes, L, f"_{e.lo}_{e.hi}")
        if isinstance(e.x, ir.Load):
            off, mask = self.load_address(e.x, orient, strides=None, lanes=(lanes, L))
            return self.put(self.level(e), f"tl.load({e.x.name}_ptr + {off}, mask={mask}, other=0)", e.x.name,
                            self.provenance(e))
        x = self.f32(e.x, orient)
        return self.put(self.level(e), f"tl.dot({x}, tl.trans({_pick(lanes, L, e.x.ty.length)}), "
                        f"input_precision=\"ieee\")", "sl",
                        f"{pick_note(L, e.x.ty.length)}; {self.provenance(e)}".rstrip("; "))

    @staticmethod
    def concat_part(e: ir.Call, which: int) -> str:
        """[BLOCK_part, BLOCK_out] of 0/1 placing part ``which`` of concat(x, y) in its lanes."""
        x, y = e.args
        part, lo = (x, 0) if which == 0 else (y, int(x.ty.length))
        return _pick(_lanes(lo, part.ty.length), part.ty.length, e.ty.length)

    def _concat(self, e: ir.Call, orient: str, perm: bool, lvl: str, note: str) -> str:
        """x's lanes then y's, by two exact 0/1 products; rope's permuted copy picks lanes of that."""
        L = e.ty.length
        if perm:
            return self.put(lvl, f"tl.dot({self.value(e, orient)}, tl.trans({_pick(_lanes(0, L, True), L, L)}), "
                            f"input_precision=\"ieee\")", "cat", f"{pick_note(L, L)}; {note}".rstrip("; "))
        x, y = (self.f32(a, orient) for a in e.args)
        return self.put(lvl, f"tl.dot({x}, {self.concat_part(e, 0)}, input_precision=\"ieee\") + "
                             f"tl.dot({y}, {self.concat_part(e, 1)}, input_precision=\"ieee\")", "cat",
                        f"lanes placed: [rows, BLOCK_part] @ [BLOCK_part, {vec_block(L)}]; {note}".rstrip("; "))

    @staticmethod
    def scatter(e: ir.Slice, g: str) -> str:
        """The gradient of x from the gradient ``g`` [rows, BLOCK_L] of x[lo:hi]: its lanes put back at the
        slice's offset ([rows, BLOCK_X]; a 0/1 product, exact in float32)."""
        return f"tl.dot({g}, {_pick(_lanes(e.lo, e.ty.length), e.ty.length, e.x.ty.length)}, input_precision=\"ieee\")"

    def _row(self, e: ir.Row, perm: bool) -> str:
        if e.name in self.env.binds and not perm:
            return self.env.binds[e.name]
        if e.name in ("q_raw", "k_raw"):
            return self._raw_row(e, vec_offs("D", perm), "D", "_perm" if perm else "")
        raise CodegenError(f"row '{e.name}' is not available in this kernel")

    def _raw_row(self, e: ir.Row, lanes: str, length: str, suffix: str) -> str:
        """The loaded q or k row at lane offsets ``lanes`` ([BLOCK_L]: the whole row's, its rotate-half
        permutation's, or a slice's), [BLOCK_M or BLOCK_N, BLOCK_L]."""
        side, rows, mask, block = ("q", "m_r * stride_qm", "rmask", "BLOCK_M") if e.name == "q_raw" else \
            ("k", "k_rows", "cmask_k", "BLOCK_N")
        return self.put(self.level(e), f"tl.load({side}_base + {rows} + {lanes}[None, :] * stride_{side}d, "
                        f"mask={mask} & {lane_mask(length)}, other=0.0)", side + suffix,
                        f"[{block}, {vec_block(length)}]")

    def layout(self, rowsum: str, operand: ir.Expr, orient: str) -> str:
        """Place a per-row reduction [R] of a vector operand in the caller's scalar layout."""
        side = COL if COL in axes(operand) else ROW if ROW in axes(operand) else None
        if side is None:
            return f"tl.sum({rowsum}, axis=0)"
        if (side == COL and orient == "pair") or (side == ROW and orient == "t"):
            return f"{rowsum}[None, :]"
        return f"{rowsum}[:, None]"

    def sides(self, e: ir.Call) -> tuple[ir.Expr, ir.Expr, bool]:
        """Operands of dot/sqdist as (query side, key side, is_pair)."""
        a, b = e.args
        if COL in axes(a) and COL not in axes(b):
            a, b = b, a
        return a, b, ROW in axes(a) and COL in axes(b)

    def _pairfn(self, e: ir.Call, orient: str, lvl: str, note: str) -> str:
        a, b, pair = self.sides(e)
        if pair:
            A = f"{self.lanes(a, 'pair') if not zero_at_pad(a) else self.value(a)}.to({self.env.dot_dtype})"
            Bk = f"{self.lanes(b, 'k') if not zero_at_pad(b) else self.value(b, 'k')}.to({self.env.dot_dtype})"
            L = vec_block(a.ty.length)
            if orient == "t":
                qk = self.put(lvl, f"tl.dot({Bk}, tl.trans({A}), input_precision=DOT_PRECISION)", "dot",
                              f"[BLOCK_N, {L}] @ [{L}, BLOCK_M] -> [BLOCK_N, BLOCK_M]; {note}")
            else:
                qk = self.put(lvl, f"tl.dot({A}, tl.trans({Bk}), input_precision=DOT_PRECISION)", "dot",
                              f"[BLOCK_M, {L}] @ [{L}, BLOCK_N] -> [BLOCK_M, BLOCK_N]; {note}")
            if e.fn == "dot":
                return qk
            an = self.lanes(a, "pair")
            bn = self.lanes(b, "k")
            q_sq, k_sq = f"tl.sum({an} * {an}, axis=1)", f"tl.sum({bn} * {bn}, axis=1)"
            sq = f"{k_sq}[:, None] + {q_sq}[None, :]" if orient == "t" else f"{q_sq}[:, None] + {k_sq}[None, :]"
            return self.put(lvl, f"{sq} - 2.0 * {qk}", "sqdist", note)
        side_orient = "k" if COL in axes(a) or COL in axes(b) else orient
        x, y = self.lanes(a, side_orient), self.lanes(b, side_orient)
        body = f"({x} * {y})" if e.fn == "dot" else f"(({x} - {y}) * ({x} - {y}))"
        anchor = a if axes(a) & {ROW, COL} else b  # the side that varies by row (w[h] varies by head alone)
        return self.put(lvl, self.layout(f"tl.sum({body}, axis=1)", anchor, orient), e.fn, note)

    def row_norm(self, x: ir.Expr, orient: str, level: str) -> str:
        """‖x‖ of each row [R, 1]."""
        orient = self.orient_of(x, orient)
        return self.cached(("norm", x, orient), level, f"tl.sqrt({self.row_sumsq(x, orient, level)})", "nrm")

    def rms_scale(self, e: ir.Call, orient: str, level: str) -> str:
        """rsqrt(mean(x²) + 1e-6) of ``rmsnorm(x, w)``, per row [R, 1]."""
        orient = self.orient_of(e.args[0], orient)
        sumsq = self.row_sumsq(e.args[0], orient, level)
        return self.cached(("rms", e.args[0], orient), level, f"tl.rsqrt({sumsq} / {e.ty.length} + 1e-6)", "rms")

    def rope_tables(self, e: ir.Call, orient: str, lvl: str) -> tuple[str, str]:
        """cos and sin of the rotation angles of ``rope(x, pos, base)``, shaped like x.

        At a key row's own position j the tile's positions are p0 + t, t < BLOCK_N: the angles' cos and
        sin come from those of p0 f (a row per tile) and of t f (once per kernel) by the angle-addition
        formulas, L transcendentals per key tile instead of BLOCK_N * L (which cost more than the tile's
        dot: tl.cos and tl.sin are libdevice's accurate ones)."""
        orient = self.orient_of(e, orient)
        log2_base = math.log2(float(e.args[2].value))
        L = e.ty.length
        freq = f"_rope_inv_freq({vec_offs(L)}, {L}, {log2_base!r})[None, :]"
        pos = e.args[1].x if isinstance(e.args[1], ir.Cast) else e.args[1]
        rows = _POSITION_ROWS.get((pos.name if isinstance(pos, ir.Sym) else None, _side(e.args[0])))
        if rows is None:
            theta = self.cached(("theta", e, orient), lvl, f"{self.f32(e.args[1], orient)} * {freq}", "theta")
            return (self.cached(("cos", e, orient), lvl, f"tl.cos({theta})", "cos"),
                    self.cached(("sin", e, orient), lvl, f"tl.sin({theta})", "sin"))
        top, key = self.env.level_of(frozenset()), (L, log2_base, rows)
        t_theta = self.cached(("rope_t", *key), top, f"tl.arange(0, {rows})[:, None].to(tl.float32) * {freq}",
                              "theta_t")
        ct = self.cached(("rope_tcos", *key), top, f"tl.cos({t_theta})", "cos_t")
        st = self.cached(("rope_tsin", *key), top, f"tl.sin({t_theta})", "sin_t")
        p0 = self.cached(("rope_p0", e, orient), lvl, f"tl.min({self.value(pos, orient)}).to(tl.float32) * "
                         f"{freq}", "theta_0")  # [1, L]: the tile's first position
        c0 = self.cached(("rope_cos0", e, orient), lvl, f"tl.cos({p0})", "cos_0")
        s0 = self.cached(("rope_sin0", e, orient), lvl, f"tl.sin({p0})", "sin_0")
        return (self.cached(("cos", e, orient), lvl, f"{c0} * {ct} - {s0} * {st}", "cos"),
                self.cached(("sin", e, orient), lvl, f"{s0} * {ct} + {c0} * {st}", "sin"))

    def _rope(self, e: ir.Call, orient: str, lvl: str, note: str) -> str:
        x = self.f32(e.args[0], orient, False)
        xp = self.f32(e.args[0], orient, True)  # x at rotate-half columns (no sign yet)
        L = e.ty.length
        cos, sin = self.rope_tables(e, orient, lvl)
        sign = f"_rope_sign({vec_offs(L)}, {L})[None, :]"
        return self.put(lvl, f"{x} * {cos} + {sign} * {xp} * {sin}", "rope", note)

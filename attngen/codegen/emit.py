"""IR expressions -> Triton statements, with CSE and hoisting by dependence.

Layouts inside a kernel (``BM``/``BN`` = BLOCK_M/BLOCK_N, ``BL`` = a vector block):
    query-side scalar  [BM, 1]      key-side scalar  [1, BN]     pair  [BM, BN]
    query-side vector  [BM, BL]     key-side vector  [BN, BL]    program-level: scalars / [1, BL]
Key-side vector expressions are evaluated in the ``k`` orientation, where key-side
scalars are laid out [BN, 1] so they broadcast against [BN, BL] rows. The dk/dv kernel
works on transposed tiles (the ``t`` orientation: pair [BN, BM], query-side scalar [1, BM],
key-side scalar [BN, 1]), so that its products with the tile need no register transpose.

Each value is emitted once (structural CSE) into the statement list of the level the
kernel assigns to its dependence axes (hoisted out of loops where possible).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..ir import nodes as ir
from ..ir.builtins import UNARY
from . import aggregates, scans, tables
from .analysis import COL, ROW, CodegenError, axes, is_pair
from .embed import inert
from .lanes import accumulate, is_lane_reduction, length, loop
from .layout import CONSTEXPR_SIZES, _in_bounds, _literal, _loads_lanes, _positive, _pow, lane_mask, nonneg, vec_offs
from .rows import RowEmitter

#: Triton spelling of elementwise functions of one argument (the float ones: ir/builtins.py)
_FN1 = {**{n: u.triton for n, u in UNARY.items()}, "abs": "tl.abs({})", "relu": "tl.maximum({}, 0)"}
#: the internal input holding a call's selection, and the lowered token top-k mask's membership test
#: (codegen/select.py)
SEL, IN_LIST = ir.SEL, ir.IN_LIST
_BIN = {"add": "+", "sub": "-", "mul": "*", "div": "/", "eq": "==", "ne": "!=", "lt": "<", "le": "<=",
        "gt": ">", "ge": ">=", "and": "&", "or": "|"}


@dataclass
class KernelEnv:
    """How one kernel binds IR leaves to code, and where each value is computed.

    ``level_of(axes)`` names the statement list for a value with those axes;
    ``binds`` maps Sym/Row names (score, p, o, kmean, ...) to existing variables;
    ``tile`` is the shape of a pair value (query rows, keys: the block selection's keys are blocks).
    """

    attn: ir.Attention
    level_of: Callable[[frozenset], str]
    stmts: dict[str, list[str]]
    binds: dict[str, str] = field(default_factory=dict)
    dot_dtype: str = "DOT_DTYPE"
    tile: tuple[str, str] = ("BLOCK_M", "BLOCK_N")
    scan_mode: str = "fwd"  # how key scans walk the keys here: fwd, dq or dkdv (codegen/scans.py)


class Emitter(RowEmitter):
    def __init__(self, env: KernelEnv, prefix: str = "t"):
        self.env = env
        self.prefix = prefix
        self.memo: dict[tuple, str] = {}
        self.counter = 0
        self.decls = {d.name: d for d in env.attn.inputs}

    # ---- statement plumbing
    def fresh(self, hint: str = "") -> str:
        self.counter += 1
        return f"{self.prefix}{self.counter}{('_' + hint) if hint else ''}"

    def put(self, level: str, code: str, hint: str = "", note: str = "") -> str:
        name = self.fresh(hint)
        self.env.stmts[level].append(f"{name} = {code}" + (f"  # {note}" if note else ""))
        return name

    def cached(self, key: tuple, level: str, code: str, hint: str = "") -> str:
        """A derived value (row norm, rope angles...) emitted once per kernel and reused, the
        backward included; the first request places it."""
        if key not in self.memo:
            self.memo[key] = self.put(level, code, hint)
        return self.memo[key]

    def forget(self, known: set, assigned: set[str]) -> None:
        """Drop the values memoized since ``known`` whose variables are among ``assigned`` (the names a
        loop's or the partial tiles' own statement list assigns): other code computes them again."""
        for key in set(self.memo) - known:
            if self.memo[key] in assigned:
                del self.memo[key]

    def level(self, e: ir.Expr) -> str:
        return self.env.level_of(axes(e))

    def tile(self, orient: str) -> str:
        """The shape of a pair tile in ``orient`` (transposed in 't')."""
        rows, keys = self.env.tile
        return f"{keys}, {rows}" if orient == "t" else f"{rows}, {keys}"

    def provenance(self, e: ir.Expr) -> str:
        """``from FILE:LINE STAGE`` for a node written in the spec (not for synthesized ones)."""
        s = e.span
        if s is None:
            return ""
        stage = next((name for name, st in self.env.attn.stage_spans
                      if st.line <= s.line <= st.end_line), "")
        return f"from {inert(s.file.rsplit('/', 1)[-1])}:{s.line} {stage}".rstrip()

    # ---- values
    @staticmethod
    def orient_of(e: ir.Expr, orient: str) -> str:
        """The layout ``e`` takes when asked for in ``orient`` ('pair', 'k' or 't', module doc):
        one-sided vectors keep their rows ([BM, BL] or [BN, BL]), pair rows take the tile's layout lane
        by lane (lanes.py); key-side scalars of transposed tiles are laid out as in 'k'; values on
        neither side are the same everywhere."""
        ax = axes(e)
        if e.ty.is_vec and not (ROW in ax and COL in ax):
            return "k" if COL in ax else "pair"
        if orient == "t":
            return "t" if ROW in ax else "k" if COL in ax else "pair"
        return orient if COL in ax else "pair"

    def value(self, e: ir.Expr, orient: str = "pair", perm: bool = False) -> str:
        """Code name of ``e``'s value in the layout of ``orient`` (see ``orient_of``)."""
        key = (e, self.orient_of(e, orient), perm if e.ty.is_vec else False)
        if key not in self.memo:
            self.memo[key] = self._emit(e, key[1], key[2])
        return self.memo[key]

    def f32(self, e: ir.Expr, orient: str = "pair", perm: bool = False) -> str:
        v = self.value(e, orient, perm)
        loaded = e.x if isinstance(e, ir.Slice) and _loads_lanes(e) else e  # a slice loaded at its offset
        if isinstance(loaded, ir.Row) and loaded.name in ("q_raw", "k_raw") or \
                (isinstance(loaded, ir.Load) and loaded.ty.is_vec):
            return f"{v}.to(tl.float32)"
        return v

    def _emit(self, e: ir.Expr, orient: str, perm: bool) -> str:
        if isinstance(e, ir.Const):
            return _literal(e.value)
        if isinstance(e, ir.Sym):
            return self._sym(e, orient)
        if isinstance(e, ir.Param):
            return f"x_{e.name}"  # prefixed: a scalar input may not shadow kernel locals
        if isinstance(e, ir.Row):
            return self._row(e, perm)
        if isinstance(e, ir.Load):
            return self._load(e, orient, perm)
        if isinstance(e, ir.Agg):  # the forward and pre kernels bind theirs (aggregates.forward_passes)
            return self.put(self.level(e), aggregates.load(self, e, orient), "agg")
        if isinstance(e, ir.Scan):
            return scans.value(self, e, orient)
        if isinstance(e, ir.Slice):
            return self._slice(e, orient, perm)
        lvl, note = self.level(e), self.provenance(e)
        if isinstance(e, ir.Cast):
            if e.ty.is_vec:
                return self.value(e.x, orient, perm)
            if isinstance(e.x, ir.Sym) and e.x.name in CONSTEXPR_SIZES and e.x.name not in self.env.binds:
                # a constexpr is a Python int in the kernel: no .to(); a float32 scalar of its value
                return self.put(lvl, f"tl.full([], {e.x.name}, tl.float32)", note=note)
            return self.put(lvl, f"{self.value(e.x, orient)}.to(tl.float32)", note=note)
        if isinstance(e, ir.Unary):
            x = self.f32(e.x, orient, perm)
            return self.put(lvl, f"({x} == 0)" if e.op == "not" else f"-{x}", note=note)
        if isinstance(e, ir.Binary):
            return self.put(lvl, self._binary(e, orient, perm), note=note)
        if isinstance(e, ir.Call):
            return self._call(e, orient, perm, lvl, note)
        raise CodegenError(f"cannot generate code for {e!r}")

    def _sym(self, e: ir.Sym, orient: str) -> str:
        n = e.name
        if n in self.env.binds:  # a bind may name the key-row orientation apart ("jb@k": [NBP, 1] not [1, NBP])
            return self.env.binds.get(f"{n}@{orient}", self.env.binds[n])
        if n == "j":
            return "j_k" if orient == "k" else "j_c"
        if n in ("i", "m"):
            return f"{n}_c" if orient == "t" else f"{n}_r"
        return n  # b h hk, sizes, scale: kernel scalars

    def load_address(self, e: ir.Load, orient: str, perm: bool = False, strides: str | None = None,
                     lanes: tuple[str, str] | None = None, lane: str | None = None) -> tuple[str, str]:
        """(pointer offset code, validity mask code) of a load: bounds-checked, so never out of range.

        ``strides`` names another stride set (a gradient buffer's) for the same indices; ``lanes``
        (offsets code, length) loads a slice of a row instead of the whole row, ``lane`` (the code of a
        lane below the row's length) one element of it.
        """
        d = self.decls[e.name]
        orient = self.orient_of(e, orient)
        strides = strides or f"{e.name}_s"
        terms, checks = [], []
        for pos, idx in enumerate(e.indices):
            code = self.value(idx, orient)
            terms.append(f"{code} * {strides}{pos}")
            if not _in_bounds(idx, d.dims[pos]):
                dim = str(d.dims[pos])
                checks.append(f"({code} >= 0) & ({code} < {dim})" if not nonneg(idx) else f"({code} < {dim})")
        ax = axes(e)
        if ROW in ax:
            checks.append("rmask_c" if orient == "t" else "rmask")
        if COL in ax:
            checks.append("cmask_k" if orient in ("k", "t") else "cmask")
        if e.ty.is_vec and lane is not None:
            terms.append(f"{lane} * {strides}{len(e.indices)}")
        elif e.ty.is_vec:
            offs, L = lanes or (vec_offs(e.ty.length, perm), e.ty.length)
            terms.append(f"{offs}[None, :] * {strides}{len(e.indices)}")
            checks.append(lane_mask(L))
        return " + ".join(terms) if terms else "0", " & ".join(checks) if checks else ""

    def _load(self, e: ir.Load, orient: str, perm: bool) -> str:
        off, mask = self.load_address(e, orient, perm)
        d = self.decls[e.name]
        cast = ".to(tl.float32)" if d.is_float and not e.ty.is_vec else ""
        mask_arg = f", mask={mask}, other=0" if mask else ""
        return self.put(self.level(e), f"tl.load({e.name}_ptr + {off}{mask_arg}){cast}", e.name,
                        self.provenance(e))

    def _binary(self, e: ir.Binary, orient: str, perm: bool) -> str:
        if e.op in ("and", "or", "eq", "ne", "lt", "le", "gt", "ge"):
            a, b = self.value(e.a, orient), self.value(e.b, orient)
            return f"({a}) {_BIN[e.op]} ({b})"
        a, b = self.f32(e.a, orient, perm), self.f32(e.b, orient, perm)
        if e.op in ("floordiv", "mod"):
            if e.ty.kind == "int" and nonneg(e.a) and _positive(e.b):
                return f"{a} {'//' if e.op == 'floordiv' else '%'} {b}"
            fn = "_floordiv" if e.op == "floordiv" else "_mod"
            return f"{fn}{'_f' if e.ty.kind == 'float' else ''}({a}, {b})"
        if e.op == "pow":
            return _pow(a, b, e.b)
        return f"{a} {_BIN[e.op]} {b}"

    def _call(self, e: ir.Call, orient: str, perm: bool, lvl: str, note: str) -> str:
        fn = e.fn
        if fn in _FN1:
            return self.put(lvl, _FN1[fn].format(self.f32(e.args[0], orient, perm)), note=note)
        if fn in ("floor", "ceil"):
            return self.put(lvl, f"tl.{fn}({self.f32(e.args[0], orient)}).to(tl.int32)", note=note)
        if fn in ("min", "max"):
            a, b = (self.f32(x, orient, perm) for x in e.args)
            return self.put(lvl, f"tl.{fn}imum({a}, {b})", note=note)
        if fn == "clamp":
            x, lo, hi = (self.f32(a, orient, perm) for a in e.args)
            return self.put(lvl, f"tl.minimum(tl.maximum({x}, {lo}), {hi})", note=note)
        if fn == "where":
            c = self.value(e.args[0], orient)
            a, b = (self.f32(x, orient, perm) for x in e.args[1:])
            return self.put(lvl, f"tl.where({c}, {a}, {b})", note=note)
        if is_lane_reduction(e, self.decls):
            return self._reduce_lanes(e, orient, lvl, note)
        if tables.match(e, self.decls) is not None:
            return tables.value(self, e, orient, lvl, note)
        if fn in ("dot", "sqdist"):
            return self._pairfn(e, orient, lvl, note)
        if fn == "concat":
            return self._concat(e, orient, perm, lvl, note)
        if fn in ("row_sum", "row_mean", "row_max", "row_min"):
            return self.put(lvl, self.layout(self.row_reduction(e, orient), e.args[0], orient), note=note)
        if fn == "norm":
            x = self.lanes(e.args[0], orient)
            return self.put(lvl, self.layout(f"tl.sqrt(tl.sum({x} * {x}, axis=1))", e.args[0], orient), note=note)
        if fn == "l2norm":
            nrm = self.row_norm(e.args[0], orient, lvl)
            return self.put(lvl, f"{self.f32(e.args[0], orient, perm)} / tl.maximum({nrm}, 1e-6)", note=note)
        if fn == "rmsnorm":
            x = self.f32(e.args[0], orient, perm)
            w = self.f32(e.args[1], orient, perm)
            return self.put(lvl, f"{x} * {self.rms_scale(e, orient, lvl)} * {w}", note=note)
        if fn == "rope":
            return self._rope(e, orient, lvl, note)
        if fn == IN_LIST:
            return self._in_list(e, orient, lvl)
        raise CodegenError(f"no code generator for {fn}()")

    def _reduce_lanes(self, e: ir.Call, orient: str, lvl: str, note: str) -> str:
        """A reduction of pair rows (lanes.py): its tile accumulated lane by lane, without tensor cores."""
        lanes = LaneEmitter(self, orient)
        acc = self.fresh("pv")
        init, step, final = accumulate(e, acc, [lanes.value(x) for x in e.args])
        tile = self.tile(orient)
        why = f"[{tile}] lane by lane: pair rows, the slow path (no tensor cores)"
        self.env.stmts[lvl].append(f"{acc} = {init.format(tile=tile)}  # {'; '.join(filter(None, (why, note)))}\n"
                                   + loop(lanes.d, length(e), lanes.body + [step]))
        return self.put(lvl, final, note=note) if final else acc

    def _in_list(self, e: ir.Call, orient: str, lvl: str) -> str:
        """``_in_list(b, hs, m, j, K)``: key j is in the ascending list of the K keys row (b, hs, m)
        selected (-1 after its last), for the tile's keys at ``start_n``; int64 offsets, as
        B·H·M·K may pass 2^31. Built as a [BM, BN] tile (transposed for the 't' layout)."""
        def index(x: ir.Expr) -> str:  # a constant 0: the one list of every head
            return str(x.value) if isinstance(x, ir.Const) else f"{self.value(x)}.to(tl.int64)"

        b, hs, m = (index(x) for x in e.args[:3])
        j, k = self.value(e.args[3]), e.args[4].value
        row = f"{SEL}_ptr + {b} * {SEL}_s0 + {hs} * {SEL}_s1 + {m} * {SEL}_s2"
        tile = f"_in_list({row}, {SEL}_s3, start_n, {j}, rmask, {k}, {k.bit_length()}, BLOCK_M, BLOCK_N)"
        return self.put(lvl, f"tl.trans({tile})" if orient == "t" else tile, "sel")


class LaneEmitter(Emitter):
    """Lane ``d`` of rows inside one loop over the lanes of pair rows (lanes.py), written to ``body``.

    A pair row's lane is a tile ([BM, BN]; [BN, BM] in the 't' orientation), a one-sided row's lane
    its column ([BM, 1] query side, [1, BN] key side; [1, BM] and [BN, 1] in 't'), and a row of every
    query and key (w, w[h]) gives a [R, 1] (R = 1, or BM where a tile's rows are heads). Scalars are
    the kernel's own values (``outer``), emitted before the loop.
    """

    def __init__(self, outer: Emitter, orient: str):
        super().__init__(outer.env, outer.prefix)
        self.outer, self.orient = outer, orient
        self.d = outer.fresh("d")
        self.body: list[str] = []

    def fresh(self, hint: str = "") -> str:
        return self.outer.fresh(hint)

    def put(self, level: str, code: str, hint: str = "", note: str = "") -> str:
        name = self.fresh(hint)
        self.body.append(f"{name} = {code}" + (f"  # {note}" if note else ""))
        return name

    def value(self, e: ir.Expr, orient: str = "pair", perm: bool = False) -> str:
        if not e.ty.is_vec:
            return self.outer.value(e, self.orient)
        if e not in self.memo:
            self.memo[e] = self._lane(e)
        return self.memo[e]

    def f32(self, e: ir.Expr, orient: str = "pair", perm: bool = False) -> str:
        return self.value(e) if e.ty.is_vec else self.outer.f32(e, self.orient)

    def column(self, e: ir.Expr, code: str) -> str:
        """``code``, [R] per row of one-sided row ``e``'s tile, placed against the pair tile."""
        ax = axes(e)
        across = (COL in ax and self.orient != "t") or (ROW in ax and COL not in ax and self.orient == "t")
        return f"{code}[None, :]" if across else f"{code}[:, None]"

    def _lane(self, e: ir.Expr) -> str:
        if not is_pair(e):  # a one-sided row: column d of its tile
            tile = self.outer.f32(e, self.orient)
            col = f"tl.sum(tl.where({vec_offs(e.ty.length)}[None, :] == {self.d}, {tile}, 0.0), axis=1)"
            return self.put("", self.column(e, col), "lane")
        if isinstance(e, ir.Load):  # a row of an input per pair (e[t]): lane d gathered
            off, mask = self.outer.load_address(e, self.orient, lane=self.d)
            return self.put("", f"tl.load({e.name}_ptr + {off}, mask={mask}, other=0).to(tl.float32)", e.name,
                            self.provenance(e))
        if isinstance(e, ir.Cast):
            return self.value(e.x)
        if isinstance(e, ir.Slice) or (isinstance(e, ir.Call) and e.fn in ("rope", "concat", "l2norm", "rmsnorm")):
            raise CodegenError("this function of a pair row mixes its lanes: the kernels cannot run it", e.span)
        return self._emit(e, self.orient, False)



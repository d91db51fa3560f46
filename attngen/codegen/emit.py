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

import math
from dataclasses import dataclass, field
from typing import Callable

from ..ir import nodes as ir
from ..ir.builtins import UNARY
from .analysis import COL, ROW, CodegenError, axes, is_pair
from .embed import inert
from .lanes import accumulate, is_lane_reduction, length, loop

#: Triton spelling of elementwise functions of one argument (the float ones: ir/builtins.py)
_FN1 = {**{n: u.triton for n, u in UNARY.items()}, "abs": "tl.abs({})", "relu": "tl.maximum({}, 0)"}
#: the internal input holding a call's selection, and the lowered token top-k mask's membership test
#: (codegen/select.py)
SEL, IN_LIST = ir.SEL, ir.IN_LIST
_BIN = {"add": "+", "sub": "-", "mul": "*", "div": "/", "eq": "==", "ne": "!=", "lt": "<", "le": "<=",
        "gt": ">", "ge": ">=", "and": "&", "or": "|"}


def statements(lines: list[str]) -> str:
    """A block of emitted statements as template text (``pass`` when empty)."""
    return "\n".join(lines) or "pass"


#: sizes the kernels take as constexprs (head dims: masks on full rows fold away)
CONSTEXPR_SIZES = ("D", "DV")


def vec_block(length: str) -> str:
    """The constexpr block size name of a vector length ('D' -> BLOCK_D, '64' -> BLOCK_L64)."""
    return f"BLOCK_{length}" if not length.isdigit() else f"BLOCK_L{length}"


def vec_offs(length: str, perm: bool = False) -> str:
    base = length if not length.isdigit() else f"L{length}"
    return f"{'perm' if perm else 'offs'}_{base}"


def lane_mask(length: str) -> str:
    """[1, BLOCK_L]: the lanes of a row's tile inside its length (the prelude's ``dmask_``)."""
    return f"dmask_{vec_offs(length).removeprefix('offs_')}[None, :]"


#: functions that keep a lane's 0 at 0 when their (first) argument's is (f(0) = 0)
_ZERO_KEEPING = ("relu", "abs", "tanh", "sin", "sqrt", "erf", "rope", "l2norm", "rmsnorm")


def _lanes(lo: int, length: str, perm: bool = False) -> str:
    """[BLOCK_L] lane offsets of a row of ``length`` lanes starting at lane ``lo`` of a longer one."""
    offs = vec_offs(length, perm)
    return offs if lo == 0 else f"({lo} + {offs})"


def _pick(lanes: str, length: str, width: str) -> str:
    """[BLOCK_L, BLOCK_W] of 0/1 (``_lanes_of``): row t picks lane ``lanes[t]`` of a row of ``width``
    lanes; x @ trans(it) takes those lanes of x, g @ it puts g's lanes back there."""
    return f"_lanes_of({lanes}, {lane_mask(length).removesuffix('[None, :]')}, {vec_block(width)})"


def pick_note(length: str, width: str, back: bool = False) -> str:
    """The shape comment of a 0/1 lane product (taking lanes, or putting them back)."""
    a, b = (vec_block(length), vec_block(width))
    return f"[rows, {a}] @ [{a}, {b}] -> [rows, {b}]" if back else f"[rows, {b}] @ [{b}, {a}] -> [rows, {a}]"


def _loads_lanes(e: ir.Slice) -> bool:
    """A slice the kernels load at its offset (of q, k or an input row), not take from a computed row."""
    return isinstance(e.x, ir.Load) or (isinstance(e.x, ir.Row) and e.x.name in ("q_raw", "k_raw"))


def zero_at_pad(e: ir.Expr) -> bool:
    """Whether a row's lanes past its length (a tile is a power of two wide) are 0, as loads make them:
    what a dot or a norm over the whole tile may add without a mask. Conservative: exp(q), q + 1.0 and
    sigmoid(q) are not (they are 1, 1 and 0.5 there)."""
    if isinstance(e, (ir.Row, ir.Load, ir.Slice)):  # a slice: masked loads, or the 0/1 product's empty rows
        return True
    if isinstance(e, ir.Call) and e.fn == "concat":  # placed by 0/1 products: nothing past its lanes
        return True
    if isinstance(e, ir.Cast):
        return zero_at_pad(e.x)
    if isinstance(e, ir.Unary):
        return e.op == "neg" and zero_at_pad(e.x)
    if isinstance(e, ir.Binary):
        a_zero = e.a.ty.is_vec and zero_at_pad(e.a)
        b_zero = e.b.ty.is_vec and zero_at_pad(e.b)
        if e.op == "mul":  # 0 * a finite number (a scalar factor, or another row's lane)
            return (a_zero and (not e.b.ty.is_vec or b_zero)) or (b_zero and not e.a.ty.is_vec)
        if e.op in ("add", "sub"):
            return a_zero and b_zero
        if e.op == "div":
            return a_zero and not e.b.ty.is_vec
        return False
    if isinstance(e, ir.Call):
        return e.fn in _ZERO_KEEPING and zero_at_pad(e.args[0])
    return False


def nonneg(e: ir.Expr) -> bool:
    """Statically non-negative integer (so C and Python division agree)."""
    if isinstance(e, ir.Const):
        return not isinstance(e.value, bool) and e.value >= 0
    if isinstance(e, ir.Sym):  # not i: m + N - M is negative for the first M - N rows when M > N
        return e.ty.kind == "int" and e.name != "i"
    if isinstance(e, ir.Binary) and e.op in ("add", "mul", "floordiv", "mod"):
        return nonneg(e.a) and nonneg(e.b)
    if isinstance(e, ir.Call) and e.fn in ("abs", "relu"):
        return True
    if isinstance(e, ir.Call) and e.fn in ("min", "clamp"):
        return all(nonneg(x) for x in e.args)
    if isinstance(e, ir.Call) and e.fn == "max":
        return any(nonneg(x) for x in e.args)
    return False


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


class Emitter:
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
        if is_lane_reduction(e):
            return self._reduce_lanes(e, orient, lvl, note)
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
        """cos and sin of the rotation angles of ``rope(x, pos, base)``, shaped like x."""
        orient = self.orient_of(e, orient)
        pos = self.f32(e.args[1], orient)
        log2_base = math.log2(float(e.args[2].value))
        L = e.ty.length
        theta = self.cached(("theta", e, orient), lvl,
                            f"{pos} * _rope_inv_freq({vec_offs(L)}, {L}, {log2_base!r})[None, :]", "theta")
        return (self.cached(("cos", e, orient), lvl, f"tl.cos({theta})", "cos"),
                self.cached(("sin", e, orient), lvl, f"tl.sin({theta})", "sin"))

    def _rope(self, e: ir.Call, orient: str, lvl: str, note: str) -> str:
        x = self.f32(e.args[0], orient, False)
        xp = self.f32(e.args[0], orient, True)  # x at rotate-half columns (no sign yet)
        L = e.ty.length
        cos, sin = self.rope_tables(e, orient, lvl)
        sign = f"_rope_sign({vec_offs(L)}, {L})[None, :]"
        return self.put(lvl, f"{x} * {cos} + {sign} * {xp} * {sin}", "rope", note)


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


def _literal(v) -> str:
    if isinstance(v, bool):
        return "True" if v else "False"
    if isinstance(v, float):
        if v == float("inf"):
            return 'float("inf")'
        if v == float("-inf"):
            return 'float("-inf")'
    return repr(v)


def _pow(a: str, b: str, exponent: ir.Expr) -> str:
    """``a ** b``: repeated products for small constant integer exponents, else exp2/log2 (a > 0)."""
    if isinstance(exponent, ir.Const) and float(exponent.value).is_integer() and 0 <= exponent.value <= 8:
        n = int(exponent.value)
        return "1.0" if n == 0 else "(" + " * ".join([f"({a})"] * n) + ")"
    if exponent.ty.kind == "int" and not isinstance(exponent, ir.Const):
        raise CodegenError("integer ** with a non-constant exponent is not supported by the kernels")
    return f"tl.exp2({b} * tl.log2({a}))"


def _positive(e: ir.Expr) -> bool:
    """Statically >= 1: a positive literal or a size (so C and Python division agree, no zero)."""
    if isinstance(e, ir.Const):
        return not isinstance(e.value, bool) and e.value > 0
    return isinstance(e, ir.Sym) and e.name in ("B", "H", "HK", "M", "N", "D", "DV")


def _in_bounds(idx: ir.Expr, dim) -> bool:
    """Index patterns that are in range by construction (masked rows/keys aside)."""
    if not isinstance(idx, ir.Sym):
        return False
    # not (i, N): i = m + N - M is negative for the first M - N rows when M > N
    return (idx.name, dim) in {("b", "B"), ("h", "H"), ("hk", "HK"), ("m", "M"), ("j", "N")}

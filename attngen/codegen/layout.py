"""Tile layouts and the code pieces every emitter shares: statement blocks, vector block and offset
names, lane masks and 0/1 lane products, and what is statically known of a value (0 in a row's
padding lanes, non-negative, positive, in bounds).

Layouts inside a kernel (``BM``/``BN`` = BLOCK_M/BLOCK_N, ``BL`` = a vector block): see emit.py.
"""

from __future__ import annotations

from ..ir import nodes as ir
from .analysis import CodegenError


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

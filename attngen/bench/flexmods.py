"""An attention's score and mask as FlexAttention ``score_mod`` / ``mask_mod``.

FlexAttention vmaps ``score_mod(score, b, h, q_idx, kv_idx)`` and
``mask_mod(b, h, q_idx, kv_idx)`` over the index grid (0-d int32 tensors inside the
vmap; under torch.compile the functions are traced into its kernels), so the IR is
evaluated here one pair at a time:

    i = q_idx + (N - M)    j = kv_idx    m = q_idx    hk = h // (H // HK)

``dot(q, k)`` is flex's ``score`` (flex is called with ``scale=1.0``, or with the
constant factor when the score is just ``dot(q, k) * c``). Sizes, ``scale`` and scalar
inputs are Python numbers, and every subexpression made only of them is folded to a
constant first, with the reference's semantics (:func:`attngen.reference.exprs.evaluate`),
so the traced functions create no tensors. Loads index the captured input tensors
(``doc[b, i]``); an index that may leave its dim is clamped and the load reads 0 there,
as in the kernels. Integer ``//`` and ``%`` floor; a division by zero gives 0.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Callable, Mapping, Union

import torch

from ..ir import nodes as ir
from ..ir.types import BOOL, INT
from ..reference.exprs import _ELEMENTWISE, Env, evaluate  # the reference's function table: same semantics
from .peers import check_flex, is_qk_dot

Value = Union[torch.Tensor, int, float, bool]

_OPERATORS = {"add": operator.add, "sub": operator.sub, "mul": operator.mul, "div": operator.truediv,
              "pow": operator.pow, "eq": operator.eq, "ne": operator.ne, "lt": operator.lt,
              "le": operator.le, "gt": operator.gt, "ge": operator.ge}


@dataclass
class FlexMods:
    """What to pass to ``flex_attention`` for one attention at fixed sizes."""

    score_mod: Callable | None  # None: flex's plain ``score * scale``
    mask_mod: Callable | None  # None: every pair allowed (no block mask)
    scale: float
    mask_b: bool  # the mask depends on b: create_block_mask needs B (else B=None)
    mask_h: bool  # the mask depends on h or hk: create_block_mask needs H (else H=None)


def translate(a: ir.Attention, sizes: Mapping[str, int], scale: float,
              inputs: Mapping[str, Union[torch.Tensor, float]]) -> FlexMods:
    """``a`` as flex mods for ``sizes`` (B H HK M N D DV) and runtime ``scale``.

    ``inputs``: the keyword inputs of the call, captured by reference (an in-place
    update of a tensor is seen by the next call). Raises :class:`~.peers.Unsupported`
    when flex cannot run ``a``.
    """
    check_flex(a)
    params = {d.name: float(inputs[d.name]) for d in a.inputs if d.dims is None}
    fold = _static_folder(sizes, scale, params)
    score = ir.transform(a.score, fold)
    mask = ir.transform(a.mask, fold) if a.mask is not None else None
    tensors = {n: t for n, t in inputs.items() if isinstance(t, torch.Tensor)}
    ranges = {"b": sizes["B"], "h": sizes["H"], "hk": sizes["HK"], "j": sizes["N"], "m": sizes["M"]}
    if sizes["M"] <= sizes["N"]:  # i = m + N - M then stays in [0, N)
        ranges["i"] = sizes["N"]

    def env(b, h, q_idx, kv_idx, score_value, fdtype) -> _Pair:
        i = q_idx if sizes["M"] == sizes["N"] else q_idx + (sizes["N"] - sizes["M"])
        syms = {"b": b, "h": h, "hk": h // (sizes["H"] // sizes["HK"]), "i": i, "j": kv_idx, "m": q_idx}
        return _Pair(syms, score_value, tensors, ranges, fdtype)

    def mask_mod(b, h, q_idx, kv_idx):
        allowed = env(b, h, q_idx, kv_idx, None, torch.float32).ev(mask)
        if isinstance(allowed, bool):  # the mask folded to a constant
            return torch.full_like(kv_idx, allowed, dtype=torch.bool)
        return allowed

    def score_mod(s, b, h, q_idx, kv_idx):
        return env(b, h, q_idx, kv_idx, s, s.dtype).ev(score).to(s.dtype)

    factor = _constant_factor(score)
    return FlexMods(score_mod if factor is None else None, mask_mod if mask is not None else None,
                    1.0 if factor is None else factor,
                    mask is not None and ir.uses(mask, "b"), mask is not None and ir.uses(mask, "h", "hk"))


def _constant_factor(score: ir.Expr) -> float | None:
    """c when the (folded) score is ``dot(q, k)`` (c = 1) or ``dot(q, k) * c``; else None."""
    if is_qk_dot(score):
        return 1.0
    if isinstance(score, ir.Binary) and score.op == "mul":
        for x, c in ((score.a, score.b), (score.b, score.a)):
            if is_qk_dot(x) and isinstance(c, ir.Const):
                return float(c.value)
    return None


def _static_folder(sizes: Mapping[str, int], scale: float, params: Mapping[str, float]):
    """A bottom-up rewrite turning sizes, scale, scalar inputs and all-constant nodes into constants."""
    f64, cpu = torch.float64, torch.device("cpu")
    env = Env(sizes, {}, {}, {}, f64, cpu)

    def const(value, ty) -> ir.Const:
        value = bool(value) if ty == BOOL else int(value) if ty == INT else float(value)
        return ir.Const(value, ty)

    def fold(e: ir.Expr) -> ir.Expr:
        if isinstance(e, ir.Sym) and e.name in sizes:
            return const(sizes[e.name], e.ty)
        if isinstance(e, ir.Sym) and e.name == "scale":
            return const(scale, e.ty)
        if isinstance(e, ir.Param):
            return const(params[e.name], e.ty)
        kids = ir.children(e)
        if kids and not e.ty.is_vec and not isinstance(e, ir.Load) and all(isinstance(c, ir.Const) for c in kids):
            return const(evaluate(e, env).item(), e.ty)
        return e

    return fold


class _Pair:
    """The values of one (b, h, i, j) pair inside flex's vmap; :meth:`ev` evaluates an IR node."""

    def __init__(self, syms: dict, score: torch.Tensor | None, tensors: Mapping[str, torch.Tensor],
                 ranges: Mapping[str, int], fdtype: torch.dtype):
        self.syms, self.score, self.tensors, self.ranges, self.fdtype = syms, score, tensors, ranges, fdtype
        self.memo: dict = {}

    def ev(self, e: ir.Expr) -> Value:
        if e not in self.memo:
            self.memo[e] = self._ev(e)
        return self.memo[e]

    def _ev(self, e: ir.Expr) -> Value:
        if isinstance(e, ir.Const):
            return e.value
        if isinstance(e, ir.Sym):
            return self.syms[e.name]
        if isinstance(e, ir.Load):
            return self._load(e)
        if isinstance(e, ir.Cast):
            x = self.ev(e.x)
            return x.to(self.fdtype) if isinstance(x, torch.Tensor) else float(x)
        if isinstance(e, ir.Unary):
            x = self.ev(e.x)
            if e.op == "neg":
                return -x
            return torch.logical_not(x) if isinstance(x, torch.Tensor) else not x
        if isinstance(e, ir.Binary):
            return self._binary(e.op, self.ev(e.a), self.ev(e.b))
        if isinstance(e, ir.Call):
            return self._call(e)
        raise TypeError(f"flex translation: unexpected IR node {e!r}")  # check_flex admits no other

    def _binary(self, op: str, a: Value, b: Value) -> Value:
        if op in _OPERATORS:
            return _OPERATORS[op](a, b)
        if op in ("and", "or"):
            for x, y in ((a, b), (b, a)):
                if isinstance(x, bool):  # a constant side decides or drops out
                    return y if x == (op == "and") else x
            return torch.logical_and(a, b) if op == "and" else torch.logical_or(a, b)
        fn = operator.floordiv if op == "floordiv" else operator.mod  # floor semantics, as in Python
        if isinstance(b, torch.Tensor) and not b.is_floating_point():
            zero = b == 0
            return torch.where(zero, 0, fn(a, torch.where(zero, 1, b)))
        if isinstance(b, int) and not isinstance(a, float) and b == 0:
            return a * 0
        return fn(a, b)

    def _call(self, e: ir.Call) -> Value:
        if is_qk_dot(e):
            return self.score
        args = [self.ev(x) for x in e.args]
        if e.fn in _ELEMENTWISE:
            return _ELEMENTWISE[e.fn](args[0])
        if e.fn in ("floor", "ceil"):
            return (torch.floor if e.fn == "floor" else torch.ceil)(args[0]).to(torch.int64)
        if e.fn == "min":
            return _min(*args)
        if e.fn == "max":
            return _max(*args)
        if e.fn == "clamp":
            return _min(_max(args[0], args[1]), args[2])
        if e.fn == "where":
            c, x, y = args
            if isinstance(c, bool):
                return x if c else y
            return torch.where(c, x, y)
        raise TypeError(f"flex translation: unexpected function {e.fn}()")  # check_flex admits no other

    def _load(self, e: ir.Load) -> Value:
        t = self.tensors[e.name]
        zero = False if t.dtype == torch.bool else 0 if not t.is_floating_point() else 0.0
        index, valid = [], None
        for axis, x in enumerate(e.indices):
            n = t.shape[axis]
            ix = self.ev(x)
            if isinstance(ix, int):
                if not 0 <= ix < n:
                    return zero
            elif not (isinstance(x, ir.Sym) and self.ranges.get(x.name, n + 1) <= n):
                ok = (ix >= 0) & (ix < n)
                valid = ok if valid is None else valid & ok
                ix = ix.clamp(0, n - 1)
            index.append(ix)
        value = t[tuple(index)]
        return value if valid is None else torch.where(valid, value, zero)


def _min(a: Value, b: Value) -> Value:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.minimum(a, b)
    t, c = (a, b) if isinstance(a, torch.Tensor) else (b, a)
    return torch.clamp(t, max=c)


def _max(a: Value, b: Value) -> Value:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return torch.maximum(a, b)
    t, c = (a, b) if isinstance(a, torch.Tensor) else (b, a)
    return torch.clamp(t, min=c)

"""Eager evaluation of IR expressions on broadcast torch tensors.

Every scalar evaluates to a tensor broadcastable to one 4-d grid ``[B, H, M, X]``:
X is the key axis N for pair stages, the key-block axis NB for block selection,
and 1 for per-row stages (the q prologue, the sink, out). The k prologue uses
``[B, H, 1, N]``. Rows carry one more trailing dim (``[B, H, M, X, L]``). Integers
are int64, booleans bool, floats the compute dtype (the dtype of q).

Decisions where LANGUAGE.md is silent:
  * integer ``//`` and ``%`` follow Python (floor) semantics; an integer division by
    zero gives 0 rather than an error, so masked-out pairs cannot crash a call;
  * a load whose index is out of range reads 0 (False for bool inputs), like a
    kernel's masked load;
  * rope angles are computed in at least float32, whatever the compute dtype.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping

import torch
import torch.nn.functional as F

from ..ir import nodes as ir
from ..ir.builtins import UNARY

_ELEMENTWISE = {
    **{n: getattr(F, u.torch[2:]) if u.torch.startswith("F.") else getattr(torch, u.torch) for n, u in UNARY.items()},
    "abs": torch.abs, "relu": torch.relu,
}
_COMPARE = {"eq": torch.eq, "ne": torch.ne, "lt": torch.lt, "le": torch.le, "gt": torch.gt, "ge": torch.ge}
_ARITH = {"add": torch.add, "sub": torch.sub, "mul": torch.mul, "div": torch.div, "pow": torch.pow,
          "and": torch.logical_and, "or": torch.logical_or}


@dataclass
class Env:
    """What an expression may name, as tensors broadcastable to one grid.

    ``live`` (bool, broadcastable to the grid): when set, every float value that
    varies over the grid is replaced by 1 outside ``live``. Those positions are
    discarded by the caller anyway; replacing them keeps ``0 * inf`` out of the
    backward pass (``log(i - j)`` on masked pairs would otherwise turn a gradient
    into NaN).
    """

    sizes: Mapping[str, int]
    syms: Mapping[str, torch.Tensor]
    rows: Mapping[str, torch.Tensor]
    inputs: Mapping[str, torch.Tensor]
    dtype: torch.dtype
    device: torch.device
    live: torch.Tensor | None = None
    memo: dict = field(default_factory=dict)
    #: where row aggregates look: the pair environment (score, p) and the kept pairs [B, H, M, N]
    pair: "Env | None" = None
    kept: torch.Tensor | None = None
    allowed: torch.Tensor | None = None  # the mask alone [B, H, M, N]: what key scans sum over


def prepare_inputs(inputs: Mapping[str, object], dtype: torch.dtype, device) -> dict[str, torch.Tensor]:
    """Inputs as the evaluator reads them: floats in ``dtype`` (autograd intact),
    integers as int64, bool as is, scalars as 0-d tensors."""
    out = {}
    for name, x in inputs.items():
        t = x if isinstance(x, torch.Tensor) else torch.tensor(x, device=device)
        if t.is_floating_point():
            t = t.to(dtype)
        elif t.dtype != torch.bool:
            t = t.long()
        out[name] = t
    return out


def evaluate(e: ir.Expr, env: Env) -> torch.Tensor:
    """Value of ``e`` (equal subtrees are computed once per ``env``)."""
    hit = env.memo.get(e)
    if hit is None:
        hit = _sanitize(_eval(e, env), e, env)
        env.memo[e] = hit
    return hit


def as_grid(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A stage value expanded to the full grid ``shape`` (rows: ``shape`` + [L])."""
    return t.reshape((1,) * (len(shape) - t.dim()) + tuple(t.shape)).expand(shape)


def _sanitize(t: torch.Tensor, e: ir.Expr, env: Env) -> torch.Tensor:
    if env.live is None or not t.is_floating_point() or t.dim() == 0:
        return t
    if e.ty.is_vec:
        # only rows that already span the grid; q/k rows must stay un-expanded
        if t.shape[2:4] != env.live.shape[2:4]:
            return t
        return torch.where(env.live[..., None], t, torch.ones((), dtype=t.dtype, device=t.device))
    return torch.where(env.live, t, torch.ones((), dtype=t.dtype, device=t.device))


def _vec5(t: torch.Tensor) -> torch.Tensor:
    return t.reshape((1,) * (5 - t.dim()) + tuple(t.shape))


def _eval(e: ir.Expr, env: Env) -> torch.Tensor:
    if isinstance(e, ir.Const):
        dtype = {"bool": torch.bool, "int": torch.int64}.get(e.ty.kind, env.dtype)
        return torch.tensor(e.value, dtype=dtype, device=env.device)
    if isinstance(e, ir.Sym):
        if e.name in env.sizes:
            return torch.tensor(env.sizes[e.name], dtype=torch.int64, device=env.device)
        return env.syms[e.name]
    if isinstance(e, ir.Row):
        return env.rows[e.name]
    if isinstance(e, ir.Param):
        return env.inputs[e.name]
    if isinstance(e, ir.Load):
        return _load(e, env)
    if isinstance(e, ir.Cast):
        x = evaluate(e.x, env)
        return x if e.ty.is_vec else x.to(env.dtype)
    if isinstance(e, ir.Slice):
        return evaluate(e.x, env)[..., e.lo:e.hi]
    if isinstance(e, ir.Unary):
        x = evaluate(e.x, env)
        return torch.logical_not(x) if e.op == "not" else torch.neg(x)
    if isinstance(e, ir.Binary):
        return _binary(e, *_operands(e, env))
    if isinstance(e, ir.Call):
        return _call(e, env)
    if isinstance(e, ir.Agg):
        return _aggregate(e, env.pair or env)
    if isinstance(e, ir.Scan):
        allowed = env.allowed
        x = as_grid(evaluate(e.x, env), allowed.shape)
        x = torch.where(allowed, x, torch.zeros((), dtype=x.dtype, device=x.device))
        return x.flip(-1).cumsum(-1).flip(-1)  # sum over t >= j
    raise TypeError(f"not an IR expression: {e!r}")


def _operands(e: ir.Expr, env: Env) -> list[torch.Tensor]:
    """Children's values; in a row-valued node, scalars get a trailing dim to broadcast over the row."""
    vals = [evaluate(x, env) for x in ir.children(e)]
    if e.ty.is_vec:
        vals = [v if x.ty.is_vec else v[..., None] for x, v in zip(ir.children(e), vals)]
    return vals


def _load(e: ir.Load, env: Env) -> torch.Tensor:
    t = env.inputs[e.name]
    if not e.indices:  # a 1-d input used whole as a row
        return _vec5(t)
    idx = torch.broadcast_tensors(*(evaluate(x, env) for x in e.indices))
    if any(t.shape[axis] == 0 for axis in range(len(idx))):  # sized by an N or M of 0: every index is out of range
        t = torch.zeros((1,) * len(idx) + t.shape[len(idx):], dtype=t.dtype, device=t.device)
    valid = torch.ones(idx[0].shape, dtype=torch.bool, device=env.device)
    clamped = []
    for axis, ix in enumerate(idx):
        n = t.shape[axis]
        valid = valid & (ix >= 0) & (ix < n)
        clamped.append(ix.clamp(0, n - 1))
    val = t[tuple(clamped)]
    zero = torch.zeros((), dtype=val.dtype, device=val.device)
    if e.ty.is_vec:
        return _vec5(torch.where(valid[..., None], val, zero))
    return torch.where(valid, val, zero)


def _binary(e: ir.Binary, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    if e.op in _COMPARE:
        return _COMPARE[e.op](a, b)
    if e.op in ("floordiv", "mod"):
        if a.is_floating_point() or b.is_floating_point():
            return torch.div(a, b, rounding_mode="floor") if e.op == "floordiv" else torch.remainder(a, b)
        zero = b == 0
        safe = torch.where(zero, torch.ones_like(b), b)
        r = torch.div(a, safe, rounding_mode="floor") if e.op == "floordiv" else torch.remainder(a, safe)
        return torch.where(zero, torch.zeros_like(r), r)
    return _ARITH[e.op](a, b)


def _call(e: ir.Call, env: Env) -> torch.Tensor:
    fn = e.fn
    if fn == "rope":
        return _rope(evaluate(e.args[0], env), evaluate(e.args[1], env), float(e.args[2].value))
    args = _operands(e, env)
    if fn in _ELEMENTWISE:
        return _ELEMENTWISE[fn](args[0])
    if fn in ("floor", "ceil"):
        return (torch.floor if fn == "floor" else torch.ceil)(args[0]).long()
    if fn == "min":
        return torch.minimum(*args)
    if fn == "max":
        return torch.maximum(*args)
    if fn == "clamp":
        return torch.minimum(torch.maximum(args[0], args[1]), args[2])
    if fn == "where":
        return torch.where(*args)
    if fn == "dot":
        return _dot(*args)
    if fn == "sqdist":
        return _sqdist(*args)
    if fn == "norm":
        return torch.linalg.vector_norm(args[0], dim=-1)
    if fn in ("row_sum", "row_mean", "row_max", "row_min"):
        return {"row_sum": torch.sum, "row_mean": torch.mean, "row_max": torch.amax, "row_min": torch.amin}[fn](
            args[0], dim=-1)
    if fn == "l2norm":
        return args[0] / torch.linalg.vector_norm(args[0], dim=-1, keepdim=True).clamp_min(1e-6)
    if fn == "concat":
        lead = torch.broadcast_shapes(args[0].shape[:-1], args[1].shape[:-1])
        return torch.cat([x.expand(*lead, x.shape[-1]) for x in args], -1)
    if fn == ir.IN_LIST:  # a lowered token selection: j among the row's listed keys (_sel [B, HS, M, K])
        b, hs, m, j = torch.broadcast_tensors(*args[:4])
        listed = env.inputs[ir.SEL][b, hs, m]  # [..., K]
        return (listed == j[..., None]).any(-1)
    if fn == "rmsnorm":
        x, w = args
        return x * torch.rsqrt(x.square().mean(-1, keepdim=True) + 1e-6) * w
    raise NotImplementedError(f"reference: no evaluation for function '{fn}'")


def _aggregate(e: ir.Agg, env: Env) -> torch.Tensor:
    """A row aggregate [B, H, M, 1] over the kept keys of ``env`` (the pair environment); 0 over an
    empty row. max/min take the value at the first key attaining it, so their gradient goes there."""
    kept = env.kept
    n = kept.sum(-1, keepdim=True)
    if e.kind == "count":
        return n
    x = as_grid(evaluate(e.x, env), kept.shape)
    zero = torch.zeros((), dtype=x.dtype, device=x.device)
    if e.kind in ("sum", "mean"):
        total = torch.where(kept, x, zero).sum(-1, keepdim=True)
        if e.kind == "sum":
            return total
        total = total.to(env.dtype)
        return torch.where(n > 0, total / n.clamp_min(1), torch.zeros((), dtype=env.dtype, device=x.device))
    ranked = x.detach() if e.kind == "max" else -x.detach()
    low = torch.tensor(float("-inf") if x.is_floating_point() else torch.iinfo(x.dtype).min, device=x.device)
    top = torch.where(kept, ranked, low.to(ranked.dtype)).amax(-1, keepdim=True)
    same = (ranked == top) | (ranked.isnan() & top.isnan()) if x.is_floating_point() else ranked == top
    hit = kept & same
    first = hit.to(torch.int8).argmax(-1, keepdim=True)  # the first key attaining it
    return torch.where(n > 0, x.gather(-1, first), zero)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Row dot product; a query-side row against a key-side row is one matmul."""
    if a.shape[3] == 1 and b.shape[2] == 1:
        return torch.matmul(a.squeeze(3), b.squeeze(2).transpose(-1, -2))
    if a.shape[2] == 1 and b.shape[3] == 1:
        return torch.matmul(b.squeeze(3), a.squeeze(2).transpose(-1, -2))
    return (a * b).sum(-1)


def _sqdist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Squared distance of rows; a query-side row against a key-side row as |a|² + |b|² - 2 a·b,
    one matmul like :func:`_dot` (the difference would hold a [.., M, N, D] tensor: tens of GB at
    4k keys), and the form the kernels compute."""
    if (a.shape[3] == 1 and b.shape[2] == 1) or (a.shape[2] == 1 and b.shape[3] == 1):
        return a.square().sum(-1) + b.square().sum(-1) - 2 * _dot(a, b)
    return (a - b).square().sum(-1)


def _rope(x: torch.Tensor, pos: torch.Tensor, base: float) -> torch.Tensor:
    """Rotate-half RoPE of rows ``x`` [..., L] at positions ``pos`` [...]; bind() checked L is even."""
    L = x.shape[-1]
    half = L // 2
    angle_dtype = torch.float64 if x.dtype == torch.float64 else torch.float32
    t = torch.arange(half, dtype=torch.float64, device=x.device)
    inv_freq = (base ** (-2.0 * t / L)).to(angle_dtype)
    theta = pos.detach().to(angle_dtype)[..., None] * inv_freq  # positions carry no gradient
    cos, sin = theta.cos().to(x.dtype), theta.sin().to(x.dtype)
    x1, x2 = x[..., :half], x[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

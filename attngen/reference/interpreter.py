"""The reference interpreter: any checked attention, eagerly in torch, on materialized scores.

    o = reference_attention(a, q, k, v, slopes=s)                    # o: [B, H, M, DV]
    o, lse = reference_attention(a, q, k, v, return_lse=True, ...)   # lse: [B, H, M]

Math runs in the dtype of q: float64 inputs give a float64 oracle, bf16 inputs a
bf16 "low-precision reference". Gradients come from torch autograd, to q, k, v and
every floating input that requires grad. The stages, in order:

    prologue   q' [B, H, M, D] per query row, k' [B, H, N, D] per key row
    mask       allowed [B, H, M, N]                        (no gradient)
    select     kept = allowed ∧ selected                   (no gradient)
    score      s [B, H, M, N], values off ``kept`` replaced (see exprs.Env.live)
    norm       p, exactly 0 off ``kept``; lse for softmax norms
    weights    w = W(p, score, ...) on kept pairs, 0 elsewhere
    sum        o = Σ_j w · v[b, hk, j]                     [B, H, M, DV]
    out        the out stage on o (also on the o = 0 of rows with no kept key)
"""

from __future__ import annotations

from dataclasses import replace

import torch

from ..ir import nodes as ir
from ..passes.lower_select import own_mask
from ..signature import Bound, bind
from .context import Context
from .exprs import as_grid, evaluate, prepare_inputs
from .norms import normalize
from .select import lowered_input, selected


def reference_attention(a: ir.Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, *, scale=None,
                        return_lse: bool = False, **inputs):
    """``o`` [B, H, M, DV], or ``(o, lse)`` with ``return_lse`` (softmax norms only).

    lse [B, H, M] is float64 for float64 inputs and float32 otherwise; a row with no
    kept key has o = 0 and lse = -inf (the sink logit when there is a sink).
    """
    bound = bind(a, q, k, v, inputs, scale, allow_float64=True, return_lse=return_lse)
    return run(a, bound, return_lse)


def selected_pairs(a: ir.Attention, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale=None,
                   **inputs) -> torch.Tensor:
    """The pairs that take part: mask ∧ select, bool [B, H, M, N]."""
    bound = bind(a, q, k, v, inputs, scale, allow_float64=True)
    with torch.no_grad():
        return _kept(a, _prepare(a, bound))[0]


def run(a: ir.Attention, bound: Bound, return_lse: bool = False):
    """Evaluate ``a`` on a call that :func:`attngen.signature.bind` validated.

    fp16's range (65504) can overflow large finite scores that the kernels, computing in float32,
    handle: an fp16 call whose finite inputs give a non-finite result is computed again in float32
    from its fp16 values, the weights rounded to fp16 for the weighted sum as in the kernels."""
    res = _run(a, bound, return_lse)
    if bound.q.dtype == torch.float16 and not _finite(res[0] if return_lse else res) and _finite((bound.q, bound.k, bound.v,
                                                                         *bound.inputs.values())):
        wide = {n: x.float() if isinstance(x, torch.Tensor) and x.dtype == torch.float16 else x
                for n, x in bound.inputs.items()}
        res = _run(a, replace(bound, q=bound.q.float(), k=bound.k.float(), inputs=wide), return_lse)
        return (res[0].half(), res[1]) if return_lse else res.half()
    return res


def _finite(xs) -> bool:
    ts = [x for x in (xs if isinstance(xs, tuple) else (xs,)) if isinstance(x, torch.Tensor) and x.is_floating_point()]
    return all(bool(torch.isfinite(t).all()) for t in ts)


def _run(a: ir.Attention, bound: Bound, return_lse: bool):
    ctx = _prepare(a, bound)
    kept, allowed = _kept(a, ctx)
    live = None if bool(kept.all()) else kept
    shape = ctx.pair_shape
    env = ctx.env(ctx.pair_rows(), live)
    env.allowed = allowed
    s = as_grid(evaluate(a.score, env), shape)
    sink = None
    if a.norm.sink is not None:
        sink = as_grid(evaluate(a.norm.sink, ctx.env()), shape[:3] + (1,)).squeeze(-1)
    p, lse = normalize(a.norm, s, kept, sink)
    pair = ctx.env(ctx.pair_rows(), live, score=s, p=p)  # the weights stage's, where row aggregates reduce
    pair.kept, pair.allowed = kept, allowed
    if a.weights is not None:
        w = as_grid(evaluate(a.weights, pair), shape)
        p = torch.where(kept, w, torch.zeros((), dtype=w.dtype, device=w.device))
    o = _weighted_sum(p, kept, bound.v.index_select(1, ctx.syms["hk"].flatten())).to(ctx.dtype)
    if a.out is not None:
        o5 = o[:, :, :, None, :]
        out = ctx.env({"o": o5})
        out.pair = pair
        o = as_grid(evaluate(a.out, out), o5.shape).squeeze(3)
    if not return_lse:
        return o
    return o, lse.to(torch.float64 if ctx.dtype == torch.float64 else torch.float32)


def _weighted_sum(p: torch.Tensor, kept: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """o = p @ v [B, H, M, DV] over the kept pairs only: a masked-out key's NaN or inf value must not
    reach rows through 0 * NaN. A row that keeps a key with a non-finite value gets NaN."""
    p = p.to(v.dtype) if v.dtype == torch.float16 else p  # an fp16 call's weights, rounded as in the kernels
    finite = torch.isfinite(v)
    if bool(finite.all()):
        return torch.matmul(p, v)
    o = torch.matmul(p, torch.where(finite, v, torch.zeros((), dtype=v.dtype, device=v.device)))
    bad_key = ~finite.all(-1)  # [B, H, N]
    reads_bad = (kept & bad_key[:, :, None, :]).any(-1, keepdim=True)  # [B, H, M, 1]
    return torch.where(reads_bad, torch.full((), float("nan"), dtype=o.dtype, device=o.device), o)


def _prepare(a: ir.Attention, bound: Bound) -> Context:
    """The call's context with q' [B, H, M, D] and k' [B, H, N, D] (expanded to query heads) set."""
    q, k = bound.q, bound.k
    ctx = Context.make(bound.sizes, prepare_inputs(bound.inputs, q.dtype, q.device), q.dtype, q.device,
                       bound.scale)
    apply_prologue(a, ctx, q, k)
    return ctx


def apply_prologue(a: ir.Attention, ctx: Context, q: torch.Tensor, k: torch.Tensor) -> None:
    """Set ``ctx.q_rows`` q' [B, H, M, D] and ``ctx.k_rows`` k' [B, H, N, D] (k expanded to the query
    heads through hk) from q [B, H, M, D] and k [B, HK, N, D]."""
    B, H, M, D = q.shape
    N = k.shape[2]
    k = k.index_select(1, ctx.syms["hk"].flatten())
    ctx.q_raw, ctx.k_raw = q, k
    if a.q is not None:
        q = as_grid(evaluate(a.q, ctx.env({"q": q[:, :, :, None, :]})), (B, H, M, 1, D)).squeeze(3)
    if a.k is not None:
        k = as_grid(evaluate(a.k, ctx.env({"k": k[:, :, None, :, :]})), (B, H, 1, N, D)).squeeze(2)
    ctx.q_rows, ctx.k_rows = q, k


@torch.no_grad()
def _kept(a: ir.Attention, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """(allowed ∧ selected, allowed by the mask alone: what key scans sum over), bool [B, H, M, N]. A
    lowered selection (passes/lower_select.py) is made into its ``_sel`` input, which the mask then
    reads, as in the kernels."""
    shape = ctx.pair_shape
    rows = ctx.pair_rows()
    extra = {}
    own = own_mask(a)
    if ir.uses(own, "score") or (a.select is not None and ir.uses(a.select.by, "score")):
        extra["score"] = as_grid(evaluate(a.score, ctx.env(rows)), shape)

    def mask(e):
        everywhere = torch.ones(shape, dtype=torch.bool, device=ctx.device)
        return everywhere if e is None else everywhere & as_grid(evaluate(e, ctx.env(rows, **extra)), shape)

    allowed = mask(own)
    if a.select is None:
        return allowed, allowed
    if not a.select.lowered:
        return allowed & selected(a.select, ctx, allowed, extra), allowed
    heads = a.input(ir.SEL).dims[1]
    ctx.inputs[ir.SEL] = lowered_input(a.select, heads, ctx, allowed, extra)
    return mask(a.mask), allowed

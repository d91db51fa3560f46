"""Context parallelism: one attention's sequence split over the ranks of a ``torch.distributed`` group
(NCCL on GPUs, gloo on CPU), each rank holding a shard of q, k and v along dim 2.

Ring attention: every rank attends its query shard to each rank's key/value shard in turn, the shards
passing around the ring (send to the next rank, receive from the previous one), and merges the
partial results by their lse (:func:`attngen.merge_by_lse`). The positions ``i``, ``j`` and ``m`` stay
global, so masks, biases and RoPE mean what they mean on one device: each call reads its rows' and
keys' global positions from inputs the variant adds (:func:`global_positions`), and a mask's tile
classes come from them per call (a pair of shards with no allowed pair visits no tile). Inputs along
the sequence (``doc: i32[B, N]``) are passed whole; each call takes its rows' and keys' entries.

Layouts (P ranks, sequence of S = P * S_local tokens): ``contiguous`` gives rank r tokens
r * S_local .. (r + 1) * S_local - 1; ``zigzag`` cuts the sequence into 2P chunks and gives rank r
chunks r and 2P - 1 - r, which balances causal work across ranks.

The backward (Triton backend) is the ring's own: at each step the kernels' backward of the rank's rows
against the key shard in hand, given the whole row's o and lse, and the shard's dk and dv travel with
it until they reach its owner; a rank keeps only its own shards, o and lse for it. The reference
backend, and inputs along the sequence that need gradients, go through autograd instead (every
step's received shards kept). Star Attention's two phases (inference) are
:func:`star_context` and :func:`star_query`. Every softmax spec runs, a sink counted once (in the
rank's own shard step); a select stage (its top-k is over all keys), other norms and a weights or out
stage (they need the whole row's statistics) are refused.
"""

from __future__ import annotations

import os
from dataclasses import replace
from typing import Callable

import torch
import torch.distributed as dist

from .ir import nodes as ir
from .ir.printer import expr_str
from .ir.types import INT
from .merge import merge_by_lse

LAYOUTS = ("contiguous", "zigzag")
#: the inputs a global-positions variant adds: rows' and keys' positions, and the whole sequence's M, N
POSITION_INPUTS = ("_qpos", "_kpos", "_sizes")


def positional_inputs(a: ir.Attention) -> dict[str, int]:
    """The inputs with a dim along the sequence (M or N), by name: that dim's axis."""
    return {d.name: d.dims.index("M" if "M" in d.dims else "N") for d in a.inputs
            if d.dims is not None and ("M" in d.dims or "N" in d.dims)}


def global_positions(a: ir.Attention) -> ir.Attention:
    """``a`` (checked IR, before the passes) on one pair of shards: it reads its rows' and keys' global
    positions from inputs the variant adds, ``_qpos: i32[M]`` (each query row's m), ``_kpos: i32[N]``
    (each key's j) and ``_sizes: i32[2]`` (the whole sequence's M and N), with i = m + N - M as on one
    device. An input along the sequence (``doc: i32[B, N]``) comes sharded: its reads at a query
    position (``doc[b, i]``) from a twin ``doc__q`` [.., M] holding the query rows' entries, those at a
    key position (``doc[b, j]``) from ``doc`` holding the keys'. Named ``<name>_cp``, so its module and
    operators are its own."""
    if a.select is not None:
        raise ValueError(f"{a.name}: a select stage chooses among all keys, which no rank holds; context "
                         "parallelism runs specs without one")
    if not a.is_softmax or a.weights is not None or a.out is not None:
        raise ValueError(f"{a.name}: context parallelism merges partial results by their lse, which needs a "
                         "softmax norm and no weights or out stage (they read the whole row's statistics)")

    def load(name: str, index: ir.Expr) -> ir.Expr:
        return ir.Load(name, (index,), INT)

    m = load("_qpos", ir.Sym("m", INT))
    M, N = (load("_sizes", ir.Const(n, INT)) for n in (0, 1))
    glob = {"m": m, "j": load("_kpos", ir.Sym("j", INT)), "M": M, "N": N,
            "i": ir.Binary("add", m, ir.Binary("sub", N, M, INT), INT)}
    along = positional_inputs(a)
    twins: set[str] = set()

    def sharded(e: ir.Load) -> ir.Load:
        """A read of an input along the sequence: from the query rows' or the keys' shard of it."""
        axis = along[e.name]
        at = e.indices[axis]
        side = at.name if isinstance(at, ir.Sym) and at.name in ("i", "m", "j") else None
        if side is None:
            raise ValueError(f"{a.name}: context parallelism shards '{e.name}' along the sequence, so its "
                             f"dim {axis} must be indexed by i, m or j, got {expr_str(at)}")
        idx = [x if n == axis else rewrite(x) for n, x in enumerate(e.indices)]
        if side == "j":
            return ir.Load(e.name, tuple(idx), e.ty, e.span)
        twins.add(e.name)
        idx[axis] = ir.Sym("m", INT)  # the query shard's row
        return ir.Load(f"{e.name}__q", tuple(idx), e.ty, e.span)

    def rewrite(e: ir.Expr) -> ir.Expr:
        if isinstance(e, ir.Load) and e.name in along:
            return sharded(e)
        if isinstance(e, ir.Sym):
            return glob.get(e.name, e)
        kids = ir.children(e)
        return ir.with_children(e, tuple(rewrite(c) for c in kids)) if kids else e

    out = replace(a, name=f"{a.name}_cp").replace_exprs(lambda stage, e: rewrite(e))
    decls = []
    for d in a.inputs:
        if d.name in along:  # the keys' shard: its sequence dim is N; the twin's, M
            dims = list(d.dims)
            dims[along[d.name]] = "N"
            decls.append(replace(d, dims=tuple(dims)))
            if d.name in twins:
                dims[along[d.name]] = "M"
                decls.append(replace(d, name=f"{d.name}__q", dims=tuple(dims)))
        else:
            decls.append(d)
    decls += [ir.InputDecl("_qpos", "i32", ("M",)), ir.InputDecl("_kpos", "i32", ("N",)),
              ir.InputDecl("_sizes", "i32", (2,))]
    return replace(out, inputs=tuple(decls))


def shard_calls(fn) -> tuple[Callable, Callable]:
    """The global-positions variants of ``fn`` (same backend) that a ring calls: the first for a rank's
    own key shard, the second for the others' (without the sink, which a row counts once)."""
    a, make = fn.attention, type(fn)
    first = make(global_positions(a))
    if a.norm.sink is None:
        return first, first
    return first, make(global_positions(replace(a, name=f"{a.name}_nosink", norm=replace(a.norm, sink=None))))


def positions(length: int, world: int, rank: int, layout: str, device=None) -> torch.Tensor:
    """The global positions [length] of rank ``rank``'s shard of ``length`` tokens (see the layouts)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    if layout == "contiguous":
        return torch.arange(rank * length, (rank + 1) * length, device=device)
    if length % 2:
        raise ValueError(f"the zigzag layout holds two chunks a rank: a shard of {length} tokens is odd")
    c = length // 2
    return torch.cat([torch.arange(rank * c, (rank + 1) * c, device=device),
                      torch.arange((2 * world - 1 - rank) * c, (2 * world - rank) * c, device=device)])


def init_from_env() -> torch.device:
    """``init_process_group`` for a process torchrun started: NCCL with one GPU a rank (LOCAL_RANK), or
    gloo on CPU and under the Triton interpreter. Returns this rank's device."""
    cuda = torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET") != "1"
    dist.init_process_group("nccl" if cuda else "gloo")
    if not cuda:
        return torch.device("cpu")
    device = torch.device(f"cuda:{int(os.environ.get('LOCAL_RANK', 0))}")
    torch.cuda.set_device(device)
    return device


def _world(group) -> tuple[int, int]:
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("context parallelism needs torch.distributed initialized "
                           "(torch.distributed.init_process_group, e.g. under torchrun)")
    return dist.get_world_size(group), dist.get_rank(group)


def _peer(group, rank: int) -> int:
    return rank if group is None else dist.get_global_rank(group, rank)


def _pass_on(x: torch.Tensor, step: int, group) -> torch.Tensor:
    """x sent ``step`` ranks on around the ring (+1: to the next rank), the previous one's received."""
    world, rank = _world(group)
    x = x.contiguous()
    got = torch.empty_like(x)
    ops = [dist.P2POp(dist.isend, x, _peer(group, (rank + step) % world), group),
           dist.P2POp(dist.irecv, got, _peer(group, (rank - step) % world), group)]
    for req in dist.batch_isend_irecv(ops):
        req.wait()
    return got


class _Shift(torch.autograd.Function):
    """One ring step: this rank gets the previous rank's tensor; the gradient goes back the other way."""

    @staticmethod
    def forward(ctx, x, group):
        ctx.group = group
        return _pass_on(x, 1, group)

    @staticmethod
    def backward(ctx, g):
        return _pass_on(g, -1, ctx.group), None


class _Gather(torch.autograd.Function):
    """Every rank's x, concatenated along dim 2 in rank order; the gradient of one's own shard is the sum
    of every rank's gradient there."""

    @staticmethod
    def forward(ctx, x, group):
        world, rank = _world(group)
        ctx.group, ctx.rank, ctx.n = group, rank, x.shape[2]
        parts = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(parts, x.contiguous(), group=group)
        return torch.cat(parts, dim=2)

    @staticmethod
    def backward(ctx, g):
        g = g.contiguous()
        dist.all_reduce(g, group=ctx.group)
        return g[:, :, ctx.rank * ctx.n:(ctx.rank + 1) * ctx.n], None


def shard_sequence(x: torch.Tensor, group=None, layout: str = "zigzag") -> torch.Tensor:
    """This rank's shard of a whole tensor x [B, heads, S, ...] along dim 2 (differentiable)."""
    world, rank = _world(group)
    if x.shape[2] % world:
        raise ValueError(f"a sequence of {x.shape[2]} tokens does not split over {world} ranks")
    return x.index_select(2, positions(x.shape[2] // world, world, rank, layout, x.device))


def unshard_sequence(x: torch.Tensor, group=None, layout: str = "zigzag") -> torch.Tensor:
    """The whole tensor from every rank's shard x [B, heads, S_local, ...] (differentiable)."""
    world, _ = _world(group)
    whole = _Gather.apply(x, group)
    order = torch.cat([positions(x.shape[2], world, r, layout) for r in range(world)])
    return whole.index_select(2, torch.argsort(order).to(x.device))


def shard_inputs(part, qpos, kpos, total, inputs) -> dict:
    """Every input of ``part`` (one of :func:`shard_calls`) for a query shard at global positions
    ``qpos`` [M] against a key shard at ``kpos`` [N] of a sequence of ``total`` tokens: inputs along the
    sequence given whole are cut here (the keys' entries, and the query rows' for a ``__q`` twin)."""
    xs = dict(inputs)
    for n, axis in positional_inputs(part.attention).items():
        base = n.removesuffix("__q")
        if base in inputs:
            xs[n] = inputs[base].index_select(axis, qpos if n.endswith("__q") else kpos)
    xs.update(_qpos=qpos.to(torch.int32), _kpos=kpos.to(torch.int32),
              _sizes=torch.tensor([total, total], dtype=torch.int32, device=qpos.device))
    return xs


def on_shards(part, q, k, v, qpos, kpos, total, scale, inputs) -> tuple[torch.Tensor, torch.Tensor]:
    """(o, lse) of a query shard at global positions ``qpos`` against a key shard at ``kpos`` (see
    :func:`shard_inputs`)."""
    return part(q, k, v, scale=scale, return_lse=True, **shard_inputs(part, qpos, kpos, total, inputs))


class _Ring:
    """One ring call's plan: the variants, the group, the positions and the inputs that are not tensors
    needing gradients (``lean`` below takes those as autograd inputs)."""

    def __init__(self, own, others, group, layout, S, scale, inputs, grad_names):
        self.own, self.others, self.group, self.layout, self.S = own, others, group, layout, S
        self.scale, self.inputs, self.grad_names = scale, inputs, grad_names
        self.world, self.rank = _world(group)

    def step(self, step, device):
        """The variant and the inputs of ring step ``step`` (this rank's rows against rank r - step's keys)."""
        world, rank = self.world, self.rank
        part = self.own if step == 0 else self.others
        qpos = positions(self.S, world, rank, self.layout, device)
        kpos = positions(self.S, world, (rank - step) % world, self.layout, device)
        return part, qpos, kpos

    def forward(self, q, k, v, grads):
        inputs = {**self.inputs, **dict(zip(self.grad_names, grads))}
        o = lse = None
        kk, vv = k, v
        for step in range(self.world):
            part, qpos, kpos = self.step(step, q.device)
            o_s, lse_s = on_shards(part, q, kk, vv, qpos, kpos, self.world * self.S, self.scale, inputs)
            # the running o stays in float32: rounding it to bf16 at every step would add P roundings
            o, lse = (o_s.float(), lse_s) if o is None else merge_by_lse([(o, lse), (o_s, lse_s)])
            if step < self.world - 1:
                kk, vv = _pass_on(kk, 1, self.group), _pass_on(vv, 1, self.group)
        return o.to(q.dtype), lse

    def backward(self, q, k, v, o, lse, grads, do, dlse):
        """dq, dk, dv and the inputs' gradients: at each step the kernels' backward of this rank's rows
        against the key shard in hand, with the whole row's o and lse (so each step's p is final); the
        shard's dk, dv travel with it and reach its owner after the last step."""
        inputs = {**self.inputs, **dict(zip(self.grad_names, grads))}
        scale = self.scale if self.scale is not None else q.shape[-1] ** -0.5
        dq = torch.zeros(q.shape, dtype=torch.float32, device=q.device)
        dk, dv = (torch.zeros(t.shape, dtype=torch.float32, device=t.device) for t in (k, v))
        dxs = [torch.zeros(g.shape, dtype=torch.float32, device=g.device) for g in grads]
        do = do.contiguous() if do is not None else torch.zeros_like(o)
        no_sel = q.new_empty((0,), dtype=torch.int32)
        kk, vv = k, v
        for step in range(self.world):
            part, qpos, kpos = self.step(step, q.device)
            ops = getattr(part.module, f"_attention_{part.name}").ops
            xs, fs, is_tensor = ops._lists(shard_inputs(part, qpos, kpos, self.world * self.S, inputs))
            which = [next((n for n, g in enumerate(grads) if x is g), None) for x in xs]  # a gradient's slot
            g_q, g_k, g_v, g_xs = ops._bwd_impl(do, dlse, q, kk, vv, o, o, lse, no_sel, [], scale, xs, fs, is_tensor,
                                                [w is not None for w in which], None, None, 0, 0, 0)
            dq += g_q
            dk += g_k
            dv += g_v
            for w, g in zip(which, g_xs):
                if w is not None:
                    dxs[w] += g
            if step < self.world - 1:
                kk, vv = _pass_on(kk, 1, self.group), _pass_on(vv, 1, self.group)
            dk, dv = _pass_on(dk, 1, self.group), _pass_on(dv, 1, self.group)
        return dq.to(q.dtype), dk.to(k.dtype), dv.to(v.dtype), [d.to(g.dtype) for d, g in zip(dxs, grads)]


class _LeanRing(torch.autograd.Function):
    """The ring with its own backward (Triton backend): autograd keeps this rank's shards, o and lse,
    not every step's received shards; the backward sends dk, dv around with the key shards."""

    @staticmethod
    def forward(ctx, ring, q, k, v, *grads):
        ctx.set_materialize_grads(False)
        with torch.no_grad():
            o, lse = ring.forward(q, k, v, grads)
        ctx.save_for_backward(q, k, v, o, lse, *grads)
        ctx.ring = ring
        return o, lse

    @staticmethod
    def backward(ctx, do, dlse):
        q, k, v, o, lse, *grads = ctx.saved_tensors
        dq, dk, dv, dxs = ctx.ring.backward(q, k, v, o, lse, grads, do, dlse)
        return None, dq, dk, dv, *dxs


def context_parallel(fn, group=None, layout: str = "zigzag") -> Callable:
    """``fn`` (what :func:`attngen.load` returns, either backend) over a sequence split across the ranks
    of ``group``: the callable takes this rank's shards of q [B, H, S_local, D], k and v (as
    :func:`shard_sequence` cuts them) and the keyword inputs whole, and returns this rank's shard of o
    (and of lse with ``return_lse=True``)."""
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    a = fn.attention
    own, others = shard_calls(fn)
    lean = hasattr(own, "module")  # the Triton backend: its operators' backward takes the whole row's o, lse

    def call(q, k, v, *, scale=None, return_lse=False, **inputs):
        world, rank = _world(group)
        S = q.shape[2]
        if k.shape[2] != S or v.shape[2] != S:
            raise ValueError(f"{a.name}: context parallelism splits one sequence: q, k and v shards need the "
                             f"same length, got {S}, {k.shape[2]}, {v.shape[2]}")
        clash = set(inputs) & set(POSITION_INPUTS)
        if clash:
            raise ValueError(f"{a.name}: {sorted(clash)} are set by context parallelism")
        grad_names = [n for n, x in inputs.items() if isinstance(x, torch.Tensor) and x.requires_grad]
        if lean and not set(grad_names) & set(positional_inputs(a)):
            ring = _Ring(own, others, group, layout, S, scale,
                         {n: x for n, x in inputs.items() if n not in grad_names}, grad_names)
            o, lse = _LeanRing.apply(ring, q, k, v, *(inputs[n] for n in grad_names))
            return (o, lse) if return_lse else o
        # autograd through every step (the reference backend; float inputs along the sequence)
        qpos = positions(S, world, rank, layout, q.device)
        parts, kk, vv = [], k, v
        for step in range(world):
            kpos = positions(S, world, (rank - step) % world, layout, q.device)
            parts.append(on_shards(own if step == 0 else others, q, kk, vv, qpos, kpos, world * S, scale, inputs))
            if step < world - 1:
                kk, vv = _Shift.apply(kk, group), _Shift.apply(vv, group)
        o, lse = merge_by_lse(parts)
        return (o, lse) if return_lse else o
    return call


def star_context(fn, q, k, v, *, group=None, scale=None, **inputs) -> torch.Tensor:
    """Star Attention's phase 1 (context encoding, inference): rank r holds context block r (tokens
    r * S .. (r + 1) * S - 1 of q, k, v [.., S, ..]) and attends it to itself and to the anchor block,
    rank 0's, which every rank gets by one broadcast; blocks are otherwise independent. ``fn`` is the
    spec as on one device (a causal one, typically). Returns this rank's o."""
    world, rank = _world(group)
    S = q.shape[2]
    qpos = positions(S, world, rank, "contiguous", q.device)
    kk, vv = k.contiguous().clone(), v.contiguous().clone()
    for t in (kk, vv):
        dist.broadcast(t, src=_peer(group, 0), group=group)
    if rank:
        kk, vv = torch.cat([kk, k], dim=2), torch.cat([vv, v], dim=2)
        kpos = torch.cat([positions(S, world, 0, "contiguous", q.device), qpos])
    else:
        kpos = qpos
    return on_shards(shard_calls(fn)[0], q, kk, vv, qpos, kpos, world * S, scale, inputs)[0]


def star_query(fn, q, k_query, v_query, k, v, *, group=None, scale=None, **inputs) -> torch.Tensor:
    """Star Attention's phase 2 (inference): query tokens q [B, H, Mq, D] with their own k_query,
    v_query (the same on every rank), placed after the whole context, against every rank's context
    block k, v [B, HK, S, D] (the contiguous layout) and themselves (on the last rank); the partial
    results merged by lse after one all-gather of o and lse. Every rank returns o [B, H, Mq, DV]."""
    world, rank = _world(group)
    S, Mq = k.shape[2], q.shape[2]
    total = world * S + Mq
    qpos = torch.arange(world * S, total, device=q.device)
    kpos = positions(S, world, rank, "contiguous", q.device)
    if rank == world - 1:
        k, v, kpos = torch.cat([k, k_query], dim=2), torch.cat([v, v_query], dim=2), torch.cat([kpos, qpos])
    own, others = shard_calls(fn)
    o, lse = on_shards(own if rank == world - 1 else others, q, k, v, qpos, kpos, total, scale, inputs)
    os_, lses = [torch.empty_like(o) for _ in range(world)], [torch.empty_like(lse) for _ in range(world)]
    dist.all_gather(os_, o.contiguous(), group=group)
    dist.all_gather(lses, lse.contiguous(), group=group)
    return merge_by_lse(list(zip(os_, lses)))[0]

"""``attngen bench --block``: a transformer block's training step under ``torch.compile``, attngen
against FlexAttention.

The block: x [B, S, E] (E = H·D) → a qkv projection to H + 2·HK heads of D → the attention → an
output projection back to E. A step: the block's forward, the sum of squares of its output, the
backward (x, the weights and the attention's float inputs get gradients). Both blocks have the same
weights, inputs and x, and run as ``torch.compile(block, fullgraph=True)`` (the backward compiled
with it by AOTAutograd): attngen's attention as its
operators, flex_attention traced into the graph with its block mask built once outside the step
(inside it, with ``--fresh-inputs``: a new mask per call, as attngen classifies its tiles per call).

FLOPs of a step: the attention's (4·pairs·D forward, 3.5× that forward and backward) and the
projections' (2·B·S·E·(H + 2·HK + H)·D forward, 3× that forward and backward). ratio: attngen's
TFLOP/s over flex's (> 1: attngen's step is faster); compare it with the attention-only
forward+backward ratio of the dense mode: compiling should lose nothing.
"""

from __future__ import annotations

from typing import Callable

import torch

from .impls import requiring_grad
from .inputs import make_inputs, make_qkv
from .pairs import allowed_pairs
from .peers import Unsupported
from .timing import time_ms

#: forward+backward FLOPs over forward FLOPs: attention (recomputed scores) and matmuls
ATTN_BWD, LINEAR_BWD = 3.5, 3.0


class Block(torch.nn.Module):
    """Projections around ``attend(q [B, H, S, D], k, v [B, HK, S, D]) -> [B, H, S, D]``."""

    def __init__(self, heads: int, kv_heads: int, dim: int, attend: Callable):
        super().__init__()
        self.H, self.HK, self.D, self.attend = heads, kv_heads, dim, attend
        self.qkv = torch.nn.Linear(heads * dim, (heads + 2 * kv_heads) * dim, bias=False)
        self.out = torch.nn.Linear(heads * dim, heads * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, S, _ = x.shape
        q, k, v = self.qkv(x).view(B, S, self.H + 2 * self.HK, self.D).transpose(1, 2).split(
            [self.H, self.HK, self.HK], dim=1)
        return self.out(self.attend(q, k, v).transpose(1, 2).reshape(B, S, self.H * self.D))


def _flex_attend(a, sizes: dict, scale: float, inputs: dict, device: torch.device, fresh: bool) -> Callable:
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    from .flexmods import translate

    mods = translate(a, sizes, scale, inputs)
    B, H, HK, S = (sizes[x] for x in ("B", "H", "HK", "M"))

    def block_mask():
        return create_block_mask(mods.mask_mod, B if mods.mask_b else None, H if mods.mask_h else None, S, S,
                                 device=device)
    fixed = None if fresh or mods.mask_mod is None else block_mask()

    def attend(q, k, v):
        mask = block_mask() if fresh and mods.mask_mod is not None else fixed
        return flex_attention(q, k, v, score_mod=mods.score_mod, block_mask=mask, scale=mods.scale,
                              enable_gqa=H != HK)
    return attend


def run_block_case(t, fn: Callable, seq: int, cfg, log: Callable[[str], None]) -> list[dict]:
    """The record of one attention's block step at sequence length ``seq`` (B = tokens // seq)."""
    from .run import DTYPE_NAMES, failure, fresh_compile_cache

    a, device = t.attention, torch.device(cfg.device)
    B, H, HK, D = max(1, cfg.tokens // seq), cfg.heads, cfg.kv_heads, cfg.dim
    sizes = dict(B=B, H=H, HK=HK, M=seq, N=seq, D=D, DV=D)
    fresh_compile_cache(device)
    gen = torch.Generator(device=device).manual_seed(cfg.seed)
    inputs = make_inputs(a, sizes, device, gen, requires_grad=cfg.input_grads)
    x = torch.randn((B, seq, H * D), generator=gen, device=device).to(cfg.dtype).requires_grad_()
    q, k, v = (t_.detach() for t_ in make_qkv(sizes, cfg.dtype, device, gen))
    pairs = allowed_pairs(a, q, k, v, inputs)
    flops = ATTN_BWD * 4.0 * pairs * D + LINEAR_BWD * 2.0 * B * seq * H * D * (2 * H + 2 * HK) * D
    scale = 1.0 / D ** 0.5
    log(f"{a.name} ({t.path}) block step seq={seq} B={B}: checking and timing")
    rec = {"mode": "block", "spec": a.name, "file": str(t.path), "seq": seq, "B": B, "H": H, "HK": HK, "D": D,
           "dtype": DTYPE_NAMES[cfg.dtype], "device": device.type, "fresh_inputs": cfg.fresh_inputs,
           "allowed_pairs": pairs, "flops": flops, "pass": "step", "attngen": {}, "peers": {}}

    def stepper(attend):
        torch.manual_seed(cfg.seed)  # the same weights in every block
        block = Block(H, HK, D, attend).to(device, cfg.dtype)
        params = [*block.parameters(), x, *[inputs[n] for n in requiring_grad(inputs)]]

        compiled = torch.compile(block, fullgraph=True, backend="inductor" if device.type == "cuda" else "aot_eager")

        def step():  # the forward compiled whole; its backward is the graph AOTAutograd compiled with it
            return torch.autograd.grad(compiled(x).float().square().sum(), params)
        return step

    mine = stepper(lambda q, k, v: fn(q, k, v, scale=scale, **inputs))
    want = mine()  # compiles and autotunes: never timed
    ms = time_ms(mine, device)
    rec["attngen"] = {"ms": ms, "tflops": flops / (ms * 1e-3) / 1e12}
    if "flex" in cfg.peers and device.type == "cpu":  # flex_attention compiles for GPUs: no step to compare
        rec["peers"]["flex"] = {"skipped": "flex has no compiled backward on cpu"}
    elif "flex" in cfg.peers:
        try:
            theirs = stepper(_flex_attend(a, sizes, scale, inputs, device, cfg.fresh_inputs))
            got = theirs()
            err = max(((g.float() - w.float()).norm() / w.float().norm().clamp_min(1e-30)).item()
                      for g, w in zip(got, want))
            their_ms = time_ms(theirs, device)
            rec["peers"]["flex"] = {"ms": their_ms, "tflops": flops / (their_ms * 1e-3) / 1e12,
                                    "ratio": their_ms / ms, "rel_err": err}
        except Unsupported as err:
            rec["peers"]["flex"] = {"skipped": f"flex cannot run it: {err}"}
        except (RuntimeError, torch._dynamo.exc.TorchDynamoException) as err:
            rec["peers"]["flex"] = {"skipped": failure(err, device)}
    return [rec]

"""The block-sparse forward of block top-k selection: only the chosen key blocks are visited.

The dense kernels with the choice folded into the mask (``select.lower``) visit every key tile the
mask allows and discard the blocks a row did not choose. Here the forward goes key block by key
block instead (as MoBA's own implementation does):

    host    the choice SEL [B, HS, M, NB] as entries (b, hs, kb, m), grouped by key block with the
            rows ascending, cut into chunks of at most BLOCK_M rows; each entry's slot is the
            rank of kb among its row's chosen blocks
    attend  program (chunk, head of the selection): the chunk's rows gathered, the block's keys in
            tiles of BLOCK_N, the spec's score and mask, a softmax over the block
            -> a partial o and lse in the row's slot (PO [B, H, M, NS, BLOCK_DV], PL [B, H, M, NS])
    merge   program (query tile, b, h): the row's partials combined exactly by their lse -> o, lse

Work is proportional to the chosen pairs, not the allowed ones; building the chunks waits for the
GPU twice (the number of entries, the most blocks a row chose), as the buffers are sized by them. The lse is the dense forward's,
so the backward (the dense kernels with the folded mask) is unchanged. Softmax specs without a
weights, out or sink stage qualify (their partials merge by the lse alone), and masks without
per-call tile lists; others keep the dense forward, as the module header says.
"""

from __future__ import annotations

from dataclasses import replace

from . import kernels, tiles
from .plan import Plan


def eligible(plan: Plan) -> bool:
    """Whether the block-sparse forward runs this attention."""
    a = plan.attn
    return (plan.select is not None and plan.select.block is not None and plan.norm == "softmax"
            and a.weights is None and a.out is None and a.norm.sink is None and tiles.tiles_kind(a) != "dynamic")


def forward_blocks(plan: Plan) -> kernels.Blocks:
    """The forward's statement blocks for the attention before lowering: its own mask, no ``_sel``
    (the attend kernel only ever sees a chosen block)."""
    return kernels.forward(replace(plan, attn=replace(plan.unlowered, inputs=plan.attn.inputs)), split_scale=False)

"""Block-sparse kernels for block top-k selection: only the chosen key blocks are visited.

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

Work is proportional to the chosen pairs, not the allowed ones. Building the chunks waits for the
GPU twice (the number of entries, the most blocks a row chose), as the buffers are sized by them.
The lse is the dense forward's, so the backward may also run on the dense kernels with the folded
mask. Softmax specs without a weights, out or sink stage qualify (their partials merge by the lse
alone), and masks without per-call tile lists; others keep the dense forward, as the module
header says.

The backward goes block by block too (``backward_too``), over the forward's entries:

    pre          delta = sum(do * o) per row (the dense preprocess kernel)
    attend_dq    program (chunk, head): the chunk's rows against the block: their dq from it into
                 their slots (PQ [B, H, M, NS, BLOCK_D] float32); sum_slots adds a row's slots
    attend_dkdv  program (key tile inside one block, b, kv head): for each head of the group, the
                 rows that chose the block, BLOCK_M at a time, on transposed tiles: dk, dv

Both run the dense kernels' per-tile code (``bwd_tiles``). Every kernel here takes the attention
before lowering: its mask without the selection's term, which holds for every gathered row.
"""

from __future__ import annotations

from dataclasses import replace

from . import tiles
from .plan import Plan


def eligible(plan: Plan) -> bool:
    """Whether the block-sparse forward runs this attention."""
    a = plan.attn
    return (plan.select is not None and plan.select.block is not None and plan.norm == "softmax"
            and a.weights is None and a.out is None and a.norm.sink is None and tiles.tiles_kind(a) != "dynamic")


def backward_too(plan: Plan) -> bool:
    """Whether the backward is block-sparse as well: no floating inputs (their gradients are written
    once per row or key by the dense kernels), and blocks of whole key tiles of 16 keys or more."""
    return eligible(plan) and not plan.float_inputs and plan.select.block % 16 == 0


def unlowered(plan: Plan) -> Plan:
    """``plan`` on the attention before lowering (its own mask, no ``_sel`` term) with the lowered
    one's inputs, so that its kernels take the module's argument list."""
    return replace(plan, attn=replace(plan.unlowered, inputs=plan.attn.inputs))

"""Block-sparse kernels for block top-k selection: only the chosen key blocks are visited. (And
listed.py.jinja: a token selection's listed forward. Which selections take them: kernel_plan.py.)

The dense kernels with the choice folded into the mask (passes/lower_select.py) visit every key tile the
mask allows and discard the blocks a row did not choose. Here the forward goes key block by key
block instead (as MoBA's own implementation does):

    host    the choice SEL [B, HS, M, NB] as entries (b, hs, kb, m), grouped by key block with the
            rows ascending, cut into chunks of up to 4 * BLOCK_M rows; each entry's slot is the
            rank of kb among its row's chosen blocks. The select kernel counted the chosen blocks
            per row tile (TC); their prefix sums in entry order give each tile's first entry of
            each block, and the place kernel (program: the select kernel's row tile) writes the
            entries there. One wait for the GPU: the number of entries and chunks, and the most
            blocks a row chose, size the buffers
    attend  program (chunk, head of the selection): the chunk's rows gathered BLOCK_M at a time,
            the block's keys in tiles of BLOCK_N, the spec's score and mask, a softmax over the block
            -> a partial o and lse in the row's slot (PO [B, H, M, NS, BLOCK_DV], PL [B, H, M, NS])
    merge   program (query tile, b, h): the row's partials combined exactly by their lse -> o, lse

Work is proportional to the chosen pairs, not the allowed ones. The lse is the dense forward's, so
the backward may also run on the dense kernels with the folded mask. Softmax specs without a
weights, out or sink stage qualify (their partials merge by the lse alone), and masks without
per-call tile lists; others keep the dense forward, as the module header says.

The backward goes block by block too (``KernelPlan.gather_bwd``), over the forward's entries:

    pre          delta = sum(do * o) per row (the dense preprocess kernel)
    attend_dq    program (chunk, head): the chunk's rows against the block: their dq from it, added
                 into DQA [B, H, M, BLOCK_D] float32 (atomically; a row gets one addition per chosen
                 block, so they stay in L2 where a per-slot buffer went to memory and back)
    attend_dkdv  program (key tile inside one block, b, query head; a head's blocks run together):
                 the head's rows that chose the block, BLOCK_M at a time, on transposed tiles: the
                 head's share of dk, dv (with GQA in float32 per head, summed over the group after:
                 a program per KV head made the blocks most rows chose 4x the longest work); and,
                 when the tile is the whole block and dq is ds @ k times a factor (``KernelPlan.dq_factor``),
                 the rows' dq from the block into DQA too, so attend_dq is not needed

Both run the dense kernels' per-tile code (``bwd_tiles``). Every kernel here takes the attention
with its own mask (``own``): the mask without the selection's term, which holds for every gathered row.
"""

from __future__ import annotations

from dataclasses import replace

from . import select
from .plan import Plan


def own(plan: Plan) -> Plan:
    """``plan`` with the spec's own mask (``select.unselected``: no ``_sel`` term) and the module's
    inputs, so that its kernels take the module's argument list."""
    return replace(plan, attn=select.unselected(plan.attn))

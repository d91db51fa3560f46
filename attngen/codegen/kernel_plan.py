"""Which kernels run an attention, and why: every eligibility rule in one place, as data.

``choose(plan)`` returns a :class:`KernelPlan`: each optional path (split-KV decoding, GQA packing,
a selection's block-sparse forward and backward, the listed forward, dq inside the block-sparse dk/dv
kernel) as a :class:`Choice` with the reason it is taken or not, the kernels the module defines, and
the module header's lines (``notes``), written from those choices.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass, field

from ..ir import nodes as ir
from ..ir.printer import band_text
from ..runtime.ops import _op_kind
from . import linear, scans, tiles
from .plan import Plan

_TILE_NOTES = {
    "none": "no mask: every tile is full",
    "static": "tile classes in closed form (mask_tiles): empty key tiles skipped, full ones without mask work",
    "dynamic": "data-dependent mask: a classification kernel lists each call's tiles (prepare() keeps them)",
    "masked": "the mask is evaluated on every tile (no closed form found)",
}


@dataclass(frozen=True)
class Choice:
    taken: bool
    why: str

    def __bool__(self) -> bool:
        return self.taken


_NO = Choice(False, "")


@dataclass(frozen=True)
class KernelPlan:
    tiles: str  # "none", "static" (closed form), "dynamic" (per-call lists) or "masked"
    band: tuple[int | None, int | None] | None  # a static mask's band lo <= i - j <= hi
    split: Choice  # decoding (M <= 16) splits each row's keys over several programs
    pack: Choice  # split-KV programs hold a GQA group's heads in one tile
    gather: Choice = _NO  # block top-k: the forward visits only the chosen blocks
    gather_bwd: Choice = _NO  # ... and the backward too
    listed: Choice = _NO  # token top-k: the forward visits only the listed keys
    dq_factor: str = ""  # the block-sparse dk/dv kernel writes dq as ds @ k times this ("": attend_dq does)
    one_pass: Choice = _NO  # row aggregates: the forward's one pass also sums the weights' terms (linear.py)
    kernels: list[str] = field(default_factory=list)  # the module's kernels, by suffix

    def notes(self, plan: Plan) -> list[str]:
        """The module header's description of the kernels (``attngen show --triton``), 96 columns."""
        tile_note = _TILE_NOTES[self.tiles]
        if self.band is not None:
            tile_note += f"; the band {band_text(*self.band)} gives each program its ranges directly"
        notes = [f"tiles: {tile_note}", "forward: one program per query tile and head"]
        if plan.table_dots:
            notes.append("table dots: dot(x, e[t]) of a query row and a table row picked per pair takes x_tile @ "
                         "e^T once per query tile (tensor cores) and picks each pair's product; dq scatters its "
                         "adjoint by table row (codegen/tables.py)")
        if plan.pair_rows:
            notes.insert(0, "SLOW PATH: pair vectors (rows that mix the query and the key side, as in sum(abs(q - k))) "
                            "are reduced lane by lane: a loop over the row's lanes of elementwise [BLOCK_M, BLOCK_N] "
                            "tiles, without tensor cores, forward and backward (attngen/codegen/lanes.py)")
        if self.split:
            notes.append("decoding (M <= 16): split-KV, each row's keys over several programs, partial results "
                         "merged exactly by the row statistics; " + self.pack.why)
        else:
            notes.append(f"decoding: no split-KV ({self.split.why})")
        if self.one_pass and plan.fused:
            notes.append("row aggregates: in the forward's own loop (only the out stage reads them), kept for the "
                         "backward, whose pre kernel walks no keys for them (codegen/linear.py)")
        elif self.one_pass:
            notes.append(f"row aggregates: one pass over the keys ({self.one_pass.why}): it sums each term's "
                         "t_ij v_j beside the aggregates and o follows from the sums; the pre kernel reads them "
                         "and walks no keys (codegen/linear.py)")
        elif self.one_pass.why != "no row aggregates":
            notes.append(f"row aggregates: a pass over the keys per nesting level before the forward's loop, "
                         f"again in the pre kernel ({self.one_pass.why})")
        notes.append("backward: a preprocess kernel (delta), then dq (one program per query tile) and dk/dv (one "
                     "program per key tile)")
        sel = plan.select
        if sel is not None:
            notes.append(f"selection: {'block' if sel.block else 'token'} top-{sel.k} made per call by "
                         + ("the kmean and select kernels" if sel.block else "the topk kernel (index lists)")
                         + ", folded into the mask; no gradient through by")
            sparse = ("block-sparse forward: the attend kernel visits only the chosen blocks, the merge kernel "
                      "combines a row's blocks; the backward ")
            if sel.block and not self.gather:
                notes.append(f"forward: the dense kernel with the choice in the mask ({self.gather.why})")
            elif sel.block and self.gather_bwd:
                where = " (written by the dk/dv kernel: the block is its key tile)" if self.dq_factor else ""
                notes.append(sparse + f"too: dq per chosen block{where}, added atomically (its last bits may vary "
                             "between runs), and dk/dv from the rows that chose a block")
            elif sel.block:
                notes.append(sparse + f"runs the dense kernels with the choice in the mask ({self.gather_bwd.why})")
            elif self.listed:
                notes.append("forward: the listed kernel, each query row against the keys in its list only; the "
                             "backward runs the dense kernels with the lists in the mask")
            else:
                notes.append(f"forward: the dense kernel with the lists in the mask ({self.listed.why})")
        kind, why = _op_kind(sel is not None)
        notes.append(f"torch.compile: custom_op operators ({why})" if kind == "custom_op" else
                     f"torch.compile: custom_op operators; with ATTNGEN_TRITON_OP=1 at import, triton_op ones ({why}; "
                     "custom_op under TRITON_INTERPRET=1: interpreted kernels)")
        return [line for note in notes for line in textwrap.wrap(note, 96, subsequent_indent="    ")]


def _softmax_alone(plan: Plan, kind: str) -> bool:
    """Softmax without weights, out or sink (a row's result is its o and lse alone), and a mask without
    per-call tile lists: what a selection's own forward kernels need."""
    a = plan.attn
    return (plan.norm == "softmax" and a.weights is None and a.out is None and a.norm.sink is None
            and kind != "dynamic")


def choose(plan: Plan) -> KernelPlan:
    a, sel = plan.attn, plan.select
    kind = tiles.tiles_kind(a)
    band = a.tiles.band if kind == "static" else None
    # split-KV decoding: partial results must merge by the row statistics alone, and the key range
    # must be closed-form (no per-call lists)
    why_not = ("stick-breaking visits keys in order" if plan.norm == "stickbreaking" else
               "a key scan visits keys in order" if scans.of(a) else
               "per-call tile lists" if kind == "dynamic" else
               "the weights / out stages do not merge by row statistics" if a.weights is not None or a.out is not None
               else "")
    split = Choice(not why_not, why_not)
    # GQA packing makes the head a per-row value: the tile bounds must not depend on it
    per_head = a.tiles is not None and any(ir.uses(e, "h", "hk") for e in (a.tiles.any, a.tiles.all))
    pack = Choice(split.taken and not per_head,
                  "one program per head (the tile bounds depend on the head)" if per_head else
                  "the heads of a GQA group share one tile when G*M <= 32")
    kernels = ["fwd", "bwd_pre", "bwd_dq", "bwd_dkdv"]  # split-KV decoding: fwd with SPLIT=True
    kernels += ["classify"] if kind == "dynamic" else []
    terms, why = linear.of(a)
    one_pass = Choice(terms is not None or plan.fused, "only the out stage reads them" if plan.fused else why)
    if sel is None:
        return KernelPlan(kind, band, split, pack, one_pass=one_pass, kernels=kernels)
    alone = _softmax_alone(plan, kind)
    gather = listed = _NO
    gather_bwd = _NO
    dq_factor = ""
    if sel.block is not None:
        kernels += ["kmean", "select"]
        gather = Choice(alone, "the block-sparse forward takes softmax without weights, out, sink or per-call "
                               "tile lists")
        # the gradients of float inputs are written once per row or key by the dense kernels; blocks must be
        # whole key tiles of 16 keys or more
        bwd_ok = gather.taken and not plan.float_inputs and sel.block % 16 == 0
        gather_bwd = Choice(bwd_ok, "the block-sparse backward takes blocks of a multiple of 16 keys and no "
                                    "float inputs")
        dq_factor = _dq_factor(plan) if gather_bwd else ""
    else:
        kernels += ["topk"]
        listed = Choice(alone and sel.keep is None,
                        "the listed forward takes softmax without keep=, weights, out, sink or per-call tile lists")
    if gather:
        kernels += ["place", "attend", "merge"]
        if gather_bwd:
            kernels += ([] if dq_factor else ["attend_dq"]) + ["attend_dkdv"]
    kernels += ["listed"] if listed else []
    return KernelPlan(kind, band, split, pack, gather, gather_bwd, listed, dq_factor, one_pass, kernels)


def _dq_factor(plan: Plan) -> str:
    """The natural-log factor f of a score ``f * dot(q, k)`` of the raw q and k (the scaled_dot pass), as
    code, when the block-sparse dk/dv kernel also writes dq: blocks of 16, 32 or 64 keys, so that its key
    tile is the whole block. "" otherwise."""
    sd = plan.attn.scaled_dot
    if plan.select.block not in (16, 32, 64) or sd is None:
        return ""
    if not (isinstance(sd.dot.args[1], ir.Row) and sd.dot.args[1].name == "k_raw"):
        return ""
    return "scale" if sd.literal == 1.0 else f"scale * {sd.literal!r}"

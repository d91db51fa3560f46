"""Top-k selection in the kernels: block top-k (``select = topk(K, by=..., block=BS)``) and token
top-k (``select = topk(K, by=...)``).

Either way the selection is made per call by generated kernels, then the attention runs on the
dense kernels with the choice folded into the mask: forward and backward come for free, every
score / norm / weights / out stage included, and no gradient flows through ``by``, as the
language says. A block selection's forward and backward visit only the chosen blocks where the
spec allows it (``gather``), a token selection's forward only the listed keys (``listed``; which
specs qualify: kernel_plan.py).

Block top-k:
    kmean   program (key block, b, hk): the mean of the block's keys after the prologue
            -> KM [B, HK, NBP, BLOCK_D] float32
    select  program (query tile, b, head or GQA group): ``by`` for every block of every row, which
            blocks have an allowed key (in closed form for no mask or a band mask, else key by key),
            ``keep``; the top K of the other allowed blocks: the K-th largest by found by bisection
            on its order-preserving 32-bit key (up to 32 count passes, until every row of the tile is
            decided), ties to the smaller block
            -> SEL [B, H or HK, M, NB] bool
    lowered mask (passes/lower_select.py): ``mask and _sel[b, h or hk, m, j // BS]``
Rows hold all NB blocks at once ([BLOCK_M, NBP] registers), so NB is capped: at ``MAX_BLOCKS``
when ``by`` is any expression (the kmean tile is loaded whole, [NBP, BLOCK_D] float32), at
``MAX_BLOCKS_DOT`` when it is ``dot(q, kmean)`` (the dot runs over slices of D, so only a
[NBP, DC] slice of the means is live at a time). For the block-sparse kernels (``gather``) the
select kernel also counts the chosen blocks: per row (NSEL) and per block of each row tile (TC).

Token top-k (extra memory O(M·K): no [M, N] score or bool matrix is ever stored):
    topk    program (query tile, b, and a head, a GQA group or neither: see ``token_heads``):
            ``by``, the mask and ``keep`` tile by tile over the key tiles the mask allows (a group
            sums ``by`` over its heads; its candidates are allowed for any of them). Each row's
            K-th largest candidate value T is found exactly on the 32-bit ordered key of ``by``
            (float bits mapped to an order-preserving integer; NaN as -inf, -0.0 as +0.0) by
            bisection: a first pass counts the candidates and those with the top bit, then one
            count pass per bit below, until every row of the tile has exactly K at or above T
            (32 passes at most). A last pass in key order takes the candidates above T and the
            first K - #above of those equal to T (ties to the smaller j) -> SEL [B, H, HK or 1,
            M, K] int32: the chosen keys in ascending order, -1 after the last (a row with fewer
            than K candidates keeps them all). Each pass evaluates ``by`` again: the evaluations
            per allowed pair buy the O(M·K) memory
    listed  program (query row, b, the heads sharing a list): the row against its listed keys
            (``KernelPlan.listed``: softmax without keep=, weights, out or sink), o and lse
    lowered mask: ``mask and (keep or _in_list(b, h, hk or 0, m, j, K))``: ``keep`` is evaluated in
            place, so kept keys need no room in the list; membership is a binary search of the
            row's list for the tile's first key, then one bit word per 64 keys of the tile from the
            next BLOCK_N entries (``_in_list`` in the module's helpers)
With ``share = group`` and a ``keep`` that depends on the head, a head's kept keys would be those
of any head of its group: the lowered mask cannot say that, so such specs are refused.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..ir import nodes as ir
from ..passes.lower_select import own_mask, token_heads
from ..passes.mask_tiles import tiles_of
from . import tiles
from .analysis import COL, CodegenError
from .emit import Emitter, KernelEnv
from .layout import statements

MAX_BLOCKS = 256  # the kmean tile of a row block is held whole ([NBP, BLOCK_D] float32)
MAX_BLOCKS_DOT = 1024  # by = dot(q, kmean): by, the keys and the flags, [BLOCK_M, NBP] each, stay in registers


def unselected(a: ir.Attention) -> ir.Attention:
    """``a`` (lowered) as the selection's own kernels see it: the spec's own mask and its tiles (the
    ``_sel`` term holds for every pair they visit), the inputs (``_sel`` among them) unchanged."""
    mask = own_mask(a)
    return replace(a, mask=mask, tiles=tiles_of(mask))


@dataclass
class SelectCode:
    """Statements of the two block selection kernels and the names of their values."""

    kmean_inner: str  # per key tile of a block: the prologue'd key rows
    k_row: str
    blk: str  # per head: by over [BLOCK_M, NBP] (empty when sliced: see by_dot)
    by: str
    keep_blk: str  # per head: keep over [BLOCK_M, NBP]
    keep: str
    by_dot: bool  # by is dot(q, kmean) of the raw query: the kernel computes it over slices of D
    inner: str  # per key offset t of every block: the mask over [BLOCK_M, NBP]
    mask: str
    any_closed: str  # "some key of block jb is allowed" over [BLOCK_M, NBP] in closed form; "": key by key


def select_code(a: ir.Attention) -> SelectCode:
    """``a``: the attention with its own mask (``unselected``)."""
    s = a.select
    rows = [n for n in ir.walk(a.mask) if n.ty.is_vec] if a.mask is not None else []
    if rows:
        # the select kernel evaluates the mask per block offset over [BLOCK_M, NBP] tiles, where a row
        # (a [.., D] load) has no layout yet
        raise CodegenError("with a block selection, the mask may not use rows (q, k or a row of an input) in "
                           "the kernels; use backend='reference'", rows[0].span or a.select.span)
    km_lines: list[str] = []
    km = Emitter(KernelEnv(a, lambda ax: "inner", {"inner": km_lines}), "w")
    k_code = km.f32(s.kmean_of, "k")

    by_dot = (isinstance(s.by, ir.Call) and s.by.fn == "dot"
              and [(x.name if isinstance(x, ir.Row) else None) for x in s.by.args] == ["q_raw", "kmean"])
    blk: list[str] = []
    keep_blk: list[str] = []
    binds = {"kmean": "km_t", "jb": "jb_c", "jb@k": "jb_k"}  # a key-row load by jb (kg[b, hk, jb]): [NBP, L]
    tile = ("BLOCK_M", "NBP")  # a row's blocks
    by = "by_h" if by_dot else Emitter(KernelEnv(a, lambda ax: "blk", {"blk": blk}, binds=binds,
                                                  dot_dtype="tl.float32", tile=tile), "x").f32(s.by)
    keep = "False"
    if s.keep is not None:
        keep = Emitter(KernelEnv(a, lambda ax: "blk", {"blk": keep_blk}, binds=binds, tile=tile), "z").value(s.keep)

    inner: list[str] = []
    menv = KernelEnv(a, lambda ax: "inner" if COL in ax else "blk", {"inner": inner, "blk": blk},
                     binds={"j": "j_t"}, tile=tile)
    mask = Emitter(menv, "y").value(a.mask) if a.mask is not None else "True"
    return SelectCode(statements(km_lines), k_code, statements(blk), by, statements(keep_blk), keep, by_dot,
                      statements(inner), mask, _any_closed(a))


def max_blocks(code: SelectCode) -> int:
    """The most key blocks a row may have in the select kernel."""
    return MAX_BLOCKS_DOT if code.by_dot else MAX_BLOCKS


def _any_closed(a: ir.Attention) -> str:
    """Whether block jb (keys jb*BS .. min(jb*BS + BS, N) - 1) holds a key the mask allows row i, exactly,
    when the mask is absent or a band lo <= i - j <= hi (keys i - hi .. i - lo); "" otherwise."""
    terms = ["rmask", "(jb_c * BS < N)"]
    if a.mask is not None:
        bounds = a.tiles.band if a.tiles is not None else None
        if bounds is None:
            return ""
        lo, hi = bounds
        row = lambda c: "i_r" if c == 0 else f"i_r - ({c})"  # noqa: E731
        if lo is not None:
            terms.append(f"(jb_c * BS <= {row(lo)})")
        if hi is not None:
            terms.append(f"(tl.minimum(jb_c * BS + BS, N) - 1 >= {row(hi)})")
    return " & ".join(terms)


@dataclass
class TopkCode:
    """Statements of the token top-k kernel and the names of its [BLOCK_M, BLOCK_N] values."""

    heads: str  # see token_heads
    program: str  # what one program's rows belong to, for the kernel's comment
    rows: str  # once per program: the query side (empty with share = group: it varies by head)
    tile: str  # per key tile (and per head of a group)
    by: str
    mask: str
    keep: str  # empty without keep=
    t: tiles.TileCode  # the key tiles a query tile visits, from the mask alone


def topk_code(a: ir.Attention) -> TopkCode:
    """``a``: the attention with its own mask (``unselected``)."""
    s = a.select
    lines: dict[str, list[str]] = {"rows": [], "tile": []}
    level = (lambda ax: "tile") if s.share else (lambda ax: "tile" if COL in ax else "rows")
    em = Emitter(KernelEnv(a, level, lines, dot_dtype="tl.float32"), "x")
    by = em.f32(s.by)
    mask = em.value(a.mask) if a.mask is not None else "True"
    keep = em.value(s.keep) if s.keep is not None else ""
    heads = token_heads(a)
    program = {"H": "(b, head)", "HK": "(b, GQA group)", "1": "b, for every head alike"}[heads]
    return TopkCode(heads, program, statements(lines["rows"]), statements(lines["tile"]), by, mask, keep, _key_tiles(a))


def _key_tiles(a: ir.Attention) -> tiles.TileCode:
    """The mask's closed-form key ranges where it has them (for a group: when they are the same for
    each of its heads); otherwise every key tile, with the mask (per-call lists of a data-dependent
    mask are built after the selection)."""
    kind = tiles.tiles_kind(a)
    per_head = a.tiles is not None and any(ir.uses(e, "h") for e in (a.tiles.any, a.tiles.all))
    if kind == "static" and not (a.select.share and per_head):
        return tiles.static_code(a)
    return tiles.TileCode("none" if kind == "none" else "masked")

"""Block top-k selection (``select = topk(K, by=..., block=BS)``) in the kernels.

The selection is made per call by two generated kernels, then the attention runs on the dense
kernels with the choice as part of the mask (so forward and backward come for free, and no
gradient flows through ``by``, as the language says):

    kmean   program (key block, b, hk): the mean of the block's keys after the prologue
            -> KM [B, HK, NBP, BLOCK_D] float32
    select  program (query tile, b, head or GQA group): ``by`` for every block of every row, which
            blocks have an allowed key, ``keep``; the top K of the other allowed blocks by a sort
            of (candidate, by, -jb) keys -> SEL [B, H or HK, M, NB] bool
    lowered mask: ``mask and _sel[b, h or hk, m, j // BS]``

Rows hold all NB blocks at once ([BLOCK_M, NBP] registers), so NB is capped (``MAX_BLOCKS``).
Token top-k (``select`` without ``block``) is not compiled yet.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ..ir import nodes as ir
from ..ir.types import BOOL, INT
from .analysis import COL, CodegenError
from .emit import Emitter, KernelEnv, statements

SEL = "_sel"  # the internal input holding the choice
MAX_BLOCKS = 256  # the kmean tile of a row block is held whole ([NBP, BLOCK_D] float32)


def lower(a: ir.Attention) -> ir.Attention:
    """``a`` (prologue substituted) with its block selection folded into the mask."""
    s = a.select
    if s.block is None:
        raise CodegenError(f"attention '{a.name}': token top-k selection (select without block=) is not "
                           "compiled yet; use backend='reference', or block selection")
    heads = "HK" if s.share else "H"
    decl = ir.InputDecl(SEL, "bool", ("B", heads, "M", "N"))
    hs = ir.Sym("hk" if s.share else "h", INT)
    jb = ir.Binary("floordiv", ir.Sym("j", INT), ir.Const(s.block, INT), INT)
    chosen = ir.Load(SEL, (ir.Sym("b", INT), hs, ir.Sym("m", INT), jb), BOOL)
    mask = chosen if a.mask is None else ir.Binary("and", a.mask, chosen, BOOL)
    # a tile full under the mask need not be full under the selection: keep only "any"
    tiles = None if a.tiles is None else ir.Tiles(a.tiles.any, ir.Const(False, BOOL))
    return replace(a, mask=mask, select=None, tiles=tiles, inputs=(*a.inputs, decl))


@dataclass
class SelectCode:
    """Statements of the two selection kernels and the names of their values."""

    kmean_inner: str  # per key tile of a block: the prologue'd key rows
    k_row: str
    blk: str  # per head: by and keep over [BLOCK_M, NBP]
    by: str
    keep: str
    inner: str  # per key offset t of every block: the mask over [BLOCK_M, NBP]
    mask: str


def select_code(a: ir.Attention, k_row: ir.Expr) -> SelectCode:
    """``a``: the prologue-substituted attention, before lowering; ``k_row``: the k prologue."""
    s = a.select
    km_lines: list[str] = []
    km = Emitter(KernelEnv(a, lambda ax: "inner", {"inner": km_lines}), "w")
    k_code = km.f32(k_row, "k")

    blk: list[str] = []
    env = KernelEnv(a, lambda ax: "blk", {"blk": blk}, binds={"kmean": "km_t", "jb": "jb_c"},
                    dot_dtype="tl.float32")
    em = Emitter(env, "x")
    by = em.f32(s.by)
    keep = em.value(s.keep) if s.keep is not None else "False"

    inner: list[str] = []
    menv = KernelEnv(a, lambda ax: "inner" if COL in ax else "blk", {"inner": inner, "blk": blk},
                     binds={"j": "j_t"})
    mask = Emitter(menv, "y").value(a.mask) if a.mask is not None else "True"
    return SelectCode(statements(km_lines), k_code, statements(blk), by, keep, statements(inner), mask)

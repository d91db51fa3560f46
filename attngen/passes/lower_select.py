"""Selection lowering: the choice folded into the mask, ``mask and _sel[b, hs, m, j // BS]`` (block
top-k) or ``mask and (keep or _in_list(b, hs, m, j, K))`` (token top-k).

Why: the selection kernels write the call's choice into the internal input ``_sel``; every other
kernel (the dense forward and backward, with every score / norm / weights / out stage) then runs
the selection as a mask, and no gradient flows through ``by``, as the language says. The
``select`` stage stays, marked ``lowered``, for the selection kernels; the block-sparse kernels
(codegen/gather.py) take the mask's first conjunct, the spec's own mask.

``hs`` is the selection's head: ``hk`` with ``share = group``, else ``h``; a token selection whose
``by``, mask and ``keep`` are the same for every head is made once for all heads (``hs`` is 0).
"""

from __future__ import annotations

from dataclasses import replace

from ..frontend.errors import AttnError
from ..ir import nodes as ir
from ..ir.axes import HEAD, axes
from ..ir.types import BOOL, INT


def token_heads(a: ir.Attention) -> str:
    """The heads a token selection is made for: "HK" (one per GQA group: share = group), "H" (one
    per head), or "1" when by, the mask and keep= are the same for every head (DeepSeek's indexer):
    one selection serves all heads of a batch row, for 1/H of the memory and of the search.
    ``a``: prologue substituted; lowered or not (the mask's own part decides)."""
    s = a.select
    if s.share:
        return "HK"
    mask = own_mask(a)
    # key rows differ by KV head, so they count as the head too
    per_head = any(HEAD in axes(e) or ir.uses(e, "hk", "k_raw") for e in (s.by, s.keep, mask) if e is not None)
    return "H" if per_head else "1"


def own_mask(a: ir.Attention) -> ir.Expr | None:
    """The spec's mask without the selection's term (which holds for every pair a selection's own
    kernels visit); ``a``'s mask when it has no such term."""
    m = a.mask
    if m is None or a.select is None or not a.select.lowered:
        return m
    if isinstance(m, ir.Binary) and m.op == "and" and _is_choice(m.b):
        return m.a
    return None if _is_choice(m) else m


def _is_choice(e: ir.Expr) -> bool:
    """Whether ``e`` reads the selection (``_sel[...]`` or ``_in_list(...)``)."""
    return any((isinstance(n, ir.Load) and n.name == ir.SEL) or (isinstance(n, ir.Call) and n.fn == ir.IN_LIST)
               for n in ir.walk(e))


def run(a: ir.Attention) -> ir.Attention:
    s = a.select
    if s is None:
        return a
    heads = "HK" if s.share else "H"
    b, m, j = (ir.Sym(n, INT) for n in "bmj")
    hs = ir.Sym("hk" if s.share else "h", INT)
    if s.block is None:
        if s.share and s.keep is not None and HEAD in axes(s.keep):
            raise AttnError(f"attention '{a.name}': with share = group, keep= must not depend on the head "
                            "(h, q or score) in the kernels; use backend='reference'", s.keep.span or s.span)
        if token_heads(a) == "1":
            heads, hs = 1, ir.Const(0, INT)
        decl = ir.InputDecl(ir.SEL, "i32", ("B", heads, "M", s.k))
        chosen = ir.Call(ir.IN_LIST, (b, hs, m, j, ir.Const(s.k, INT)), BOOL)
        if s.keep is not None:
            chosen = ir.Binary("or", s.keep, chosen, BOOL)
    else:
        decl = ir.InputDecl(ir.SEL, "bool", ("B", heads, "M", "N"))
        jb = ir.Binary("floordiv", j, ir.Const(s.block, INT), INT)
        chosen = ir.Load(ir.SEL, (b, hs, m, jb), BOOL)
    mask = chosen if a.mask is None else ir.Binary("and", a.mask, chosen, BOOL)
    return replace(a, mask=mask, select=replace(s, lowered=True), inputs=(*a.inputs, decl))

"""Which peers can run an attention, decided from its IR (never from its name).

FlexAttention runs a softmax over ``score_mod(q·k, b, h, q_idx, kv_idx)`` restricted to
``mask_mod(b, h, q_idx, kv_idx)``: a spec fits when its score reads the raw
``dot(q, k)`` exactly once and nothing else of the rows, its mask reads neither the
score nor the rows, and it has no prologue, select, sink, weights or out stage.
SDPA (cuDNN, flash) runs only plain full or plain causal softmax attention with the
default score ``dot(q, k) * scale``. ``is_causal`` aligns its mask to the top left, so
prefill (M = N) uses it; decoding (M query rows at the end of N keys: :func:`sdpa_end_aligned`)
needs no mask at all with M = 1 (the last row sees every key) and the bottom-right
aligned ``causal_lower_right`` bias with more rows.

Each check raises :class:`Unsupported` with the reason the benchmark prints.
"""

from __future__ import annotations

from ..ir import nodes as ir
from ..ir.types import FLOAT, vec

PEERS = ("flex", "sdpa")

_NORM_NAMES = {"stickbreaking": "stick-breaking norm", "sigmoid": "sigmoid norm", "relu": "relu norm",
               "relu2": "relu2 norm", "none": "norm = none", "sum": "sum norm"}

#: ``dot(q, k) * scale``, the score stage's default, as the builder writes it
DEFAULT_SCORE = ir.Binary("mul", ir.Call("dot", (ir.Row("q", vec("D")), ir.Row("k", vec("D"))), FLOAT),
                          ir.Sym("scale", FLOAT), FLOAT)


class Unsupported(Exception):
    """A peer cannot run this attention; the message says why (``stick-breaking norm``)."""


def is_qk_dot(e: ir.Expr) -> bool:
    """Whether ``e`` is the raw ``dot(q, k)`` (either argument order)."""
    return (isinstance(e, ir.Call) and e.fn == "dot" and len(e.args) == 2
            and {type(x) for x in e.args} == {ir.Row} and {x.name for x in e.args} == {"q", "k"})


def _check_plain_softmax(a: ir.Attention) -> None:
    """Raise for the stages neither peer has: prologue, select, sink, another norm, weights, out."""
    if a.q is not None or a.k is not None:
        raise Unsupported("q/k prologue")
    if a.select is not None:
        raise Unsupported("select stage")
    if a.norm.kind != "softmax":
        raise Unsupported(_NORM_NAMES.get(a.norm.kind, f"{a.norm.kind} norm"))
    if a.norm.sink is not None:
        raise Unsupported("softmax sink")
    if a.weights is not None:
        raise Unsupported("weights stage")
    if a.out is not None:
        raise Unsupported("out stage")


def check_flex(a: ir.Attention) -> None:
    """Raise :class:`Unsupported` unless FlexAttention can run ``a`` (see the module docstring)."""
    _check_plain_softmax(a)
    dots = sum(1 for n in ir.walk(a.score) if is_qk_dot(n))
    if dots != 1:
        raise Unsupported("score does not use dot(q, k)" if dots == 0 else f"score uses dot(q, k) {dots} times")
    rows = sum(1 for n in ir.walk(a.score) if n.ty.is_vec)
    if rows != 2:  # the two rows inside the one dot(q, k)
        raise Unsupported("score reads rows other than through dot(q, k)")
    if a.mask is not None:
        if ir.uses(a.mask, "score"):
            raise Unsupported("mask reads the score")
        if any(n.ty.is_vec for n in ir.walk(a.mask)):
            raise Unsupported("mask reads the q/k rows")


def _sdpa_masked(a: ir.Attention) -> bool:
    """Whether ``a`` is plain causal (True) or plain full (False) softmax attention; raise
    :class:`Unsupported` for anything else SDPA cannot run."""
    _check_plain_softmax(a)
    if a.score != DEFAULT_SCORE:
        raise Unsupported("score is not dot(q, k) * scale")
    if a.mask is not None and not _is_causal(a.mask):
        raise Unsupported("mask is neither absent nor plain causal")
    return a.mask is not None


def sdpa_causal(a: ir.Attention, M: int, N: int) -> bool:
    """Whether SDPA runs ``a`` with ``is_causal``; raise :class:`Unsupported` if SDPA cannot run it."""
    if not _sdpa_masked(a):
        return False
    if M != N:
        raise Unsupported("causal with M != N (SDPA aligns causal masks to the top left)")
    return True


def sdpa_end_aligned(a: ir.Attention, M: int, N: int) -> bool:
    """Whether SDPA needs a causal mask aligned to the bottom right (``causal_lower_right``) to run
    ``a`` with M query rows at the end of N keys (decoding); False: no mask (full attention, or causal
    with M = 1, which sees every key). Raise :class:`Unsupported` if SDPA cannot run ``a``."""
    return _sdpa_masked(a) and M > 1


def _is_causal(e: ir.Expr) -> bool:
    """``j <= i`` (or ``i >= j``)."""
    if not isinstance(e, ir.Binary) or e.op not in ("le", "ge"):
        return False
    lo, hi = (e.a, e.b) if e.op == "le" else (e.b, e.a)
    return isinstance(lo, ir.Sym) and lo.name == "j" and isinstance(hi, ir.Sym) and hi.name == "i"

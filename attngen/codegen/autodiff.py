"""Symbolic reverse-mode differentiation of IR expressions, emitted as Triton code.

The backward kernels iterate one side (query rows or key columns) in the program and
the other in a loop. Inside the loop we differentiate only through *pair* nodes
(depending on both rows and keys). A child that depends on the program's side only is
a *frontier*: its adjoint is reduced over the loop axis and accumulated, and after the
loop it is differentiated further, once. A child owned by the other kernel is dropped,
so every path from the score to a leaf is counted by exactly one kernel:

    row kernel (dq): frontiers have no key axis (query-side and program-level values);
                     pair-level tensor loads get atomic adds inside the loop
    col kernel (dk, dv): frontiers depend on the key and not the query; it works in the
                         transposed 't' orientation (pair adjoints [BN, BM])

Shapes follow :mod:`attngen.codegen.emit`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

from ..ir import nodes as ir
from ..ir.builtins import UNARY
from . import lane_grads, scans, tables
from .analysis import COL, ROW, axes
from .emit import Emitter
from .lanes import is_lane_reduction
from .layout import _pow, vec_offs

LN2 = 0.6931471805599453
_DOT_NOTES = {"vrow": "[BLOCK_M, BLOCK_N] @ [BLOCK_N, BLOCK_L] -> [BLOCK_M, BLOCK_L]",
              "vcol": "[BLOCK_N, BLOCK_M] @ [BLOCK_M, BLOCK_L] -> [BLOCK_N, BLOCK_L]"}


def _dot_note(code: str, shape: str) -> str:
    """The shape comment of an adjoint's products: pair tiles against rows, or 0/1 lane products (a slice's
    or concat's lanes put back)."""
    notes = []
    lane_dots = code.count("_lanes_of(")  # each 0/1 lane product is one tl.dot
    if code.count("tl.dot(") > lane_dots and shape in _DOT_NOTES:
        notes.append(_DOT_NOTES[shape])
    if lane_dots:
        notes.append("0/1 lane products: [rows, BLOCK_L] @ [BLOCK_L, BLOCK_X]")
    return "; ".join(notes)


def _shape(e: ir.Expr, orient: str) -> str:
    """Layout class of a value: pair, row, col (pair layout), kcol ([BN, 1]), none, v* for vectors;
    in the transposed orientation tpair ([BN, BM]), trow ([1, BM]) and kcol."""
    a = axes(e)
    if e.ty.is_vec:
        return "vcol" if COL in a else "vrow" if ROW in a else "vnone"
    t = orient == "t"
    if ROW in a and COL in a:
        return "tpair" if t else "pair"
    if COL in a:
        return "kcol" if orient in ("k", "t") else "col"
    return ("trow" if t else "row") if ROW in a else "none"


def reduce_to(code: str, src: str, dst: str) -> str:
    """Sum an adjoint of layout ``src`` down to layout ``dst`` (broadcast in reverse)."""
    if src == dst:
        return code
    if dst == "none":
        return f"tl.sum({code})"
    table = {
        ("pair", "row"): "tl.sum({}, axis=1)[:, None]", ("pair", "col"): "tl.sum({}, axis=0)[None, :]",
        ("pair", "kcol"): "tl.sum({}, axis=0)[:, None]", ("col", "kcol"): "tl.trans({})",
        ("vrow", "row"): "tl.sum({}, axis=1)[:, None]", ("vcol", "kcol"): "tl.sum({}, axis=1)[:, None]",
        ("vrow", "vnone"): "tl.sum({}, axis=0)[None, :]", ("vcol", "vnone"): "tl.sum({}, axis=0)[None, :]",
        ("row", "pair"): "{}", ("col", "pair"): "{}", ("none", "row"): "{}",
        ("tpair", "kcol"): "tl.sum({}, axis=1)[:, None]",  # the dk/dv kernel wants no query-side node
    }
    if (src, dst) not in table:
        raise AssertionError(f"cannot reduce an adjoint from {src} to {dst}")
    return table[(src, dst)].format(code)


@dataclass
class GradSinks:
    """Where leaf gradients go: ``leaf(node, adj_code, orient, level)`` emits the update."""

    leaf: Callable[[ir.Expr, str, str, str], None]
    bound: dict[str, str] = field(default_factory=dict)  # adjoints of bound syms (p, score), filled in
    pair_loads: bool = True  # this kernel takes the gradients of pair-level loads (the dq kernel's)


class Differentiator:
    def __init__(self, em: Emitter, wants_grad: Callable[[ir.Expr], bool]):
        self.em = em
        self.wants_grad = wants_grad  # float leaves that need a gradient (inputs with requires_grad, rows)
        # of the backprop running (the rules of a reduction of pair rows reach past its children)
        self.want_child: Callable[[ir.Expr], bool] = lambda c: True
        self.sinks = GradSinks(lambda *args: None)
        self.pair_guard: str | None = None

    # ---- which nodes carry gradient at all
    def live(self, e: ir.Expr) -> bool:
        if e.ty.kind in ("int", "bool"):
            return False
        if isinstance(e, (ir.Const,)):
            return False
        if isinstance(e, ir.Sym):
            return e.name in ("score", "p")
        if isinstance(e, ir.Agg):  # its adjoint is the pre kernel's, whatever its argument reads
            return True
        if isinstance(e, (ir.Row, ir.Load, ir.Param)):
            return self.wants_grad(e)
        if isinstance(e, ir.Call) and e.fn == "rope":
            return self.live(e.args[0])
        return any(self.live(c) for c in ir.children(e))

    def backprop(self, seeds: dict[ir.Expr, list[tuple[str, str]]], orient: str, level: str,
                 stop: Callable[[ir.Expr], bool], on_stop: Callable[[ir.Expr, str, str], None],
                 sinks: GradSinks, want_child: Callable[[ir.Expr], bool] = lambda c: True,
                 pair_guard: str | None = None) -> None:
        """Emit adjoint code from ``seeds`` ({node: [(code, layout)]}) down to leaves or stop nodes.

        ``stop(node)`` nodes get ``on_stop(node, adj, layout, factor)`` instead of being expanded:
        their adjoint is ``adj * factor`` when factor (the code of a value that varies by neither row,
        key nor head) is not None. A product with such a value passes it down instead of multiplying
        every element of a tile by it, so a frontier can apply it once, after the loop.
        ``pair_guard`` (a boolean [BLOCK_M, BLOCK_N] tile) zeroes pair adjoints outside the allowed
        pairs: there a zero adjoint times a NaN/inf forward value (log of a masked-out
        distance, say) would otherwise poison the sums. Seeds come zeroed already, and a rule
        that multiplies by no pair-level value keeps zeros zero, so those terms go unguarded.
        """
        self.want_child, self.sinks, self.pair_guard = want_child, sinks, pair_guard
        order: list[ir.Expr] = []
        seen: set = set()

        def visit(n: ir.Expr) -> None:
            if n in seen or not self.live(n):
                return
            seen.add(n)
            if not stop(n):
                for c in self._diff_children(n):
                    if want_child(c):
                        visit(c)
            order.append(n)

        for s in seeds:
            if want_child(s):  # a stage that varies by row only (weights = alpha[b, h, m]) is the dq kernel's
                visit(s)
        # (code, layout, zero outside the allowed pairs, a global factor still to multiply or None)
        contrib: dict[ir.Expr, list[tuple[str, str, bool, str | None]]] = {
            n: [(c, s, True, None) for c, s in v] for n, v in seeds.items()}
        for n in reversed(order):
            terms = contrib.get(n)
            if not terms:
                continue
            shape = _shape(n, orient)
            factor = terms[0][3] if all(t[3] == terms[0][3] for t in terms) else None
            total = " + ".join(f"({self._term(t, shape, pair_guard, factor)})" for t in terms)
            g = self.em.put(level, total, "g", _dot_note(total, shape))
            if stop(n):
                on_stop(n, g, shape, factor)
                continue
            if factor is not None and (isinstance(n, (ir.Sym, ir.Row, ir.Load, ir.Param))
                                       or is_lane_reduction(n, self.em.decls)
                                       or tables.match(n, self.em.decls) is not None):
                # a leaf takes its adjoint whole, and so does a pair row's loop (its gathered rows' updates)
                # and a table dot (its table's)
                g, factor = self.em.put(level, f"{g} * {factor}", "g"), None
            if isinstance(n, ir.Sym):
                sinks.bound[n.name] = g
                continue
            if isinstance(n, (ir.Row, ir.Load, ir.Param)):
                sinks.leaf(n, g, orient, level)
                continue
            pulled = self._global_factor(n) if factor is None else None
            for child, code, *layout in self._rules(n, g, orient, level):
                if self.live(child) and want_child(child):
                    # every rule is linear in g: a pending factor passes to the children unchanged
                    term = (code, _shape(child, orient) if layout else shape, _keeps_zeros(n, child), factor)
                    if pulled is not None and child == pulled[0]:
                        term = (g, shape, True, pulled[1])
                    contrib.setdefault(child, []).append(term)

    def _global_factor(self, n: ir.Expr) -> tuple[ir.Expr, str] | None:
        """(x, code of c) when ``n`` is x * c with c a float that varies by neither row, key nor head
        (the softmax scale, a scalar input): x's adjoint is then g with c still to multiply."""
        if not (isinstance(n, ir.Binary) and n.op == "mul") or n.a == n.b:
            return None
        for x, c in ((n.a, n.b), (n.b, n.a)):
            if c.ty.kind == "float" and not axes(c):
                return x, self.em.f32(c)
        return None

    def _term(self, t: tuple, shape: str, pair_guard: str | None, factor: str | None) -> str:
        """One contribution in the node's layout; its own factor multiplied in unless the node
        keeps it pending (``factor``)."""
        code, src, clean, own = t
        code = reduce_to(code if clean else self._guard(code, src, pair_guard), src, shape)
        return code if own is None or own == factor else f"{code} * {own}"

    @staticmethod
    def _guard(code: str, src: str, pair_guard: str | None) -> str:
        if pair_guard and src in ("pair", "tpair"):
            return f"tl.where({pair_guard}, {code}, 0.0)"
        return code

    def _diff_children(self, n: ir.Expr) -> tuple[ir.Expr, ...]:
        if isinstance(n, ir.Call) and n.fn == "rope":
            return (n.args[0],)
        if tables.match(n, self.em.decls) is not None:  # its adjoint by table row, then x's and e's (tables.py)
            return (tables.rows_node(self.em, n),)
        if isinstance(n, (ir.Load, ir.Cast)) and not n.ty.is_vec:
            return ()
        if isinstance(n, ir.Load):
            return ()
        return tuple(c for c in ir.children(n) if c.ty.kind in ("float", "vec"))

    # ---- local derivative rules: [(child, code)] or [(child, code, True)] for child-layout codes
    def _rules(self, n: ir.Expr, g: str, orient: str, level: str) -> list[tuple]:
        em = self.em
        v = lambda x: em.f32(x, orient)  # noqa: E731 - forward value of a child
        if isinstance(n, ir.Cast):
            return [(n.x, g)]
        if isinstance(n, ir.Scan):
            return [(n.x, scans.adjoint(em, n, g, orient, level))]
        if isinstance(n, ir.Slice):  # the lanes go back to the slice's offset of the whole row
            return [(n.x, em.scatter(n, g), True)]
        if isinstance(n, ir.Unary):
            return [(n.x, f"-{g}")]
        if isinstance(n, ir.Binary):
            a, b = n.a, n.b
            if n.op == "add":
                return [(a, g), (b, g)]
            if n.op == "sub":
                return [(a, g), (b, f"-{g}")]
            if n.op == "mul":
                return [(a, f"{g} * {v(b)}"), (b, f"{g} * {v(a)}")]
            if n.op == "div":
                return [(a, f"{g} / {v(b)}"), (b, f"-{g} * {v(a)} / ({v(b)} * {v(b)})")]
            if n.op == "pow":
                out = []
                if isinstance(b, ir.Const):
                    k = float(b.value)
                    lower = ir.Const(k - 1, b.ty) if k - 1 >= 0 else None
                    da = f"{g} * {k!r} * {_pow(v(a), repr(k - 1), lower)}" if lower is not None \
                        else f"{g} * {k!r} * tl.exp2({k - 1!r} * tl.log2({v(a)}))"
                    return [(a, da)]
                y = em.value(n, orient)
                out.append((a, f"{g} * {v(b)} * tl.exp2(({v(b)} - 1.0) * tl.log2({v(a)}))"))
                out.append((b, f"{g} * {y} * tl.log({v(a)})"))
                return out
            if n.op in ("floordiv", "mod"):
                # floor(a / b) is piecewise constant; a % b = a - b * floor(a / b)
                if n.op == "floordiv":
                    return []
                return [(a, g), (b, f"-{g} * tl.floor({v(a)} / {v(b)})")]
            return []
        if isinstance(n, ir.Call):
            return self._call_rules(n, g, orient, level)
        return []

    def _call_rules(self, n: ir.Call, g: str, orient: str, level: str) -> list[tuple]:
        em = self.em
        v = lambda x: em.f32(x, orient)  # noqa: E731
        fn, args = n.fn, n.args
        if is_lane_reduction(n, em.decls):
            return lane_grads.rules(self, n, g, orient, level)
        if tables.match(n, em.decls) is not None:
            return tables.rules(self, n, g, orient, level)
        if fn == tables.ROWS:
            return tables.post_rules(self, n, g, level)
        y = em.value(n, orient) if n.ty.kind in ("float", "vec") else None
        x = args[0]
        if fn in UNARY:  # ir/builtins.py
            return [(x, UNARY[fn].grad.format(g=g, x=v(x), y=y))]
        simple = {
            "abs": f"tl.where({v(x)} > 0, {g}, tl.where({v(x)} < 0, -{g}, 0.0))",
            "relu": f"tl.where({v(x)} > 0, {g}, 0.0)",
        }
        if fn in simple:
            return [(x, simple[fn])]
        if fn in ("min", "max"):
            a, b = args
            win = "<" if fn == "min" else ">"
            pick = lambda p, q: (f"tl.where({v(p)} {win} {v(q)}, {g}, "  # noqa: E731 - ties split evenly
                                 f"tl.where({v(p)} == {v(q)}, 0.5 * {g}, 0.0))")
            return [(a, pick(a, b)), (b, pick(b, a))]
        if fn == "clamp":
            lo, hi = args[1], args[2]
            return [(x, f"tl.where(({v(x)} >= {v(lo)}) & ({v(x)} <= {v(hi)}), {g}, 0.0)"),
                    (lo, f"tl.where({v(x)} < {v(lo)}, {g}, 0.0)"), (hi, f"tl.where({v(x)} > {v(hi)}, {g}, 0.0)")]
        if fn == "where":
            c = em.value(args[0], orient)
            return [(args[1], f"tl.where({c}, {g}, 0.0)"), (args[2], f"tl.where({c}, 0.0, {g})")]
        if fn in ("dot", "sqdist"):
            return self._pair_rules(n, g, orient)
        if fn == "concat":  # each part's lanes of g
            return [(a, f"tl.dot({g}, tl.trans({em.concat_part(n, w)}), input_precision=\"ieee\")", True)
                    for w, a in enumerate(args)]
        if fn == "norm":
            return [(x, f"tl.where({y} > 0, {g} / {y}, 0.0) * {v(x)}", True)]
        if fn in ("row_sum", "row_mean", "row_max", "row_min"):
            # as a one-sided dot: g is [R, 1] (or scalar) against [R, L] rows
            side = "k" if COL in axes(x) else orient
            gk = reduce_to(g, "col", "kcol") if _shape(n, orient) == "col" else g
            xv = em.f32(x, side)
            if fn in ("row_sum", "row_mean"):
                scale = f" / {x.ty.length}" if fn == "row_mean" else ""
                return [(x, f"({gk}{scale} + tl.zeros_like({xv}))", True)]  # parenthesized: factors multiply it
            yk = f"{em.row_reduction(n, side)}[:, None]"  # the extreme of each row, against its lanes
            return [(x, f"tl.where({xv} == {yk}, {gk}, 0.0)", True)]
        if fn == "l2norm":
            nrm = em.row_norm(x, orient, level)
            gy = em.put(level, f"tl.sum({g} * {y}, axis=1)[:, None]", "gy")
            return [(x, f"tl.where({nrm} > 1e-6, ({g} - {y} * {gy}) / {nrm}, {g} / 1e-6)")]
        if fn == "rmsnorm":
            w = args[1]
            xv, wv = v(x), v(w)
            L = n.ty.length
            r = em.rms_scale(n, orient, level)
            gxw = em.put(level, f"tl.sum({g} * {xv} * {wv}, axis=1)[:, None]", "gxw")
            return [(x, f"{r} * {wv} * {g} - {xv} * {r} * {r} * {r} * {gxw} / {L}"),
                    (w, f"{g} * {xv} * {r}")]
        if fn == "rope":
            cos, sin = em.rope_tables(n, orient, level)
            L = n.ty.length
            return [(x, f"{g} * {cos} - _rope_rot({g} * {sin}, {vec_offs(L)}, {L})")]
        return []

    def _pair_rules(self, n: ir.Call, g: str, orient: str) -> list[tuple]:
        em = self.em
        a, b, pair = em.sides(n)
        if not pair:
            # both operands on one side: g is [R, 1] (or scalar) against [R, L] rows
            side_orient = "k" if COL in axes(a) or COL in axes(b) else orient
            gk = reduce_to(g, "col", "kcol") if _shape(n, orient) == "col" else g  # [R, 1] against [R, L] rows
            av, bv = em.f32(a, side_orient), em.f32(b, side_orient)
            if n.fn == "dot":
                return [(a, f"{gk} * {bv}", True), (b, f"{gk} * {av}", True)]
            return [(a, f"2.0 * {gk} * ({av} - {bv})", True), (b, f"-2.0 * {gk} * ({av} - {bv})", True)]
        # a query-side [BM, L] and b key-side [BN, L]: contributions through matrix products;
        # g is [BM, BN], or [BN, BM] in the transposed orientation
        dt = em.env.dot_dtype
        g_mn, g_nm = (f"tl.trans({g})", g) if orient == "t" else (g, f"tl.trans({g})")
        sum_m, sum_n = (0, 1) if orient == "t" else (1, 0)  # g's axis over keys, over queries
        out = []
        if n.fn == "dot":
            out.append((a, f"tl.dot({g_mn}.to({dt}), {em.value(b, 'k')}.to({dt}), input_precision=DOT_PRECISION)",
                        True))
            out.append((b, f"tl.dot({g_nm}.to({dt}), {em.value(a)}.to({dt}), input_precision=DOT_PRECISION)", True))
            return out
        av, bv = em.f32(a), em.f32(b, "k")
        out.append((a, f"2.0 * (tl.sum({g}, axis={sum_m})[:, None] * {av} - tl.dot({g_mn}.to({dt}), {bv}.to({dt}), "
                       f"input_precision=DOT_PRECISION))", True))
        out.append((b, f"2.0 * (tl.sum({g}, axis={sum_n})[:, None] * {bv} - tl.dot({g_nm}.to({dt}), "
                       f"{av}.to({dt}), input_precision=DOT_PRECISION))", True))
        return out


def _keeps_zeros(n: ir.Expr, child: ir.Expr) -> bool:
    """Whether ``n``'s rule gives ``child`` a zero wherever n's adjoint is zero, whatever the forward
    values outside the allowed pairs: it uses no forward value that varies by row or key (one may be
    inf or NaN there, on a padded row or key too, and 0 * inf is NaN)."""
    if isinstance(n, (ir.Cast, ir.Unary)):
        return True
    if not isinstance(n, ir.Binary) or n.op not in ("add", "sub", "mul", "div"):
        return False
    if n.op in ("add", "sub"):
        return True
    used = [n.b] if child == n.a else [n.a, n.b] if n.op == "div" else [n.a]
    if n.a == n.b:
        used = [n.a]
    return not any({ROW, COL} & axes(x) for x in used)


def owned_by_row_kernel(n: ir.Expr) -> bool:
    return COL not in axes(n)


def owned_by_col_kernel(n: ir.Expr) -> bool:
    return COL in axes(n) and ROW not in axes(n)


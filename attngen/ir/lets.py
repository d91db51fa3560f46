"""``let NAME = EXPR`` (language 1.1): a named value for the statements after it.

A let is resolved before type checking by putting its expression (its earlier lets already
resolved) wherever a later statement names it. So a let means exactly what its expression would
mean written out at each use: inside a stage, ``q`` and ``k`` are that stage's rows, a pair
expression stays one, and the kernels compute it once per tile (their emitter shares equal
expressions, source positions aside). Errors inside a let's expression point at the let.

Checks here: a let's name is new (not a built-in, input, const, stage or earlier let), a name a
statement uses that is a let defined after it is refused with both lines, and a prologue (``q =``,
``k =``) may not use a let that reads ``q`` or ``k`` (there they would be the rows before the
prologue, elsewhere after it).
"""

from __future__ import annotations

from dataclasses import replace

from ..frontend import ast
from ..frontend.errors import AttnError
from ..frontend.limits import MAX_DEPTH

#: the most nodes a statement may have once its lets are put in (a let used twice in the next, and so
#: on, doubles at each step: 40 short lines would make 2^40 nodes)
MAX_NODES = 20000


def _children(e: ast.Expr) -> tuple[ast.Expr, ...]:
    if isinstance(e, ast.Unary):
        return (e.operand,)
    if isinstance(e, ast.Binary):
        return (e.left, e.right)
    if isinstance(e, ast.Compare):
        return e.operands
    if isinstance(e, ast.Call):
        return (*e.args, *(kw.value for kw in e.kwargs))
    if isinstance(e, ast.Index):
        return e.indices
    if isinstance(e, ast.Slice):
        return (e.base, e.lo, e.hi)
    return ()


def _check_size(e: ast.Expr, at: ast.Name, what: str) -> None:
    """Refuse ``e`` (lets put in, subtrees shared) past MAX_DEPTH levels or MAX_NODES nodes, counted
    without recursion and once per shared subtree."""
    depth: dict[int, int] = {}
    size: dict[int, int] = {}
    stack = [(e, False)]
    while stack:
        node, done = stack.pop()
        if id(node) in size:
            continue
        kids = _children(node)
        if not done:
            stack.append((node, True))
            stack.extend((c, False) for c in kids if id(c) not in size)
            continue
        nesting = 1 if kids else 0
        depth[id(node)] = nesting + max((depth[id(c)] for c in kids), default=0)
        size[id(node)] = 1 + sum(size[id(c)] for c in kids)
        if depth[id(node)] > MAX_DEPTH or size[id(node)] > MAX_NODES:
            raise AttnError(f"{what} is too large with its lets put in (more than {MAX_DEPTH} levels or "
                            f"{MAX_NODES} nodes)", at.span, "use each let fewer times, or simplify")


def names_in(e: ast.Expr) -> list[ast.Name]:
    """Every name ``e`` reads as a value (not function names, not indexed input names)."""
    if isinstance(e, ast.Name):
        return [e]
    return [n for c in _children(e) for n in names_in(c)]


def substitute(e: ast.Expr, lets: dict[str, ast.Expr]) -> ast.Expr:
    """``e`` with every name of ``lets`` replaced by its (resolved) expression."""
    if isinstance(e, ast.Name):
        return lets.get(e.id, e)
    if isinstance(e, ast.Unary):
        return replace(e, operand=substitute(e.operand, lets))
    if isinstance(e, ast.Binary):
        return replace(e, left=substitute(e.left, lets), right=substitute(e.right, lets))
    if isinstance(e, ast.Compare):
        return replace(e, operands=tuple(substitute(x, lets) for x in e.operands))
    if isinstance(e, ast.Call):
        return replace(e, args=tuple(substitute(x, lets) for x in e.args),
                       kwargs=tuple(replace(kw, value=substitute(kw.value, lets)) for kw in e.kwargs))
    if isinstance(e, ast.Index):
        return replace(e, indices=tuple(substitute(x, lets) for x in e.indices))
    if isinstance(e, ast.Slice):
        return replace(e, base=substitute(e.base, lets))
    return e


def _mark_rows(e: ast.Expr) -> ast.Expr:
    """``e`` with its q and k marked as a let's (``ast.Name.from_let``)."""
    rows = {n.id: replace(n, from_let=True) for n in names_in(e) if n.id in ("q", "k")}
    return substitute(e, rows) if rows else e


class Lets:
    """The lets of one attention, in source order."""

    def __init__(self):
        self.resolved: dict[str, ast.Expr] = {}  # name -> expression with earlier lets put in
        self.reads_rows: dict[str, bool] = {}  # name -> it reads q or k
        self.line: dict[str, int] = {}

    def define(self, st: ast.LetDecl, taken: set[str]) -> None:
        name = st.name.id
        if name in self.resolved:
            raise AttnError(f"let '{name}' is defined twice (first on line {self.line[name]})", st.name.span)
        if name in taken:
            raise AttnError(f"'{name}' is already a name here (a built-in, input, const or stage) and cannot "
                            "name a let", st.name.span)
        used = {n.id for n in names_in(st.value)}
        self.reads_rows[name] = bool(used & {"q", "k"}) or any(self.reads_rows.get(u, False) for u in used)
        self.resolved[name] = _mark_rows(substitute(st.value, self.resolved))
        _check_size(self.resolved[name], st.name, f"let '{name}'")
        self.line[name] = st.span.line

    def apply(self, stage: str, e: ast.Expr, later: dict[str, int]) -> ast.Expr:
        """``e`` (of statement ``stage``) with the lets defined before it put in; ``later``: the lets
        defined after it (name -> line), which it may not use."""
        names = names_in(e)
        for n in names:
            if n.id in later:
                raise AttnError(f"'{n.id}' is a let defined later (line {later[n.id]}); a let names a value for "
                                "the statements after it", n.span)
            if stage in ("q", "k") and self.reads_rows.get(n.id):
                raise AttnError(f"the {stage} prologue uses let '{n.id}', which reads q or k (in a let they are "
                                "the rows after the prologue)", n.span)
        used = [n for n in names if n.id in self.resolved]
        if not used:
            return e
        out = substitute(e, self.resolved)
        _check_size(out, used[0], f"the {stage} stage")
        return out

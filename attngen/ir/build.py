"""AST -> checked IR for whole attentions: declarations, stages, defaults, constants.

``build_module`` is the entry point; it raises :class:`AttnError` for any user mistake.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Union

from ..frontend import ast
from ..frontend.errors import AttnError, suggest
from ..frontend.limits import FLOAT32_MAX, INT32_MAX, INT32_MIN
from . import nodes as ir
from .reserved import check_attention_names, check_input_name
from .check_expr import _STAGE_NAMES, BUILTIN_NAMES, FUNCTIONS, NORMS, SIZES, _ExprBuilder, _Scope, _scalar_stage
from .lets import Lets, names_in as lets_names
from .types import DTYPES, FLOAT, INT, vec

ConstValue = Union[int, float, bool]


def parse_const_value(text: str) -> ConstValue:
    """A ``-D NAME=VALUE`` value: int, float, true/false or inf."""
    t = text.strip().lower()
    if t in ("true", "false"):
        return t == "true"
    try:
        return int(t)
    except ValueError:
        return float(t)  # raises ValueError for junk; the CLI reports it


def _const_literal(node: ast.Expr) -> ConstValue:
    if isinstance(node, ast.Literal):
        return node.value
    if isinstance(node, ast.Unary) and node.op in "+-" and isinstance(node.operand, ast.Literal) \
            and not isinstance(node.operand.value, bool):
        return -node.operand.value if node.op == "-" else node.operand.value
    raise AttnError("a const must be a literal (integer, float, true, false or inf)", node.span)


def build_attention(node: ast.Attention, filename: str, source: str,
                    overrides: Mapping[str, ConstValue] | None = None) -> ir.Attention:
    inputs: dict[str, ir.InputDecl] = {}
    consts: dict[str, ConstValue] = {}
    stages: dict[str, ast.Assign] = {}
    lets, pending = Lets(), {st.name.id: st.span.line for st in node.body if isinstance(st, ast.LetDecl)}
    for st in node.body:
        if isinstance(st, ast.LetDecl):
            taken = (BUILTIN_NAMES | FUNCTIONS | set(ir.STAGES) | set(inputs) | set(consts)
                     | {"true", "false", "inf", "let"})
            lets.define(st, taken)
            pending.pop(st.name.id, None)
            continue
        if isinstance(st, ast.Assign):  # the lets before it put in; those after it refused
            st = replace(st, value=lets.apply(st.target.id, st.value, pending))
        name = st.name.id if not isinstance(st, ast.Assign) else st.target.id
        if isinstance(st, (ast.InputDecl, ast.ConstDecl)):
            if name in BUILTIN_NAMES or name in ("true", "false", "inf"):
                raise AttnError(f"'{name}' is a built-in name and cannot be redeclared", st.name.span)
            if name in inputs or name in consts or name in lets.resolved:
                raise AttnError(f"'{name}' is declared twice", st.name.span)
        if isinstance(st, ast.ConstDecl):
            consts[name] = _override(name, _const_literal(st.value), overrides, st)
        elif isinstance(st, ast.InputDecl):
            check_input_name(name, st.name.span, set(inputs))
            inputs[name] = _input_decl(st, consts)
        else:
            if name not in ir.STAGES:
                raise AttnError(f"unknown stage '{name}'", st.target.span,
                                suggest(name, ir.STAGES) or f"stages are {', '.join(ir.STAGES)}")
            if name in stages:
                first = stages[name].span.line
                raise AttnError(f"stage '{name}' is given twice (first on line {first})", st.target.span)
            stages[name] = st
    for k in overrides or {}:
        if k not in consts:
            raise AttnError(f"no const '{k}' in attention '{node.name.id}'", node.name.span,
                            suggest(k, consts) or (f"its consts are {', '.join(consts)}" if consts else None))

    def scope(stage: str) -> _ExprBuilder:
        return _ExprBuilder(_Scope(stage, set(_STAGE_NAMES[stage]), inputs, consts))

    def expr(stage: str, want: str):
        st = stages.get(stage)
        if st is None:
            return None
        return _scalar_stage(scope(stage).build(st.value), stage, want, st.value.span)

    q = _prologue(stages.get("q"), scope("q"))
    k = _prologue(stages.get("k"), scope("k"))
    score = expr("score", "float")
    if score is None:
        score = ir.Binary("mul", ir.Call("dot", (ir.Row("q", vec("D")), ir.Row("k", vec("D"))), FLOAT),
                          ir.Sym("scale", FLOAT), FLOAT)
    mask = expr("mask", "bool")
    _no_scan_through_score(score, mask, stages)
    weights = expr("weights", "float")
    out = None
    if "out" in stages:
        st = stages["out"]
        out = scope("out").build(st.value)
        if not out.ty.is_vec or out.ty.is_bool:
            raise AttnError(f"out must be a row vector (a transform of o), got {out.ty}", st.value.span)
        out = _cast_vec(out, "DV", st.value.span, "out")
    return ir.Attention(
        name=node.name.id, inputs=tuple(inputs.values()), consts=tuple(consts.items()),
        q=q, k=k, score=score, mask=mask,
        select=_select(stages.get("select"), scope, consts),
        norm=_norm(stages.get("norm"), scope),
        weights=weights, out=out, filename=filename, source=source,
        stage_spans=tuple((n, s.span) for n, s in stages.items()),
    )


def _no_scan_through_score(score: ir.Expr, mask: ir.Expr | None, stages) -> None:
    """A mask (or selection) may not read a key scan, also not through ``score`` (LANGUAGE.md 1.1)."""
    if not any(isinstance(n, ir.Scan) for n in ir.walk(score)):
        return
    for e in (mask,):
        for n in ir.walk(e) if e is not None else ():
            if isinstance(n, ir.Sym) and n.name == "score":
                raise AttnError("the mask reads score, whose value uses a key scan (suffixsum), and a mask may "
                                "not use a scan", n.span, "a scan runs over the keys the mask allows")
    st = stages.get("select")
    if st is not None and any(isinstance(x, ast.Name) and x.id == "score" for x in lets_names(st.value)):
        raise AttnError("the selection reads score, whose value uses a key scan (suffixsum)", st.value.span)


def _override(name: str, value: ConstValue, overrides, st: ast.ConstDecl) -> ConstValue:
    """The declared value, or the caller's override (checked against the declared type)."""
    if not overrides or name not in overrides:
        return value
    v = overrides[name]
    if type(v) is not type(value) and not (isinstance(v, int) and not isinstance(v, bool)
                                           and isinstance(value, float)):
        raise AttnError(f"const '{name}' is {type(value).__name__}, got {v!r}", st.name.span)
    # the literal ranges of the language (README): int32 integers, float32 floats or inf, never NaN
    if isinstance(v, int) and not isinstance(v, bool) and not INT32_MIN <= v <= INT32_MAX:
        raise AttnError(f"const '{name}' = {v} is out of the int32 range", st.name.span)
    if isinstance(v, float) and (v != v or (abs(v) != float("inf") and abs(v) > FLOAT32_MAX)):
        raise AttnError(f"const '{name}' = {v!r}: a float const must be a float32 number or inf", st.name.span)
    return float(v) if isinstance(value, float) else v


def _cast_vec(e: ir.Expr, length: str, span, stage: str) -> ir.Expr:
    if e.ty.length != length and not e.ty.length.isdigit():
        raise AttnError(f"the {stage} stage must give a row of length {length}, got {e.ty}", span)
    return e if e.ty.length == length else ir.Cast(e, vec(length), e.span)


def _prologue(st: ast.Assign | None, b: _ExprBuilder) -> ir.Expr | None:
    if st is None:
        return None
    e = b.build(st.value)
    if not e.ty.is_vec or e.ty.is_bool:
        raise AttnError(f"the {st.target.id} prologue must give a row vector, got {e.ty}", st.value.span)
    return _cast_vec(e, "D", st.value.span, st.target.id)


def _input_decl(st: ast.InputDecl, consts: Mapping[str, ConstValue]) -> ir.InputDecl:
    dtype = st.dtype.id
    if dtype not in DTYPES:
        raise AttnError(f"unsupported dtype '{dtype}'", st.dtype.span,
                        f"input dtypes are {' '.join(DTYPES)}")
    if st.dims is None:
        if DTYPES[dtype] != "float":
            raise AttnError("scalar inputs must be f32 (integers belong in a const)", st.dtype.span)
        return ir.InputDecl(st.name.id, dtype, None, st.span)
    dims: list[Union[str, int]] = []
    for d in st.dims:
        if isinstance(d.value, int):
            dims.append(d.value)
        elif d.value in SIZES:
            dims.append(d.value)
        elif d.value in consts and isinstance(consts[d.value], int) and not isinstance(consts[d.value], bool):
            dims.append(int(consts[d.value]))
        else:
            raise AttnError(f"unknown dimension '{d.value}'", d.span,
                            suggest(d.value, list(SIZES) + list(consts)) or
                            "dims are size names (B H HK M N D DV), integers or integer consts")
    return ir.InputDecl(st.name.id, dtype, tuple(dims), st.span)


#: the largest topk K and block size: the token list takes 4 * K bytes per query row and head
MAX_TOPK = 65536


def _int_const(node: ast.Expr, scope, what: str) -> int:
    e = scope("select.keep").build(node)
    if not (isinstance(e, ir.Const) and e.ty == INT and e.value >= 1):
        raise AttnError(f"{what} must be a positive integer constant", node.span)
    if e.value > MAX_TOPK:
        raise AttnError(f"{what} must be at most {MAX_TOPK}", node.span)
    return int(e.value)


def _select(st: ast.Assign | None, scope, consts) -> ir.Select | None:
    if st is None:
        return None
    v = st.value
    if not (isinstance(v, ast.Call) and v.func.id == "topk"):
        raise AttnError("select must be topk(K, by=..., block=..., keep=..., share=group)", v.span)
    if len(v.args) != 1:
        raise AttnError("topk() takes exactly one positional argument, K", v.span)
    kw = {}
    for k in v.kwargs:
        if k.name not in ("by", "block", "keep", "share"):
            raise AttnError(f"topk() takes no keyword '{k.name}'", k.span,
                            suggest(k.name, ("by", "block", "keep", "share")))
        if k.name in kw:
            raise AttnError(f"topk() got '{k.name}' twice", k.span)
        kw[k.name] = k.value
    K = _int_const(v.args[0], scope, "topk's K")
    block = _int_const(kw["block"], scope, "block") if "block" in kw else None
    suffix = ".block" if block else ""
    if "by" in kw:
        by = _scalar_stage(scope("select.by" + suffix).build(kw["by"]), "select", "float", kw["by"].span)
    elif block:
        raise AttnError("a block selection needs by=... (for example by = dot(q, kmean))", v.span)
    else:
        by = ir.Sym("score", FLOAT, v.span)
    keep = None
    if "keep" in kw:
        keep = _scalar_stage(scope("select.keep" + suffix).build(kw["keep"]), "keep", "bool", kw["keep"].span)
    share = False
    if "share" in kw:
        sv = kw["share"]
        if not (isinstance(sv, ast.Name) and sv.id == "group"):
            raise AttnError("share must be 'group'", sv.span)
        share = True
    return ir.Select(K, by, block, keep, share, st.span)


def _norm(st: ast.Assign | None, scope) -> ir.Norm:
    if st is None:
        return ir.Norm("softmax")
    v = st.value
    if isinstance(v, ast.Name) and v.id in NORMS:
        return ir.Norm(v.id, None, st.span)
    if isinstance(v, ast.Call) and v.func.id == "softmax":
        if v.args or len(v.kwargs) != 1 or v.kwargs[0].name != "sink":
            raise AttnError("softmax takes one keyword: softmax(sink = EXPR)", v.span)
        sink = _scalar_stage(scope("norm.sink").build(v.kwargs[0].value), "sink", "float", v.kwargs[0].value.span)
        return ir.Norm("softmax", sink, st.span)
    name = v.func.id if isinstance(v, ast.Call) else v.id if isinstance(v, ast.Name) else None
    raise AttnError(f"unknown norm '{name}'" if name else "norm must be one of " + ", ".join(NORMS), v.span,
                    suggest(name, NORMS) if name else None)


def build_module(module: ast.Module, overrides: Mapping[str, ConstValue] | None = None,
                 name: str | None = None) -> list[ir.Attention]:
    """Check every attention of a module (or just ``name``); overrides apply to all that declare them."""
    if not module.attentions:
        raise AttnError(f"{module.filename}: no 'attention' block found")
    seen = set()
    for a in module.attentions:
        if a.name.id in seen:
            raise AttnError(f"attention '{a.name.id}' is defined twice", a.name.span)
        seen.add(a.name.id)
    check_attention_names([(a.name.id, a.name.span) for a in module.attentions])
    chosen = module.attentions
    if name is not None:
        chosen = [a for a in module.attentions if a.name.id == name]
        if not chosen:
            raise AttnError(f"no attention named '{name}' in {module.filename}", None,
                            suggest(name, seen) or f"it defines {', '.join(sorted(seen))}")
    out = []
    for a in chosen:
        declared = {s.name.id for s in a.body if isinstance(s, ast.ConstDecl)}
        mine = {k: v for k, v in (overrides or {}).items() if k in declared}
        out.append(build_attention(a, module.filename, module.source, mine))
    all_consts = {s.name.id for a in chosen for s in a.body if isinstance(s, ast.ConstDecl)}
    unused = set(overrides or {}) - all_consts
    if unused:
        k = sorted(unused)[0]
        raise AttnError(f"no const '{k}' in {module.filename}", None,
                        suggest(k, all_consts) or (f"its consts are {', '.join(sorted(all_consts))}"
                                                   if all_consts else "it declares no const"))
    return out


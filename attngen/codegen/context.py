"""Template context of a generated module: kernel parameter lists and statement blocks."""

from __future__ import annotations

import functools
import pprint
import textwrap

from .. import __version__
from ..ir import nodes as ir
from . import aggregates, gather, kernel_plan, kernels, linear, params, scans, select, shipped, tiles
from .embed import inert
from .layout import vec_block
from .plan import Plan


def _constexprs(plan: Plan) -> str:
    # head dims are compile-time: masks on full-width rows fold away and loads vectorize; so is the
    # GQA group size (H // HK): the dk/dv kernel's loop over a group's heads folds away for one head
    names = ["D", "DV", "BLOCK_M", "BLOCK_N", *(vec_block(L) for L in plan.vec_lengths), "DOT_DTYPE",
             "DOT_PRECISION", "SCAN", "TILE_HEADS", "GROUP", "VARLEN", "PAGED", "PAGE_SIZE", "PACK",
             "MERGE_M"]
    names += [f"GRAD_{d.name}" for d in plan.float_inputs]
    return params.wrapped([f"{n}: tl.constexpr" for n in names])


def _lengths(plan: Plan, which: list[str]) -> list[dict]:
    return [{"offs": L if not L.isdigit() else f"L{L}", "block": vec_block(L), "size": L} for L in which]


def _blocks(b: kernels.Blocks, keys: tuple[str, ...]) -> dict[str, str]:
    out = {k: b.text(k) for k in b.stmts}
    for k in keys:
        out.setdefault(k, "")
    out.update({k: v for k, v in b.vars.items()})
    # a score that reads a key scan is computed after the tile's mask (templates/norms.py.jinja)
    out["scan_first"] = bool(b.stmts.get("inner_scan"))
    return out


_VAR_KEYS = ("s", "s_scale", "s_fill", "mask", "w", "dp", "ds_w", "sink", "out", "agg_passes", "agg_values",
             "agg_grads", "agg_loop", "agg_nested", "agg_p", "agg_final", "delta_wb", "inner_scan", "scan_init", "scan_tile",
             "scan_first", "lin_out", "agg_lin", "agg_fused")


def _backward_blocks(plan: Plan) -> tuple[dict[str, str], dict[str, str]]:
    """The dq and dk/dv kernels' statement blocks (r, c)."""
    r = _blocks(kernels.dq_kernel(plan), _VAR_KEYS)
    c = _blocks(kernels.dkdv_kernel(plan), _VAR_KEYS)
    for blk in (r, c):
        # softmax's and sigmoid's ds is p times a finite value, so 0 wherever p is (masked pairs, rows past
        # M), unless a weights stage feeds dp or ds: then partial tiles select it again. One select
        # fewer also keeps `allowed` from staying live across the products (bit-packed, ~170 LOP3)
        blk["ds_select"] = not (plan.norm in ("softmax", "sigmoid") and not blk["dp"] and not blk["ds_w"])
    return r, c


def attention_context(plan: Plan, kp: kernel_plan.KernelPlan, render_kernel) -> dict:
    """Everything the module template needs for one attention."""
    a = plan.attn
    names = params.shared(plan)
    render_kernel = functools.partial(_lean, render_kernel, names)
    # Triton types a Python float argument fp32 when it launches a kernel, Inductor (triton_op) fp64:
    # pinned to fp32, a loop's carried values keep one type under both
    floats = ["scale", *(f"x_{d.name}" for d in a.inputs if d.dims is None and d.is_float)]
    prelude = render_kernel("prelude.py.jinja", lengths=_lengths(plan, plan.vec_lengths),
                            rope_lengths=_lengths(plan, plan.rope_lengths), floats=floats)
    base = dict(name=a.name, params=params.wrapped(names), constexprs=_constexprs(plan), prelude=prelude,
                norm=plan.norm, two_pass=plan.two_pass, delta_loop=plan.delta_loop, scans=len(scans.of(a)),
                has_out=a.out is not None, has_sink=a.norm.sink is not None, t=tiles.static_code(a))
    f = _blocks(kernels.forward(plan), _VAR_KEYS)
    u = _blocks(kernels.preprocess(plan), _VAR_KEYS)
    r, c = _backward_blocks(plan)
    # the public inputs; the kernels' argument list also has the internal selection (_args)
    all_inputs = [{"name": d.name, "scalar": d.dims is None, "float": d.is_float} for d in a.inputs]
    public = {d.name for d in a.public_inputs}
    inputs = [x for x in all_inputs if x["name"] in public]
    dynamic = kp.tiles == "dynamic"
    splittable, packable = kp.split.taken, kp.pack.taken
    classify, tile_heads = "", "1"
    if dynamic:
        k = tiles.classify_code(a)
        tile_heads = "H" if k.per_head else "1"
        if plan.norm == "stickbreaking" or scans.of(a):
            k.all = "False"  # its keys are visited in order: one list of partial tiles
        classify = render_kernel("classify.py.jinja", k=k, **base)
    decls = {d.name: (d.dtype, d.dims) for d in a.public_inputs}
    sel = plan.select
    selection = None
    if sel is not None:
        template = "select.py.jinja" if sel.block else "topk.py.jinja"
        heads = plan.select_code.heads if sel.block is None else "HK" if sel.share else "H"
        selection = {"block": sel.block, "k": sel.k, "share": sel.share, "heads": heads,
                     "heads_size": "1" if heads == "1" else f'sizes["{heads}"]',
                     "code": render_kernel(template, s=plan.select_code, **base),
                     "gather": _gather_kernels(plan, kp, base, render_kernel) if kp.gather else "",
                     "gather_bwd": kp.gather_bwd.taken,
                     "listed": _listed_kernel(plan, base, render_kernel) if kp.listed else "",
                     "per_head": sel.block is None and plan.select_code.heads == "H",
                     "dq_factor": kp.dq_factor,
                     "max_blocks": select.max_blocks(plan.select_code) if sel.block else 0,
                     # a block-sparse program's rows: this many tiles of them, so that the block's keys are
                     # loaded once for up to 256 rows and the programs are few enough to run concurrently
                     "chunk_tiles": 4,
                     # the block-sparse kernels' key tile: the block rounded up to a power of two, 16 to 64 keys
                     "key_tile": min(64, max(16, 1 << (sel.block - 1).bit_length())) if sel.block else 0}
    host_sel = None
    if selection is not None:
        host_sel = {k: bool(v) if k in ("gather", "listed") else v for k, v in selection.items()
                    if k not in ("code", "heads_size")}
        host_sel["block"] = sel.block or 0
    host_plan = dict(norm=plan.norm, has_out=a.out is not None, stick=plan.norm == "stickbreaking", dynamic=dynamic,
                     splittable=splittable, packable=packable, scaled_dot=a.scaled_dot is not None,
                     tile_heads=tile_heads,
                     literal_blocks={vec_block(L): int(L) for L in plan.vec_lengths if L.isdigit()},
                     sliced=plan.sliced_sizes, selection=host_sel,
                     aggregates=(aggregates.of(a, totals=True).ncol, len(aggregates.of(a, totals=True).grad_col)),
                     scans=len(scans.of(a)), linear=len(linear.slots(plan.linear)) if plan.linear is not None else 0,
                     fused=plan.fused)
    for x in inputs:
        d = a.input(x["name"])
        x["decl"] = d.dtype + ("" if d.dims is None else f"[{', '.join(map(str, d.dims))}]")
    return dict(
        sel_shape=_sel_shape(selection),
        input_specs=repr([(x["name"], x["scalar"], x["float"]) for x in all_inputs]),
        kernels=textwrap.fill(", ".join(f"{k}={a.name}_{k}" for k in kp.kernels), width=106,
                              subsequent_indent=" " * 8, break_on_hyphens=False),
        host_plan=_literal(host_plan, 9),
        name=a.name, filename=inert(a.filename), norm=plan.norm, softmax=plan.norm == "softmax",
        has_out=a.out is not None, stick=plan.norm == "stickbreaking", inputs=inputs, all_inputs=all_inputs,
        decls=repr(decls), selection=selection, scaled_dot=a.scaled_dot is not None,
        literal_blocks=[{"block": vec_block(L), "value": f"_blocks({L})"} for L in plan.vec_lengths if L.isdigit()],
        doc=f"Attention '{a.name}' ({plan.norm} norm), compiled by attngen.",
        fwd=render_kernel("fwd.py.jinja", f=f, splittable=splittable, **base), dynamic=dynamic, classify=classify,
        splittable=splittable, packable=packable, plan_notes=kp.notes(plan),
        tile_heads=tile_heads,
        bwd=render_kernel("bwd.py.jinja", u=u, r=r, c=c, **base),
    )


def _lean(render_kernel, names: list[str], template: str, **ctx) -> str:
    """A template's kernels, each taking only the runtime arguments it reads (params.lean)."""
    return params.lean(render_kernel(template, **ctx), names)


def _literal(value: dict, indent: int) -> str:
    """``value`` as Python source, one key a line past the first, continuation lines indented."""
    text = pprint.pformat(value, width=110 - indent, sort_dicts=False)
    return textwrap.indent(text, " " * indent).lstrip()


def _sel_shape(selection: dict | None) -> str:
    """The selection's shape and dtype from the call's sizes, as the module's source of a lambda (the
    operators' fake implementation: see the _choose functions)."""
    if selection is None:
        return "lambda sizes: None"
    if selection["block"]:
        nb = f'(sizes["N"] + {selection["block"] - 1}) // {selection["block"]}'
        return f'lambda sizes: ((sizes["B"], sizes["{selection["heads"]}"], sizes["M"], {nb}), torch.bool)'
    return f'lambda sizes: ((sizes["B"], {selection["heads_size"]}, sizes["M"], {selection["k"]}), torch.int32)'


def _gather_kernels(plan: Plan, kp: kernel_plan.KernelPlan, base: dict, render_kernel) -> str:
    """The block-sparse kernels, on the attention's own mask: a gathered row always chose the block it
    meets, so the selection's term of the mask (a load per pair) is left out."""
    own = gather.own(plan)
    r, c = _backward_blocks(own) if kp.gather_bwd else ({}, {})
    assert not kp.dq_factor or c["k_tile"], "a scaled dot(q, k) loads the raw key tile"
    return render_kernel("gather.py.jinja", f=_blocks(kernels.forward(own, split_scale=False), _VAR_KEYS), r=r, c=c,
                         gather_bwd=kp.gather_bwd.taken, dq_factor=kp.dq_factor, **base)


def _listed_kernel(plan: Plan, base: dict, render_kernel) -> str:
    """The listed forward of a token selection, on the attention's own mask (a listed key is one the row
    chose: the membership test of the lowered mask is left out)."""
    heads = plan.select_code.heads
    return render_kernel("listed.py.jinja", f=_blocks(kernels.forward(gather.own(plan), split_scale=False),
                                                      _VAR_KEYS),
                         k=plan.select.k, per_head=heads == "H", list_head={"1": "0", "HK": "hk", "H": "h0"}[heads],
                         **base)


def module_context(plans: list[Plan], source: str, filename: str, cache_key: str, render_kernel) -> dict:
    consts = {k: v for p in plans for k, v in p.attn.consts}
    kps = [kernel_plan.choose(p) for p in plans]
    names = ", ".join(p.attn.name for p in plans)
    return dict(
        module_doc=f"Fused attention kernels for {names}.",
        version=__version__, filename=inert(filename), cache_key=cache_key,
        consts_text=", ".join(f"{k}={v}" for k, v in consts.items()) or "none",
        # the parser's line breaks are \n and \r\n; any other control character is escaped
        source=inert(source.rstrip().replace("\r\n", "\n"), lines=True),
        attentions=[attention_context(p, kp, render_kernel) for p, kp in zip(plans, kps)],
        sel_name=ir.SEL,
        runtime=shipped.embedded(),
        gathered=any(kp.gather.taken for kp in kps),
    )


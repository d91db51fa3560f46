"""The mask_tiles pass: its tile bounds are sound (never skip an allowed pair, never drop the mask
where a pair is disallowed), checked against the reference mask on random boxes, and exact for
the affine masks the kernels rely on."""

from __future__ import annotations

import random

import pytest
import torch

from attngen.ir import nodes as ir
from attngen.passes.pipeline import run_pipeline
from attngen.reference.context import Context
from attngen.reference.exprs import evaluate
from attngen.driver import compile_source

MASKS = {
    "causal": ("mask = causal", True),
    "window": ("mask = causal and i - j < 9", True),
    "band": ("mask = abs(i - j) <= 5", True),
    "chunked": ("mask = i // 8 == j // 8 and j <= i", True),
    "prefix": ("input pl: i32[B]\n mask = j <= i or j < pl[b]", True),
    "sinks": ("mask = causal and (i - j < 7 or j < 3)", False),
    "dilated": ("mask = causal and (i - j) % 3 == 0", False),
    "document": ("input doc: i32[B, N]\n mask = causal and doc[b, i] == doc[b, j]", False),
    "query_rows": ("input qd: i32[B, M]\n mask = qd[b, m] >= j // 4", False),
    "flags": ("input g: bool[B, N]\n mask = g[b, j] or g[b, i] or (i - j < 4 and j <= i)", False),
    "clamped": ("mask = clamp(i - j, 0, 10) * 2 - min(j, 30) > -20", False),
    "negdiv": ("mask = (j - i) // 4 >= -2 and (j - i) % 5 != 1", False),
}


def _attention(body: str) -> ir.Attention:
    return run_pipeline(compile_source(f"attention t {{\n {body}\n}}")[0])


def _inputs(a: ir.Attention, M: int, N: int, g: torch.Generator) -> dict:
    out = {}
    for d in a.inputs:
        n = {"B": 1, "M": M, "N": N}
        shape = [n[x] for x in d.dims]
        if d.dtype == "bool":
            out[d.name] = torch.rand(*shape, generator=g) < 0.1
        elif d.name == "doc":
            out[d.name] = torch.sort(torch.randint(0, 4, shape, generator=g), dim=-1).values
        else:
            out[d.name] = torch.randint(0, N, shape, generator=g)
    return out


def _tile_value(e: ir.Expr, ctx: Context, rows: slice, cols: slice) -> ir.Expr:
    """tile_min / tile_max replaced by their values over the box (brute force)."""
    def sub(n):
        if isinstance(n, ir.Call) and n.fn in ("tile_min", "tile_max"):
            v = evaluate(n.args[0], ctx.env()).expand(1, 1, ctx.sizes["M"], ctx.sizes["N"])[0, 0, rows, cols]
            v = v.long()
            x = v.min() if n.fn == "tile_min" else v.max()
            return ir.Const(bool(x) if n.ty.kind == "bool" else int(x), n.ty)
        return n
    return ir.transform(e, sub)


@pytest.mark.parametrize("name", sorted(MASKS))
def test_tile_bounds_are_sound(name):
    body, exact = MASKS[name]
    a = _attention(body)
    assert a.tiles is not None
    rnd, g = random.Random(name), torch.Generator().manual_seed(0)
    for _ in range(12):
        N = rnd.randint(20, 70)
        M = rnd.randint(1, N)
        sizes = {"B": 1, "H": 1, "HK": 1, "M": M, "N": N, "D": 4, "DV": 4}
        ctx = Context.make(sizes, _inputs(a, M, N, g), torch.float64, "cpu", 1.0)
        grid = evaluate(a.mask, ctx.env()).expand(1, 1, M, N)[0, 0]
        for _ in range(25):
            m0, n0 = rnd.randrange(M), rnd.randrange(N)
            m1, n1 = rnd.randint(m0, min(M, m0 + 9) - 1), rnd.randint(n0, min(N, n0 + 9) - 1)
            box = grid[m0:m1 + 1, n0:n1 + 1]
            syms = {"i_lo": m0 + N - M, "i_hi": m1 + N - M, "j_lo": n0, "j_hi": n1}
            env = ctx.env(**{k: torch.tensor(v) for k, v in syms.items()})
            rows, cols = slice(m0, m1 + 1), slice(n0, n1 + 1)
            any_ = bool(evaluate(_tile_value(a.tiles.any, ctx, rows, cols), env).reshape(-1)[0])
            all_ = bool(evaluate(_tile_value(a.tiles.all, ctx, rows, cols), env).reshape(-1)[0])
            assert any_ or not box.any(), (name, syms)  # an allowed pair is never skipped
            assert box.all() or not all_, (name, syms)  # a disallowed pair is never unmasked
            if exact:
                assert (any_, all_) == (bool(box.any()), bool(box.all())), (name, syms)


def test_unbounded_masks_get_no_tiles():
    assert _attention("mask = score > 0.0").tiles is None
    assert _attention("input r: i32[B, M, N]\n mask = r[b, m, j] > 0").tiles is None
    assert _attention("norm = softmax").tiles is None


def test_dynamic_only_with_tensor_bounds():
    assert not _attention("mask = causal and i - j < 9").tiles.dynamic
    assert _attention(MASKS["document"][0]).tiles.dynamic
    assert not _attention(MASKS["prefix"][0]).tiles.dynamic  # pl[b] is one value per program

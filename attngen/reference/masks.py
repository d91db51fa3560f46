"""The static picture of a mask: which (m, j) pairs the mask stage allows, for b = 0, h = 0.

Used by ``attngen show --mask``. Inputs that the mask reads and that are not given
are sampled (seeded), so that data-dependent masks such as document masks still
show a typical pattern.
"""

from __future__ import annotations

from typing import Mapping

import torch

from ..ir import nodes as ir
from ..signature import check_input_shape
from .context import Context
from .exprs import as_grid, evaluate, prepare_inputs

#: sizes a mask grid uses when no given input fixes them
DEFAULT_SIZES = {"B": 1, "H": 1, "HK": 1, "D": 64, "DV": 64}


def mask_grid(a: ir.Attention, M: int, N: int, inputs: Mapping[str, object] | None = None,
              seed: int = 0) -> torch.Tensor:
    """Allowed pattern of ``a``'s mask stage (not select), bool [M, N], for b = 0, h = 0.

    ``inputs``: tensors (or floats) for some declared inputs; their shapes fix B, H,
    HK, D, DV where they name them. Missing inputs the mask reads are sampled with
    ``seed``: integer tensors as random ints in [0, 4) sorted along their last dim
    (document-like ids), bool tensors True with probability 0.1, floats from randn.
    Raises ValueError if the mask reads the score or the q/k rows.
    """
    if M < 1 or N < 1:
        raise ValueError(f"mask_grid needs M >= 1 and N >= 1, got M={M}, N={N}")
    if a.mask is None:
        return torch.ones(M, N, dtype=torch.bool)
    if ir.uses(a.mask, "score", "q", "k"):
        raise ValueError(f"the mask of '{a.name}' depends on the data (it reads the score or the q/k rows), "
                         "so it has no static picture")
    given = {n: x.detach().cpu() if isinstance(x, torch.Tensor) else x for n, x in (inputs or {}).items()}
    unknown = set(given) - {d.name for d in a.inputs}
    if unknown:
        raise TypeError(f"mask_grid: '{a.name}' declares no input '{sorted(unknown)[0]}'")
    sizes = _sizes(a, M, N, given)
    gen = torch.Generator().manual_seed(seed)
    values = {}
    for d in a.inputs:
        if d.name in given:
            values[d.name] = given[d.name]
        elif ir.uses(a.mask, d.name):
            values[d.name] = _sample(d, sizes, gen)
    zero = torch.zeros(1, dtype=torch.long)
    cpu = torch.device("cpu")
    ctx = Context.make(sizes, prepare_inputs(values, torch.float32, cpu), torch.float32, cpu,
                       scale=sizes["D"] ** -0.5, batch=zero, heads=zero)
    return as_grid(evaluate(a.mask, ctx.env()), (1, 1, M, N))[0, 0].clone()


def _sizes(a: ir.Attention, M: int, N: int, given: Mapping[str, object]) -> dict[str, int]:
    """M, N as asked; other sizes from the given inputs' shapes, else DEFAULT_SIZES."""
    sizes = {"M": M, "N": N}
    tensors = [(a.input(n), t) for n, t in given.items() if isinstance(t, torch.Tensor) and a.input(n).dims]
    for d, t in tensors:
        for dim, n in zip(d.dims, t.shape):
            if isinstance(dim, str):
                sizes.setdefault(dim, n)
    for dim, n in DEFAULT_SIZES.items():
        sizes.setdefault(dim, n)
    for d, t in tensors:
        check_input_shape(a.name, d, t, sizes)
    return sizes


def _sample(d: ir.InputDecl, sizes: Mapping[str, int], gen: torch.Generator):
    if d.dims is None:
        return float(torch.randn((), generator=gen))
    shape = tuple(sizes[x] if isinstance(x, str) else x for x in d.dims)
    if d.dtype in ("i32", "i64"):
        return torch.randint(0, 4, shape, generator=gen).sort(dim=-1).values
    if d.dtype == "bool":
        return torch.rand(shape, generator=gen) < 0.1
    return torch.randn(shape, generator=gen)

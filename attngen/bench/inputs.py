"""The benchmark's inputs: q, k, v and the keyword inputs an attention declares.

Every implementation of one benchmark case gets these same tensors; with fresh inputs,
:class:`Layouts` copies a new document layout into them before every call.
"""

from __future__ import annotations

from typing import Mapping, Union

import torch

from ..ir import nodes as ir
from ..signature import TORCH_DTYPES

#: expected document boundaries per sequence in position-indexed integer inputs (about DOCS + 1 documents)
DOCS = 4
#: probability of True in bool inputs
BOOL_DENSITY = 0.02
_POSITION_DIMS = ("N", "M")


#: positions between the knots of --locality's shared signal (four key blocks of 64)
LOCALITY_PERIOD = 256


def make_qkv(sizes: Mapping[str, int], dtype: torch.dtype, device, gen: torch.Generator, locality: float = 0.0):
    """q [B, H, M, D], k [B, HK, N, D], v [B, HK, N, DV]: standard normal, requiring grad.

    ``locality``: q and k also share ``locality`` times a signal that varies smoothly along the positions
    (unit normal knots every LOCALITY_PERIOD positions, linear between them; a query at its key
    position m + N - M), so neighbouring queries score the same keys high and keys near a query higher,
    as in trained models (sparse selections then pick similar blocks for neighbouring rows)."""
    B, H, HK, M, N, D, DV = (sizes[x] for x in ("B", "H", "HK", "M", "N", "D", "DV"))
    q, k, v = (torch.randn(shape, generator=gen, device=device)
               for shape in ((B, H, M, D), (B, HK, N, D), (B, HK, N, DV)))
    if locality:
        knots = torch.randn((B, D, N // LOCALITY_PERIOD + 2), generator=gen, device=device)
        w = torch.nn.functional.interpolate(knots, size=N + LOCALITY_PERIOD, mode="linear", align_corners=True)
        w = w[:, :, :N].transpose(1, 2)[:, None]  # [B, 1, N, D]
        q, k = q + locality * w[:, :, N - M:], k + locality * w
    return tuple(t.to(dtype).requires_grad_() for t in (q, k, v))


def discrete_names(a: ir.Attention) -> list[str]:
    """The integer and bool tensor inputs of ``a`` (what ``--fresh-inputs`` redraws every call)."""
    return [d.name for d in a.inputs if d.dims is not None and not d.is_float]


def make_inputs(a: ir.Attention, sizes: Mapping[str, int], device, gen: torch.Generator,
                names: list[str] | None = None, requires_grad: bool = True) -> dict[str, Union[torch.Tensor, float]]:
    """The keyword inputs of ``a`` (or only ``names``), drawn to look like real ones.

    - float scalars: 1.0;
    - float tensors: uniform in [0.5, 1.5) (positive, so specs may take logs and powers),
      except an ``[H]`` tensor named like ``slopes``, which gets the ALiBi geometric slopes
      2^(-8 (h + 1) / H); they require grad unless ``requires_grad`` is false;
    - integer tensors with a position dim (N or M, the last one if several): sorted
      document ids along it, from random document lengths (about DOCS + 1 documents per
      sequence), like ``doc: i32[B, N]``;
    - other integer tensors: random ints in [0, N], in range when compared with positions
      (``prefix_len: i32[B]``);
    - bool tensors: True with probability BOOL_DENSITY (sparse flags such as global tokens).
    """
    out: dict[str, Union[torch.Tensor, float]] = {}
    for d in a.inputs:
        if names is not None and d.name not in names:
            continue
        if d.dims is None:
            out[d.name] = 1.0
            continue
        shape = tuple(sizes[x] if isinstance(x, str) else x for x in d.dims)
        dtype = TORCH_DTYPES[d.dtype]
        if d.is_float:
            if "slope" in d.name.lower() and d.dims == ("H",):
                t = 2.0 ** (-8.0 * torch.arange(1, sizes["H"] + 1, device=device) / sizes["H"])
            else:
                t = torch.rand(shape, generator=gen, device=device) + 0.5
            out[d.name] = t.to(dtype).requires_grad_(requires_grad)
        elif d.dtype == "bool":
            out[d.name] = torch.rand(shape, generator=gen, device=device) < BOOL_DENSITY
        elif any(x in _POSITION_DIMS for x in d.dims):
            axis = max(n for n, x in enumerate(d.dims) if x in _POSITION_DIMS)
            starts = torch.rand(shape, generator=gen, device=device) < DOCS / shape[axis]
            starts.narrow(axis, 0, 1).fill_(False)
            out[d.name] = starts.cumsum(axis).to(dtype)
        else:
            out[d.name] = torch.randint(0, sizes["N"] + 1, shape, generator=gen, device=device).to(dtype)
    return out


class Layouts:
    """Cycles the integer/bool inputs through drawn layouts, copying each into ``inputs`` in place,
    so every implementation (flex's captured tensors included) sees it. Without layouts
    :meth:`refresh` does nothing.

    ``index``: the layout the inputs hold (-1: the inputs as first drawn).
    """

    def __init__(self, inputs: dict, layouts: list[dict]):
        self.inputs, self.layouts, self.index = inputs, layouts, -1

    def __len__(self) -> int:
        return len(self.layouts)

    def refresh(self) -> None:
        """Copy the next layout into the inputs."""
        if not self.layouts:
            return
        self.index = (self.index + 1) % len(self.layouts)
        for n, t in self.layouts[self.index].items():
            self.inputs[n].copy_(t)

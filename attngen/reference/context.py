"""The index grid of one reference call, and environments for each stage.

Index tensors are broadcast aranges: ``b`` [B, 1, 1, 1], ``h`` and ``hk`` [1, H, 1, 1],
``m`` and ``i`` [1, 1, M, 1], ``j`` [1, 1, 1, N] and, for block selection, ``jb``
[1, 1, 1, NB]. A stage's value takes the shape of the names it uses: the q prologue
[B, H, M, 1], the k prologue [B, H, 1, N], the score [B, H, M, N].
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch

from .exprs import Env


@dataclass
class Context:
    """Sizes, prepared inputs and index tensors; ``q_rows``/``k_rows`` after the prologue.

    ``q_rows``: q' [B, H, M, D]; ``k_rows``: k' [B, H, N, D], already expanded to the
    query heads through ``hk`` so that pair stages and ``kmean`` index it like q'.
    """

    sizes: Mapping[str, int]
    inputs: Mapping[str, torch.Tensor]
    dtype: torch.dtype
    device: torch.device
    syms: dict[str, torch.Tensor]
    q_rows: torch.Tensor | None = None
    k_rows: torch.Tensor | None = None
    q_raw: torch.Tensor | None = None  # the loaded rows, before the prologue (k expanded to the query heads)
    k_raw: torch.Tensor | None = None

    @classmethod
    def make(cls, sizes: Mapping[str, int], inputs: Mapping[str, torch.Tensor], dtype: torch.dtype,
             device, scale: float, batch: torch.Tensor | None = None,
             heads: torch.Tensor | None = None) -> "Context":
        """``batch``/``heads``: the batch and head indices to evaluate (default: all)."""
        B, H, HK, M, N = (sizes[x] for x in ("B", "H", "HK", "M", "N"))
        b = torch.arange(B, device=device) if batch is None else batch.to(device)
        h = torch.arange(H, device=device) if heads is None else heads.to(device)
        m = torch.arange(M, device=device).view(1, 1, M, 1)
        syms = {
            "b": b.view(-1, 1, 1, 1), "h": h.view(1, -1, 1, 1), "hk": (h // (H // HK)).view(1, -1, 1, 1),
            "m": m, "i": m + (N - M), "j": torch.arange(N, device=device).view(1, 1, 1, N),
            "scale": torch.tensor(scale, dtype=dtype, device=device),
        }
        return cls(sizes, inputs, dtype, device, syms)

    @property
    def pair_shape(self) -> tuple[int, int, int, int]:
        return (self.syms["b"].shape[0], self.syms["h"].shape[1], self.sizes["M"], self.sizes["N"])

    def env(self, rows: Mapping[str, torch.Tensor] | None = None, live: torch.Tensor | None = None,
            **syms: torch.Tensor) -> Env:
        """An environment with ``rows`` and extra ``syms`` (score, p, jb) on top of the indices."""
        return Env(self.sizes, {**self.syms, **syms}, dict(rows or {}), self.inputs, self.dtype,
                   self.device, live)

    def pair_rows(self) -> dict[str, torch.Tensor]:
        """q' as [B, H, M, 1, D] and k' as [B, H, 1, N, D] for pair stages, and the loaded rows as
        ``q_raw`` / ``k_raw`` (what stages read after substitute_prologue)."""
        return {"q": self.q_rows[:, :, :, None, :], "k": self.k_rows[:, :, None, :, :],
                "q_raw": self.q_raw[:, :, :, None, :], "k_raw": self.k_raw[:, :, None, :, :]}

"""Pictures of a mask: which (query row, key) pairs an attention allows.

Both renderers take the boolean grid from ``attngen.reference.masks.mask_grid``:
``grid[m, j]`` is true where query row ``m`` may attend to key ``j``. Rows are
query rows; since causal masks are end-aligned, each row is also labelled with
its key position ``i = m + N - M``.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

MAX_COLS = 64
MAX_ROWS = 48
_TICK = 16  # columns between key labels on the ASCII ruler


def downsample(grid: torch.Tensor, max_rows: int = MAX_ROWS, max_cols: int = MAX_COLS
               ) -> tuple[torch.Tensor, int, int]:
    """Shrink ``grid`` to at most ``max_rows`` x ``max_cols`` cells; a cell is set if any pair in it is.

    Returns the small grid and the block size (rows, keys) each cell stands for.
    """
    M, N = grid.shape
    fr, fc = math.ceil(M / max_rows), math.ceil(N / max_cols)
    if fr == fc == 1:
        return grid, 1, 1
    R, C = math.ceil(M / fr), math.ceil(N / fc)
    padded = torch.zeros(R * fr, C * fc, dtype=torch.bool)
    padded[:M, :N] = grid
    return padded.view(R, fr, C, fc).any(dim=3).any(dim=1), fr, fc


def render_ascii(grid: torch.Tensor, name: str, note: str | None = None) -> str:
    """The mask as text: ``#`` allowed, ``.`` not, downsampled (any-of) to fit a terminal."""
    grid = grid.bool().cpu()
    M, N = grid.shape
    small, fr, fc = downsample(grid)
    R, C = small.shape
    lines = [f"mask of '{name}': M={M} N={N}, {_density(grid)} of pairs allowed",
             f"'#' allowed, '.' masked; rows: query row m (key position i = m + {N - M}); columns: key j"]
    if fr > 1 or fc > 1:
        lines.append(f"downsampled to {R}x{C}: a cell is {fr} row(s) x {fc} key(s), '#' if any pair in it is allowed")
    if note:
        lines.append(note)
    wm, wi = len(str(M - 1)) + 1, len(str(N - 1)) + 1
    ruler = [" "] * C
    for c in range(0, C, _TICK):
        label = str(c * fc)
        ruler[c:c + len(label)] = label
    lines.append(f"{'m':>{wm}} {'i':>{wi}}  j {''.join(ruler[:C]).rstrip()}")
    for r in range(R):
        m = r * fr
        row = "".join("#" if x else "." for x in small[r].tolist())
        lines.append(f"{m:>{wm}} {m + N - M:>{wi}}    {row}")
    return "\n".join(lines)


def save_png(grid: torch.Tensor, name: str, path: str | Path, note: str | None = None) -> None:
    """Draw the mask into an image file (PNG, or any format matplotlib knows from the suffix)."""
    from matplotlib.figure import Figure  # lazy: plotting is rare; no pyplot, so no GUI backend

    grid = grid.bool().cpu()
    M, N = grid.shape
    offset = N - M
    fig = Figure(figsize=(min(12.0, 3.0 + 6.0 * N / max(M, N)), min(12.0, 2.5 + 6.0 * M / max(M, N))))
    ax = fig.add_subplot()
    ax.imshow(grid.numpy(), cmap="Greys", vmin=0, vmax=1, interpolation="nearest", aspect="auto",
              extent=(-0.5, N - 0.5, M - 0.5, -0.5))
    ax.set_xlabel("key j")
    ax.set_ylabel("query row m")
    right = ax.secondary_yaxis("right", functions=(lambda m: m + offset, lambda i: i - offset))
    right.set_ylabel(f"key position i = m + {offset}")
    title = f"{name}: M={M}, N={N}, {_density(grid)} allowed (dark)"
    ax.set_title(title if not note else f"{title}\n{note}", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def _density(grid: torch.Tensor) -> str:
    return f"{100.0 * grid.sum().item() / max(1, grid.numel()):.1f}%"

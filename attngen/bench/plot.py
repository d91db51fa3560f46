"""TFLOP/s against sequence length: one line per (attention, implementation), a panel per pass.

Colours tell attentions apart, line styles and markers implementations (attngen: solid, circles).
"""

from __future__ import annotations

from pathlib import Path

PASSES = ("fwd", "fwd+bwd")
_STYLES = {"attngen": ("-", "o"), "flex": ("--", "s"), "sdpa-cudnn": (":", "^"), "sdpa-flash": ("-.", "v")}


def series(records: list[dict], pass_: str) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(spec, implementation) -> [(seq, TFLOP/s)] sorted by seq, for one pass; skipped peers left out."""
    out: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for r in records:
        if r["pass"] != pass_:
            continue
        results = {"attngen": r["attngen"], **r["peers"]}
        for impl, res in results.items():
            if "tflops" in res:
                out.setdefault((r["spec"], impl), []).append((r["seq"], res["tflops"]))
    return {key: sorted(points) for key, points in out.items()}


def save_plot(records: list[dict], path: str | Path, title: str = "") -> None:
    """Draw the records into an image file (PNG, or any format matplotlib knows from the suffix)."""
    from matplotlib.figure import Figure  # lazy, and no pyplot: no GUI backend

    panels = [(p, series(records, p)) for p in PASSES if any(r["pass"] == p for r in records)]
    specs = list(dict.fromkeys(r["spec"] for r in records))
    colors = {s: f"C{n % 10}" for n, s in enumerate(specs)}
    fig = Figure(figsize=(6.5 * len(panels) + 2.5, 5.0))
    for n, (pass_, lines) in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), n + 1)
        for (spec, impl), points in lines.items():
            seqs, tflops = zip(*points)
            line, marker = _STYLES.get(impl, ("-", "o"))
            ax.plot(seqs, tflops, marker=marker, color=colors[spec], linestyle=line, label=f"{spec} · {impl}")
        seqs = sorted({r["seq"] for r in records})
        ax.set_xscale("log", base=2)
        ax.set_xticks(seqs, [str(s) for s in seqs])
        ax.set_xlabel("sequence length")
        ax.set_ylabel("TFLOP/s")
        ax.set_ylim(bottom=0)
        ax.set_title(pass_)
        ax.grid(True, alpha=0.3)
    legend = {}  # label -> handle, over all panels (a peer may run in one pass only)
    for ax in fig.axes:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    if legend:
        fig.legend(list(legend.values()), list(legend), loc="center right", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1 - 2.5 / (6.5 * max(1, len(panels)) + 2.5), 1))
    fig.savefig(path, dpi=120)

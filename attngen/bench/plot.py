"""TFLOP/s against sequence length: one line per (attention, implementation), a panel per pass.

Colours tell attentions apart, line styles and markers implementations (attngen: solid, circles).
The decode mode's plot (:func:`save_decode_plot`): TB/s against cache length, one panel, a line
per (attention, implementation and cache layout); peers run on the contiguous cache only.
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
        _axes(ax, records, "sequence length", "TFLOP/s")
        ax.set_title(pass_)
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


def _axes(ax, records: list[dict], xlabel: str, ylabel: str) -> None:
    """Sequence lengths on a log-2 axis, one tick each; rates from 0."""
    seqs = sorted({r["seq"] for r in records})
    ax.set_xscale("log", base=2)
    ax.set_xticks(seqs, [str(s) for s in seqs])
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_ylim(bottom=0)
    ax.grid(True, alpha=0.3)


def decode_series(records: list[dict]) -> dict[tuple[str, str], list[tuple[int, float]]]:
    """(spec, implementation) -> [(cache length, TB/s)] sorted; attngen once per layout
    (``attngen``, ``attngen paged 16``), each peer once (its time does not depend on attngen's layout)."""
    out: dict[tuple[str, str], dict[int, float]] = {}
    for r in records:
        impl = "attngen" if r["layout"] == "contiguous" else f"attngen paged {r['page_size']}"
        out.setdefault((r["spec"], impl), {})[r["seq"]] = r["attngen"]["tbps"]
        for p, res in r["peers"].items():
            if "tbps" in res:
                out.setdefault((r["spec"], p), {})[r["seq"]] = res["tbps"]
    return {key: sorted(points.items()) for key, points in out.items()}


def save_decode_plot(records: list[dict], path: str | Path, title: str = "") -> None:
    """Draw decode records (TB/s against cache length) into an image file."""
    from matplotlib.figure import Figure

    specs = list(dict.fromkeys(r["spec"] for r in records))
    colors = {s: f"C{n % 10}" for n, s in enumerate(specs)}
    sizes = sorted({r["page_size"] for r in records if r["layout"] == "paged"})
    paged = {f"attngen paged {n}": ("-", "DPX*hp"[k % 6]) for k, n in enumerate(sizes)}
    fig = Figure(figsize=(9.0, 5.0))
    ax = fig.add_subplot(1, 1, 1)
    for (spec, impl), points in decode_series(records).items():
        seqs, tbps = zip(*points)
        style = paged.get(impl, _STYLES.get(impl, ("-", "o")))
        ax.plot(seqs, tbps, marker=style[1], color=colors[spec], linestyle=style[0], label=f"{spec} · {impl}",
                alpha=0.6 if "paged" in impl else 1.0)
    _axes(ax, records, "cache length N", "TB/s (K and V bytes read / time)")
    ax.legend(loc="center left", bbox_to_anchor=(1.0, 0.5), fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=120)

"""What ``attngen bench`` prints and writes: the tables, the mismatch warnings, the JSON file.

The main table has one row per record (attention, seq, pass) and a group of columns per
implementation; a peer that cannot run a case spans its group with ``n/a (reason)``.
attngen's group gains ``prep ms`` and ``vs base`` only where records have them. The
startup table has one row per attention. The decode mode's table (:func:`decode_table`)
has a row per (attention, cache length, cache layout) in ms and TB/s; the varlen mode's
(:func:`varlen_table`) a row per (attention, pass) in ms and TFLOP/s.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import torch

from .. import __version__
from .run import ERR_LIMIT

PEER_ORDER = ("dense", "flex", "sdpa-cudnn", "sdpa-flash")
#: longest reason shown in a table cell; longer ones are cut there and given in full below the table
REASON_CHARS = 60
_SEP = " | "


def environment(device: str) -> dict:
    """Versions and hardware, recorded with the numbers."""
    import triton

    env = {"attngen": __version__, "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version(), "platform": platform.platform(), "device": device}
    if device == "cuda":
        env["gpu"] = torch.cuda.get_device_name()
        env["cuda"] = torch.version.cuda
    return env


def write_json(path: str | Path, records: list[dict], env: dict, config: dict, startup: list[dict]) -> None:
    data = {"environment": env, "config": config, "records": records, "startup": startup}
    Path(path).write_text(json.dumps(data, indent=1) + "\n")


def table(records: list[dict], baseline: str | None = None) -> str:
    """The records as an aligned text table, with a legend; ``baseline`` names the baseline in it."""
    fresh = any(r["fresh_inputs"] for r in records)
    peers = [p for p in PEER_ORDER if any(p in r["peers"] for r in records)]
    prep = any("prep_ms" in r["attngen"] for r in records)
    vs = any("vs_base" in r for r in records)
    groups = [("", ["spec", "seq", "B", "pass"]),
              ("attngen", ["ms", "TFLOP/s"] + (["prep ms"] if prep else []) + (["vs base"] if vs else []))]
    groups += [(p, ["ms", "TFLOP/s", "ratio"] + (["prep ms"] if p == "flex" else [])
                + (["err"] if p != "dense" else [])) for p in peers]
    rows, long_reasons = [], {}
    for r in records:
        mine = [_ms(r["attngen"]["ms"]), _tflops(r["attngen"]["tflops"])]
        if prep:
            mine.append(_ms(r["attngen"]["prep_ms"]) if "prep_ms" in r["attngen"] else "-")
        if vs:
            mine.append(f"{r['vs_base']:.2f}" if "vs_base" in r else "-")
        row = [[r["spec"], str(r["seq"]), str(r["B"]), r["pass"]], mine]
        for p in peers:
            res = r["peers"].get(p)
            if res is None or "skipped" in res:
                row.append(_skipped(res, f"{p} on {r['spec']} {r['seq']} {r['pass']}", long_reasons))
                continue
            cells = [_ms(res["ms"]), _tflops(res["tflops"]), f"{res['ratio']:.2f}"]
            if p == "flex":
                cells.append(_ms(res["mask_prep_ms"]) if res["mask_prep_ms"] is not None else "-")
            if p != "dense":
                cells.append(f"{res['rel_err']:.1e}" + (" !!" if not res["rel_err"] <= ERR_LIMIT else ""))
            row.append(cells)
        rows.append(row)
    lines = _rendered(groups, rows, long_reasons)
    lines.append("ratio: attngen TFLOP/s / peer TFLOP/s (> 1: attngen is faster). err: |o - o_peer| / |o_peer| "
                 f"(fwd), the largest over o and the gradients (fwd+bwd); !! marks err > {ERR_LIMIT:.0e}.")
    if "dense" in peers:
        lines.append("dense: attngen on the same spec without its select stage (the mask alone), same inputs; "
                     "ratio as for the peers (> 1: the selection is faster than dense).")
    local = sorted({r["locality"] for r in records if r.get("locality")})
    if local:
        lines.append(f"inputs with positional locality {', '.join(map(str, local))}: q and k share a signal smooth "
                     "along the positions (--locality).")
    if "flex" in peers:
        lines.append("flex prep ms: flex's create_block_mask"
                     + (", also inside flex's ms: the integer/bool inputs change every call." if fresh
                        else ", timed on its own (the mask is built once, outside flex's ms)."))
    if prep:
        handle = "attngen.prepare handle per layout" if fresh else "attngen.prepare handle"
        lines.append("attngen's ms include any per-call work on its mask; attngen prep ms: that work in the "
                     f"forward, attngen's ms less its ms with a warm {handle} (at least 0).")
    else:
        lines.append("attngen's ms include any per-call work on its mask.")
    if vs:
        name = baseline or "the baseline"
        lines.append(f"vs base: {name}'s attngen ms / the row's attngen ms, same seq and pass "
                     f"(> 1: faster than {name}).")
    return "\n".join(lines)


def _skipped(res: dict | None, where: str, long_reasons: dict[str, list[str]]) -> str:
    """The cell spanning a peer's group where it did not run: ``n/a (reason)``, the reason cut to
    REASON_CHARS (and kept in ``long_reasons`` to print in full), or ``-`` where it was not asked."""
    if res is None:
        return "-"
    why = res["skipped"]
    if len(why) > REASON_CHARS:
        long_reasons.setdefault(why, []).append(where)
        why = why[:REASON_CHARS - 3] + "..."
    return f"n/a ({why})"


def _rendered(groups: list[tuple[str, list[str]]], rows: list[list], long_reasons: dict[str, list[str]]) -> list[str]:
    """The table's lines, then the reasons too long for its n/a cells."""
    return _render(groups, rows) + [f"n/a for {', '.join(where)}: {why}" for why, where in long_reasons.items()]


def _peer(res: dict | None, where: str, long_reasons: dict[str, list[str]], cells) -> object:
    """A peer's cells in a row: ``cells(res)`` where it ran, else the n/a cell (see _skipped)."""
    if res is None or "skipped" in res:
        return _skipped(res, where, long_reasons)
    return cells(res)


def _err(rel: float) -> str:
    return f"{rel:.1e}" + (" !!" if not rel <= ERR_LIMIT else "")


def _layout(r: dict) -> str:
    return "contiguous" if r["layout"] == "contiguous" else f"paged {r['page_size']}"


def decode_table(records: list[dict]) -> str:
    """The decode mode's records as an aligned text table, with a legend."""
    peers = [p for p in PEER_ORDER if any(p in r["peers"] for r in records)]
    paged = any(r["layout"] == "paged" for r in records)
    groups = [("", ["spec", "cache N", "B", "M", "layout"]),
              ("attngen", ["ms", "TB/s", "host ms"] + (["err"] if paged else []))]
    groups += [(p, ["ms", "TB/s", "ratio", "err"]) for p in peers]
    rows, long_reasons = [], {}
    for r in records:
        mine = [_ms(r["attngen"]["ms"]), _tbps(r["attngen"]["tbps"]), _ms(r["attngen"]["host_ms"])]
        if paged:
            mine.append(_err(r["attngen"]["contiguous_err"]) if "contiguous_err" in r["attngen"] else "-")
        row = [[r["spec"], str(r["seq"]), str(r["B"]), str(r["M"]), _layout(r)], mine]
        for p in peers:
            row.append(_peer(r["peers"].get(p), f"{p} on {r['spec']} {r['seq']} {_layout(r)}", long_reasons,
                             lambda res: [_ms(res["ms"]), _tbps(res["tbps"]), f"{res['ratio']:.2f}",
                                          _err(res["rel_err"])]))
        rows.append(row)
    lines = _rendered(groups, rows, long_reasons)
    lines += [
        "TB/s: bytes of the K and V rows the mask lets some query row of the group read "
        "(B·HK·keys·(D + DV)·element size; all N keys for causal decoding) / time; q, o and the block table not "
        "counted. Forward only.",
        "Peers run on the contiguous cache (the same keys): their ms is the same on every layout's row. "
        "ratio: peer ms / attngen ms on the row's layout (> 1: attngen is faster).",
        "host ms: the host's time for one attngen call started with the GPU idle (argument checks, launches); "
        "where it nears ms, the row measures the host, not the memory. Paged rows: timed with validate=False, "
        "as decoding loops call it (checked with the table validated; that call's host ms in the JSON).",
        f"err: |o - o_peer| / |o_peer|; attngen err (paged rows): against attngen on the contiguous cache; "
        f"!! marks err > {ERR_LIMIT:.0e}."]
    if "flex" in peers:
        lines.append("flex's block mask is built once, outside its ms (create_block_mask ms in the JSON).")
    return "\n".join(lines)


def varlen_table(records: list[dict]) -> str:
    """The varlen mode's records as an aligned text table, with a legend."""
    flex = any("flex" in r["peers"] for r in records)
    groups = [("", ["spec", "tokens", "seqs", "longest", "pass"]), ("attngen", ["ms", "TFLOP/s"])]
    if flex:
        groups.append(("flex", ["ms", "TFLOP/s", "ratio", "prep ms", "err"]))
    rows, long_reasons = [], {}
    for r in records:
        row = [[r["spec"], str(r["tokens"]), str(r["B"]), str(r["seq"]), r["pass"]],
               [_ms(r["attngen"]["ms"]), _tflops(r["attngen"]["tflops"])]]
        if flex:
            res = r["peers"].get("flex")
            if res is None or "skipped" in res:
                row.append(_skipped(res, f"flex on {r['spec']} {r['pass']}", long_reasons))
            else:
                prep = _ms(res["mask_prep_ms"]) if res.get("mask_prep_ms") is not None else "-"
                row.append([_ms(res["ms"]), _tflops(res["tflops"]), f"{res['ratio']:.2f}", prep,
                            _err(res["rel_err"])])
        rows.append(row)
    lengths = records[0]["lengths"]
    lines = _rendered(groups, rows, long_reasons)
    lines += [
        f"{len(lengths)} packed sequences of lengths {', '.join(map(str, lengths))}: attngen with cu_seqlens; flex on "
        "their concatenation under a document mask.",
        "TFLOP/s: pairs each sequence's mask allows, summed (4·pairs·D forward, 3.5× that forward+backward). "
        "ratio: attngen TFLOP/s / flex TFLOP/s (> 1: attngen is faster).",
        f"err: |o - o_flex| / |o_flex| (fwd), the largest over o and the gradients (fwd+bwd); !! marks err > "
        f"{ERR_LIMIT:.0e}."]
    if flex:
        lines.append("flex prep ms: flex's create_block_mask (compiled on CUDA), also inside flex's ms: "
                     "the packing changes every batch.")
    return "\n".join(lines)


def block_table(records: list[dict]) -> str:
    """The block mode's records (a compiled transformer block's training step) as a text table."""
    flex = any("flex" in r["peers"] for r in records)
    groups = [("", ["spec", "seq", "B"]), ("attngen step", ["ms", "TFLOP/s"])]
    if flex:
        groups.append(("flex step", ["ms", "TFLOP/s", "ratio", "err"]))
    rows, long_reasons = [], {}
    for r in records:
        row = [[r["spec"], str(r["seq"]), str(r["B"])], [_ms(r["attngen"]["ms"]), _tflops(r["attngen"]["tflops"])]]
        if flex:
            row.append(_peer(r["peers"].get("flex"), f"flex on {r['spec']} {r['seq']}", long_reasons,
                             lambda res: [_ms(res["ms"]), _tflops(res["tflops"]), f"{res['ratio']:.2f}",
                                          _err(res["rel_err"])]))
        rows.append(row)
    lines = _rendered(groups, rows, long_reasons)
    lines += [
        "step: torch.compile(fullgraph=True) of a block (qkv projection, attention, output projection) forward and "
        "backward, the same weights, x and inputs for both.",
        "TFLOP/s: the attention's allowed pairs (4·pairs·D, ×3.5 with the backward) plus the projections' matmuls "
        "(×3). ratio: flex ms / attngen ms (> 1: attngen's step is faster).",
        f"err: the largest |g - g_attngen| / |g_attngen| over the step's gradients; !! marks err > {ERR_LIMIT:.0e}."]
    return "\n".join(lines)


def startup_table(startup: list[dict]) -> str:
    """The startup records as an aligned text table, with a legend."""
    groups = [("", ["spec"]), ("first call, nothing cached", ["load ms", "call ms"]),
              ("cached call, host", ["attngen us", "launch us", "overhead us"])]
    rows = [[[s["spec"]], [_ms(s["load_ms"]), _ms(s["first_call_ms"])],
             [_us(s["call_us"]), _us(s["launch_us"]), _us(s["overhead_us"])]] for s in startup]
    first, host = startup[0]["first_call_sizes"], startup[0]["host_sizes"]
    return "\n".join(_render(groups, rows) + [
        "first call: attngen.load (parse, check, plan, module generation and import), then the first forward call "
        f"(Triton compilation, the run) at {_sizes(first)}, with empty ATTNGEN_CACHE_DIR and TRITON_CACHE_DIR "
        "and ATTNGEN_AUTOTUNE=0, in this already warm process.",
        f"cached call: host time of a forward call at {_sizes(host)}, issued back to back without synchronizing "
        f"(mean of {startup[0]['host_calls']}); launch: the same for one trivial Triton kernel; "
        "overhead: the difference."])


def _sizes(sizes: dict) -> str:
    return " ".join(f"{n}={sizes[n]}" for n in ("B", "H", "HK", "M", "N", "D"))


def mismatches(records: list[dict]) -> list[str]:
    """A line for every peer whose result disagrees with attngen's beyond ERR_LIMIT (and, in the decode
    mode, for every paged layout whose output disagrees with attngen's on the contiguous cache)."""
    out = []
    for r in records:
        where = _where(r)
        for p, res in r["peers"].items():
            if "rel_err" in res and not res["rel_err"] <= ERR_LIMIT:
                worst = ", ".join(f"{n} {e:.1e}" for n, e in res["errors"].items())
                out.append(f"MISMATCH: attngen and {p} disagree on {r['spec']} {where}: "
                           f"relative error {worst} (limit {ERR_LIMIT:.0e})")
        own = r["attngen"].get("contiguous_err")
        if own is not None and not own <= ERR_LIMIT:
            out.append(f"MISMATCH: attngen on the {_layout(r)} cache and on the contiguous one disagree on "
                       f"{r['spec']} {where}: relative error o {own:.1e} (limit {ERR_LIMIT:.0e})")
    return out


def _where(r: dict) -> str:
    """Where a record was measured, for messages: ``seq 4096 fwd``, ``cache 8192 paged 16``."""
    mode = r.get("mode", "dense")
    if mode == "decode":
        return f"cache {r['seq']} {_layout(r)}"
    if mode == "varlen":
        return f"{r['tokens']} tokens in {r['B']} sequences {r['pass']}"
    return f"seq {r['seq']} {r['pass']}"


def _render(groups: list[tuple[str, list[str]]], rows: list[list]) -> list[str]:
    """Aligned lines: a line of group titles, a line of column titles, then the rows.

    A row holds, per group, a list of cells or one string spanning the whole group.
    """
    widths = [[len(c) for c in cols] for _, cols in groups]
    for row in rows:
        for g, cells in enumerate(row):
            if isinstance(cells, list):
                widths[g] = [max(w, len(c)) for w, c in zip(widths[g], cells)]
    for row in rows:  # a spanning string wider than its group widens the group's last column
        for g, cells in enumerate(row):
            if isinstance(cells, str):
                widths[g][-1] += max(0, len(cells) - _span(widths[g]))

    def line(parts: list) -> str:
        out = []
        for g, cells in enumerate(parts):
            if isinstance(cells, str):
                out.append(cells.ljust(_span(widths[g])))
            else:  # the first group (names) reads left-aligned, numbers right-aligned
                out.append("  ".join(c.ljust(w) if g == 0 else c.rjust(w) for c, w in zip(cells, widths[g])))
        return _SEP.join(out).rstrip()

    titles = line([title for title, _ in groups])
    return [titles, line([cols for _, cols in groups]), "-" * max(len(titles), _width(widths))] + \
        [line(row) for row in rows]


def _span(widths: list[int]) -> int:
    return sum(widths) + 2 * (len(widths) - 1)


def _width(widths: list[list[int]]) -> int:
    return sum(_span(w) for w in widths) + len(_SEP) * (len(widths) - 1)


def _ms(ms: float) -> str:
    return f"{ms:.1f}" if ms >= 100 else f"{ms:.2f}" if ms >= 10 else f"{ms:.3f}"


def _us(us: float) -> str:
    return f"{us:.0f}" if abs(us) >= 100 else f"{us:.1f}"


def _tbps(tb: float) -> str:
    return f"{tb:.2f}" if tb >= 0.1 else f"{tb:.3g}"


def _tflops(tf: float) -> str:
    return f"{tf:.1f}" if tf >= 1 else f"{tf:.3g}"

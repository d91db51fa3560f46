"""``attngen bench``: the command (options, mode checks, the table, JSON and plot); the benchmark
itself is :mod:`attngen.bench.run`."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import click

from ..clitools import UserError, define_option, load_spec, name_option
from ..ir.build import ConstValue


def _parse_seqs(ctx, param, value: str) -> tuple[int, ...]:
    try:
        seqs = tuple(int(x) for x in value.split(",") if x.strip())
    except ValueError:
        seqs = ()
    if not seqs or min(seqs) < 1:
        raise click.BadParameter(f"expected positive integers separated by commas, got {value!r}", ctx, param)
    return seqs


def _parse_peers(ctx, param, value: str) -> tuple[str, ...]:
    from .peers import PEERS

    peers = tuple(x.strip() for x in value.split(",") if x.strip())
    unknown = [p for p in peers if p not in PEERS]
    if unknown:
        raise click.BadParameter(f"unknown peer '{unknown[0]}'; peers are {', '.join(PEERS)}", ctx, param)
    return peers


def _parse_page_sizes(ctx, param, value: str | None) -> tuple[int, ...] | None:
    if value is None or value.strip().lower() == "none":
        return None if value is None else ()
    return _parse_seqs(ctx, param, value)


def _optional_seqs(ctx, param, value: str | None) -> tuple[int, ...] | None:
    return None if value is None else _parse_seqs(ctx, param, value)


#: options of one mode only, and the modes they belong to (anywhere else they would be ignored)
_MODE_OPTIONS = {"tokens": ("dense", "block"), "fresh_inputs": ("dense", "block"), "locality": ("dense",),
                 "baseline": ("dense",),
                 "startup": ("dense",), "seqs": ("dense", "decode", "block"), "batch": ("decode",), "decode_rows": ("decode",),
                 "page_sizes": ("decode",), "varlen_lengths": ("varlen",), "plot_out": ("dense", "decode")}
#: per mode: default (--seq, --heads, --kv-heads, --peers); None for --kv-heads: --heads
_MODE_DEFAULTS = {"dense": ((4096, 16384), 16, None, ("flex", "sdpa")),
                  "decode": ((8192, 32768), 32, 8, ("flex", "sdpa")),
                  "varlen": ((), 16, None, ("flex",)),
                  "block": ((4096, 16384), 16, None, ("flex",))}


@click.command()
@click.argument("files", nargs=-1, required=True)
@name_option
@define_option
@click.option("--seq", "seqs", default=None, callback=_optional_seqs,
              help="Sequence lengths (M = N), comma-separated; with --decode the cache lengths N. "
                   "Default: 4096,16384; 8192,32768 with --decode.")
@click.option("--tokens", type=click.IntRange(min=1), default=16384, show_default=True,
              help="Tokens per batch: B = tokens // seq (at least 1).")
@click.option("--heads", type=click.IntRange(min=1), default=None,
              help="Query heads H. Default: 16; 32 with --decode.")
@click.option("--kv-heads", type=click.IntRange(min=1), default=None,
              help="Key/value heads HK. Default: --heads; 8 with --decode when --heads is not given either.")
@click.option("--dim", type=click.IntRange(min=1), default=128, show_default=True, help="Head dim D = DV.")
@click.option("--dtype", type=click.Choice(["bf16", "fp16", "fp32"]), default=None,
              help="Default: bf16 on cuda, fp32 on cpu.")
@click.option("--peers", default=None, callback=lambda c, p, v: None if v is None else _parse_peers(c, p, v),
              help="Implementations to compare with: flex (FlexAttention), sdpa (cuDNN and flash). "
                   "Default: flex,sdpa; flex with --varlen (its only peer).")
@click.option("--no-backward", is_flag=True, help="Time the forward pass only.")
@click.option("--no-input-grads", is_flag=True,
              help="Float keyword inputs (slopes, biases) get no gradient: fwd+bwd computes dq, dk, dv only.")
@click.option("--json", "json_out", metavar="OUT.json", help="Write every number and the environment as JSON.")
@click.option("--plot", "plot_out", metavar="OUT.png",
              help="Plot TFLOP/s against sequence length (with --decode: TB/s against cache length).")
@click.option("--device", type=click.Choice(["cuda", "cpu"]), default="cuda", show_default=True,
              help="cpu: smoke tests at tiny sizes (TRITON_INTERPRET=1; peers run eagerly).")
@click.option("--fresh-inputs", is_flag=True,
              help="New integer/bool inputs (e.g. a new document layout) every call; flex's mask "
                   "preparation is then timed inside its calls.")
@click.option("--locality", type=click.FloatRange(min=0.0), default=0.0, show_default=True,
              help="q and k share this much of a signal smooth along the positions: neighbouring queries score "
                   "the same keys high, as in trained models (sparse selections pick similar blocks). 0: random.")
@click.option("--baseline", metavar="FILE[:NAME]",
              help="Also time attngen alone on this attention (NAME: one of a multi-attention file), on the "
                   "same shapes; each row gets the baseline's time over its own (vs base).")
@click.option("--startup", is_flag=True,
              help="Also time each attention's first call with nothing cached (autotuning off) and the host "
                   "overhead of a cached call on tiny inputs.")
@click.option("--autotune/--no-autotune", default=None,
              help="Set ATTNGEN_AUTOTUNE for the run (default: as the environment has it). Tuning happens in "
                   "the first, untimed call.")
@click.option("--decode", is_flag=True,
              help="Decoding: --decode-rows query rows per sequence against a KV cache of each --seq length, "
                   "contiguous and paged (--page-sizes), forward only, in TB/s of K/V bytes read.")
@click.option("--batch", type=click.IntRange(min=1), default=32, show_default=True,
              help="With --decode: sequences B.")
@click.option("--decode-rows", type=click.IntRange(min=1), default=1, show_default=True,
              help="With --decode: query rows M per sequence, the cache's last M positions (up to 16, attngen "
                   "may split the keys over programs).")
@click.option("--page-sizes", default=None, callback=_parse_page_sizes,
              help="With --decode: page sizes of the paged caches, comma-separated, each dividing every --seq; "
                   "'none': contiguous only. Default: 16,64.")
@click.option("--varlen", is_flag=True,
              help="Packed variable-length prefill: the --varlen-lengths sequences in one tensor, attngen with "
                   "cu_seqlens against FlexAttention with a document mask built in every call.")
@click.option("--varlen-lengths", default=None, callback=_optional_seqs,
              help="With --varlen: the sequences' lengths, comma-separated. Default: 8086,6360,2495,1594,3209,"
                   "2389,6832,1803 (8 sequences, 32768 tokens).")
@click.option("--block", is_flag=True,
              help="A transformer block's training step (qkv projection, attention, output projection, backward) "
                   "under torch.compile(fullgraph=True), attngen against FlexAttention on the same weights and inputs.")
@click.pass_context
def bench(ctx: click.Context, files: tuple[str, ...], name: str | None, consts: dict, seqs: tuple[int, ...] | None,
          tokens: int, heads: int | None, kv_heads: int | None, dim: int, dtype: str | None,
          peers: tuple[str, ...] | None, no_backward: bool, no_input_grads: bool, json_out: str | None,
          plot_out: str | None, device: str, fresh_inputs: bool, locality: float, baseline: str | None, startup: bool,
          autotune: bool | None, decode: bool, batch: int, decode_rows: int, page_sizes: tuple[int, ...] | None,
          varlen: bool, varlen_lengths: tuple[int, ...] | None, block: bool) -> None:
    """Time attngen against FlexAttention and torch SDPA on each attention of each FILE.

    Four modes: dense (the default: q, k, v of equal lengths), --decode (a few query rows against a
    KV cache, contiguous and paged), --varlen (packed sequences of mixed lengths) and --block (a
    compiled transformer block's training step).
    """
    import torch

    from . import report
    from .run import Config, run

    if decode + varlen + block > 1:
        raise UserError("error: --decode, --varlen and --block are separate modes; pass one of them")
    mode = "decode" if decode else "varlen" if varlen else "block" if block else "dense"
    for param, modes in _MODE_OPTIONS.items():
        if mode not in modes and ctx.get_parameter_source(param) not in (None, click.core.ParameterSource.DEFAULT):
            option = next(o for o in ctx.command.params if o.name == param).opts[-1]
            where = " or ".join("the dense mode" if m == "dense" else f"--{m}" for m in modes)
            raise UserError(f"error: {option} applies to {where} only")
    default_seqs, default_heads, default_kv, default_peers = _MODE_DEFAULTS[mode]
    if mode == "decode" and kv_heads is None and heads is not None:
        default_kv = None  # --heads alone: as many key/value heads (MHA), as in the other modes
    seqs = seqs or default_seqs
    heads = heads or default_heads
    kv_heads = kv_heads or default_kv or heads
    peers = default_peers if peers is None else peers
    page_sizes = (16, 64) if page_sizes is None else page_sizes
    if mode in ("varlen", "block") and "sdpa" in peers:
        raise UserError(f"error: --{mode} compares with flex only (--peers flex)")
    if device == "cuda" and not torch.cuda.is_available():
        raise UserError("error: bench needs a CUDA GPU, and torch sees none; "
                        "for a smoke test on CPU pass --device cpu (with TRITON_INTERPRET=1 and tiny sizes)")
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError("error: bench on cpu runs the kernels under the Triton interpreter: set TRITON_INTERPRET=1")
    dtype = dtype or ("bf16" if device == "cuda" else "fp32")
    if heads % kv_heads:
        raise UserError(f"error: --heads {heads} must be a multiple of --kv-heads {kv_heads}")
    if mode == "decode":
        for seq in seqs:
            bad = [p for p in page_sizes if seq % p]
            if bad:
                raise UserError(f"error: --page-sizes {bad[0]} does not divide the cache length {seq} (--seq)")
            if decode_rows > seq:
                raise UserError(f"error: --decode-rows {decode_rows} exceeds the cache length {seq}")
    if autotune is None:
        autotune = os.environ.get("ATTNGEN_AUTOTUNE", "1") != "0"
    from .varlen import DEFAULT_LENGTHS

    cfg = Config(seqs=seqs, tokens=tokens, heads=heads, kv_heads=kv_heads, dim=dim,
                 dtype={"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[dtype],
                 peers=peers, backward=not no_backward and mode != "decode", input_grads=not no_input_grads,
                 device=device, fresh_inputs=fresh_inputs, locality=locality, autotune=autotune, startup=startup,
                 mode=mode,
                 batch=batch, decode_rows=decode_rows, page_sizes=page_sizes,
                 varlen_lengths=(varlen_lengths or DEFAULT_LENGTHS) if mode == "varlen" else ())
    targets, base = _bench_targets(files, name, consts, baseline)
    base_name = None if base is None else f"{base.path}:{base.attention.name}"
    results = run(targets, cfg, lambda line: click.echo(line, err=True), base)
    records = results.records
    if not records:
        raise UserError("error: nothing to benchmark (every attention was skipped)")
    env = report.environment(device)
    if mode == "decode":
        click.echo(report.decode_table(records))
    elif mode == "varlen":
        click.echo(report.varlen_table(records))
    elif mode == "block":
        click.echo(report.block_table(records))
    else:
        click.echo(report.table(records, None if base is None else base.attention.name))
    if results.startup:
        click.echo("\n" + report.startup_table(results.startup))
    for line in report.mismatches(records):
        click.echo(line, err=True)
    if json_out:
        report.write_json(json_out, records, env, {**cfg.as_json(), "baseline": base_name}, results.startup)
        click.echo(f"wrote {json_out}")
    if plot_out:
        from .plot import save_decode_plot, save_plot

        try:
            if mode == "decode":
                save_decode_plot(records, plot_out, f"{env.get('gpu', device)}, {dtype}, decode M={decode_rows} "
                                                    f"B={batch} H={heads} HK={kv_heads} D={dim}")
            else:
                save_plot(records, plot_out, f"{env.get('gpu', device)}, {dtype}, {tokens} tokens, "
                                             f"H={heads} HK={kv_heads} D={dim}")
        except (OSError, ValueError) as err:
            raise UserError(f"{plot_out}: error: cannot write the image: {err}") from None
        click.echo(f"wrote {plot_out}")


def _bench_targets(files: tuple[str, ...], name: str | None, consts: Mapping[str, ConstValue],
                   baseline: str | None):
    """Every attention of ``files`` (or only ``name``), and the baseline's (``FILE[:NAME]``, or None);
    each file takes the -D overrides it declares."""
    from .run import Target

    used = set()

    def targets_of(path: str, nm: str | None) -> list[Target]:
        declared = {c for a in load_spec(path, nm) for c, _ in a.consts}
        mine = {c: v for c, v in consts.items() if c in declared}
        used.update(mine)
        return [Target(Path(path), a, mine) for a in load_spec(path, nm, mine)]

    targets = [t for path in files for t in targets_of(path, name)]
    base = None
    if baseline is not None:
        path, sep, nm = baseline.rpartition(":")
        path, nm = (path, nm) if sep and path and nm.isidentifier() else (baseline, None)
        found = targets_of(path, nm)
        if len(found) > 1:
            names = ", ".join(t.attention.name for t in found)
            raise UserError(f"{path}: error: it defines several attentions ({names}); "
                            f"pick one with --baseline {path}:NAME")
        base = found[0]
    unused = sorted(set(consts) - used)
    if unused:
        raise UserError(f"error: no attention in {', '.join(files)} declares a const '{unused[0]}'")
    return targets, base

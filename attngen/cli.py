"""The ``attngen`` command line (also ``python -m attngen``).

Every command is one ``@main.command()`` function (``bench`` lives in :mod:`attngen.bench.command`,
with the benchmark). User mistakes never end in a
traceback: an :class:`AttnError` raised anywhere under a command is printed as
``FILE:LINE:COL: error: ...`` with the source line and a caret, and exits 1.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import click

from . import __version__
from .bench.command import bench
from .clitools import UserError, define_option, load_spec, name_option
from .frontend.errors import AttnError
from .ir import nodes as ir


class _Group(click.Group):
    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except AttnError as err:
            raise UserError(err.format()) from None


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="attngen")
def main() -> None:
    """Compile attention specs (.attn) into fused Triton kernels."""


# ---- commands

@main.command()
@click.argument("files", nargs=-1, required=True)
def check(files: tuple[str, ...]) -> None:
    """Parse and type-check each FILE, and plan its kernels (a spec check accepts compiles and runs);
    exit 1 if any has an error."""
    from .driver import generate

    failed = False
    for path in files:
        try:
            attns = load_spec(path)
            # generate the module too: what the kernels cannot run is refused here, with its caret
            if attns:
                generate(attns).render()
            names = [a.name for a in attns]
        except AttnError as err:
            click.echo(err.format(), err=True)
            failed = True
        except UserError as err:
            err.show()
            failed = True
        else:
            plural = "attention" if len(names) == 1 else "attentions"
            click.echo(f"{path}: ok ({len(names)} {plural}: {', '.join(names)})")
    if failed:
        raise SystemExit(1)


@main.command()
@click.argument("file")
@name_option
@define_option
@click.option("--ir", "show_ir", is_flag=True, help="Print the IR (the default view).")
@click.option("--after", metavar="PASS",
              help="Print the IR after the optimizer ran up to PASS ('all': every pass). Implies --ir.")
@click.option("--mask", "mask_out", is_flag=False, flag_value="-", default=None, metavar="[OUT.png]",
              help="Draw the mask into OUT.png; alone (or '-'), print it as text.")
@click.option("--triton", "show_triton", is_flag=True,
              help="Print the generated Triton module (kernels and autograd wrapper).")
@click.option("--M", "M", type=click.IntRange(min=1), default=64, show_default=True, help="Query rows for --mask.")
@click.option("--N", "N", type=click.IntRange(min=1), default=64, show_default=True, help="Keys for --mask.")
def show(file: str, name: str | None, consts: dict, show_ir: bool, after: str | None,
         mask_out: str | None, show_triton: bool, M: int, N: int) -> None:
    """Show what attngen makes of FILE: its IR (the default), its mask, or its Triton code."""
    attns = load_spec(file, name, consts)
    if show_triton:
        from .driver import generate

        click.echo(generate(attns).render(), nl=False)
    if show_ir or after is not None or (mask_out is None and not show_triton):
        if after is not None:
            attns = _run_passes(attns, after)
        click.echo("\n\n".join(_ir_text(a, after) for a in attns))
    if mask_out is not None:
        _show_mask(file, attns, mask_out, M, N)


def _ir_text(a: ir.Attention, after: str | None) -> str:
    from .ir.printer import attention_str

    text = attention_str(a)
    return text if after is None else f"# after pass {after}\n{text}"


def _run_passes(attns: list[ir.Attention], after: str) -> list[ir.Attention]:
    from .driver import optimize
    from .passes.pipeline import pass_names

    if after != "all" and after not in pass_names():
        raise UserError(f"error: unknown pass '{after}'; passes are: {', '.join(pass_names())} (or 'all')")
    return [optimize(a, after) for a in attns]


def _show_mask(file: str, attns: list[ir.Attention], out: str, M: int, N: int) -> None:
    from . import maskplot
    from .reference.masks import mask_grid

    if out != "-" and len(attns) > 1:
        raise UserError(f"{file}: error: it defines several attentions "
                        f"({', '.join(a.name for a in attns)}); pick one with --name")
    for a in attns:
        try:
            grid = mask_grid(a, M, N)
        except ValueError as err:
            raise UserError(f"{file}: error: cannot draw the mask of '{a.name}': {err}") from None
        notes = []
        if a.mask is not None and ir.uses(a.mask, *(d.name for d in a.inputs)):
            notes.append("the mask reads inputs: they were drawn at random (seed 0)")
        if a.select is not None:
            what = f"blocks of {a.select.block} keys" if a.select.block else "keys"
            notes.append(f"the select stage keeps {a.select.k} {what} a row, chosen per call from the data: "
                         f"drawn is the mask before it ({a.name}_selected gives the choice)")
        note = "; ".join(notes) or None
        if out == "-":
            click.echo(maskplot.render_ascii(grid, a.name, note))
            continue
        try:
            maskplot.save_png(grid, a.name, out, note)
        except (OSError, ValueError) as err:
            raise UserError(f"{out}: error: cannot write the image: {err}") from None
        click.echo(f"wrote {out}")


# ---- room for the lead: `compile`, `verify` and `bench` are one @main.command() function each,
# reading specs with load_spec() and taking name_option / define_option where they apply.


@main.command("compile")
@click.argument("file")
@click.option("-o", "--output", "out", required=True, metavar="OUT.py", help="Where to write the module.")
@name_option
@define_option
def compile_cmd(file: str, out: str, name: str | None, consts: dict) -> None:
    """Write a standalone module (torch + triton only) with one function per attention of FILE."""
    from .driver import generate

    attns = load_spec(file, name, consts)
    text = generate(attns).render()
    try:
        Path(out).write_text(text, encoding="utf-8")
    except OSError as err:
        raise UserError(f"{out}: error: cannot write: {err.strerror or err}") from None
    _check_imports(out)
    click.echo(f"{out}: {', '.join(a.name for a in attns)} ({len(text.splitlines())} lines)")


def _check_imports(out: str) -> None:
    """Exit 1 unless the module written to ``out`` imports: run it as read back from disk (compiled
    here, so no __pycache__ appears beside it), in a namespace of its own."""
    try:
        exec(compile(Path(out).read_text(encoding="utf-8"), out, "exec"), {"__name__": "attngen_compiled",
                                                                           "__file__": out})
    except Exception as err:  # noqa: BLE001 - whatever stops the import, the module is unusable
        raise UserError(f"{out}: error: the module written does not import ({type(err).__name__}: {err}); "
                        "this is a bug in attngen, please report it") from None


@main.command()
@click.argument("file")
@name_option
@define_option
@click.option("--device", type=click.Choice(["cpu", "cuda"]), default=None,
              help="Default: cuda when available, else cpu (needs TRITON_INTERPRET=1).")
@click.option("--dtype", type=click.Choice(["float32", "float16", "bfloat16"]), default=None,
              help="Default: bfloat16 on cuda, float32 on cpu.")
def verify(file: str, name: str | None, consts: dict, device: str | None, dtype: str | None) -> None:
    """Run FILE's kernels and the reference on random inputs; print relative errors of o and every gradient."""
    import torch

    from .verify import compare

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise UserError("verify on cpu runs the kernels under the Triton interpreter: set TRITON_INTERPRET=1")
    dt = getattr(torch, dtype or ("bfloat16" if device == "cuda" else "float32"))
    shape = dict(M=67, N=67, D=40, DV=24) if device == "cpu" else dict(M=1000, N=1000, D=128, DV=128)
    failed = False
    for a in load_spec(file, name, consts):
        errs = compare(a, dtype=dt, device=device, **shape)
        click.echo(f"{a.name} ({device}, {dtype or dt}, B=2 H=4 HK=2 {shape}):")
        for key, (kern, lowp) in errs.items():
            ok = kern <= max(4 * lowp, 1e-5)
            failed |= not ok
            click.echo(f"  {key:>10}  kernel {kern:.2e}   low-precision reference {lowp:.2e}  {'ok' if ok else 'FAIL'}")
    if failed:
        sys.exit(1)


main.add_command(bench)

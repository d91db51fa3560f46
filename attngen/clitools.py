"""What every command of the ``attngen`` command line shares: the user-error type, reading a spec,
and the --name / -D options."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping

import click

from .ir import nodes as ir
from .ir.build import ConstValue, parse_const_value


class UserError(click.ClickException):
    """A failure the user can fix; printed verbatim (no 'Error:' prefix) to stderr, exit 1."""

    def show(self, file=None) -> None:
        click.echo(self.format_message(), err=True)


def load_spec(path: str, name: str | None = None,
              consts: Mapping[str, ConstValue] | None = None) -> list[ir.Attention]:
    """Parse and check the ``.attn`` file at ``path``; an unreadable file is a UserError."""
    from .driver import compile_source

    try:
        source = Path(path).read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: error: no such file") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: error: cannot read: {getattr(err, 'strerror', None) or err}") from None
    return compile_source(source, path, consts, name)


def _parse_defines(ctx, param, values: tuple[str, ...]) -> dict[str, ConstValue]:
    out = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key.strip().isidentifier():
            raise click.BadParameter(f"expected NAME=VALUE, got {text!r}", ctx, param)
        try:
            out[key.strip()] = parse_const_value(value)
        except ValueError:
            raise click.BadParameter(f"{key.strip()}: {value!r} is not an integer, float, true, false or inf",
                                     ctx, param) from None
    return out


name_option = click.option("--name", help="Only the attention with this name (in a multi-attention file).")
define_option = click.option("-D", "consts", multiple=True, metavar="NAME=VALUE", callback=_parse_defines,
                             help="Override a const (repeatable).")

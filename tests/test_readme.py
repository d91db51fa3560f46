"""The README's promise that every spec it shows passes ``attngen check`` (and so compiles)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from attngen.codegen.render import module_key, render_module
from attngen.driver import compile_source

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
SPECS = re.findall(r"```\n(attention .*?)```", README, re.S)


def test_the_readme_shows_specs():
    assert len(SPECS) >= 5


@pytest.mark.parametrize("n", range(len(SPECS)))
def test_readme_spec_checks_and_renders(n):
    attns = compile_source(SPECS[n], "README.md")
    compile(render_module(attns, SPECS[n], "README.md", module_key(attns, SPECS[n], "README.md")), "m.py", "exec")

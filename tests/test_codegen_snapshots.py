"""Snapshots of generated modules for three examples (tests/golden/gen_*.py.txt), so that any
change to the generated code is seen and reviewed."""

from __future__ import annotations

from pathlib import Path

import pytest

from attngen.codegen.render import render_module
from attngen.spec import compile_file

from golden import check_golden

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("stem", ["alibi_window", "qknorm_rope", "affine_weights"])
def test_generated_source(stem):
    path = EXAMPLES / f"{stem}.attn"
    text = render_module(compile_file(path), path.read_text(), f"examples/{stem}.attn", "snapshot")
    compile(text, f"{stem}.py", "exec")
    check_golden(f"gen_{stem}.py.txt", text)

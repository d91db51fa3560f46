"""Snapshots of generated modules for seven examples, one with token top-k, NAP's one-pass forward
(codegen/linear.py) and CoPE's key scan and table dots (codegen/tables.py) (tests/golden/gen_*.py.txt),
so that any change to the generated code is seen and reviewed. The embedded runtime is the same in
every module and tested on its own (tests/test_runtime_shipped.py): the snapshots hold one line in its
place."""

from __future__ import annotations

from pathlib import Path

import pytest

from attngen.codegen import shipped
from attngen.codegen.render import render_module
from attngen.driver import compile_source

from golden import check_golden

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("stem", ["causal_gqa", "alibi_window", "qknorm_rope", "affine_weights", "krause", "nap",
                                  "cope"])
def test_generated_source(stem):
    source = (EXAMPLES / f"{stem}.attn").read_text()
    name = f"examples/{stem}.attn"  # relative, so the snapshot does not depend on the checkout's path
    text = render_module(compile_source(source, name), source, name, "snapshot")
    compile(text, f"{stem}.py", "exec")
    assert text.count(shipped.embedded()) == 1
    check_golden(f"gen_{stem}.py.txt", text.replace(shipped.embedded(), "# <the shipped runtime>\n"))

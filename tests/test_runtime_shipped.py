"""The runtime every generated module embeds (attngen/runtime/{triton_helpers,launch,checks}.py):
it imports only what a generated module imports, it is embedded verbatim, and a module written
by ``attngen compile`` runs with attngen out of reach."""

from __future__ import annotations

import ast
import importlib
import subprocess
import sys

import pytest

from attngen import __version__
from attngen.codegen import shipped


@pytest.mark.parametrize("name", shipped.SHIPPED)
def test_shipped_module_imports_only_what_the_module_has(name):
    tree = ast.parse(shipped.runtime_file(name).read_text())
    earlier = set(shipped.SHIPPED[:shipped.SHIPPED.index(name)])
    for node in tree.body:
        if isinstance(node, ast.Import):
            assert {a.name for a in node.names} <= shipped.MODULE_IMPORTS, ast.unparse(node)
        elif isinstance(node, ast.ImportFrom):
            # a relative import reads an earlier shipped module: the same namespace once embedded
            assert node.level == 1 and node.module in earlier, ast.unparse(node)
    importlib.import_module(f"attngen.runtime.{name}")  # and it imports on its own


def test_embedded_verbatim_with_a_version_banner():
    text = shipped.embedded()
    for name in shipped.SHIPPED:
        source = shipped.runtime_file(name).read_text()
        assert f"# ---- attngen.runtime.{name} (attngen {__version__}; embedded verbatim) ----" in text
        assert shipped.body(source) in text
        assert "import " not in shipped.body(source).split("\n", 1)[0]


def test_body_starts_after_the_imports():
    src = '"""doc"""\n\nimport os\nfrom .launch import x\n\n# why\nA = 1\n\n\ndef f():\n    import sys\n'
    assert shipped.body(src) == "# why\nA = 1\n\n\ndef f():\n    import sys\n"


def test_compiled_module_runs_without_attngen(tmp_path):
    """attngen compile's module imports torch and triton only: run it with attngen unimportable."""
    out = tmp_path / "causal.py"
    subprocess.run([sys.executable, "-m", "attngen", "compile", "examples/causal_gqa.attn", "-o", str(out)],
                   check=True)
    script = (
        "import sys; sys.modules['attngen'] = None\n"  # import attngen now raises ImportError
        "import torch, causal\n"
        "q = torch.randn(1, 4, 20, 16); k = torch.randn(1, 2, 20, 16); v = torch.randn(1, 2, 20, 16)\n"
        "o = causal.causal_gqa(q, k, v)\n"
        "assert o.shape == (1, 4, 20, 16) and torch.isfinite(o).all()\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, cwd=tmp_path,
                   env={**__import__("os").environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(tmp_path)})


def test_causal_module_is_small_beside_its_runtime():
    """Issue 16's bound: what attngen compile writes for causal_gqa, less the embedded runtime, is at
    most 700 lines (the spec header, the kernels and the attention's description)."""
    from attngen.driver import compile_file, generate

    text = generate(compile_file("examples/causal_gqa.attn")).render()
    lines = text.splitlines()
    start = next(n for n, line in enumerate(lines) if line.startswith("# ---- attngen.runtime."))
    end = lines.index("# ---- this module ----")
    assert len(lines) - (end - start) <= 700

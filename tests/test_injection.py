"""Spec text and file names in generated modules (embed.inert): whatever their bytes, the module compiles,
has the same code as for a plain spec (only strings and comments differ), and runs no payload."""

from __future__ import annotations

import ast
import importlib.util
import random
import sys

import pytest
from click.testing import CliRunner

import attngen
from attngen.cli import main
from attngen.codegen.embed import inert
from attngen.codegen.render import render_module
from attngen.driver import compile_source

#: text that ended a comment or a docstring, or broke the module, before it was escaped
ODD = {
    "nul": "\x00", "high surrogate": "\ud800", "low surrogate": "\udcff", "triple double": '"""',
    "triple single": "'''", "quote": '"', "escape N": "\\N{no such name}", "escape x": "\\x4", "escape u": "\\u12",
    "backslash": "\\", "crlf": "\r\n", "cr": "\r", "lf": "\n", "u2028": "\u2028", "u2029": "\u2029", "nel": "\x85",
    "ff": "\x0c", "vt": "\x0b", "fs": "\x1c", "gs": "\x1d", "rs": "\x1e", "bidi": "\u202e", "tab": "\t",
}
PAYLOAD = '"""; open("PWNED", "w").close(); """'


def spec_text(comment: str) -> str:
    return f"attention evil {{\n    # {comment}\n    mask = causal\n}}\n"


def code_shape(text: str) -> list[str]:
    """The module's AST with every string constant (docstrings included) emptied, a dump per top-level
    statement (so that a failure names the first statement that differs, without diffing the module)."""
    tree = ast.parse(text)
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            node.value = ""
    return [ast.dump(st) for st in tree.body]


def render(source: str, filename: str) -> str:
    """The module for ``source`` named ``filename``. Its IR comes from the plain spec: comments are not in
    the IR, only in the docstring, and this way text the frontend refuses (lone surrogates) still
    tests the generator's own escaping."""
    return render_module(compile_source(spec_text("harmless"), filename), source, filename, "k")


PLAIN = code_shape(render(spec_text("harmless"), "plain.attn"))


@pytest.fixture
def cwd(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.chdir(tmp_path)  # where the payload's open("PWNED", "w") would land
    return tmp_path


def test_inert_text_cannot_end_a_comment_or_a_docstring():
    alphabet = [*ODD.values(), "a", " ", "é", "\U0001f600", "{", "#"]
    rng = random.Random(0)
    samples = [*ODD.values(), *("".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(3000))]
    for s in samples:
        e = inert(s)
        assert e.replace("\t", " ").isprintable() and len(f"# {e}".splitlines()) == 1, repr(s)
        assert ast.parse(f"# {e}\n").body == [], repr(s)
        assert ast.literal_eval(f'"""{e}"""') == s, repr(s)  # one string, the text itself
        assert ast.literal_eval(f'"""{inert(s, lines=True)}"""') == s, repr(s)


def test_a_normal_header_reads_like_the_spec():
    src = 'attention a {  # "quoted", naïve, a\ttab\n    mask = causal\n}'
    assert inert(src, lines=True) == src
    assert inert('ends with "') == 'ends with \\"' and inert('a """ b') == 'a \\"\\"" b'


@pytest.mark.parametrize("odd", ODD.values(), ids=ODD.keys())
def test_odd_text_in_a_spec_comment(odd):
    comment = f"x {odd} {PAYLOAD} {odd}" if "\n" not in odd else f"x {PAYLOAD} {odd}"  # a line break ends it
    text = render(spec_text(comment), "evil.attn")
    compile(text, "evil.py", "exec")
    assert code_shape(text) == PLAIN


@pytest.mark.parametrize("odd", ODD.values(), ids=ODD.keys())
def test_odd_file_name(odd):
    name = f'dir/x{odd};open("PWNED", "w").close();{odd}{PAYLOAD}{odd}#.attn'
    text = render(spec_text("harmless"), name)
    compile(text, "evil.py", "exec")
    assert code_shape(text) == PLAIN


def test_a_crlf_spec_reads_as_lines():
    src = spec_text("harmless").replace("\n", "\r\n")
    text = render(src, "crlf.attn")
    assert "\n    attention evil {\n        # harmless\n" in text and "\\r" not in text.split('"""')[1]
    assert code_shape(text) == PLAIN


def test_jit_runs_no_payload_from_comments(cwd):
    # the frontend refuses lone surrogates (the render tests above cover them)
    comments = [f"x {odd} {PAYLOAD} {odd}" for name, odd in ODD.items()
                if "\n" not in odd and "surrogate" not in name]
    src = "attention evil {\n" + "".join(f"    # {c}\n" for c in comments) + "    mask = causal\n}\n"
    assert hasattr(attngen.jit(src).module, "evil")
    assert not (cwd / "PWNED").exists()


#: file names the file system takes (no NUL; lone surrogates only as undecodable bytes, \udc80-\udcff)
NAMES = {k: v for k, v in ODD.items() if k not in ("nul", "high surrogate")}


@pytest.mark.parametrize("odd", NAMES.values(), ids=NAMES.keys())
def test_load_runs_no_payload_from_the_file_name(cwd, odd):
    path = cwd / f'x{odd}\nopen("PWNED", "w").close()\n{odd}{PAYLOAD}{odd}#.attn'
    path.write_text(spec_text("harmless"))
    assert hasattr(attngen.load(path).module, "evil")
    assert not (cwd / "PWNED").exists()


def test_compile_then_import_runs_no_payload(cwd):
    path = cwd / f'x\u2028open("PWNED", "w").close()\n{PAYLOAD}\r#.attn'
    path.write_text(spec_text(f"x {PAYLOAD} \\N{{bad}} \x00 \u2028 \\"))
    out = cwd / "evil_mod.py"
    r = CliRunner().invoke(main, ["compile", str(path), "-o", str(out)])
    assert r.exit_code == 0, r.output
    spec = importlib.util.spec_from_file_location("evil_mod", out)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert hasattr(mod, "evil") and not (cwd / "PWNED").exists()
    sys.modules.pop("evil_mod", None)


def test_compile_fails_unless_the_module_imports(cwd, monkeypatch):
    import attngen.codegen.render as render_mod

    (cwd / "c.attn").write_text(spec_text("harmless"))
    monkeypatch.setattr(render_mod, "render_module", lambda *a: "x = 1\nraise ImportError('no')\n")
    r = CliRunner().invoke(main, ["compile", str(cwd / "c.attn"), "-o", str(cwd / "c.py")])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert "c.py: error: the module written does not import (ImportError: no)" in r.stderr

"""The ``attngen`` command line, through click's CliRunner; and the mask renderers."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from attngen import maskplot
from attngen.cli import main

GOOD = """\
# two attentions in one file
attention causal { mask = causal }
attention win {
    input  slopes: f32[H]
    const  WINDOW = 8
    score = dot(q, k) * scale + slopes[h] * (j - i) * (2 * 3)
    mask  = causal and i - j < WINDOW
}
"""
BAD = "attention a {\n  score = dot(q, k) * scael\n}\n"


@pytest.fixture
def files(tmp_path):
    (tmp_path / "good.attn").write_text(GOOD)
    (tmp_path / "bad.attn").write_text(BAD)
    (tmp_path / "qk_mask.attn").write_text("attention qk { mask = dot(q, k) > 0.0 }\n")
    return tmp_path


def run(*args: str):
    return CliRunner().invoke(main, [str(a) for a in args])


# ---- check

def test_check_ok(files):
    r = run("check", files / "good.attn")
    assert r.exit_code == 0, r.output
    assert r.stdout == f"{files / 'good.attn'}: ok (2 attentions: causal, win)\n"


def test_check_error_has_location_and_caret(files):
    r = run("check", files / "good.attn", files / "bad.attn")
    assert r.exit_code == 1
    assert "good.attn: ok" in r.stdout  # the other files are still checked
    assert r.stderr.splitlines() == [
        f"{files / 'bad.attn'}:2:23: error: unknown name 'scael'",
        "      score = dot(q, k) * scael",
        "                          ^~~~~",
        "  hint: did you mean 'scale'?",
    ]
    assert "Traceback" not in r.output


def test_check_refuses_what_the_kernels_cannot_run(tmp_path):
    """check means run: a spec the code generator refuses fails check, with its caret (fuzz finding:
    rows of length B passed check, then failed at the first call)."""
    path = tmp_path / "rows.attn"
    path.write_text("attention t {\n input a: f32[B, H, M, B]\n input c: f32[B, HK, N, B]\n"
                    " score = dot(a[b, h, m], c[b, hk, j])\n}\n")
    r = run("check", path)
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert r.stderr.splitlines()[:3] == [
        f"{path}:4:14: error: rows of length B are not supported in kernels (use D, DV or an integer length)",
        "     score = dot(a[b, h, m], c[b, hk, j])",
        "                 ^~~~~~~~~~",
    ]


def test_check_missing_file(files):
    r = run("check", files / "nope.attn", files / "good.attn")
    assert r.exit_code == 1
    assert f"{files / 'nope.attn'}: error: no such file" in r.stderr
    assert "good.attn: ok (2 attentions" in r.stdout


def test_python_dash_m(files):
    r = subprocess.run([sys.executable, "-m", "attngen", "check", str(files / "bad.attn")],
                       capture_output=True, text=True)
    assert r.returncode == 1 and "bad.attn:2:23: error:" in r.stderr and "Traceback" not in r.stderr


# ---- show --ir

def test_show_ir_is_the_default_view(files):
    r = run("show", files / "good.attn", "--name", "win", "-D", "WINDOW=16")
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith("attention win {\n  input slopes: f32[H]\n  const WINDOW = 16\n")
    assert "((i - j) < 16)" in r.stdout
    assert r.stdout == run("show", files / "good.attn", "--ir", "--name", "win", "-D", "WINDOW=16").stdout


def test_show_ir_of_every_attention(files):
    r = run("show", "--ir", files / "good.attn")
    assert r.exit_code == 0
    assert "attention causal {" in r.stdout and "attention win {" in r.stdout


def test_show_user_errors(files):
    r = run("show", files / "bad.attn")
    assert r.exit_code == 1 and "bad.attn:2:23: error: unknown name 'scael'" in r.stderr
    r = run("show", files / "good.attn", "-D", "WINDW=3")
    assert r.exit_code == 1 and "no const 'WINDW'" in r.stderr and "did you mean 'WINDOW'?" in r.stderr
    r = run("show", files / "good.attn", "--name", "windo")
    assert r.exit_code == 1 and "no attention named 'windo'" in r.stderr
    r = run("show", files / "missing.attn")
    assert r.exit_code == 1 and "missing.attn: error: no such file" in r.stderr


@pytest.mark.parametrize("define", ["WINDOW", "=3", "WINDOW=abc"])
def test_show_bad_define(files, define):
    r = run("show", files / "good.attn", "-D", define)
    assert r.exit_code == 2 and "Invalid value for '-D'" in r.stderr


def test_show_after_pass(files):
    pytest.importorskip("attngen.passes.pipeline")
    from attngen.passes.pipeline import PASSES

    first = PASSES[0].name
    r = run("show", files / "good.attn", "--name", "win", "--after", first)
    assert r.exit_code == 0, r.output
    assert r.stdout.startswith(f"# after pass {first}\nattention win {{")
    r = run("show", files / "good.attn", "--after", "all")
    assert r.exit_code == 0 and r.stdout.count("# after pass all") == 2


def test_show_after_unknown_pass(files):
    pytest.importorskip("attngen.passes.pipeline")
    from attngen.passes.pipeline import PASSES

    r = run("show", files / "good.attn", "--after", "no_such_pass")
    assert r.exit_code == 1
    assert "unknown pass 'no_such_pass'" in r.stderr
    assert all(p.name in r.stderr for p in PASSES)
    assert "Traceback" not in r.output


# ---- show --mask

def test_show_mask_ascii(files):
    pytest.importorskip("attngen.reference.masks")
    r = run("show", files / "good.attn", "--name", "win", "--mask", "--M", "4", "--N", "12")
    assert r.exit_code == 0, r.output
    rows = [line.split()[-1] for line in r.stdout.splitlines()[-4:]]
    # i = m + 8; causal and i - j < 8: keys i - 7 ... i
    assert rows == [".########...", "..########..", "...########.", "....########"]
    assert "attention win" not in r.stdout  # --mask alone shows only the mask


def test_show_mask_of_a_selection_says_it_is_data_dependent():
    r = run("show", "examples/moba.attn", "--mask", "-D", "BLOCK=4", "--M", "8", "--N", "8")
    assert r.exit_code == 0, r.output
    assert ("the select stage keeps 11 blocks of 4 keys a row, chosen per call from the data: drawn is the mask "
            "before it (moba_selected gives the choice)") in r.stdout


def test_show_mask_ascii_downsamples(files):
    pytest.importorskip("attngen.reference.masks")
    r = run("show", files / "good.attn", "--name", "causal", "--mask", "-", "--M", "200", "--N", "300")
    assert r.exit_code == 0, r.output
    assert "downsampled to 40x60" in r.stdout


def test_show_mask_png(files, tmp_path):
    pytest.importorskip("attngen.reference.masks")
    out = tmp_path / "mask.png"
    r = run("show", files / "good.attn", "--name", "win", "--mask", out, "--M", "32", "--N", "48")
    assert r.exit_code == 0, r.output
    assert out.exists() and out.stat().st_size > 0
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_show_mask_png_needs_one_attention(files, tmp_path):
    pytest.importorskip("attngen.reference.masks")
    r = run("show", files / "good.attn", "--mask", tmp_path / "m.png")
    assert r.exit_code == 1 and "pick one with --name" in r.stderr


def test_show_mask_that_reads_scores(files):
    pytest.importorskip("attngen.reference.masks")
    r = run("show", files / "qk_mask.attn", "--mask")
    assert r.exit_code == 1
    assert "cannot draw the mask of 'qk'" in r.stderr and "Traceback" not in r.output


# ---- maskplot on hand-made grids (no mask evaluator needed)

def _causal(M: int, N: int) -> torch.Tensor:
    m = torch.arange(M)[:, None]
    return torch.arange(N)[None, :] <= m + (N - M)


def test_ascii_small_grid_is_exact():
    text = maskplot.render_ascii(_causal(3, 5), "c")
    lines = text.splitlines()
    assert lines[0] == "mask of 'c': M=3 N=5, 80.0% of pairs allowed"
    assert "i = m + 2" in lines[1]
    assert [line.split() for line in lines[-3:]] == [["0", "2", "###.."], ["1", "3", "####."], ["2", "4", "#####"]]
    assert "downsampled" not in text


def test_ascii_downsampling_is_any_of():
    grid = torch.zeros(100, 130, dtype=torch.bool)
    grid[99, 129] = True  # a single allowed pair still shows in the last cell
    small, fr, fc = maskplot.downsample(grid)
    assert (fr, fc) == (3, 3) and tuple(small.shape) == (34, 44)
    assert small.sum() == 1 and small[-1, -1]
    text = maskplot.render_ascii(grid, "g", note="a note")
    assert "downsampled to 34x44: a cell is 3 row(s) x 3 key(s)" in text and "a note" in text
    assert text.splitlines()[-1].endswith("#")
    assert all(len(line) <= 100 for line in text.splitlines()[3:])


def test_png_writes_a_file(tmp_path):
    out = tmp_path / "c.png"
    maskplot.save_png(_causal(16, 24), "c", out, note="inputs drawn at random")
    assert out.stat().st_size > 0


# ---- compile, verify, show --triton

def test_compile_writes_a_standalone_module(files):
    out = files / "mod.py"
    res = run("compile", files / "good.attn", "-o", out, "-D", "WINDOW=4")
    assert res.exit_code == 0, res.output
    text = out.read_text()
    imported = {n.names[0].name.split(".")[0] if isinstance(n, ast.Import) else n.module.split(".")[0]
                for n in ast.walk(ast.parse(text)) if isinstance(n, (ast.Import, ast.ImportFrom))}
    assert imported <= {"collections", "difflib", "functools", "json", "math", "os", "sys", "warnings", "weakref", "torch",
                        "triton"}, imported
    assert "def causal(q, k, v" in text and "def win(q, k, v" in text
    assert "Constants: WINDOW=4" in text and "attention win {" in text


def test_compile_token_selection(tmp_path):
    spec = tmp_path / "sel.attn"
    spec.write_text("attention sel { select = topk(4, by = score) }\n")
    res = run("compile", spec, "-o", tmp_path / "x.py")
    assert res.exit_code == 0, res.output
    text = (tmp_path / "x.py").read_text()
    assert "def sel_topk(" in text and "def _in_list(" in text and "def sel_selected(" in text


def test_show_triton(files):
    res = run("show", files / "good.attn", "--name", "causal", "--triton")
    assert res.exit_code == 0, res.output
    assert "def causal_fwd(" in res.output and "tl.dot(" in res.output


@pytest.mark.interpret
def test_verify_on_cpu(files):
    res = run("verify", files / "good.attn", "--name", "win", "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "dslopes" in res.output and "FAIL" not in res.output


@pytest.mark.interpret
def test_verify_runs_token_and_block_selection(tmp_path):
    spec = tmp_path / "sel.attn"
    spec.write_text("attention tok { select = topk(4, by = score) }\n"
                    "attention blk { mask = causal\n select = topk(1, by = dot(q, kmean), block = 16) }\n")
    res = run("verify", spec, "--device", "cpu")
    assert res.exit_code == 0, res.output
    assert "tok (cpu" in res.output and "blk (cpu" in res.output and "FAIL" not in res.output


def test_show_triton_states_the_kernel_plan():
    """The module header says which kernels run: split-KV decoding or why not, selection kernels."""
    examples = Path(__file__).resolve().parent.parent / "examples"
    plan = {stem: run("show", examples / f"{stem}.attn", "--triton").stdout.split("Spec source:")[0]
            for stem in ("causal_gqa", "stickbreaking", "document_mask", "moba")}
    assert "decoding (M <= 16): split-KV" in plan["causal_gqa"] and "share one tile" in plan["causal_gqa"]
    assert "no split-KV (stick-breaking visits keys in order)" in plan["stickbreaking"]
    assert "classification kernel" in plan["document_mask"] and "no split-KV (per-call tile lists)" in plan["document_mask"]
    assert "selection: block top-11" in plan["moba"]

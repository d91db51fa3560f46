"""``attngen bench`` on CPU: the flex translation against the reference, the peer decisions,
allowed-pair counting, the input generator, the table, the startup figures, and the command
end to end (TRITON_INTERPRET=1, tiny sizes; flex and SDPA run eagerly, flex forward only)."""

from __future__ import annotations

import json
import os
import sys

import pytest
import torch
from click.testing import CliRunner

import attngen
from attngen.bench.impls import flex_impl
from attngen.bench.inputs import BOOL_DENSITY, make_inputs
from attngen.bench.pairs import allowed_pairs
from attngen.bench.peers import Unsupported, check_flex, sdpa_causal
from attngen.bench.report import mismatches, table
from attngen.bench.startup import first_call, scoped_environ
from attngen.cli import main
from attngen.reference.interpreter import selected_pairs
from attngen.spec import compile_file, compile_source

from example_specs import DENSE, EXAMPLES, shrunk
from refutil import qkv

# consts shrunk so windows, chunks and strides matter at 40 keys
SMALL = {"W": 12, "WINDOW": 12, "CHUNK": 16, "STRIDE": 8, "SINKS": 4, "TRAIN_LEN": 16, "HALF_W": 6}
EXAMPLE_DIR = EXAMPLES[0].parent


def _flex_ok(path, name) -> bool:
    try:
        check_flex(compile_file(path, name=name)[0])
    except Unsupported:
        return False
    return True


FLEX = [(p, n) for p, n in DENSE if _flex_ok(p, n)]


def _example(stem: str, name: str | None = None):
    return shrunk(EXAMPLE_DIR / f"{stem}.attn", name, SMALL)


def _inputs64(a, sizes, seed=0) -> dict:
    """The bench's inputs for ``a``, floats in float64 and without grad (flex has no backward on CPU)."""
    xs = make_inputs(a, sizes, "cpu", torch.Generator().manual_seed(seed))
    return {n: x.detach().double() if isinstance(x, torch.Tensor) and x.is_floating_point() else x
            for n, x in xs.items()}


def _flex_vs_reference(path, a, M, N, scale=None):
    B, H, HK, D = 2, 4, 2, 16
    sizes = dict(B=B, H=H, HK=HK, M=M, N=N, D=D, DV=D)
    q, k, v = (t.detach() for t in qkv(B, H, HK, M, N, D, D))
    inputs = _inputs64(a, sizes)
    declared = dict(a.consts)
    ref = attngen.load(path, name=a.name, backend="reference",
                       consts={c: x for c, x in SMALL.items() if c in declared})
    scale = D ** -0.5 if scale is None else scale
    got = flex_impl(a, sizes, scale, inputs, torch.device("cpu"), fresh=False).call(q, k, v)
    torch.testing.assert_close(got, ref(q, k, v, scale=scale, **inputs))


def test_most_examples_are_flex_expressible():
    assert len(FLEX) >= 15, [n for _, n in FLEX]


@pytest.mark.parametrize("path,name", FLEX, ids=[f"{p.stem}:{n}" for p, n in FLEX])
def test_flex_translation_matches_reference(path, name):
    _flex_vs_reference(path, shrunk(path, name, SMALL), M=40, N=40)


@pytest.mark.parametrize("path,name", FLEX, ids=[f"{p.stem}:{n}" for p, n in FLEX])
def test_flex_translation_decode_shapes(path, name):
    """M < N: i = q_idx + N - M."""
    _flex_vs_reference(path, shrunk(path, name, SMALL), M=5, N=40)


EDGE = """\
attention edge {
    input t: f32[H, 8]
    input z: i32[B]
    input temp: f32
    score = (dot(q, k) * scale / temp + t[h, (i - j) // 3 - 2] + where((j - i) % 5 == 1, 0.5, 0.0)
             + (i // (z[b] - z[b])) + t[hk, 9] + floor(log(1.0 + abs(i - j))) % 3)
    mask  = j <= i or (i - j) % 4 == 1 or (i - j) // 7 == -1
}
"""


def test_flex_translation_edge_semantics(tmp_path):
    """Floor // and % on negatives, division by zero (0), out-of-range loads (0), a scalar input."""
    path = tmp_path / "edge.attn"
    path.write_text(EDGE)
    a = compile_file(path)[0]
    B, H, HK, M, N, D = 2, 4, 2, 24, 24, 16
    sizes = dict(B=B, H=H, HK=HK, M=M, N=N, D=D, DV=D)
    q, k, v = (t.detach() for t in qkv(B, H, HK, M, N, D, D))
    inputs = {**_inputs64(a, sizes), "temp": 0.7}
    got = flex_impl(a, sizes, 0.3, inputs, torch.device("cpu"), fresh=False).call(q, k, v)
    ref = attngen.load(path, backend="reference")
    torch.testing.assert_close(got, ref(q, k, v, scale=0.3, **inputs))


# ---- which peers run what

@pytest.mark.parametrize("stem,reason", [("stickbreaking", "stick-breaking norm"), ("sigmoid_attn", "sigmoid norm"),
                                         ("qknorm_rope", "q/k prologue"), ("off_by_one", "softmax sink"),
                                         ("based_taylor", "sum norm"), ("affine_weights", "weights stage")])
def test_not_expressible(stem, reason):
    a = _example(stem)
    for check in (lambda: check_flex(a), lambda: sdpa_causal(a, 64, 64)):
        with pytest.raises(Unsupported, match=reason):
            check()


@pytest.mark.parametrize("src,reason", [
    ("score = dot(q, k) * scale + dot(q, k)", "score uses dot\\(q, k\\) 2 times"),
    ("score = -sqdist(q, k)", "score does not use dot"),
    ("score = dot(q, k) + norm(q)", "rows other than"),
    ("mask = score > 0.0", "mask reads the score"),
    ("mask = dot(q, k) > 0.0", "mask reads the q/k rows"),
])
def test_flex_rejects_rows_and_score_in_the_wrong_places(src, reason):
    with pytest.raises(Unsupported, match=reason):
        check_flex(compile_source(f"attention x {{ {src} }}")[0])


def test_sdpa_eligibility():
    assert sdpa_causal(_example("causal_gqa"), 64, 64) is True
    assert sdpa_causal(_example("full"), 64, 64) is False
    assert sdpa_causal(compile_source("attention x { mask = i >= j }")[0], 8, 8) is True
    with pytest.raises(Unsupported, match="M != N"):
        sdpa_causal(_example("causal_gqa"), 5, 64)
    for stem, reason in [("alibi", "score is not"), ("document_mask", "mask is neither"),
                         ("sliding_window", "mask is neither")]:
        check_flex(_example(stem))  # flex only
        with pytest.raises(Unsupported, match=reason):
            sdpa_causal(_example(stem), 64, 64)


# ---- allowed pairs

PAIR_SPECS = [
    ("document_mask", None), ("global_tokens", None), ("prefix_lm", None), ("sliding_window", None),
    ("strided", None), ("chunked", None), ("full", None),
    (None, "attention x { mask = j <= i - h }"),               # per head
    (None, "attention x { mask = dot(q, k) > 0.0 }"),           # data-dependent
    (None, "attention x { q = q * 2.0\n mask = score > 0.1 }"),  # through the prologue and the score
]


@pytest.mark.parametrize("stem,src", PAIR_SPECS, ids=[s or f"src{n}" for n, (s, _) in enumerate(PAIR_SPECS)])
@pytest.mark.parametrize("M,N", [(37, 37), (5, 37)])
def test_allowed_pairs_against_brute_force(stem, src, M, N):
    a = _example(stem) if stem else compile_source(src)[0]
    B, H, HK, D = 2, 4, 2, 8
    q, k, v = (t.detach() for t in qkv(B, H, HK, M, N, D, D))
    inputs = _inputs64(a, dict(B=B, H=H, HK=HK, M=M, N=N, D=D, DV=D), seed=3)
    want = int(selected_pairs(a, q, k, v, **inputs).sum())
    assert allowed_pairs(a, q, k, v, inputs, budget=100) == want  # chunks of a few rows, a short last one
    assert allowed_pairs(a, q, k, v, inputs) == want


# ---- inputs

def test_input_generator():
    a = compile_source("""attention x {
        input slopes: f32[H]
        input doc: i32[B, N]
        input flag: bool[B, N]
        input plen: i64[B]
        input w: bf16[H, 4]
        input temp: f32
        mask = doc[b, i] == doc[b, j] and (flag[b, j] or j < plen[b])
        score = dot(q, k) * slopes[h] * w[h, 0] / temp
    }""")[0]
    sizes = dict(B=16, H=8, HK=8, M=4096, N=4096, D=16, DV=16)
    xs = make_inputs(a, sizes, "cpu", torch.Generator().manual_seed(0))
    assert xs["temp"] == 1.0
    torch.testing.assert_close(xs["slopes"], 2.0 ** (-torch.arange(1, 9) / 1.0), check_dtype=False)
    assert xs["w"].dtype == torch.bfloat16 and xs["w"].requires_grad and 0.5 <= xs["w"].min() <= xs["w"].max() <= 1.5
    doc = xs["doc"]
    assert doc.dtype == torch.int32 and (doc.diff(dim=-1) >= 0).all() and (doc.diff(dim=-1) <= 1).all()
    docs = (doc[:, -1] - doc[:, 0] + 1).float()
    assert doc[:, 0].eq(0).all() and 3 <= docs.mean() <= 8 and docs.max() <= 20  # a handful per sequence
    assert xs["flag"].dtype == torch.bool and 0 < xs["flag"].float().mean() < 3 * BOOL_DENSITY
    assert xs["plen"].dtype == torch.int64 and 0 <= xs["plen"].min() and xs["plen"].max() <= 4096
    assert xs["plen"].float().std() > 100  # spread over the positions, not a few small ids
    fresh = make_inputs(a, sizes, "cpu", torch.Generator().manual_seed(1), names=["doc", "flag"])
    assert set(fresh) == {"doc", "flag"} and not torch.equal(fresh["doc"], doc)
    assert not make_inputs(a, sizes, "cpu", torch.Generator(), requires_grad=False)["w"].requires_grad


# ---- the table

def _record(**peers):
    return {"spec": "s", "seq": 32, "B": 2, "pass": "fwd", "fresh_inputs": False,
            "attngen": {"ms": 2.0, "tflops": 150.0}, "peers": peers}


def test_table_spans_reasons_and_flags_mismatches():
    long = "error: RuntimeError: " + "x" * 100
    records = [_record(flex={"ms": 1.0, "tflops": 300.0, "ratio": 0.5, "rel_err": 0.5, "errors": {"o": 0.5},
                             "mask_prep_ms": 3.0},
                       **{"sdpa-cudnn": {"skipped": "score is not dot(q, k) * scale"}}),
               _record(flex={"skipped": long}, **{"sdpa-cudnn": {"skipped": "x"}})]
    text = table(records)
    lines = text.splitlines()
    assert lines[0].split("|")[1].strip() == "attngen" and "sdpa-cudnn" in lines[0]
    assert lines[1].split("|")[1].split() == ["ms", "TFLOP/s"]  # no prep ms or vs base without data
    assert "5.0e-01 !!" in lines[3] and "n/a (score is not dot(q, k) * scale)" in lines[3]
    assert "n/a (error: RuntimeError: xxx" in lines[4] and long not in lines[4]
    assert f"n/a for flex on s 32 fwd: {long}" in text
    assert lines[2].startswith("---")
    assert mismatches(records) == ["MISMATCH: attngen and flex disagree on s seq 32 fwd: relative error o 5.0e-01 "
                                   "(limit 2e-02)"]


# ---- the command

def _bench(*args, env=None):
    return CliRunner().invoke(main, ["bench", *map(str, args)], env={"TRITON_INTERPRET": "1", **(env or {})})


SMOKE = ("--device", "cpu", "--seq", "32", "--tokens", "64", "--heads", "2", "--dim", "16")


def test_bench_cpu_end_to_end(tmp_path):
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    r = _bench(EXAMPLE_DIR / "causal_gqa.attn", *SMOKE, "--json", out, "--plot", png)
    assert r.exit_code == 0, r.output
    assert "causal_gqa" in r.stdout and "MISMATCH" not in r.stderr
    data = json.loads(out.read_text())
    assert {"attngen", "torch", "triton", "device"} <= set(data["environment"])
    recs = data["records"]
    assert [(x["spec"], x["seq"], x["B"], x["H"], x["D"], x["pass"]) for x in recs] == \
        [("causal_gqa", 32, 2, 2, 16, "fwd"), ("causal_gqa", 32, 2, 2, 16, "fwd+bwd")]
    fwd, bwd = recs
    assert fwd["allowed_pairs"] == 2 * 2 * 32 * 33 // 2
    assert fwd["flops"] == 4 * fwd["allowed_pairs"] * 16 and bwd["flops"] == 3.5 * fwd["flops"]
    assert fwd["attngen"]["ms"] > 0 and fwd["attngen"]["tflops"] > 0
    assert fwd["peers"]["flex"]["rel_err"] < 1e-4 and fwd["peers"]["flex"]["mask_prep_ms"] > 0
    assert bwd["peers"]["flex"] == {"skipped": "flex has no backward on cpu"}
    assert fwd["peers"]["sdpa-cudnn"] == {"skipped": "cuDNN attention needs CUDA"}
    flash = bwd["peers"]["sdpa-flash"]
    assert set(flash["errors"]) == {"o", "dq", "dk", "dv"} and flash["rel_err"] < 1e-4
    assert flash["ratio"] == pytest.approx(flash["ms"] / bwd["attngen"]["ms"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_fresh_inputs(tmp_path):
    out = tmp_path / "out.json"
    r = _bench(EXAMPLE_DIR / "document_mask.attn", "--device", "cpu", "--seq", "32", "--tokens", "32",
               "--heads", "2", "--dim", "16", "--peers", "flex", "--no-backward", "--fresh-inputs", "--json", out)
    assert r.exit_code == 0, r.output
    (rec,) = json.loads(out.read_text())["records"]
    assert rec["fresh_inputs"] and rec["pass"] == "fwd" and set(rec["peers"]) == {"flex"}
    assert rec["peers"]["flex"]["rel_err"] < 1e-4
    assert 0 < rec["density"] < 0.5  # causal within documents
    mine = rec["attngen"]  # a prepare handle per layout
    assert mine["prepared_ms"] > 0 and mine["prep_ms"] == max(0.0, mine["ms"] - mine["prepared_ms"])


TINY = ("--device", "cpu", "--seq", "32", "--tokens", "32", "--heads", "2", "--dim", "16", "--no-backward",
        "--peers", "sdpa")


def test_bench_prep_and_baseline_among_files(tmp_path):
    """document_mask's classification is timed apart (causal needs none); the baseline is one of
    the files, so its timing is reused; --no-autotune is recorded and does not outlive the run."""
    out = tmp_path / "out.json"
    before = os.environ.get("ATTNGEN_AUTOTUNE")
    r = _bench(EXAMPLE_DIR / "document_mask.attn", EXAMPLE_DIR / "causal_gqa.attn", *TINY,
               "--baseline", EXAMPLE_DIR / "causal_gqa.attn", "--no-autotune", "--json", out)
    assert r.exit_code == 0, r.output
    assert os.environ.get("ATTNGEN_AUTOTUNE") == before
    data = json.loads(out.read_text())
    assert data["config"]["autotune"] is False and data["startup"] == []
    assert data["config"]["baseline"] == f"{EXAMPLE_DIR / 'causal_gqa.attn'}:causal_gqa"
    doc, causal = data["records"]
    assert (doc["spec"], causal["spec"]) == ("document_mask", "causal_gqa")
    assert doc["attngen"]["prep_ms"] >= 0 and doc["attngen"]["prepared_ms"] > 0
    assert "prep_ms" not in causal["attngen"] and "prepared_ms" not in causal["attngen"]
    assert causal["vs_base"] == 1.0
    assert doc["vs_base"] == pytest.approx(causal["attngen"]["ms"] / doc["attngen"]["ms"])
    header = r.stdout.splitlines()[1].split("|")[1].split()
    assert header == ["ms", "TFLOP/s", "prep", "ms", "vs", "base"]
    assert "faster than causal_gqa" in r.stdout


def test_bench_baseline_alone_and_startup(tmp_path):
    """A baseline that is not one of the files runs first, attngen only; --startup adds a record per
    file (not for the baseline) with positive figures, and restores the environment."""
    out = tmp_path / "out.json"
    before = {n: os.environ.get(n) for n in ("ATTNGEN_CACHE_DIR", "TRITON_CACHE_DIR", "ATTNGEN_AUTOTUNE")}
    r = _bench(EXAMPLE_DIR / "sigmoid_attn.attn", *TINY, "--baseline", EXAMPLE_DIR / "causal_gqa.attn",
               "--startup", "--json", out)
    assert r.exit_code == 0, r.output
    assert {n: os.environ.get(n) for n in before} == before
    data = json.loads(out.read_text())
    assert data["config"]["autotune"] is True and data["config"]["startup"] is True
    base, sig = data["records"]
    assert (base["spec"], base["peers"], sig["spec"]) == ("causal_gqa", {}, "sigmoid_attn")
    assert sig["vs_base"] == pytest.approx(base["attngen"]["ms"] / sig["attngen"]["ms"])
    (st,) = data["startup"]
    assert st["spec"] == "sigmoid_attn" and st["host_sizes"]["M"] == 128 and st["first_call_sizes"]["D"] == 16
    for key in ("load_ms", "first_call_ms", "call_us", "launch_us", "overhead_us"):
        assert st[key] > 0, key
    assert st["overhead_us"] == pytest.approx(st["call_us"] - st["launch_us"])
    assert "first call, nothing cached" in r.stdout and "overhead us" in r.stdout


def test_first_call_generates_and_imports_anew(tmp_path, monkeypatch):
    """The first call runs on an empty cache directory with autotuning off, imports the generated
    module afresh, then leaves the environment, triton's cache knob and the process's module as they were."""
    import triton

    import attngen.runtime.jit as jit

    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path))
    fn = attngen.load(EXAMPLE_DIR / "causal_gqa.attn")
    q = torch.randn(1, 1, 32, 16)
    fn(q, q, q)
    name = f"attngen_generated_{fn.key}"
    module, knob = sys.modules[name], triton.knobs.cache.dir
    seen = []

    def spy(key, generate):
        seen.append((os.environ["ATTNGEN_CACHE_DIR"], os.environ["TRITON_CACHE_DIR"], triton.knobs.cache.dir,
                     os.environ["ATTNGEN_AUTOTUNE"], name in sys.modules))
        return load_module(key, generate)

    load_module = jit.load_module
    monkeypatch.setattr(jit, "load_module", spy)
    load_ms, call_ms = first_call(lambda: attngen.load(EXAMPLE_DIR / "causal_gqa.attn"), (q, q, q, {}),
                                  torch.device("cpu"))
    assert load_ms > 0 and call_ms > 0
    ((cache, triton_cache, knob_then, autotune, imported),) = seen
    assert cache != str(tmp_path) and triton_cache == knob_then != knob and autotune == "0" and not imported
    assert os.environ["ATTNGEN_CACHE_DIR"] == str(tmp_path) and triton.knobs.cache.dir == knob
    assert "TRITON_CACHE_DIR" not in os.environ or os.environ["TRITON_CACHE_DIR"] == knob
    assert sys.modules[name] is module and not os.path.exists(cache)


def test_scoped_environ(monkeypatch):
    monkeypatch.setenv("ATTNGEN_X", "1")
    monkeypatch.delenv("ATTNGEN_Y", raising=False)
    with scoped_environ({"ATTNGEN_X": "2", "ATTNGEN_Y": "3"}):
        assert (os.environ["ATTNGEN_X"], os.environ["ATTNGEN_Y"]) == ("2", "3")
    assert os.environ["ATTNGEN_X"] == "1" and "ATTNGEN_Y" not in os.environ


def test_bench_skips_what_attngen_cannot_run():
    r = _bench(EXAMPLE_DIR / "krause.attn", *SMOKE)
    assert r.exit_code == 1
    assert "krause: skipped (attngen:" in r.stderr and "nothing to benchmark" in r.stderr


def test_bench_needs_cuda_or_cpu_flag(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    r = _bench(EXAMPLE_DIR / "full.attn")
    assert r.exit_code == 1 and "needs a CUDA GPU" in r.stderr and "--device cpu" in r.stderr
    assert "Traceback" not in r.output


def test_bench_cpu_needs_the_interpreter():
    r = CliRunner().invoke(main, ["bench", str(EXAMPLE_DIR / "full.attn"), *SMOKE], env={"TRITON_INTERPRET": "0"})
    assert r.exit_code == 1 and "TRITON_INTERPRET=1" in r.stderr


@pytest.mark.parametrize("args,message", [
    (("--seq", "0"), "expected positive integers"),
    (("--peers", "flex,cudnn"), "unknown peer 'cudnn'"),
    (("--heads", "4", "--kv-heads", "3"), "multiple of --kv-heads"),
    (("-D", "NOPE=3"), "declares a const 'NOPE'"),
    (("--baseline", "examples/nope.attn"), "no such file"),
    (("--baseline", f"{EXAMPLE_DIR / 'full.attn'}:nope"), "no attention named 'nope'"),
    (("--baseline", EXAMPLE_DIR / "relu2.attn"), "pick one with --baseline"),
    (("--baseline", EXAMPLE_DIR / "krause.attn"), "krause"),  # attngen cannot run it: an error, not a skip
    (("--autotune", "--startup=2"), "--startup"),
])
def test_bench_bad_options(args, message):
    r = _bench(EXAMPLE_DIR / "full.attn", "--device", "cpu", *args)
    assert r.exit_code in (1, 2) and message in r.stderr, r.output

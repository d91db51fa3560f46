"""``attngen bench`` on CPU: the flex translation against the reference, the peer decisions,
allowed-pair counting, the input generator, the table, the startup figures, and the command
end to end (TRITON_INTERPRET=1, tiny sizes; flex and SDPA run eagerly, flex forward only);
the decode mode (allowed keys, paged caches, SDPA end-aligned) and the varlen mode (packed
pairs, flex's document mask) likewise."""

from __future__ import annotations

import json
import os
import random
import sys
from dataclasses import replace

import pytest
import torch
from click.testing import CliRunner

import attngen
from attngen.bench.impls import dense_impl, flex_impl, sdpa_impl
from attngen.bench.inputs import BOOL_DENSITY, make_inputs, make_qkv
from attngen.bench.paged import paged_cache
from attngen.bench.pairs import allowed_keys, allowed_pairs, varlen_pairs
from attngen.bench.peers import Unsupported, check_flex, sdpa_causal, sdpa_end_aligned
from attngen.bench.report import decode_table, mismatches, table
from attngen.bench.run import Config, Results
from attngen.bench.varlen import DEFAULT_LENGTHS, flex_varlen_impl
from attngen.bench.startup import first_call, scoped_environ
from attngen.cli import main
from attngen.reference.api import ReferenceAttention
from attngen.reference.interpreter import selected_pairs
from attngen.driver import compile_file, compile_source

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


PAIR_HEADS = (2, 4, 2)  # B, H, HK of the pair-counting cases


def _pair_case(stem, src, M, N, D=8):
    """An example (or a one-line spec), q, k, v and its inputs for counting allowed pairs / keys."""
    a = _example(stem) if stem else compile_source(src)[0]
    B, H, HK = PAIR_HEADS
    q, k, v = (t.detach() for t in qkv(B, H, HK, M, N, D, D))
    return a, q, k, v, _inputs64(a, dict(B=B, H=H, HK=HK, M=M, N=N, D=D, DV=D), seed=3)


@pytest.mark.parametrize("stem,src", PAIR_SPECS, ids=[s or f"src{n}" for n, (s, _) in enumerate(PAIR_SPECS)])
@pytest.mark.parametrize("M,N", [(37, 37), (5, 37)])
def test_allowed_pairs_against_brute_force(stem, src, M, N):
    a, q, k, v, inputs = _pair_case(stem, src, M, N)
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
    assert data["config"]["autotune"] is (before["ATTNGEN_AUTOTUNE"] != "0")  # as the environment has it
    assert data["config"]["startup"] is True
    base, sig = data["records"]
    assert (base["spec"], base["peers"], sig["spec"]) == ("causal_gqa", {}, "sigmoid_attn")
    assert sig["vs_base"] == pytest.approx(base["attngen"]["ms"] / sig["attngen"]["ms"])
    (st,) = data["startup"]
    assert st["spec"] == "sigmoid_attn" and st["host_sizes"]["M"] == 128 and st["first_call_sizes"]["D"] == 16
    for key in ("load_ms", "first_call_ms", "call_us", "launch_us", "overhead_us"):
        assert st[key] > 0, key
    assert st["overhead_us"] == pytest.approx(st["call_us"] - st["launch_us"])
    assert "first call, nothing cached" in r.stdout and "overhead us" in r.stdout


def test_bench_selection_has_the_dense_row_beside_it(tmp_path):
    """A selection spec runs beside attngen on the same spec without its select stage (dense), timed on
    the same inputs and not compared; the peers that have no select stage say so."""
    out = tmp_path / "out.json"
    r = _bench(EXAMPLE_DIR / "moba.attn", "-D", "BLOCK=16", "-D", "TOPK=2", *TINY, "--json", out)
    assert r.exit_code == 0, r.output
    (rec,) = json.loads(out.read_text())["records"]
    dense = rec["peers"]["dense"]
    assert set(dense) == {"ms", "tflops", "ratio"}
    assert dense["ratio"] == pytest.approx(dense["ms"] / rec["attngen"]["ms"])
    assert rec["peers"]["sdpa-flash"] == {"skipped": "select stage"}
    assert "dense: attngen on the same spec without its select stage" in r.stdout


def test_the_dense_twin_cuts_only_the_select_stage():
    src = ("attention t {\n const K = 2\n mask = causal; select = topk(K, by = dot(q, kmean),\n"
           "   block = 16)  # the choice\n score = dot(q, k) * scale\n}\n")
    a = compile_source(src, consts={"K": 3})[0]
    impl = dense_impl(a, {})
    q = torch.randn(1, 2, 40, 16)
    want = ReferenceAttention(replace(a, select=None))(q, q, q)
    torch.testing.assert_close(impl.call(q, q, q), want, atol=1e-5, rtol=1e-5)


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

    def spy(key, generate, label):
        seen.append((os.environ["ATTNGEN_CACHE_DIR"], os.environ["TRITON_CACHE_DIR"], triton.knobs.cache.dir,
                     os.environ["ATTNGEN_AUTOTUNE"], name in sys.modules))
        return load_module(key, generate, label)

    load_module = jit.load_module
    monkeypatch.setattr(jit, "load_module", spy)
    load_ms, call_ms = first_call(lambda: attngen.load(EXAMPLE_DIR / "causal_gqa.attn"), fn.key, (q, q, q, {}),
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


#: a valid spec the kernels refuse at load time (a group's selection cannot keep per-head keys)
UNCOMPILABLE = "attention grouped { select = topk(4, by = score, keep = h == 0, share = group) }\n"


def test_bench_skips_what_attngen_cannot_run(tmp_path):
    spec = tmp_path / "grouped.attn"
    spec.write_text(UNCOMPILABLE)
    r = _bench(spec, *SMOKE)
    assert r.exit_code == 1
    assert "grouped: skipped (attngen:" in r.stderr and "nothing to benchmark" in r.stderr


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
    (("--baseline", "UNCOMPILABLE"), "grouped"),  # attngen cannot run it: an error, not a skip
    (("--autotune", "--startup=2"), "--startup"),
])
def test_bench_bad_options(args, message, tmp_path):
    spec = tmp_path / "grouped.attn"
    spec.write_text(UNCOMPILABLE)
    args = [spec if a == "UNCOMPILABLE" else a for a in args]
    r = _bench(EXAMPLE_DIR / "full.attn", "--device", "cpu", *args)
    assert r.exit_code in (1, 2) and message in r.stderr, r.output


# ---- decode: allowed keys, paged caches, SDPA with end-aligned masks

@pytest.mark.parametrize("stem,src", PAIR_SPECS, ids=[s or f"src{n}" for n, (s, _) in enumerate(PAIR_SPECS)])
@pytest.mark.parametrize("M,N", [(1, 37), (5, 37)])
def test_allowed_keys_against_brute_force(stem, src, M, N):
    """A key row counts once per (b, hk) when any query row of any head of the group may read it."""
    a, q, k, v, inputs = _pair_case(stem, src, M, N)
    B, H, HK = PAIR_HEADS
    pairs = selected_pairs(a, q, k, v, **inputs).expand(B, H, M, N)
    want = int(pairs.any(dim=2).view(B, HK, H // HK, N).any(dim=2).sum())
    assert allowed_keys(a, q, k, v, inputs, budget=50) == want
    assert allowed_keys(a, q, k, v, inputs) == want


def test_allowed_keys_by_hand():
    B, H, HK, N, D = 3, 8, 2, 100, 8
    q, k, v = (t.detach() for t in qkv(B, H, HK, 1, N, D, D))
    assert allowed_keys(_example("causal_gqa"), q, k, v, {}) == B * HK * N  # the whole cache
    window = shrunk(EXAMPLE_DIR / "sliding_window.attn", None, {"W": 24})
    assert allowed_keys(window, q, k, v, {}) == B * HK * 24
    q4 = qkv(B, H, HK, 4, N, D, D)[0].detach()
    assert allowed_keys(window, q4, k, v, {}) == B * HK * (24 + 3)  # the window of the first row reaches back
    per_head = compile_source("attention x { mask = j < 10 * (h + 1) }")[0]  # group 0: heads 0-3, group 1: 4-7
    assert allowed_keys(per_head, q, k, v, {}) == B * (40 + 80)


def test_paged_cache_holds_the_keys_in_shuffled_pages():
    g = torch.Generator().manual_seed(0)
    B, HK, N, D, DV, P = 3, 2, 64, 4, 6, 16
    k, v = torch.randn(B, HK, N, D, generator=g), torch.randn(B, HK, N, DV, generator=g)
    c = paged_cache(k, v, P, torch.Generator().manual_seed(1))
    assert c.k.shape == (B * N // P, P, HK, D) and c.v.shape == (B * N // P, P, HK, DV) and c.page_size == P
    assert c.block_table.dtype == torch.int32 and c.block_table.shape == (B, N // P)
    assert sorted(c.block_table.flatten().tolist()) == list(range(B * N // P))  # every page used once
    assert not torch.equal(c.block_table.flatten(), torch.arange(B * N // P, dtype=torch.int32))  # shuffled
    assert c.seqlens_k.tolist() == [N] * B and c.seqlens_k.dtype == torch.int32
    for b in range(B):
        for j in (0, 17, N - 1):
            page, row = c.block_table[b, j // P], j % P
            assert torch.equal(c.k[page, row], k[b, :, j]) and torch.equal(c.v[page, row], v[b, :, j])
    with pytest.raises(ValueError, match="not a multiple of the page size"):
        paged_cache(k, v, 24, g)


def test_sdpa_end_aligned():
    assert sdpa_end_aligned(_example("causal_gqa"), 1, 64) is False  # the last row sees every key
    assert sdpa_end_aligned(_example("causal_gqa"), 4, 64) is True
    assert sdpa_end_aligned(_example("full"), 4, 64) is False
    for stem, reason in [("alibi", "score is not"), ("sliding_window", "mask is neither")]:
        with pytest.raises(Unsupported, match=reason):
            sdpa_end_aligned(_example(stem), 1, 64)


@pytest.mark.parametrize("M", [1, 3])
def test_sdpa_decode_matches_reference(M):
    """SDPA's decode call (no mask, or causal_lower_right) with GQA equals attngen's end-aligned causal."""
    a = _example("causal_gqa")
    B, H, HK, N, D = 2, 4, 2, 40, 16
    q, k, v = (t.detach().float() for t in qkv(B, H, HK, M, N, D, D))
    impl = sdpa_impl("sdpa-flash", a, dict(B=B, H=H, HK=HK, M=M, N=N, D=D, DV=D), 0.25, torch.float32,
                     torch.device("cpu"), decode=True)
    with impl.context():
        got = impl.call(q, k, v)
    ref = attngen.load(EXAMPLE_DIR / "causal_gqa.attn", backend="reference")
    torch.testing.assert_close(got, ref(q, k, v, scale=0.25))


# ---- varlen: packed pairs, flex's document mask

def test_default_lengths_are_the_stated_draw():
    rng = random.Random(0)
    weights = [2.0 ** rng.uniform(-2.0, 2.0) for _ in range(8)]
    drawn = [int(32768 * w / sum(weights)) for w in weights]
    drawn[drawn.index(max(drawn))] += 32768 - sum(drawn)
    assert tuple(drawn) == DEFAULT_LENGTHS and sum(DEFAULT_LENGTHS) == 32768
    assert max(DEFAULT_LENGTHS) > 4 * min(DEFAULT_LENGTHS)  # mixed


def _packed(lengths, H=4, HK=2, D=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    T = sum(lengths)
    starts = [0] + torch.tensor(lengths).cumsum(0).tolist()
    q, k, v = (torch.randn(T, h, D, generator=g, dtype=torch.float64) for h in (H, HK, HK))
    return q, k, v, starts


def test_varlen_pairs():
    lengths, H = [5, 40, 1, 19], 4
    q, k, v, starts = _packed(lengths, H)
    assert varlen_pairs(_example("causal_gqa"), q, k, v, {}, starts, starts) == \
        H * sum(n * (n + 1) // 2 for n in lengths)
    assert varlen_pairs(_example("full"), q, k, v, {}, starts, starts) == H * sum(n * n for n in lengths)
    window = _example("sliding_window")  # W = 12: min(n, 12) keys for row n - 1, counted within each sequence
    assert varlen_pairs(window, q, k, v, {}, starts, starts) == \
        H * sum(min(i + 1, 12) for n in lengths for i in range(n))
    doc = _example("document_mask")  # an input sized [B, N], cut per sequence as the kernels cut it
    xs = make_inputs(doc, dict(B=4, H=H, HK=2, M=40, N=40, D=8, DV=8), "cpu", torch.Generator().manual_seed(2))
    want = sum(int(selected_pairs(doc, *(t[s:e].permute(1, 0, 2)[None] for t in (q, k, v)),
                                  doc=xs["doc"][b:b + 1, :e - s]).sum())
               for b, (s, e) in enumerate(zip(starts, starts[1:])))
    assert varlen_pairs(doc, q, k, v, xs, starts, starts) == want


FLEX_VARLEN = ["causal_gqa", "full", "alibi", "sliding_window", "document_mask", "softcap", "prefix_lm",
               # the score reads the sequence (b) and both positions; the mask a per-sequence input at j
               "attention bj {\n input bias: f32[B, H]\n input pos: f32[B, N]\n"
               " score = dot(q, k) * scale + bias[b, h] * (j - i) + pos[b, j]\n mask = causal and i - j < 17 }"]


@pytest.mark.parametrize("spec", FLEX_VARLEN, ids=[s if " " not in s else "inline" for s in FLEX_VARLEN])
def test_flex_varlen_matches_the_packed_reference(spec, tmp_path):
    """flex over the concatenation with a document mask = the reference run per sequence."""
    if " " in spec:
        path = tmp_path / "inline.attn"
        path.write_text(spec)
        a = compile_file(path)[0]
    else:
        path = EXAMPLE_DIR / f"{spec}.attn"
        a = _example(spec)
    lengths, H, HK, D = [23, 40, 1, 9], 4, 2, 8
    q, k, v, starts = _packed(lengths, H, HK, D)
    sizes = dict(B=len(lengths), H=H, HK=HK, M=40, N=40, D=D, DV=D)
    inputs = _inputs64(a, sizes, seed=5)
    impl = flex_varlen_impl(a, sizes, 0.3, inputs, starts, torch.device("cpu"))
    assert impl.no_backward and impl.prep is not None
    cu = torch.tensor(starts, dtype=torch.int32)
    ref = attngen.load(path, backend="reference", consts={c: x for c, x in SMALL.items() if c in dict(a.consts)})
    want = ref(q, k, v, scale=0.3, cu_seqlens_q=cu, cu_seqlens_k=cu, max_seqlen_q=40, max_seqlen_k=40, **inputs)
    torch.testing.assert_close(impl.call(q, k, v), want)


def test_flex_varlen_refuses_specs_reading_the_lengths():
    a = compile_source("attention x { score = dot(q, k) * scale - log(N)\n mask = causal }")[0]
    q, k, v, starts = _packed([3, 5])
    with pytest.raises(Unsupported, match="reads M or N"):
        flex_varlen_impl(a, dict(B=2, H=4, HK=2, M=5, N=5, D=8, DV=8), 1.0, {}, starts, torch.device("cpu"))
    with pytest.raises(Unsupported, match="stick-breaking"):
        flex_varlen_impl(_example("stickbreaking"), dict(B=2, H=4, HK=2, M=5, N=5, D=8, DV=8), 1.0, {}, starts,
                         torch.device("cpu"))


# ---- decode and varlen: tables and the command

def _decode_record(layout="contiguous", page_size=None, **extra):
    rec = {"mode": "decode", "spec": "s", "seq": 64, "B": 2, "M": 1, "layout": layout, "page_size": page_size,
           "pass": "fwd", "attngen": {"ms": 0.5, "tbps": 2.0, "host_ms": 0.01, **extra},
           "peers": {"flex": {"ms": 1.0, "tbps": 1.0, "ratio": 2.0, "rel_err": 1e-3, "errors": {"o": 1e-3}},
                     "sdpa-flash": {"skipped": "mask is neither absent nor plain causal"}}}
    return rec


def test_decode_table_and_mismatches():
    records = [_decode_record(), _decode_record("paged", 16, contiguous_err=0.5)]
    lines = decode_table(records).splitlines()
    assert lines[1].split("|")[0].split() == ["spec", "cache", "N", "B", "M", "layout"]
    assert lines[1].split("|")[1].split() == ["ms", "TB/s", "host", "ms", "err"]
    assert "contiguous" in lines[3] and "paged 16" in lines[4] and "5.0e-01 !!" in lines[4]
    assert "n/a (mask is neither absent nor plain causal)" in lines[3]
    assert "2.00" in lines[3].split("|")[2]  # the ratio
    assert mismatches(records) == ["MISMATCH: attngen on the paged 16 cache and on the contiguous one disagree on "
                                   "s cache 64 paged 16: relative error o 5.0e-01 (limit 2e-02)"]


DECODE = ("--decode", "--device", "cpu", "--seq", "64", "--batch", "2", "--heads", "4", "--kv-heads", "2",
          "--dim", "16")


def test_bench_decode_cpu_end_to_end(tmp_path):
    out, png = tmp_path / "out.json", tmp_path / "out.png"
    r = _bench(EXAMPLE_DIR / "causal_gqa.attn", *DECODE, "--page-sizes", "16,32", "--json", out, "--plot", png)
    assert r.exit_code == 0, r.output
    assert "MISMATCH" not in r.stderr and "paged 32" in r.stdout and "TB/s" in r.stdout
    data = json.loads(out.read_text())
    cfg = data["config"]
    assert (cfg["mode"], cfg["batch"], cfg["decode_rows"], cfg["page_sizes"], cfg["seqs"]) == \
        ("decode", 2, 1, [16, 32], [64])
    assert "tokens" not in cfg and "backward" not in cfg
    recs = data["records"]
    assert [(x["layout"], x["page_size"], x["pass"], x["mode"]) for x in recs] == \
        [("contiguous", None, "fwd", "decode"), ("paged", 16, "fwd", "decode"), ("paged", 32, "fwd", "decode")]
    B, HK, N, D, H = 2, 2, 64, 16, 4
    for rec in recs:
        assert (rec["B"], rec["H"], rec["HK"], rec["M"], rec["seq"], rec["dtype"]) == (B, H, HK, 1, N, "fp32")
        assert rec["allowed_pairs"] == B * H * N and rec["density"] == 1.0  # M = 1: causal sees the whole cache
        assert rec["allowed_keys"] == B * HK * N
        assert rec["kv_bytes"] == rec["cache_bytes"] == B * HK * N * (D + D) * 4  # fp32
        assert rec["flops"] == 2 * rec["allowed_pairs"] * (D + D)
        mine = rec["attngen"]
        assert mine["ms"] > 0 and mine["tbps"] == pytest.approx(rec["kv_bytes"] / (mine["ms"] * 1e-3) / 1e12)
        flex, flash = rec["peers"]["flex"], rec["peers"]["sdpa-flash"]
        assert flex["rel_err"] < 1e-5 and flash["rel_err"] < 1e-5 and flex["layout"] == "contiguous"
        assert flex["mask_prep_ms"] > 0 and flash["ratio"] == pytest.approx(flash["ms"] / mine["ms"])
        assert mine["host_ms"] > 0 and flex["host_ms"] > 0 and flash["host_ms"] > 0
        assert rec["peers"]["sdpa-cudnn"] == {"skipped": "cuDNN attention needs CUDA"}
    assert "contiguous_err" not in recs[0]["attngen"]
    assert all(x["attngen"]["contiguous_err"] < 1e-6 for x in recs[1:])
    assert len({x["peers"]["flex"]["ms"] for x in recs}) == 1  # timed once, on the contiguous cache
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_decode_window_rows_and_inputs(tmp_path):
    """Three query rows; a window reads only its keys; ALiBi's slopes reach the paged calls; no SDPA."""
    out = tmp_path / "out.json"
    r = _bench(EXAMPLE_DIR / "sliding_window.attn", EXAMPLE_DIR / "alibi.attn", *DECODE, "-D", "W=24",
               "--decode-rows", "3", "--page-sizes", "32", "--peers", "flex", "--json", out)
    assert r.exit_code == 0, r.output
    window, window_paged, alibi, alibi_paged = json.loads(out.read_text())["records"]
    assert (window["spec"], window_paged["layout"], alibi["spec"]) == ("sliding_window", "paged", "alibi")
    assert window["allowed_keys"] == 2 * 2 * (24 + 2)  # rows 61..63 reach back to key 38
    assert window["kv_bytes"] == window["allowed_keys"] * 32 * 4 < window["cache_bytes"]
    assert window["allowed_pairs"] == 2 * 4 * 3 * 24
    assert alibi["allowed_pairs"] == 2 * 4 * (62 + 63 + 64)
    for rec in (window, window_paged, alibi, alibi_paged):
        assert set(rec["peers"]) == {"flex"} and rec["peers"]["flex"]["rel_err"] < 1e-5
    assert alibi_paged["attngen"]["contiguous_err"] < 1e-6


def test_bench_varlen_cpu_end_to_end(tmp_path):
    out = tmp_path / "out.json"
    lengths = [5, 40, 19]
    r = _bench(EXAMPLE_DIR / "causal_gqa.attn", "--varlen", "--device", "cpu", "--varlen-lengths",
               ",".join(map(str, lengths)), "--heads", "4", "--kv-heads", "2", "--dim", "16", "--json", out)
    assert r.exit_code == 0, r.output
    assert "MISMATCH" not in r.stderr and "5, 40, 19" in r.stdout
    data = json.loads(out.read_text())
    assert (data["config"]["mode"], data["config"]["varlen_lengths"], data["config"]["peers"]) == \
        ("varlen", lengths, ["flex"])
    fwd, bwd = data["records"]
    H, D = 4, 16
    for rec in (fwd, bwd):
        assert (rec["mode"], rec["lengths"], rec["tokens"], rec["seq"], rec["B"]) == ("varlen", lengths, 64, 40, 3)
        assert rec["allowed_pairs"] == H * (15 + 820 + 190)  # causal within each sequence
        assert rec["density"] == pytest.approx(rec["allowed_pairs"] / (H * (25 + 1600 + 361)))
    assert fwd["flops"] == 4 * fwd["allowed_pairs"] * D and bwd["flops"] == 3.5 * fwd["flops"]
    flex = fwd["peers"]["flex"]
    assert flex["rel_err"] < 1e-5 and flex["mask_prep_ms"] > 0 and flex["ms"] > 0
    assert flex["ratio"] == pytest.approx(flex["ms"] / fwd["attngen"]["ms"])
    assert bwd["peers"]["flex"] == {"skipped": "flex has no backward on cpu"}
    assert bwd["attngen"]["ms"] > 0 and bwd["attngen"]["tflops"] > 0


def test_bench_block_cpu_end_to_end(tmp_path):
    """The compiled block's step on CPU (aot_eager): a record with its FLOPs; flex is skipped there."""
    out = tmp_path / "out.json"
    r = _bench(EXAMPLE_DIR / "alibi.attn", "--block", "--device", "cpu", "--seq", "32", "--tokens", "64",
               "--heads", "2", "--dim", "16", "--json", out)
    assert r.exit_code == 0, r.output
    assert "attngen step" in r.stdout and "flex has no compiled backward on cpu" in r.stdout
    (rec,) = json.loads(out.read_text())["records"]
    B, S, H, D = 2, 32, 2, 16
    assert (rec["mode"], rec["seq"], rec["B"], rec["allowed_pairs"]) == ("block", S, B, B * H * S * (S + 1) // 2)
    assert rec["flops"] == 3.5 * 4 * rec["allowed_pairs"] * D + 3 * 2 * B * S * H * D * (4 * H) * D
    assert rec["attngen"]["ms"] > 0


def test_block_step_compiled_matches_eager():
    """The block the step times: compiled whole (attngen's operators inside), its gradients are eager's."""
    from attngen.bench.block import Block

    fn = attngen.load(EXAMPLE_DIR / "causal_gqa.attn")
    torch.manual_seed(0)
    block = Block(4, 2, 16, lambda q, k, v: fn(q, k, v))
    x = torch.randn(2, 24, 64, requires_grad=True)
    want = torch.autograd.grad(block(x).square().sum(), [x, *block.parameters()])
    torch._dynamo.reset()
    compiled = torch.compile(block, fullgraph=True, backend="aot_eager")
    got = torch.autograd.grad(compiled(x).square().sum(), [x, *block.parameters()])
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, atol=1e-4, rtol=1e-4)


def _captured_config(monkeypatch, *args):
    """The Config the command builds (the run itself replaced by one that measures nothing)."""
    import attngen.bench.run as bench_run

    seen = []
    monkeypatch.setattr(bench_run, "run", lambda targets, cfg, log, base=None: seen.append(cfg) or Results())
    r = _bench(EXAMPLE_DIR / "full.attn", "--device", "cpu", *args)
    assert r.exit_code == 1 and "nothing to benchmark" in r.stderr, r.output
    return seen[0]


def test_bench_mode_defaults(monkeypatch):
    dense = _captured_config(monkeypatch)
    assert (dense.mode, dense.seqs, dense.heads, dense.kv_heads, dense.peers, dense.backward) == \
        ("dense", (4096, 16384), 16, 16, ("flex", "sdpa"), True)
    decode = _captured_config(monkeypatch, "--decode")
    assert (decode.mode, decode.seqs, decode.heads, decode.kv_heads, decode.batch, decode.decode_rows,
            decode.page_sizes, decode.backward) == ("decode", (8192, 32768), 32, 8, 32, 1, (16, 64), False)
    assert _captured_config(monkeypatch, "--decode", "--heads", "8").kv_heads == 8  # --heads alone: MHA
    assert _captured_config(monkeypatch, "--decode", "--page-sizes", "none").page_sizes == ()
    varlen = _captured_config(monkeypatch, "--varlen")
    assert (varlen.mode, varlen.varlen_lengths, varlen.heads, varlen.kv_heads, varlen.peers, varlen.backward) == \
        ("varlen", DEFAULT_LENGTHS, 16, 16, ("flex",), True)
    block = _captured_config(monkeypatch, "--block")
    assert (block.mode, block.seqs, block.heads, block.peers) == ("block", (4096, 16384), 16, ("flex",))
    assert "backward" not in block.as_json() and block.as_json()["tokens"] == 16384
    assert Config().as_json()["mode"] == "dense" and "batch" not in Config().as_json()


@pytest.mark.parametrize("args,message", [
    (("--decode", "--varlen"), "separate modes"),
    (("--block", "--varlen"), "separate modes"),
    (("--decode", "--tokens", "64"), "--tokens applies to the dense mode or --block only"),
    (("--decode", "--fresh-inputs"), "--fresh-inputs applies to the dense mode or --block only"),
    (("--block", "--startup"), "--startup applies to the dense mode only"),
    (("--block", "--peers", "sdpa"), "--block compares with flex only"),
    (("--decode", "--startup"), "--startup applies to the dense mode only"),
    (("--batch", "4"), "--batch applies to --decode only"),
    (("--page-sizes", "16"), "--page-sizes applies to --decode only"),
    (("--varlen-lengths", "4,5"), "--varlen-lengths applies to --varlen only"),
    (("--varlen", "--seq", "64"), "--seq applies to the dense mode or --decode or --block only"),
    (("--varlen", "--plot", "x.png"), "--plot applies to the dense mode or --decode only"),
    (("--varlen", "--peers", "flex,sdpa"), "flex only"),
    (("--decode", "--seq", "64", "--page-sizes", "24"), "--page-sizes 24 does not divide the cache length 64"),
    (("--decode", "--seq", "8", "--decode-rows", "9", "--page-sizes", "none"), "exceeds the cache length 8"),
    (("--decode", "--page-sizes", "0"), "expected positive integers"),
    (("--varlen", "--varlen-lengths", "4,x"), "expected positive integers"),
    (("--decode", "--heads", "6"), None),  # HK = 6 (MHA): fine, up to the point of running
])
def test_bench_mode_options(args, message, monkeypatch):
    if message is None:
        assert _captured_config(monkeypatch, *args).kv_heads == 6
        return
    r = _bench(EXAMPLE_DIR / "full.attn", "--device", "cpu", *args)
    assert r.exit_code in (1, 2) and message in r.stderr, r.output


def test_inputs_with_positional_locality():
    """--locality: keys near a query (and the keys its neighbours score high) score higher than far ones;
    0 draws what the random inputs always were."""
    sizes = dict(B=1, H=2, HK=1, M=512, N=1024, D=32, DV=16)
    plain = make_qkv(sizes, torch.float32, "cpu", torch.Generator().manual_seed(0))
    again = make_qkv(sizes, torch.float32, "cpu", torch.Generator().manual_seed(0), 0.0)
    assert all(torch.equal(a, b) for a, b in zip(plain, again))
    q, k, _ = make_qkv(sizes, torch.float32, "cpu", torch.Generator().manual_seed(0), 2.0)
    s = (q[0, 0] @ k[0, 0].T).detach()  # [M, N]; query m sits at key position m + N - M
    dist = ((torch.arange(512)[:, None] + 512) - torch.arange(1024)[None, :]).abs()
    assert s[dist < 32].mean() > s[dist > 512].mean() + 20


def test_bench_locality(tmp_path):
    out = tmp_path / "out.json"
    r = _bench(EXAMPLE_DIR / "causal_gqa.attn", "--device", "cpu", "--seq", "32", "--tokens", "32", "--heads", "2",
               "--dim", "16", "--peers", "sdpa", "--no-backward", "--locality", "1.5", "--json", out)
    assert r.exit_code == 0, r.output
    (rec,) = json.loads(out.read_text())["records"]
    assert rec["locality"] == 1.5 and "positional locality 1.5" in r.output
    r = _bench(EXAMPLE_DIR / "causal_gqa.attn", "--device", "cpu", "--decode", "--locality", "1.0")
    assert r.exit_code != 0 and "--locality applies to the dense mode only" in r.output

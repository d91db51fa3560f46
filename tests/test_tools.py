"""Smoke tests of the measurement tools in tools/ (each runs here as it runs on the GPU machine, at tiny
sizes): they follow the runtime's API, so a refactor that breaks one fails here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
interpreted = pytest.mark.interpret


def _tool(name, *args, interpret=True, cwd=None):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.update(PYTHONPATH=ROOT, OUT=str(cwd or ROOT), **({"TRITON_INTERPRET": "1"} if interpret else {}))
    return subprocess.run([sys.executable, os.path.join(ROOT, "tools", name), *map(str, args)], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)


def test_offline_sass_compiles_a_forward_and_a_block_select_kernel():
    """sm_90a SASS without a GPU (triton's bundled ptxas): a table row per kernel, registers and loops."""
    r = _tool("offline_sass.py", "examples/alibi.attn", "--kernels", "fwd", "--seq", "256", "--head-dim", "64",
              interpret=False)
    assert r.returncode == 0, r.stderr[-2000:]
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[2:] if line.strip()}
    assert "alibi_fwd" in rows and int(rows["alibi_fwd"][2]) > 0  # registers
    # 1024 blocks a row (64k keys, block 64): its dot(q, kmean) slices of D were 8 wide, which tl.dot refuses
    # (K >= 16: the issue-18 crash at 64k); the tool launches it as the runtime does (_select_tiles)
    r = _tool("offline_sass.py", "examples/nsa_select.attn", "-D", "BLOCK=64", "-D", "TOPK=13", "--seq", "65536",
              "--kernels", "select", interpret=False)
    assert r.returncode == 0 and "nsa_select_select" in r.stdout, r.stderr[-2000:]


@interpreted
def test_host_cpu_times_the_runtime_with_launches_stubbed():
    r = _tool("host_cpu.py", "--calls", "20", "--batch", "2", "--heads", "4", "--kv-heads", "2", "--dim", "16",
              "--cache", "64", "--profile")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "us per call, launches stubbed (B=2 H=4 HK=2 D=16 N=64" in r.stdout and "run_forward" in r.stdout


def test_host_cpu_times_training_calls():
    r = _tool("host_cpu.py", "--train", "--calls", "5", "--batch", "1", "--heads", "2", "--kv-heads", "1", "--dim",
              "16", "--cache", "32")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "forward: " in r.stdout and "forward+backward: " in r.stdout and "M=32, bf16" in r.stdout


@interpreted
def test_kernel_profile_runs_forward_and_backward(tmp_path):
    r = _tool("kernel_profile.py", "examples/causal_gqa.attn", "--seq", "32", "--heads", "2", "--kv-heads", "2",
              "--dim", "16", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    log = (tmp_path / "kernel_prof.txt").read_text()
    assert "B=1 S=32 H=2 HK=2 D=16: forward" in log and ": backward" in log


@interpreted
def test_cp_bench_under_torchrun():
    """tools/cp_bench.py with two gloo processes at tiny sizes: one rank against the ring, both passes."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT, OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2",
                        "tools/cp_bench.py", "--tokens", "16", "--heads", "2", "--dim", "16", "--reps", "1"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert "2 ranks x 16 tokens" in r.stdout and "fwd+bwd: one rank" in r.stdout and "transfers hidden" in r.stdout

"""Context parallelism (attngen.context_parallel): global positions, the layouts, a ring over the
shards merged by lse, and the whole thing across 2 and 4 gloo processes (torchrun) against one
process's call, outputs and every gradient."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

import attngen
from attngen.bench.inputs import make_inputs
from attngen.distributed import global_positions, on_shards, positions, shard_calls
from attngen.ir.printer import expr_str
from attngen.driver import compile_source

pytestmark = pytest.mark.interpret

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_layouts():
    assert positions(4, 2, 0, "contiguous").tolist() == [0, 1, 2, 3]
    assert positions(4, 2, 1, "contiguous").tolist() == [4, 5, 6, 7]
    # zigzag: 2P chunks, rank r holds chunks r and 2P - 1 - r (causal work balanced)
    assert positions(4, 2, 0, "zigzag").tolist() == [0, 1, 6, 7]
    assert positions(4, 2, 1, "zigzag").tolist() == [2, 3, 4, 5]
    with pytest.raises(ValueError, match="odd"):
        positions(3, 2, 0, "zigzag")
    with pytest.raises(ValueError, match="layout must be one of"):
        positions(4, 2, 0, "striped")


def test_global_positions_read_the_shard_inputs():
    a = compile_source("attention t { input doc: i32[B, N]\n score = dot(q, k) * scale + (j - i) / N\n"
                       " mask = causal and doc[b, i] == doc[b, j] }")[0]
    g = global_positions(a)
    assert g.name == "t_cp" and [d.name for d in g.inputs] == ["doc", "doc__q", "_qpos", "_kpos", "_sizes"]
    assert [d.dims for d in g.inputs[:2]] == [("B", "N"), ("B", "M")]
    assert expr_str(g.mask) == "((_kpos[j] <= (_qpos[m] + (_sizes[1] - _sizes[0]))) and (doc__q[b, m] == doc[b, j]))"
    assert expr_str(g.score) == "((dot(q, k) * scale) + (float((_kpos[j] - (_qpos[m] + (_sizes[1] - _sizes[0])))) / " \
                                "float(_sizes[1])))"
    with pytest.raises(ValueError, match=r"its dim 1 must be indexed by i, m or j, got \(i - 1\)"):
        global_positions(compile_source("attention t { input doc: i32[B, N]\n mask = doc[b, i - 1] == 0 }")[0])
    for src, why in (("attention t { select = topk(4, by = score) }", "select stage"),
                     ("attention t { norm = sigmoid }", "softmax norm"),
                     ("attention t { weights = p * 2.0 }", "weights or out stage")):
        with pytest.raises(ValueError, match=why):
            global_positions(compile_source(src)[0])


@pytest.mark.parametrize("layout", ["contiguous", "zigzag"])
@pytest.mark.parametrize("path, name", [("examples/alibi.attn", None), ("examples/sink_softmax.attn", "sink_softmax"),
                                        ("examples/document_mask.attn", None)])
def test_shards_merged_by_lse_are_the_whole_call(path, name, layout):
    """The ring's arithmetic in one process (reference backend, float64): each rank's rows against every
    rank's keys, merged by lse, the sink counted once, equal the rows of one call, gradients included."""
    ref = attngen.load(path, name=name, backend="reference")
    own, others = shard_calls(ref)
    world, S, B, H, HK, D = 4, 6, 1, 2, 1, 8
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(B, h, world * S, D, generator=g, dtype=torch.float64).requires_grad_() for h in (H, HK, HK))
    xs = {n: x.double() if x.is_floating_point() else x
          for n, x in make_inputs(ref.attention, dict(B=B, H=H, HK=HK, M=world * S, N=world * S, D=D, DV=D),
                                  "cpu", g).items()}
    whole = ref(q, k, v, **xs)
    for rank in range(world):
        qp = positions(S, world, rank, layout)
        parts = []
        for step in range(world):
            kp = positions(S, world, (rank - step) % world, layout)
            parts.append(on_shards(own if step == 0 else others, q[:, :, qp], k[:, :, kp], v[:, :, kp], qp, kp,
                                   world * S, None, xs))
        o, _ = attngen.merge_by_lse(parts)
        torch.testing.assert_close(o, whole[:, :, qp])
        leaves = [q, k, v, *(x for x in xs.values() if x.requires_grad)]
        gr = torch.randn(o.shape, generator=g, dtype=o.dtype)
        for a_, b_ in zip(torch.autograd.grad((o * gr).sum(), leaves, allow_unused=True),
                          torch.autograd.grad((whole[:, :, qp] * gr).sum(), leaves, allow_unused=True,
                                              retain_graph=True)):
            torch.testing.assert_close(a_, b_)


@pytest.mark.parametrize("world", [2, 4])
def test_ring_across_gloo_processes(world):
    """examples/run_context_parallel.py under torchrun: causal, ALiBi, a sliding window, a document mask
    and a sink, both layouts; every rank checks o and every gradient against one process's call; then
    Star Attention's phases."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={world}",
                        "examples/run_context_parallel.py"], cwd=ROOT, env=env, capture_output=True, text=True,
                       timeout=900)
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert r.stdout.count("match one process") == 12, r.stdout  # 5 specs x 2 layouts, and causal's reference
    assert r.stdout.count("matches one process") == 3, r.stdout  # Star: causal phases 1 and 2, the sink's phase 2

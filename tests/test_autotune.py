"""The generated module's autotuner: picks the fastest config, remembers it on disk, survives a
corrupt tuning file, skips configs that do not fit, and ATTNGEN_AUTOTUNE=0 takes the default; and
its launcher, which retries a config that does not fit or that ptxas cannot assemble."""

from __future__ import annotations

import importlib.util
import json
import os

import pytest
import triton

from attngen.codegen.render import cache_key, render_module
from attngen.driver import compile_source

SRC = "attention tuned { mask = causal }"


@pytest.fixture
def module(tmp_path, monkeypatch):
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path))
    monkeypatch.delenv("ATTNGEN_AUTOTUNE", raising=False)
    a = compile_source(SRC, "tuned.attn")[0]
    path = tmp_path / "tuned_mod.py"
    path.write_text(render_module([a], SRC, "tuned.attn", cache_key(SRC, {})))
    spec = importlib.util.spec_from_file_location("tuned_mod", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod._progress = lambda items, desc: items
    return mod


def _fake_bench(times):
    def bench(fn, **kw):
        fn()
        return times[-1]
    return bench


def test_fastest_config_is_chosen_and_remembered(module, monkeypatch):
    cands = [{"BLOCK_M": 1}, {"BLOCK_M": 2}, {"BLOCK_M": 3}]
    speed = {1: 3.0, 2: 1.0, 3: 2.0}
    seen = []

    def run(c):
        seen.append(speed[c["BLOCK_M"]])
    monkeypatch.setattr(triton.testing, "do_bench", _fake_bench(seen))
    assert module._autotune("k1", cands, run) == {"BLOCK_M": 2}
    assert json.loads(open(module._tune_file()).read()) == {"k1": {"BLOCK_M": 2}}
    seen.clear()
    assert module._autotune("k1", cands, run) == {"BLOCK_M": 2} and not seen  # no re-timing
    module._TUNED.clear()  # a new process reads the file
    assert module._autotune("k1", cands, lambda c: pytest.fail("re-timed")) == {"BLOCK_M": 2}


@pytest.mark.parametrize("error", [triton.runtime.errors.OutOfResources(1, 0, "shared memory"),
                                   triton.runtime.errors.PTXASError("ptxas failed with error code -11")])
def test_configs_that_do_not_fit_are_skipped(module, monkeypatch, error):
    def run(c):
        if c["BLOCK_M"] == 1:
            raise error
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: fn() or 1.0)
    assert module._autotune("k2", [{"BLOCK_M": 1}, {"BLOCK_M": 2}], run) == {"BLOCK_M": 2}


def test_narrow_heads_default_to_small_backward_tiles(module):
    """triton 3.6's ptxas crashed on a 128-row dq tile at D = 16 (stick-breaking, 8 warps)."""
    import torch
    narrow = module._config_of(16, 16, torch.bfloat16, "cuda")[1]
    wide = module._config_of(128, 128, torch.bfloat16, "cuda")[1]
    assert narrow[0]["dq"]["BLOCK_M"] == 64 and narrow[0]["dq"]["num_warps"] == 4
    assert wide[0]["dq"]["BLOCK_M"] == 128 and sorted(map(str, narrow)) == sorted(map(str, wide))


def test_corrupt_tuning_file_is_ignored(module, monkeypatch):
    with open(module._tune_file(), "w") as f:
        f.write("{not json")
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: fn() or 1.0)
    assert module._autotune("k3", [{"BLOCK_M": 1}, {"BLOCK_M": 2}], lambda c: None) == {"BLOCK_M": 1}
    assert "k3" in json.loads(open(module._tune_file()).read())


def test_autotune_off_takes_the_default(module, monkeypatch):
    monkeypatch.setenv("ATTNGEN_AUTOTUNE", "0")
    assert module._autotune("k4", [{"BLOCK_M": 1}, {"BLOCK_M": 2}], lambda c: pytest.fail("timed")) == {"BLOCK_M": 1}


def test_cache_dir_set_after_import_is_honoured(module, monkeypatch, tmp_path):
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path / "later"))
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: fn() or 1.0)
    module._autotune("k5", [{"BLOCK_M": 1}, {"BLOCK_M": 2}], lambda c: None)
    assert "k5" in json.loads((tmp_path / "later" / os.path.basename(module._tune_file())).read_text())


class _Kernel:
    """kernel[grid](*args, **config): fails with ``error`` while ``fails(config)``, records the configs."""

    __name__ = "fake_kernel"
    arg_names = ["Q"]  # the runtime binds a kernel's arguments by its parameter names

    def __init__(self, error, fails):
        self.error, self.fails, self.configs = error, fails, []

    def __getitem__(self, grid):
        def launch(*args, **config):
            self.configs.append(config)
            if self.fails(config):
                raise self.error
            return "launched"
        return launch


CFG = {"BLOCK_M": 128, "BLOCK_N": 64, "num_warps": 8, "num_stages": 3}


def test_a_config_that_does_not_fit_is_retried_smaller(module):
    k = _Kernel(triton.runtime.errors.OutOfResources(1, 0, "shared memory"), lambda c: c["num_stages"] > 1)
    assert module._launch(k, (1,), lambda c: {"Q": None}, CFG) == "launched"
    assert [c["num_stages"] for c in k.configs] == [3, 1]


def test_a_ptxas_crash_is_retried_with_a_warning(module):
    k = _Kernel(triton.runtime.errors.PTXASError("ptxas failed with error code -11"), lambda c: c["BLOCK_M"] > 32)
    with pytest.warns(RuntimeWarning, match="ptxas failed on fake_kernel"):
        assert module._launch(k, (1,), lambda c: {"Q": None}, CFG) == "launched"
    assert [(c["num_stages"], c["BLOCK_M"]) for c in k.configs] == [(3, 128), (1, 128), (1, 32)]


def test_a_config_that_never_fits_raises(module):
    k = _Kernel(triton.runtime.errors.OutOfResources(1, 0, "shared memory"), lambda c: True)
    with pytest.raises(triton.runtime.errors.OutOfResources):
        module._launch(k, (1,), lambda c: {"Q": None}, CFG)
    assert len(k.configs) == 3

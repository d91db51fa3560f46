"""Test-wide settings, and the one switch for the CPU kernel tests.

The kernel tests run the generated Triton kernels on CPU tensors, which needs Triton's interpreter.
On a machine without a CUDA GPU it is switched on here, before anything imports triton, so plain
``pytest`` runs them; where TRITON_INTERPRET is not 1 (a GPU machine, for ``pytest -m gpu``) the
tests marked ``interpret`` are skipped, and the run's summary says so in one line.
"""

import os

import pytest

if "TRITON_INTERPRET" not in os.environ:
    import torch

    if not torch.cuda.is_available():
        os.environ["TRITON_INTERPRET"] = "1"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"

# generated modules fill every output buffer with NaN before launch, so unwritten elements fail tests
os.environ["ATTNGEN_POISON"] = "1"
# the fixed default launch configs: tests check results, and tuning every shape would take minutes
os.environ.setdefault("ATTNGEN_AUTOTUNE", "0")


def pytest_addoption(parser):
    parser.addoption("--fuzz", type=int, default=None, metavar="N",
                     help="examples per fuzz property (tests/test_fuzz.py); a campaign: --fuzz 20000 -p no:xdist")


def pytest_configure(config):
    config.addinivalue_line("markers", "interpret: runs Triton kernels on CPU tensors (needs TRITON_INTERPRET=1)")
    if config.getoption("--fuzz") is not None:  # read by tests/test_fuzz.py at import, after this hook
        os.environ["ATTNGEN_FUZZ"] = str(config.getoption("--fuzz"))


def pytest_collection_modifyitems(config, items):
    if INTERPRETED:
        return
    skip = pytest.mark.skip(reason="CPU kernel test: TRITON_INTERPRET is not 1")
    for item in items:
        if "interpret" in item.keywords:
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter):
    skipped = [r for r in terminalreporter.stats.get("skipped", []) if "TRITON_INTERPRET is not 1" in str(r.longrepr)]
    if skipped:
        terminalreporter.write_line(f"attngen: {len(skipped)} CPU kernel tests skipped: TRITON_INTERPRET is not 1 "
                                    "(unset it on a machine without a GPU, or set it to 1)", yellow=True, bold=True)

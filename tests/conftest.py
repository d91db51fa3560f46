"""Test-wide settings."""

import os

# generated modules fill every output buffer with NaN before launch, so unwritten elements fail tests
os.environ["ATTNGEN_POISON"] = "1"
# the fixed default launch configs: tests check results, and tuning every shape would take minutes
os.environ.setdefault("ATTNGEN_AUTOTUNE", "0")


def pytest_addoption(parser):
    parser.addoption("--fuzz", type=int, default=None, metavar="N",
                     help="examples per fuzz property (tests/test_fuzz.py); a campaign: --fuzz 20000 -p no:xdist")


def pytest_configure(config):
    if config.getoption("--fuzz") is not None:  # read by tests/test_fuzz.py at import, after this hook
        os.environ["ATTNGEN_FUZZ"] = str(config.getoption("--fuzz"))

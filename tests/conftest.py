"""Test-wide settings."""

import os

# generated modules fill every output buffer with NaN before launch, so unwritten elements fail tests
os.environ["ATTNGEN_POISON"] = "1"
# the fixed default launch configs: tests check results, and tuning every shape would take minutes
os.environ.setdefault("ATTNGEN_AUTOTUNE", "0")

"""Test-wide settings."""

import os

# generated modules fill every output buffer with NaN before launch, so unwritten elements fail tests
os.environ["ATTNGEN_POISON"] = "1"

"""Golden-file snapshots under tests/golden/. After an intended change, rewrite them with
``ATTNGEN_UPDATE_GOLDEN=1 pytest ...`` and review the diff."""

from __future__ import annotations

import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def check_golden(filename: str, text: str) -> None:
    path = GOLDEN / filename
    if os.environ.get("ATTNGEN_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no snapshot {path}; create it with ATTNGEN_UPDATE_GOLDEN=1"
    assert text == path.read_text(), f"{filename} differs from its snapshot"

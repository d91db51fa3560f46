"""Golden-file snapshots under tests/golden/. After an intended change, rewrite them with
``ATTNGEN_UPDATE_GOLDEN=1 pytest ...`` and review the diff."""

from __future__ import annotations

import difflib
import os
from pathlib import Path

GOLDEN = Path(__file__).parent / "golden"


def check_golden(filename: str, text: str) -> None:
    path = GOLDEN / filename
    if os.environ.get("ATTNGEN_UPDATE_GOLDEN") == "1":
        GOLDEN.mkdir(exist_ok=True)
        path.write_text(text)
    assert path.exists(), f"no snapshot {path}; create it with ATTNGEN_UPDATE_GOLDEN=1"
    want = path.read_text()
    if text != want:
        diff = "".join(difflib.unified_diff(want.splitlines(keepends=True), text.splitlines(keepends=True),
                                            f"golden/{filename}", "rendered", n=2))
        lines = diff.splitlines()
        shown = "\n".join(lines[:120]) + (f"\n... {len(lines) - 120} more diff lines" if len(lines) > 120 else "")
        raise AssertionError(f"{filename} differs from its snapshot (ATTNGEN_UPDATE_GOLDEN=1 rewrites it):\n{shown}")

"""On-disk cache of generated modules: atomic writes, corrupt entries regenerated.

Layout: ``$ATTNGEN_CACHE_DIR`` (default ``~/.cache/attngen``) / ``<key>.py``. The key
hashes spec text, constants and versions (see ``codegen.render.cache_key``). Writers
go through a temporary file and ``os.replace``, so a reader never sees half a file and
concurrent processes writing the same key are harmless.
"""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable


def cache_dir() -> Path:
    d = Path(os.environ.get("ATTNGEN_CACHE_DIR", Path.home() / ".cache" / "attngen"))
    d.mkdir(parents=True, exist_ok=True)
    return d


def _write_atomic(path: Path, text: str) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _import(path: Path, key: str) -> ModuleType:
    name = f"attngen_generated_{key}"
    spec = importlib.util.spec_from_file_location(name, path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    sys.modules[name] = mod  # triton's jit looks kernels' globals up through their module
    return mod


def load_module(key: str, generate: Callable[[], str]) -> ModuleType:
    """Import the cached module for ``key``, generating (or regenerating) it as needed."""
    name = f"attngen_generated_{key}"
    if name in sys.modules:
        return sys.modules[name]
    path = cache_dir() / f"{key}.py"
    if path.exists():
        try:
            text = path.read_text()
            if f"Cache key: {key}" in text:
                return _import(path, key)
        except Exception:  # noqa: BLE001 - a corrupt entry is regenerated below
            pass
    _write_atomic(path, generate())
    return _import(path, key)

"""On-disk cache of generated modules: every entry is checked against a fresh rendering before it runs.

Layout: ``$ATTNGEN_CACHE_DIR`` (default ``~/.cache/attngen``) / ``<name>-<key>.py``, the attention's
name (sanitized) for people listing the folder and the key (``codegen.render.module_key``) for
uniqueness. The key is predictable, so it proves nothing about a file's content: before importing an
entry, the module is rendered again and the file's bytes must equal it. Anything else (another
attngen's output, a truncated or edited file, a planted one) is replaced by the rendering, written
through a temporary file and ``os.replace`` (a reader never sees half a file, concurrent writers of
one key are harmless), and what runs (Python and Triton's view of the kernels' source alike) is the
rendered text itself, never a re-read of the file.

The directory is created with mode 0700 and refused (:class:`CacheError`) when another user owns it
or group or others may write to it; one that cannot be created, read or written is a CacheError too,
naming ATTNGEN_CACHE_DIR, not a bare OSError.
"""

from __future__ import annotations

import linecache
import os
import re
import stat
import sys
import tempfile
from pathlib import Path
from types import ModuleType
from typing import Callable

from ..frontend.errors import AttnError


class CacheError(AttnError):
    """The module cache directory cannot be used safely (wrong owner, loose permissions) or at all."""


def cache_dir() -> Path:
    """The cache directory, created 0700 if missing; a CacheError unless it is ours and private."""
    d = Path(os.environ.get("ATTNGEN_CACHE_DIR") or Path.home() / ".cache" / "attngen")
    try:
        d.mkdir(mode=0o700, parents=True, exist_ok=True)  # missing parents get the usual mode
        st = d.stat()
    except FileExistsError:
        raise CacheError(f"module cache {d} is not a directory; set ATTNGEN_CACHE_DIR to a directory of "
                         "your own") from None
    except OSError as err:
        raise _unusable(d, err) from None
    if st.st_uid != os.geteuid():
        raise CacheError(f"module cache {d} belongs to another user (uid {st.st_uid}); attngen imports code from "
                         "it, so it must be yours: set ATTNGEN_CACHE_DIR to a directory of your own")
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(f"module cache {d} is writable by group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
                         f"attngen imports code from it: chmod 700 {d}, or set ATTNGEN_CACHE_DIR elsewhere")
    return d


def _unusable(d: Path, err: OSError) -> CacheError:
    return CacheError(f"module cache {d} is unusable: {err.strerror or err}; set ATTNGEN_CACHE_DIR to a "
                      "writable directory of your own")


def entry_name(name: str, key: str) -> str:
    """``<name>-<key>.py``: the name cut to ``[A-Za-z0-9_]`` and 64 characters (file names stay short)."""
    return f"{re.sub(r'[^A-Za-z0-9_]', '_', name)[:64]}-{key}.py"


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        return None  # missing: written below (a directory in the way fails there, with a clear error)


def _write_atomic(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.stem, suffix=".tmp")  # mode 0600
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _exec(modname: str, path: Path, text: str) -> ModuleType:
    """Run ``text`` as module ``modname`` of file ``path``: compiled from the checked text, so neither a
    later change to the file nor a stale ``__pycache__`` entry can substitute other code. Triton reads
    kernel source through ``inspect`` (linecache): it gets the same text, pinned (no mtime: never
    reloaded from the file)."""
    mod = ModuleType(modname)
    mod.__file__ = str(path)
    linecache.cache[str(path)] = (len(text), None, text.splitlines(keepends=True), str(path))
    exec(compile(text, str(path), "exec"), mod.__dict__)
    sys.modules[modname] = mod  # triton's jit looks kernels' globals up through their module
    return mod


def load_module(key: str, generate: Callable[[], str], name: str) -> ModuleType:
    """The module for ``key`` (``generate()`` renders its text; ``name`` labels its file): imported once
    a process, from a cache entry whose bytes equal the rendering, rewriting the entry first if not."""
    modname = f"attngen_generated_{key}"
    if modname in sys.modules:
        return sys.modules[modname]
    text = generate()
    d = cache_dir()
    path = d / entry_name(name, key)
    data = text.encode("utf-8")
    try:
        if _read(path) != data:
            _write_atomic(path, data)
    except OSError as err:
        raise _unusable(d, err) from None
    return _exec(modname, path, text)

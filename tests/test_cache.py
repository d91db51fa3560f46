"""The on-disk module cache: entries checked against a fresh rendering before they run, a private
directory, clear errors for an unusable one, readable file names, and keys that follow the text."""

from __future__ import annotations

import os
import stat
import sys

import pytest
from click.testing import CliRunner

import attngen
from attngen.cli import main
from attngen.codegen.render import module_key, render_module
from attngen.runtime import cache
from attngen.driver import compile_source

from test_runtime import SPEC  # the windowed ALiBi spec the runtime tests call

as_root = os.geteuid() == 0


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    d = tmp_path / "cache"
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(d))
    monkeypatch.chdir(tmp_path)  # where a payload's open("PWNED", "w") would land
    return d


def fresh(spec=SPEC):
    """``attngen.jit(spec)`` as a new process would see it: its module not imported yet (jit imports it,
    from the cache or a new rendering)."""
    a = compile_source(spec, "<jit>")[0]
    sys.modules.pop(f"attngen_generated_{module_key([a], a.source, a.filename)}", None)
    return attngen.jit(spec)


def entry(d, fn):
    return d / f"{fn.name}-{fn.key}.py"


def rendering(fn):
    a = fn.attention
    return render_module([a], a.source, a.filename, fn.key)


def test_one_readable_private_entry_per_key(cache_dir):
    fn = fresh()
    assert hasattr(fn.module, "win")
    path = entry(cache_dir, fn)
    assert [p.name for p in cache_dir.iterdir()] == [path.name]  # no temporary files, no __pycache__
    assert path.read_text() == rendering(fn)
    assert stat.S_IMODE(cache_dir.stat().st_mode) == 0o700 and stat.S_IMODE(path.stat().st_mode) == 0o600
    assert fn.module.__name__.isidentifier() and fn.key in fn.module.__name__
    assert attngen.jit(SPEC, consts=None).key == fn.key
    assert attngen.jit(SPEC.replace("window(9)", "window(8)")).key != fn.key


def test_entry_name_is_sanitized_and_short():
    assert cache.entry_name("alibi_window", "0123") == "alibi_window-0123.py"
    assert cache.entry_name("a-b/../c\n", "k") == "a_b____c_-k.py"
    assert cache.entry_name("x" * 300, "k") == "x" * 64 + "-k.py"


@pytest.mark.parametrize("tamper", ["append", "plant", "truncate_before_def", "garbage", "empty"])
def test_an_entry_unlike_the_rendering_never_runs_and_is_replaced(cache_dir, tamper):
    a = compile_source(SPEC, "<jit>")[0]
    key = module_key([a], a.source, a.filename)
    path, good = cache_dir / f"win-{key}.py", render_module([a], a.source, a.filename, key)
    payload = '\nopen("PWNED", "w").close()\n'
    if tamper == "plant":  # what the old check accepted: the key line and a payload
        cache_dir.mkdir(mode=0o700)
        path.write_text(f'"""\nCache key: {key}\n"""{payload}')
    else:
        fresh()  # writes the entry
        if tamper == "append":
            path.write_text(good + payload)
        elif tamper == "truncate_before_def":  # valid Python, the function missing (was an AttributeError)
            cut = good[:good.index("\ndef win(")]
            compile(cut, "cut.py", "exec")
            path.write_text(cut)
        else:
            path.write_text("this is not python (a crash mid-write, say" if tamper == "garbage" else "")
    fn = fresh()
    assert hasattr(fn.module, "win")
    assert not (cache_dir.parent / "PWNED").exists()
    assert path.read_text() == good
    assert sorted(p.name for p in cache_dir.iterdir()) == [path.name]


def test_what_runs_is_the_checked_text(cache_dir, monkeypatch):
    """The module is compiled from the rendering compared with the file, not from the file read again."""
    path = entry(cache_dir, fresh())
    real_read = cache._read

    def swap_after_check(p):
        data = real_read(p)
        path.write_text('open("PWNED", "w").close()\n')  # a write racing the check
        return data

    monkeypatch.setattr(cache, "_read", swap_after_check)
    assert hasattr(fresh().module, "win") and not (cache_dir.parent / "PWNED").exists()


def test_directory_is_created_private(tmp_path, monkeypatch):
    d = tmp_path / "a" / "b" / "cache"
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(d))
    old = os.umask(0o022)
    try:
        assert cache.cache_dir() == d
    finally:
        os.umask(old)
    assert stat.S_IMODE(d.stat().st_mode) == 0o700


@pytest.mark.parametrize("mode", [0o770, 0o707, 0o722], ids=oct)
def test_directory_writable_by_others_is_refused(cache_dir, mode):
    cache_dir.mkdir()
    cache_dir.chmod(mode)
    with pytest.raises(attngen.CacheError, match="writable by group or others .*chmod 700"):
        fresh()


def test_directory_of_another_user_is_refused(tmp_path, monkeypatch):
    if as_root:
        d = tmp_path / "theirs"
        d.mkdir(mode=0o700)
        os.chown(d, 12345, -1)
    else:
        d = "/"  # root's, and not writable by others
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(d))
    with pytest.raises(attngen.CacheError, match="belongs to another user .*ATTNGEN_CACHE_DIR"):
        fresh()


@pytest.mark.parametrize("where", ["a file", "under a file", "HOME a file"])
def test_unusable_directory_is_one_clear_error(tmp_path, monkeypatch, where):
    f = tmp_path / "f"
    f.write_text("")
    if where == "HOME a file":
        monkeypatch.delenv("ATTNGEN_CACHE_DIR", raising=False)
        monkeypatch.setenv("HOME", str(f))
    else:
        monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(f if where == "a file" else f / "cache"))
    with pytest.raises(attngen.CacheError, match="module cache .* (is not a directory|is unusable).*ATTNGEN_CACHE_DIR"):
        fresh()


@pytest.mark.skipif(as_root, reason="root writes into read-only directories")
def test_read_only_directory(cache_dir):
    cache_dir.mkdir(mode=0o700)
    cache_dir.chmod(0o500)
    try:
        with pytest.raises(attngen.CacheError, match="is unusable: Permission denied.*ATTNGEN_CACHE_DIR"):
            fresh()  # empty: nothing to import, nowhere to write
        cache_dir.chmod(0o700)
        fresh()
        cache_dir.chmod(0o500)
        assert hasattr(fresh().module, "win")  # a correct entry is read without writing
    finally:
        cache_dir.chmod(0o700)


def test_cli_prints_a_cache_error_without_traceback(tmp_path, monkeypatch):
    (tmp_path / "f").write_text("")
    (tmp_path / "c.attn").write_text("attention c { mask = causal }\n")
    monkeypatch.setenv("ATTNGEN_CACHE_DIR", str(tmp_path / "f"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    r = CliRunner().invoke(main, ["verify", str(tmp_path / "c.attn"), "--device", "cpu"])
    assert r.exit_code == 1 and "Traceback" not in r.output
    assert f"error: module cache {tmp_path / 'f'} is not a directory; set ATTNGEN_CACHE_DIR" in r.stderr


def test_key_follows_everything_the_text_depends_on():
    """Two renderings with one key must be the same text: the key covers the source, the file name,
    the attentions chosen and the constants after overrides."""
    src = "attention a { const W = 4\n mask = window(W) }\nattention b { mask = causal }\n"

    def key_and_text(source=src, filename="f.attn", consts=None, name=None):
        attns = compile_source(source, filename, consts, name)
        key = module_key(attns, source, filename)
        return key, render_module(attns, source, filename, key)

    variants = [key_and_text(), key_and_text(src + "# more\n"), key_and_text(filename="g.attn"),
                key_and_text(consts={"W": 5}), key_and_text(name="a"), key_and_text(name="b")]
    assert len({k for k, _ in variants}) == len({t for _, t in variants}) == len(variants)
    assert key_and_text(consts={"W": 4}) == variants[0]  # an override equal to the default is no change

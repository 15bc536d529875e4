"""Read-only stores (issue #16): a root this user may not write (a shared research copy) opens and serves every
read, refuses every write with ReadOnlyStoreError, and nothing under it is written, reads included.

Tests run as root, whom chmod does not stop: the automatic path runs its reads in a process that drops to the
user ``nobody`` (so ``os.access`` decides, as it would for a researcher), or, without root, after chmod a-w.
"""

from __future__ import annotations

import hashlib
import json
import os
import pwd
import shutil
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import readonly_workers as workers

from pitstore import ConfigError, ReadOnlyStoreError, Settings, Store, standard_features

SRC = Path(__file__).resolve().parents[1] / "src"
WORKER = Path(__file__).resolve().parent / "readonly_workers.py"
READS = ["symbols", "read", "read_range", "historical", "historical_known", "features", "online", "online_frame",
         "versions", "resolve", "bars", "newest_rows", "indicators", "cache_hit", "verify", "stats"]
SIDECARS = {"catalog.sqlite-wal", "catalog.sqlite-shm"}


def _can_drop_root() -> bool:
    try:
        pwd.getpwnam("nobody")
    except KeyError:
        return False
    return os.geteuid() == 0 and hasattr(os, "setuid")


AS_NOBODY = _can_drop_root()


@pytest.fixture
def shared() -> Iterator[Path]:
    """A directory other users can enter (pytest's tmp_path is private to root)."""
    d = Path(tempfile.mkdtemp(prefix="pitstore-ro-"))
    d.chmod(0o755)
    yield d
    for dirpath, dirs, files in os.walk(d):
        for name in [*dirs, *files]:
            p = Path(dirpath, name)
            p.chmod(p.stat().st_mode | stat.S_IWUSR)
    shutil.rmtree(d)


def _build(root: Path, work: Path, n_symbols: int = 3, n_bars: int = 80) -> None:
    """A store as its owner leaves it: bars, the standard features, one compute-cache entry; closed."""
    work.mkdir(parents=True, exist_ok=True)
    with Store.open(root) as store:
        store.ingest(workers.bars(n_symbols, n_bars))
        store.backfill(standard_features())
        store.backfill(workers.STORED)
        sym = store.symbols()[0]
        store.get_or_compute(sym, store.bars(sym), {"n": 1}, workers.cache_probe)
    workers.bars(1, 5).write_parquet(work / "more.parquet")


def _snapshot(root: Path) -> dict[str, tuple[int, int, int, str]]:
    """Every file and directory under ``root`` (itself included): mode, size, mtime and content hash."""
    out = {}
    for path in [root, *sorted(root.rglob("*"))]:
        st = path.lstat()
        digest = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
        out[str(path.relative_to(root))] = (st.st_mode, st.st_size, st.st_mtime_ns, digest)
    return out


def _chmod_read_only(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        path.chmod(path.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def _check_round(out: dict[str, Any], root: Path, catalog_mode: str) -> None:
    for name in READS:
        assert not (isinstance(out[name], dict) and "error" in out[name]), (name, out[name])
    assert out["read_only"] is True
    assert out["symbols"] == ["S0000", "S0001", "S0002"]
    assert out["read"] == 3 * 80 and out["bars"] == 80
    assert out["historical"] == ["ok"] * 3  # as of the last bar: the last row is the answer
    assert out["cache_hit"] == [81]
    assert out["verify"] is True
    assert out["stats"] == {"read_only": True, "catalog_mode": catalog_mode, "bar_entries_live": 3}
    assert out["online"] == ["stale"] * 3  # from the offline tier, into this process's own online tier
    for key, value in out.items():
        if key.startswith("write:"):
            assert isinstance(value, dict), (key, value)
            assert value["root"] == str(root) and str(root) in value["refused"] and value["operation"]
    for cmd in ("stats", "sets", "get", "get_json"):
        assert out[f"cli:{cmd}"]["code"] == 0, out[f"cli:{cmd}"]
    assert json.loads(out["cli:stats"]["output"])["read_only"] is True
    assert "daily_core" in out["cli:sets"]["output"]
    for cmd in ("ingest", "keys"):
        refused = out[f"cli:{cmd}"]
        assert refused["code"] == 1 and "read-only" in refused["output"] and "Traceback" not in refused["output"]


def test_explicit_read_only_serves_every_read_and_refuses_every_write(shared: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    root, work = shared / "store", shared / "work"
    _build(root, work)
    before = _snapshot(root)
    monkeypatch.setenv("PITSTORE_READ_ONLY", "true")  # the CLI commands open the store themselves
    out = workers.reads(root, work, read_only=True)
    _check_round(out, root, "ro")
    after = _snapshot(root)
    # mode=ro may create SQLite's -wal/-shm beside the catalog (its lock state, needed to read safely while a
    # writer works: see pitstore.catalog.readonly); no byte of pitstore's files or the catalog changes.
    assert set(after) - set(before) <= SIDECARS
    assert {k: v for k, v in after.items() if k not in SIDECARS and k != "."} == \
        {k: v for k, v in before.items() if k != "."}


def test_an_unwritable_root_is_opened_read_only_automatically(shared: Path) -> None:
    root, work = shared / "store", shared / "work"
    _build(root, work)
    _chmod_read_only(root)
    before = _snapshot(root)
    if AS_NOBODY:
        done = subprocess.run([sys.executable, str(WORKER), "reads", str(root), str(work), "--nobody"], cwd=shared,
                              env={**os.environ, "PYTHONPATH": str(SRC)}, capture_output=True, text=True,
                              timeout=300)
        assert done.returncode == 0, done.stderr
        out = json.loads(done.stdout.splitlines()[-1])
    else:  # not root: chmod alone makes os.access say no
        out = workers.reads(root, work)
    # No writer ran: no -wal, and this user cannot create the -shm mode=ro needs, so immutable=1.
    _check_round(out, root, "immutable")
    assert _snapshot(root) == before


def test_the_store_says_which_mode_it_chose(shared: Path) -> None:
    root = shared / "store"
    _build(root, shared / "work")
    with Store.open(root) as store:
        assert store.read_only is False and store.stats()["read_only"] is False
        assert store.catalog.mode == "rw"
    with Store.open(root, read_only=True) as store:
        assert store.read_only is True and store.catalog.mode == "ro"
    _chmod_read_only(root)
    # Root ignores permissions, so os.access says yes to it: only the explicit setting makes it read-only then.
    with Store.open(root, read_only=False if AS_NOBODY else None) as store:
        assert store.read_only is (not AS_NOBODY)


def test_a_read_only_store_with_no_catalog_is_an_error_and_creates_nothing(shared: Path) -> None:
    empty = shared / "empty"
    empty.mkdir()
    with pytest.raises(ReadOnlyStoreError, match="create a catalog") as info:
        Store.open(empty, read_only=True)
    assert isinstance(info.value, ConfigError) and str(empty) in str(info.value)
    with pytest.raises(ReadOnlyStoreError):
        Store.open(shared / "missing", read_only=True)
    assert list(empty.iterdir()) == [] and not (shared / "missing").exists()


def test_read_only_setting_sources(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert Settings.load().read_only is None  # auto
    for text, value in (("1", True), ("true", True), ("yes", True), ("0", False), ("off", False), ("auto", None)):
        monkeypatch.setenv("PITSTORE_READ_ONLY", text)
        assert Settings.load().read_only is value
    monkeypatch.setenv("PITSTORE_READ_ONLY", "maybe")
    with pytest.raises(ConfigError, match="read_only"):
        Settings.load()
    monkeypatch.delenv("PITSTORE_READ_ONLY")
    (tmp_path / "pitstore.toml").write_text("[pitstore]\nread_only = true\n")
    assert Settings.load().read_only is True
    assert Settings.load(read_only=False).read_only is False  # keyword > environment > toml


def test_an_older_catalog_is_read_without_migrating_it(shared: Path) -> None:
    """A catalog from before feature entries had size and hash columns, and before some tables existed: read
    as it is (a migration would be a write), the missing parts in memory."""
    root = shared / "store"
    _build(root, shared / "work")
    with sqlite3.connect(root / "catalog.sqlite") as conn:
        conn.execute("ALTER TABLE feature_entries DROP COLUMN size")
        conn.execute("ALTER TABLE feature_entries DROP COLUMN file_hash")
        conn.execute("DROP TABLE retired_versions")
        conn.execute("DROP TABLE online_requests")
    conn.close()
    before = _snapshot(root)
    with Store.open(root, read_only=True) as store:
        assert store.read("daily_core").height == 3 * 80
        assert store.versions("daily_core")[0].version == 1
        assert store.verify().ok
    after = _snapshot(root)
    assert {k: v for k, v in after.items() if k not in SIDECARS and k != "."} == \
        {k: v for k, v in before.items() if k != "."}


@pytest.mark.slow  # a writer and a reader process
def test_a_reader_sees_consistent_snapshots_while_a_writer_ingests(shared: Path) -> None:
    """A real writer process ingests one bar of every symbol per transaction while a read-only reader process
    polls: every snapshot it reads has all symbols at the same count with exactly the writer's bars, and it
    sees the store grow (mode=ro reads the writer's WAL; it is not a frozen copy)."""
    root, n_symbols, start, final = shared / "store", 4, 30, 70
    with Store.open(root) as store:
        store.ingest(workers.prefix(n_symbols, final, start))
        store.backfill(standard_features())
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    writer = subprocess.Popen([sys.executable, str(WORKER), "write", str(root), str(n_symbols), str(final),
                               str(start)], cwd=shared, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert writer.stdout is not None and writer.stdin is not None
        assert writer.stdout.readline().strip() == "open"  # its open catalog keeps the -wal: the reader uses it
        reader = subprocess.Popen([sys.executable, str(WORKER), "watch", str(root), str(n_symbols), str(final),
                                   *(["--nobody"] if AS_NOBODY else [])],
                                  cwd=shared, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            assert reader.stdout is not None
            assert reader.stdout.readline().strip() == "open", reader.communicate(timeout=60)[1]
            writer.stdin.write("go\n")  # only now: the reader must be there while the writer works
            writer.stdin.flush()
            out, err = reader.communicate(timeout=300)
        finally:
            if reader.poll() is None:
                reader.kill()
        assert reader.returncode == 0, err
        seen = json.loads(out.splitlines()[-1])
        assert writer.stdout.readline().strip() == "done"
        writer.stdin.write("\n")
        writer.stdin.flush()
        assert writer.wait(timeout=60) == 0
    finally:
        if writer.poll() is None:
            writer.kill()
    assert seen["read_only"] is True and seen["mode"] == "ro"
    assert seen["seen"][-1] == final and len(seen["seen"]) >= 2
    assert seen["seen"] == sorted(seen["seen"])

"""Version leases in team mode go through the PostgreSQL catalog: a reader process on one "machine" (a root of
its own, so no lease file is shared) keeps `versions cleanup` and `gc` in another process (another root, the same
catalog and data) from retiring the version it reads; a SIGKILLed reader's lease goes with its session."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from cache_workers import wait_until
from servers import drop_schema

from pitstore import FeatureSet, Store, rsi
from pitstore.catalog.versions import lease_path
from pitstore.testing import synthetic_bars

# The reader: holds fs@1 open on its own root, says so, reads it when told, then exits.
_READER = """
import sys
from pitstore import Store
root, catalog_url, data = sys.argv[1:4]
with Store.open(root, catalog_url=catalog_url, data_url=data) as store, store.hold_version("fs@1"):
    print("held", flush=True)
    sys.stdin.readline()
    frame = store.read("fs@1:rsi_5", store.symbols())
    print("read", frame.height, flush=True)
"""


@pytest.fixture
def stores(tmp_path: Path, postgres_url: str, namespace: str) -> Iterator[tuple[Store, list[str]]]:
    """The cleaning side's Store (root ``b``) with fs@1 and fs@2 backfilled, and the reader's command line (root
    ``a``): one catalog schema, one data directory."""
    url = f"{postgres_url}?schema={namespace}"
    data = tmp_path / "data"
    with Store.open(tmp_path / "b", catalog_url=url, data_url=str(data)) as store:
        store.ingest(synthetic_bars(3, 200, seed=5))
        store.backfill(FeatureSet("fs", [rsi(5)]))
        store.backfill(FeatureSet("fs", [rsi(7)]))  # fs@2: fs@1 is beyond max_versions=1
        assert [v.version for v in store.versions("fs")] == [1, 2]
        yield store, [sys.executable, "-c", _READER, str(tmp_path / "a"), url, str(data)]
    drop_schema(postgres_url, namespace)


def _start(cmd: list[str]) -> subprocess.Popen[str]:
    reader = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert reader.stdout is not None
    line = reader.stdout.readline()  # blocks until the lease is held (or the child died: empty)
    assert line == "held\n", (line, reader.communicate(timeout=30))
    return reader


def _v1_files(store: Store) -> list[str]:
    return [o.path for o in store.storage.list("features") if "/v1/" in o.path]


@pytest.mark.slow  # a reader process
def test_a_reader_on_another_machine_keeps_its_version_until_it_exits(
        stores: tuple[Store, list[str]]) -> None:
    store, cmd = stores
    files = _v1_files(store)
    assert files
    reader = _start(cmd)
    try:
        report = store.cleanup_versions("fs", max_versions=1)
        assert report.busy == ["fs@1"] and report.retired == []
        assert not lease_path(store.root, "fs", 1).exists()  # not a lease file this side could have seen
        assert store.gc(max_versions=1, orphan_grace_seconds=0).busy == ["fs@1"]
        assert _v1_files(store) == files
        out, err = reader.communicate("go\n", timeout=60)  # the reader reads the version it held, then exits
        assert reader.returncode == 0, err
        assert out.strip() == "read 600"
    finally:
        if reader.poll() is None:
            reader.kill()
            reader.wait()
    report = store.cleanup_versions("fs", max_versions=1)
    assert report.retired == ["fs@1"] and report.busy == []
    assert _v1_files(store) == [] and [v.version for v in store.versions("fs")] == [2]


def _sessions(postgres_url: str, pid: int) -> int:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE application_name LIKE %s",
                           (f"pitstore-%-{pid}",)).fetchone()
    return int(row[0]) if row else 0


@pytest.mark.slow  # a reader process, SIGKILLed
def test_a_sigkilled_reader_releases_its_lease(stores: tuple[Store, list[str]], postgres_url: str) -> None:
    store, cmd = stores
    reader = _start(cmd)
    assert store.gc(max_versions=1, orphan_grace_seconds=0).busy == ["fs@1"]
    reader.kill()
    assert reader.wait(timeout=30) == -9
    # The server ends a session when it sees its socket closed: that, not a time, is what the cleanup waits for.
    wait_until(lambda: _sessions(postgres_url, reader.pid) == 0, 30, "the killed reader's sessions to end")
    report = store.gc(max_versions=1, orphan_grace_seconds=0)
    assert report.retired_versions == ["fs@1"] and report.busy == []
    assert _v1_files(store) == []


def test_a_lease_held_in_this_process_keeps_its_version_from_this_processs_cleanup(
        stores: tuple[Store, list[str]]) -> None:
    """The lease's session is never the one the cleanup tries the lock on (a session's own locks never conflict)."""
    store, _ = stores
    with store.hold_version("fs@1"):
        assert store.cleanup_versions("fs", max_versions=1, dry_run=True).busy == ["fs@1"]
        assert store.cleanup_versions("fs", max_versions=1).busy == ["fs@1"]
        with store.hold_version("fs@1"):  # shared holds stack on the one session: releasing one keeps the other
            pass
        assert store.cleanup_versions("fs", max_versions=1).busy == ["fs@1"]
    assert store.cleanup_versions("fs", max_versions=1).retired == ["fs@1"]

"""Housekeeping of a team store whose data is on a real S3-compatible server process (moto's standalone server)
and whose catalog is in the real PostgreSQL: the history-tier tiering job writes its archives as objects and
answers from them, and ``verify --repair`` rebuilds broken objects in the bucket. (The embedded versions of these
tests are test_tier.py and test_repair.py; their data helpers are reused here.)"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from polars.testing import assert_frame_equal
from s3_server import S3Server, s3_server, s3_url  # noqa: F401  (fixtures)
from servers import drop_schema
from test_repair import entities, feature_set
from test_tier import CUTOFF, FS, NOW, WEIRD, canon, fill, new, old, pg_all

from pitstore import Store
from pitstore.history import PostgresHistory
from pitstore.history.tiering import read_archive, tier
from pitstore.storage.fsspec import FsspecStorage
from pitstore.testing import synthetic_bars


@pytest.fixture
def team(postgres_url: str, namespace: str, s3_url: str, s3_server: S3Server,  # noqa: F811
         tmp_path: Path) -> Iterator[Store]:
    """A team store: PostgreSQL catalog (its own schema), data in a fresh bucket, a local root for local state."""
    schema = f"{namespace}_cat"
    with Store.open(tmp_path / "local", catalog_url=f"{postgres_url}?schema={schema}", data_url=s3_url,
                    data_options=s3_server.options) as store:
        assert isinstance(store.storage, FsspecStorage)
        yield store
    drop_schema(postgres_url, schema)


def _corrupt(store: Store, path: str, how: str) -> None:
    """Damage the object ``path`` in the bucket: remove it, or put back its bytes with one byte flipped."""
    if how == "missing":
        store.storage.delete(path)
        return
    data = bytearray(store.storage.read(path))
    data[len(data) // 2] ^= 0x55
    store.storage.put(path, bytes(data))


def _local_parquet(store: Store) -> list[Path]:
    return list(store.root.rglob("*.parquet"))


def test_tiering_writes_archives_to_the_bucket_and_reads_them_back(history: PostgresHistory, team: Store) -> None:
    fill(history, NOW)
    before = {t: pg_all(history, t) for t in (FS, WEIRD)}
    report = tier(team.root, team.catalog, history, now_us=NOW, storage=team.storage)
    assert report.files == 2 and report.rows_archived == sum(old(r, CUTOFF).height for r in before.values())
    archives = team.catalog.history_archives()
    in_bucket = {o.path: o.size for o in team.storage.list("history")}
    assert {a.path: a.size for a in archives} == in_bucket  # every archive an object, of its recorded size
    assert _local_parquet(team) == []  # the root kept only the run lock
    for table_id, rows in before.items():
        assert canon(pg_all(history, table_id)) == canon(new(rows, CUTOFF))
        assert canon(read_archive(team.storage, team.catalog, table_id)) == canon(old(rows, CUTOFF))
    again = tier(team.root, team.catalog, history, now_us=NOW, storage=team.storage)  # a rerun moves nothing
    assert again.rows_archived == 0 and again.files == 0 and len(team.catalog.history_archives()) == 2
    # gc keeps the archives (rows refer to them), verify checks each object's size and hash.
    gc = team.gc(orphan_grace_seconds=0)
    assert gc.orphan_files == [] and gc.missing_files == [] and team.verify().ok
    _corrupt(team, archives[0].path, "flipped")
    assert team.verify().problems == [{"kind": "history", "path": archives[0].path,
                                       "problem": "content does not match its hash"}]
    repaired = team.verify(repair=True)  # its rows exist nowhere else: left alone, said so
    assert [u["path"] for u in repaired.unrepairable] == [archives[0].path]


@pytest.mark.parametrize("how", ["missing", "flipped"])
def test_verify_repair_rebuilds_broken_objects(team: Store, how: str) -> None:
    """Feature entries (both segments of a symbol) and the live bar snapshot of another symbol broken in the bucket:
    repair recomputes the entries into new objects, keeps their recorded_at, and falls back to the older bar
    snapshot; afterwards verify is clean and reads answer as before (bars after the fallback are reported lost)."""
    bars = synthetic_bars(2, 80, seed=5)
    team.ingest(bars.filter(pl.int_range(pl.len()).over("symbol") < 60))
    team.backfill(feature_set())
    team.ingest(bars)
    team.backfill(feature_set())
    before = team.get_historical(entities(), "fs")
    damaged = {e.path for e in team.catalog.feature_entries("fs", 1, ["S0000"])}
    assert len(damaged) == 2
    # The incremental backfill wrote both symbols' new rows into one shared object: S0001's entry breaks too.
    broken = [e for e in team.catalog.feature_entries("fs", 1) if e.path in damaged]
    assert {e.symbol for e in broken} == {"S0000", "S0001"}
    (live_bars,) = team.catalog.live_bars(["S0001"])
    for path in damaged:
        _corrupt(team, path, how)
    _corrupt(team, live_bars.path, how)
    found = team.verify()
    assert sorted(p["path"] for p in found.problems) == sorted([*(e.path for e in broken), live_bars.path])

    report = team.verify(repair=True, feature_sets=[feature_set()])
    assert report.ok and team.verify().ok, report.to_dict()
    assert sorted(r["path"] for r in report.repaired) == sorted([*(e.path for e in broken), live_bars.path])
    # S0000's entries rebuilt in place; S0001's new rows went with the 20 bars lost in its snapshot's fallback.
    after = team.catalog.feature_entries("fs", 1, ["S0000"])
    mine = [e for e in broken if e.symbol == "S0000"]
    assert [(e.id, e.recorded_at, e.n_rows) for e in after] == [(e.id, e.recorded_at, e.n_rows) for e in mine]
    assert team.catalog.feature_entries("fs", 1, ["S0001"])[-1].last_ts <= live_bars.first_ts + 59 * 86_400_000_000
    objects: dict[str, Any] = {o.path: o.size for o in team.storage.list("features")}
    assert all(objects.get(e.path) == e.size for e in after)  # the rebuilt entries are objects in the bucket
    assert_frame_equal(team.get_historical(entities(), "fs").filter(pl.col("symbol") == "S0000"),
                       before.filter(pl.col("symbol") == "S0000"))
    assert team.bars("S0001").height == 60  # the older snapshot; the 20 bars after it are lost
    assert _local_parquet(team) == []


_TIER_CHILD = """
import sys
from pitstore import Store
from pitstore.history import PostgresHistory
from pitstore.history.tiering import tier
root, catalog_url, data_url, options, pg, schema, now = sys.argv[1:8]
with Store.open(root, catalog_url=catalog_url, data_url=data_url, data_options=options) as s, \\
        PostgresHistory(pg, schema=schema) as h:
    print("archived", tier(s.root, s.catalog, h, now_us=int(now), storage=s.storage).rows_archived, flush=True)
"""


@pytest.mark.slow  # a second real process waiting on the lock
def test_tiering_runs_one_at_a_time_across_machines(history: PostgresHistory, team: Store, postgres_url: str,
                                                     namespace: str, s3_url: str,  # noqa: F811
                                                     s3_server: S3Server, tmp_path: Path) -> None:  # noqa: F811
    """Team mode: the tiering run lock is an advisory lock in the catalog's PostgreSQL, not a file under one
    machine's root. A run in another process with a root of its own waits while this one holds it, then runs."""
    import subprocess
    import sys

    from cache_workers import wait_until
    from test_team_store import _waiting_on_advisory_lock

    from pitstore.catalog import shared_locks

    fill(history, NOW)
    locks = shared_locks(team.catalog, "tier")
    assert locks is not None
    with locks.hold("tier"):
        child = subprocess.Popen(
            [sys.executable, "-c", _TIER_CHILD, str(tmp_path / "other-machine"),
             f"{postgres_url}?schema={namespace}_cat", s3_url, s3_server.options_json, postgres_url, namespace,
             str(NOW)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        wait_until(lambda: _waiting_on_advisory_lock(postgres_url, child.pid) or child.poll() is not None, 60,
                   "the other run to wait on the tier lock")
        assert child.poll() is None, child.communicate()
        assert team.catalog.history_archives() == []
    out, err = child.communicate(timeout=60)
    assert child.returncode == 0, err
    assert int(out.split()[-1]) > 0 and len(team.catalog.history_archives()) == 2
    assert not (tmp_path / "other-machine" / "history").exists()  # no file lock under its root

"""The catalog conformance suite (:mod:`pitstore.testing.catalog`) on SQLite, in memory and on PostgreSQL, and
what only one backend has: the memory catalog's URL and sharing, the PostgreSQL catalog's schema, URL, errors and
advisory locks. PostgreSQL is the real local server, one schema per test."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from servers import drop_schema, free_port

from pitstore import Store, standard_features
from pitstore.catalog import MemoryCatalog, SqliteCatalog, open_catalog, pg_schema
from pitstore.catalog.postgres import DEFAULT_SCHEMA, PostgresCatalog, catalog_target
from pitstore.config import Settings
from pitstore.errors import BackendError, BackendUnavailableError, ConfigError, ReadOnlyStoreError
from pitstore.testing.catalog import CatalogConformance, Opener, bar


def _terminate(conn: psycopg.Connection[Any], kind: str) -> int:
    """End this process's ``kind`` sessions ("catalog" or "lock"), never another test's; returns how many."""
    rows = conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = %s",
                        (f"pitstore-{kind}-{os.getpid()}",)).fetchall()
    return len(rows)


class TestSqliteCatalog(CatalogConformance):
    @pytest.fixture
    def opener(self, tmp_path: Path) -> Iterator[Opener]:
        opened: list[SqliteCatalog] = []

        def open_one() -> SqliteCatalog:
            opened.append(SqliteCatalog(tmp_path / "catalog.sqlite"))
            return opened[-1]

        yield open_one
        for c in opened:
            c.close()


class TestMemoryCatalog(CatalogConformance):
    @pytest.fixture
    def opener(self, request: pytest.FixtureRequest) -> Iterator[Opener]:
        opened: list[MemoryCatalog] = []
        name = f"test-{request.node.nodeid}-{time.monotonic_ns()}"  # a state of this test's own

        def open_one() -> MemoryCatalog:
            opened.append(MemoryCatalog(name))
            return opened[-1]

        yield open_one
        for c in opened:
            c.close()


# --- memory only --------------------------------------------------------------------------------------------


def test_memory_urls_name_a_state_per_name_and_root(tmp_path: Path) -> None:
    def opened(url: str, root: Path, *, read_only: bool = False) -> Any:
        return open_catalog(Settings.load(root=root, catalog_url=url), read_only=read_only)

    tag = f"m{time.monotonic_ns()}"
    with pytest.raises(ReadOnlyStoreError, match="none to read"):
        opened(f"memory://{tag}", tmp_path / "a", read_only=True)
    a = opened(f"memory://{tag}", tmp_path / "a")
    assert isinstance(a, MemoryCatalog) and a.mode == "rw"
    first = a.commit_bars(bar("A"), None)
    reader = opened(f"memory://{tag}", tmp_path / "a", read_only=True)
    assert reader.mode == "ro" and reader.live_bars() == [first]
    with pytest.raises(ReadOnlyStoreError):
        reader.commit_bars(bar("B"), None)
    assert opened(f"memory://{tag}", tmp_path / "b").live_bars() == []  # another root: another store
    assert opened(f"memory://{tag}x", tmp_path / "a").live_bars() == []  # another name
    a.close()
    a.close()  # idempotent
    with pytest.raises(BackendError, match="closed"):
        a.live_bars()
    assert opened(f"memory://{tag}", tmp_path / "a").live_bars() == [first]  # the rows outlive the catalogs
    assert Settings.load(root=tmp_path, catalog_url="memory://").catalog_location == "memory://"
    for bad in ("memory://x?y=1", "sqlite:///x"):
        with pytest.raises(ConfigError):
            opened(bad, tmp_path / "a")


def test_a_store_on_a_memory_catalog_answers_as_on_sqlite(tmp_path: Path) -> None:
    """End to end: ingest, backfill, a restatement and point-in-time reads give the same frames on both."""
    from pitstore.testing import synthetic_bars

    bars = synthetic_bars(3, 80)
    restated = bars.with_columns(*(bars[c] * 1.01 for c in ("open", "high", "low", "close")))
    entities = bars.select("symbol", "ts")
    seen = []
    for url in (None, f"memory://e2e-{time.monotonic_ns()}"):
        root = tmp_path / ("mem" if url else "sqlite")
        with Store.open(root, catalog_url=url, online_url="memory://") as store:
            store.ingest(bars)
            store.backfill(standard_features())
            before = datetime.fromtimestamp(store.catalog.live_bars()[0].recorded_at / 1e6, UTC)
            store.ingest(restated, replace_range=True)
            store.backfill(standard_features())
            stats = {k: v for k, v in store.stats().items() if k.endswith(("_live", "_total"))}
            seen.append((store.get_historical(entities, "daily_core"),
                         store.get_historical(entities, "daily_core", as_known_at=before), stats,
                         store.get_online(["S0000"], "daily_core")[0].values))
        assert not (root / "catalog.sqlite").exists() if url else (root / "catalog.sqlite").exists()
    (now_s, then_s, stats_s, online_s), (now_m, then_m, stats_m, online_m) = seen
    assert now_s.equals(now_m) and then_s.equals(then_m) and online_s == online_m
    assert stats_s == stats_m and stats_m["bar_entries_total"] == 6
    assert not now_m.equals(then_m)  # the restatement is visible now, not as known before it


@pytest.fixture
def pg_url(postgres_url: str, namespace: str) -> Iterator[str]:
    """A catalog URL of a schema of this test's own, dropped afterwards."""
    yield f"{postgres_url}?schema={namespace}"
    drop_schema(postgres_url, namespace)


class TestPostgresCatalog(CatalogConformance):
    @pytest.fixture
    def opener(self, pg_url: str) -> Iterator[Opener]:
        opened: list[PostgresCatalog] = []

        def open_one() -> PostgresCatalog:
            opened.append(PostgresCatalog(pg_url))
            return opened[-1]

        yield open_one
        for c in opened:
            c.close()


# --- PostgreSQL only ---------------------------------------------------------------------------------------


def test_schema_is_created_once_with_its_version_row(pg_url: str, postgres_url: str, namespace: str) -> None:
    openers: list[PostgresCatalog] = []
    threads = [threading.Thread(target=lambda: openers.append(PostgresCatalog(pg_url))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(openers) == 4
    with psycopg.connect(postgres_url) as conn:
        rows = conn.execute(f'SELECT component, version FROM "{namespace}".schema_version ORDER BY version'
                            ).fetchall()
    assert rows == [("catalog", v) for v in range(1, pg_schema.SCHEMA_VERSION + 1)]  # each migration once
    for c in openers:
        c.close()


def test_schema_comes_from_the_url_then_the_setting_then_the_default() -> None:
    assert catalog_target("postgresql://h/db?schema=mine&sslmode=disable", "other") == \
        ("postgresql://h/db?sslmode=disable", "mine")
    assert catalog_target("postgresql://h/db", "other") == ("postgresql://h/db", "other")
    assert catalog_target("postgres://h/db") == ("postgres://h/db", DEFAULT_SCHEMA)
    for bad in ("mysql://h/db", "postgresql://h/db?schema=", "postgresql://h/db?nonsense=1"):
        with pytest.raises(ConfigError):
            catalog_target(bad)


def test_unreachable_server_is_backend_unavailable() -> None:
    with pytest.raises(BackendUnavailableError, match="unavailable"):
        PostgresCatalog(f"postgresql://postgres@127.0.0.1:{free_port()}/test?schema=x", connect_timeout=2)


def test_a_lost_connection_is_replaced(pg_url: str, postgres_url: str) -> None:
    catalog = PostgresCatalog(pg_url)
    first = catalog.commit_bars(bar("A"), None)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the server ends every catalog session
        _terminate(conn, "catalog")
    assert catalog.live_bars() == [first]  # a read: retried on a new connection
    catalog.close()
    catalog = PostgresCatalog(pg_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        _terminate(conn, "catalog")
    second = catalog.commit_bars(bar("A", n=11), first.id)  # a write lost before COMMIT: rolled back, retried
    assert catalog.live_bars() == [second] and len(catalog.all_bar_entries()) == 2
    catalog.close()


def test_read_only_catalog(pg_url: str) -> None:
    with pytest.raises(ReadOnlyStoreError, match="none to read"):
        PostgresCatalog(pg_url, read_only=True)
    writer = PostgresCatalog(pg_url)
    writer.commit_bars(bar("A"), None)
    reader = PostgresCatalog(pg_url, read_only=True)
    assert reader.mode == "ro" and [e.symbol for e in reader.live_bars()] == ["A"]
    with pytest.raises(ReadOnlyStoreError):
        reader.commit_bars(bar("B"), None)
    with pytest.raises(ReadOnlyStoreError):
        reader.vacuum()
    writer.close()
    reader.close()


def test_a_newer_catalog_version_is_refused(pg_url: str, postgres_url: str, namespace: str) -> None:
    PostgresCatalog(pg_url).close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f"INSERT INTO \"{namespace}\".schema_version (component, version) VALUES ('catalog', 99)")
    with pytest.raises(BackendError, match="newer"):
        PostgresCatalog(pg_url)


def test_a_broken_schema_is_a_backend_error(pg_url: str, postgres_url: str, namespace: str) -> None:
    catalog = PostgresCatalog(pg_url)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP TABLE "{namespace}".cache_entries')
    with pytest.raises(BackendError, match="no pitstore catalog"):
        catalog.cache_get("k")
    catalog.close()


def test_every_catalog_read_wraps_driver_errors(pg_url: str, postgres_url: str, namespace: str) -> None:
    """Every read of the catalog protocols, on a schema dropped behind the catalog's back: the error tree's
    BackendError naming the catalog, caused by psycopg's error (never psycopg's own error raised)."""
    catalog = PostgresCatalog(pg_url)
    catalog.commit_bars(bar("A"), None)
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        conn.execute(f'DROP SCHEMA "{namespace}" CASCADE')
    reads: list[Any] = [
        catalog.names, lambda: catalog.versions("x"), catalog.live_bars, lambda: catalog.live_bars(as_known_at=1),
        lambda: catalog.bar_history("A", 0), catalog.all_bar_entries, lambda: catalog.feature_entries("fs", 1),
        lambda: catalog.feature_entries("fs", 1, ["A"], 5), catalog.all_feature_entries, lambda: catalog.cache_get("k"),
        catalog.cache_entries, catalog.cache_stats, catalog.history_archives,
        lambda: catalog.history_synced("t@1", [1]), lambda: catalog.top_requested(3), catalog.counts,
        catalog.referenced_paths, catalog.replay_from, catalog.store_id,
    ]
    for read in reads:
        with pytest.raises(BackendError, match=f"schema '{namespace}'") as err:
            read()
        assert isinstance(err.value.__cause__, psycopg.Error), read
    catalog.close()


# --- advisory locks ----------------------------------------------------------------------------------------


@pytest.fixture
def two_locks(pg_url: str) -> Iterator[tuple[Any, Any]]:
    """Two catalogs' cache locks: two processes' views of one store's locks."""
    a, b = PostgresCatalog(pg_url), PostgresCatalog(pg_url)
    yield a.key_locks("cache"), b.key_locks("cache")
    a.close()
    b.close()


def test_advisory_lock_excludes_other_sessions(two_locks: tuple[Any, Any]) -> None:
    one, two = two_locks
    with one.hold("k") as held:
        assert held
        with two.hold("k", blocking=False) as other:
            assert not other
        t0 = time.monotonic()
        with two.hold("k", timeout=0.3) as other:
            assert not other
        assert 0.25 <= time.monotonic() - t0 < 5
        with two.hold("other-key", blocking=False) as other:
            assert other  # keys are independent
    with two.hold("k", blocking=False) as other:
        assert other
    assert one.remove_unused() == 0


def test_a_waiter_takes_over_when_the_holders_session_ends(two_locks: tuple[Any, Any], postgres_url: str) -> None:
    one, two = two_locks
    got = threading.Event()
    entered = threading.Event()

    def holder() -> None:
        with one.hold("k"):  # its release finds the session gone: the lock went with it
            entered.set()
            got.wait(30)

    t = threading.Thread(target=holder)
    t.start()
    assert entered.wait(10)
    with psycopg.connect(postgres_url, autocommit=True) as conn:  # the holder's session dies (a killed holder)
        assert _terminate(conn, "lock") == 1
    with two.hold("k", timeout=10) as held:
        assert held
    got.set()
    t.join(10)


# --- migration of catalogs written before bar segments -------------------------------------------------------


def test_a_sqlite_catalog_without_bar_parts_is_read_and_migrated(tmp_path: Path) -> None:
    path = tmp_path / "catalog.sqlite"
    with closing(SqliteCatalog(path)) as c:
        old = c.commit_bars(bar("AAA"), None)
    with sqlite3.connect(path) as conn:  # the layout before segments
        conn.execute("ALTER TABLE bar_entries DROP COLUMN parts")
    with closing(SqliteCatalog(path, read_only=True)) as ro:  # read as it is, nothing written
        assert ro.live_bars() == [old]
    with sqlite3.connect(path) as conn:
        assert "parts" not in {r[1] for r in conn.execute("PRAGMA table_info(bar_entries)")}
    with closing(SqliteCatalog(path)) as rw:
        assert rw.live_bars() == [old]
        parts = '[["a",-1,10,"h"],["b",0,1,"g"]]'
        new = rw.commit_bars(bar("AAA", n=11)._replace(parts=parts), old.id)
        assert rw.live_bars() == [new] and "b" in rw.referenced_paths()


def test_a_postgres_catalog_of_version_1_is_read_and_migrated(pg_url: str, postgres_url: str,
                                                              namespace: str) -> None:
    with closing(PostgresCatalog(pg_url)) as c:
        old = c.commit_bars(bar("AAA"), None)
    with psycopg.connect(postgres_url) as conn:  # back to the layout of version 1
        conn.execute(f'ALTER TABLE "{namespace}".bar_entries DROP COLUMN parts')
        conn.execute(f'DROP TABLE "{namespace}".commit_clock')
        conn.execute(f'DELETE FROM "{namespace}".schema_version WHERE version > 1')
    with closing(PostgresCatalog(pg_url, read_only=True)) as ro:
        assert ro.live_bars() == [old] and ro.all_bar_entries() == [old]
    with closing(PostgresCatalog(pg_url)) as rw:
        assert rw.live_bars() == [old]
        parts = '[["a",-1,10,"h"],["b",0,1,"g"]]'
        new = rw.commit_bars(bar("AAA", n=11)._replace(parts=parts), old.id)
        assert rw.live_bars() == [new] and "b" in rw.referenced_paths()

"""Team mode: a Store whose catalog is in PostgreSQL (the real local server, one schema per test) answers exactly
as the embedded store does; across real processes, compute-cache keys are computed once (advisory locks) and
racing ingests leave one live snapshot per symbol."""

from __future__ import annotations

import json
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psycopg
import pytest
from cache_workers import Child, digest, log_lines, make_raw, slow_summary, starts, summarise, wait_until
from ingest_workers import SYMBOLS, ingest_interleaved_team, interleaved_bars
from s3_server import S3Server, s3_server, s3_url  # noqa: F401  (fixtures)
from servers import drop_schema
from spawn import run_processes

from pitstore import Store, standard_features
from pitstore.catalog.postgres import PostgresCatalog
from pitstore.ops.housekeeping import DATA_DIRS
from pitstore.storage.fsspec import FsspecStorage
from pitstore.testing import synthetic_bars


@pytest.fixture
def catalog_url(postgres_url: str, namespace: str) -> Iterator[str]:
    yield f"{postgres_url}?schema={namespace}"
    drop_schema(postgres_url, namespace)


def _open(kind: str, root: Path, catalog_url: str, request: pytest.FixtureRequest) -> Store:
    """``kind``: catalog, then ``+s3`` for data in a fresh bucket of the real S3-compatible server process."""
    data: dict[str, Any] = {}
    if kind.endswith("+s3"):
        server: S3Server = request.getfixturevalue("s3_server")
        data = {"data_url": request.getfixturevalue("s3_url"), "data_options": server.options}
    return Store.open(root, catalog_url=catalog_url if kind.startswith("postgres") else None, **data)


def _answers(store: Store, log_dir: Path) -> dict[str, Any]:
    """Everything a user sees from one scripted session, free of ids, paths and clocks."""
    fs = standard_features()
    out: dict[str, Any] = {"version": store.register(fs)}
    bars = synthetic_bars(4, 300, seed=3)
    out["ingest"] = _plain(store.ingest(bars.filter(pl.col("ts") < pl.col("ts").max() - pl.duration(days=20))))
    out["backfill1"] = _plain(store.backfill(fs))
    known = datetime.now(UTC)
    time.sleep(0.002)  # the restatement below is recorded after `known`
    restated = bars.with_columns(pl.when(pl.int_range(pl.len()) == 250).then(pl.col(c) * 1.01)
                                 .otherwise(pl.col(c)).alias(c) for c in ("open", "high", "low", "close"))
    out["ingest2"] = _plain(store.ingest(restated))
    out["backfill2"] = _plain(store.backfill(fs))
    rng = np.random.default_rng(0)
    ts = bars["ts"].dt.epoch("us").to_numpy()
    entities = pl.DataFrame({"symbol": rng.choice(["S0000", "S0001", "S0002", "S0003", "NOPE"], 2000),
                             "ts": pl.Series(rng.integers(ts.min() - 86_400_000_000, ts.max(), 2000))
                             .cast(pl.Datetime("us", "UTC"))})
    out["historical"] = store.get_historical(entities, "daily_core").to_dicts()
    out["historical_then"] = store.get_historical(entities, "daily_core", as_known_at=known).to_dicts()
    when = bars["ts"][100]
    v = store.get_features("S0001", when, ["daily_core:ret_5d", "daily_core:vol_20d"])
    out["features"] = (v.symbol, v.ts, v.status, v.values)
    out["read"] = store.read("daily_core", ["S0002"]).to_dicts()
    config = {"log": str(log_dir), "name": "smoke", "k": 2}
    raw = make_raw("AAA")
    first = store.get_or_compute("AAA", raw, config, slow_summary)
    again = store.get_or_compute("AAA", raw, config, slow_summary)
    out["cache"] = (first.to_dicts(), again.to_dicts(), starts(log_dir, "smoke"))
    stats = store.stats()
    out["stats"] = {k: stats[k] for k in ("feature_sets", "versions", "bar_entries_live", "bar_entries_total",
                                          "bars_live", "feature_entries_live", "feature_entries_total",
                                          "feature_rows_live")}
    out["cache_stats"] = {k: stats["cache"][k] for k in ("entries", "hits", "misses", "corruptions")}
    out["verify"] = store.verify().ok
    gc = store.gc(retention_weeks=0, orphan_grace_seconds=0)
    out["gc"] = (len(gc.stale_entries), gc.missing_files, len(gc.orphan_files), gc.vacuumed)
    out["after_gc"] = (store.verify().ok, store.stats()["cache"]["entries"], store.symbols())
    return out


def _plain(report: Any) -> dict[str, Any]:
    return {k: v for k, v in vars(report).items() if k != "seconds"}


@pytest.fixture(scope="module")
def embedded_answers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("embedded")
    (base / "log").mkdir()
    with Store.open(base / "store") as store:
        return _answers(store, base / "log")


@pytest.mark.parametrize("kind", ["sqlite", "postgres", "sqlite+s3", "postgres+s3"])
def test_store_api_answers_as_the_embedded_store(kind: str, tmp_path: Path, catalog_url: str,
                                                 embedded_answers: dict[str, Any],
                                                 request: pytest.FixtureRequest) -> None:
    (tmp_path / "log").mkdir()
    with _open(kind, tmp_path / "store", catalog_url, request) as store:
        assert isinstance(store.catalog, PostgresCatalog) == kind.startswith("postgres")
        got = _answers(store, tmp_path / "log")
        if kind.endswith("+s3"):
            # Every referenced file is an object in the bucket; the root holds local state only.
            assert isinstance(store.storage, FsspecStorage)
            stored = {o.path for top in DATA_DIRS for o in store.storage.list(top)}
            assert store.catalog.referenced_paths() <= stored and stored
            assert list((tmp_path / "store").rglob("*.parquet")) == []
    assert got.keys() == embedded_answers.keys()
    for key in got:
        assert got[key] == embedded_answers[key], key
    if kind.startswith("postgres"):
        assert not (tmp_path / "store" / "catalog.sqlite").exists()  # the catalog is on the server only


def test_a_second_store_on_the_same_catalog_and_root_sees_everything(tmp_path: Path, catalog_url: str) -> None:
    root = tmp_path / "shared"
    with Store.open(root, catalog_url=catalog_url) as one, Store.open(root, catalog_url=catalog_url) as two:
        one.ingest(synthetic_bars(2, 100))
        one.backfill(standard_features())
        assert two.symbols() == ["S0000", "S0001"] and two.versions("daily_core")[0].version == 1
        assert two.read("daily_core").equals(one.read("daily_core"))
        assert two.catalog.store_id() == one.catalog.store_id()


def test_catalog_url_comes_from_the_environment(tmp_path: Path, catalog_url: str,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PITSTORE_CATALOG_URL", catalog_url)
    with Store.open(tmp_path / "s") as store:
        assert isinstance(store.catalog, PostgresCatalog)
        assert store.stats()["catalog_mode"] == "rw"


def test_the_command_line_on_a_team_store(tmp_path: Path, catalog_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """With PITSTORE_CATALOG_URL the commands find the store by its catalog, not by a catalog.sqlite file."""
    from clirun import run, run_json

    monkeypatch.setenv("PITSTORE_CATALOG_URL", catalog_url)
    root = tmp_path / "team"
    synthetic_bars(2, 60, seed=9).write_parquet(tmp_path / "bars.parquet")
    assert "postgresql://" in run("init", "--root", root) and "?schema=" in run("init", "--root", root)
    run("ingest", tmp_path / "bars.parquet", "--root", root)
    run("backfill", "--root", root)
    assert run_json("stats", "--root", root, "--json")["bars_live"] == 2 * 60
    assert not (root / "catalog.sqlite").exists()


# --- across processes ------------------------------------------------------------------------------------


@pytest.mark.slow  # three real processes
@pytest.mark.parametrize("data", ["root", "s3"])
def test_three_processes_compute_each_of_eight_keys_once(tmp_path: Path, catalog_url: str, data: str,
                                                         request: pytest.FixtureRequest) -> None:
    """3 processes, each its own Store on one PostgreSQL catalog and the same data (a shared root, or one bucket of
    the real S3-compatible server process, each process with a root of its own), call 8 keys (0.3 s each) in
    different orders, all at once: each key is computed exactly once, and every process gets the same results."""
    root, log_dir = tmp_path / "store", tmp_path / "log"
    log_dir.mkdir()
    n_keys, n_procs = 8, 3
    configs = [{"log": str(log_dir), "name": f"k{i}", "k": i + 1, "sleep": 0.3} for i in range(n_keys)]
    symbols = [f"S{i % 3}" for i in range(n_keys)]
    where: dict[str, Any] = {}
    if data == "s3":
        server: S3Server = request.getfixturevalue("s3_server")
        where = {"data_url": request.getfixturevalue("s3_url"), "data_options": server.options}
    roots = [root if data == "root" else tmp_path / f"local{i}" for i in range(n_procs)]
    Store.open(root, catalog_url=catalog_url, **where).close()  # the schema exists before the children race to open it
    plans = [list(range(n_keys)), list(reversed(range(n_keys))), [i for p in zip(range(4), range(4, 8),
                                                                                strict=True) for i in p]]
    children = [Child() for _ in range(n_procs)]
    try:
        for child, plan, child_root in zip(children, plans, roots, strict=True):
            child.expect("ready")
            calls = [{"symbol": symbols[i], "config": configs[i], "compute": "slow_summary"} for i in plan * 2]
            child.send({"op": "many", "root": str(child_root), "catalog_url": catalog_url, "calls": calls, **where})
            child.expect("waiting")
        for child in children:
            child.send("go")
        reports = [json.loads(child.expect("report", timeout=120)) for child in children]
        codes = [child.finish() for child in children]
    finally:
        for child in children:
            child.__exit__()
    assert codes == [0] * n_procs, [c.stderr[-2000:] for c in children]
    assert max(r["t0"] for r in reports) < min(r["t1"] for r in reports), "the processes did not overlap"
    want = {f"k{i}": digest(summarise(make_raw(symbols[i]), configs[i])) for i in range(n_keys)}
    for r in reports:
        assert {name: d for name, d in r["digests"]} == want
    for i in range(n_keys):
        assert [ln.split()[0] for ln in log_lines(log_dir, f"k{i}")] == ["start", "end"], f"k{i}"
    computers = {log_lines(log_dir, f"k{i}")[0].split()[1] for i in range(n_keys)}
    assert len(computers) > 1, "one process computed every key: the others never raced"
    with Store.open(root, catalog_url=catalog_url, **where) as store:
        s = store.stats()["cache"]
        assert (s["misses"], s["hits"], s["entries"]) == (n_keys, n_procs * 2 * n_keys - n_keys, n_keys)
        assert store.verify().ok
        stored = {o.path for o in store.storage.list("cache")}
        assert stored == {e.path for e in store.catalog.cache_entries()}  # one object per key, no second copy
        if data == "s3":
            assert isinstance(store.storage, FsspecStorage) and not list(tmp_path.rglob("*.parquet"))
    for r in roots:
        assert not (r / "cache" / ".locks").exists()  # the locks were advisory locks, not files


def _waiting_on_advisory_lock(postgres_url: str, pid: int) -> bool:
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        row = conn.execute("SELECT count(*) FROM pg_locks l JOIN pg_stat_activity a USING (pid) WHERE"
                           " l.locktype = 'advisory' AND NOT l.granted AND a.application_name = %s",
                           (f"pitstore-lock-{pid}",)).fetchone()
    return bool(row and row[0])


@pytest.mark.slow  # real processes and a SIGKILL
def test_a_waiter_takes_over_from_a_killed_holder(tmp_path: Path, catalog_url: str, postgres_url: str) -> None:
    """A holds a key's advisory lock (computing, stuck); B waits on it in the server; SIGKILL A: its session
    ends, B computes the key and stores it for everyone."""
    root, log_dir, gate = tmp_path / "store", tmp_path / "log", tmp_path / "gate-never-opened"
    log_dir.mkdir()
    config = {"log": str(log_dir), "name": "takeover", "k": 5}
    c = {"symbol": "AAA", "config": config, "compute": "slow_summary"}
    Store.open(root, catalog_url=catalog_url).close()
    with Child(env={"CACHE_TEST_GATE": str(gate)}) as a, Child() as b:
        a.expect("ready")
        b.expect("ready")
        a.send({"op": "get", "root": str(root), "catalog_url": catalog_url, "call": c})
        a.expect("started")
        wait_until(lambda: starts(log_dir, "takeover") == 1, 30, "A to start computing")
        b.send({"op": "get", "root": str(root), "catalog_url": catalog_url, "call": c})
        b.expect("started")
        wait_until(lambda: _waiting_on_advisory_lock(postgres_url, b.proc.pid), 30, "B to wait on the lock")
        assert starts(log_dir, "takeover") == 1
        assert a.kill() == -signal.SIGKILL
        done = b.expect("done", timeout=20)
        assert b.finish() == 0, b.stderr
    assert done == digest(summarise(make_raw("AAA"), config))
    assert [ln.split()[0] for ln in log_lines(log_dir, "takeover")] == ["start", "start", "end"]
    with Store.open(root, catalog_url=catalog_url) as store:
        store.get_or_compute("AAA", make_raw("AAA"), config, slow_summary)
        assert starts(log_dir, "takeover") == 2 and store.verify().ok  # a hit


@pytest.mark.slow  # concurrent real processes
def test_concurrent_ingests_of_overlapping_symbols_leave_one_live_snapshot(tmp_path: Path, catalog_url: str) -> None:
    """3 real processes, each its own Store on one PostgreSQL catalog, ingest interleaved bars of the same
    symbols at once: all succeed, each symbol has one live snapshot holding every process's bars, and one
    snapshot per ingest in its history."""
    root = tmp_path / "store"
    Store.open(root, catalog_url=catalog_url).close()
    n_proc, n = 3, 40
    results = run_processes(ingest_interleaved_team, [(str(root), catalog_url, i, n_proc, n) for i in range(n_proc)])
    assert [r for _, r in results if isinstance(r, str)] == []
    expected = pl.concat([interleaved_bars(i, n_proc, n) for i in range(n_proc)]).sort("symbol", "ts")
    with Store.open(root, catalog_url=catalog_url) as store:
        live = store.catalog.live_bars()
        assert sorted(e.symbol for e in live) == sorted(SYMBOLS)  # one live entry per symbol
        for s in SYMBOLS:
            assert store.bars(s).equals(expected.filter(pl.col("symbol") == s))
            assert len([e for e in store.catalog.all_bar_entries() if e.symbol == s]) == n_proc
        assert store.verify().ok


def test_cache_hits_on_object_storage_fetch_an_object_once_per_process(tmp_path: Path, catalog_url: str,
                                                                      request: pytest.FixtureRequest) -> None:
    """A result this process decoded (every byte checked) is served again without fetching its object: the
    object is deleted under it and the next hit still answers, counted as a hit. A new process has nothing kept,
    fetches, finds the object gone and recomputes; a local store checks its file on every hit."""
    (tmp_path / "log").mkdir()
    config = {"log": str(tmp_path / "log"), "name": "once", "k": 2}
    raw = make_raw("AAA")
    with _open("postgres+s3", tmp_path / "a", catalog_url, request) as store:
        first = store.get_or_compute("AAA", raw, config, slow_summary)
        assert store.get_or_compute("AAA", raw, config, slow_summary).equals(first)  # decoded from the object
        [entry] = store.catalog.cache_entries("AAA")
        store.storage.delete(entry.path)
        assert store.get_or_compute("AAA", raw, config, slow_summary).equals(first)
        assert starts(tmp_path / "log", "once") == 1
        assert store.catalog.cache_stats()[0].hits == 2
    with _open("postgres+s3", tmp_path / "b", catalog_url, request) as other:
        assert other.get_or_compute("AAA", raw, config, slow_summary).equals(first)
        assert starts(tmp_path / "log", "once") == 2  # the object was gone: found on the fetch, recomputed
        assert other.catalog.cache_stats()[0].corruptions == 1
    local = {"log": str(tmp_path / "log"), "name": "local", "k": 2}
    with Store.open(tmp_path / "c") as store:
        store.get_or_compute("AAA", raw, local, slow_summary)
        store.get_or_compute("AAA", raw, local, slow_summary)
        [entry] = store.catalog.cache_entries("AAA")
        store.storage.delete(entry.path)
        store.get_or_compute("AAA", raw, local, slow_summary)
        assert starts(tmp_path / "log", "local") == 2  # a local file is checked on every hit

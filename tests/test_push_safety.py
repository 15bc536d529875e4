"""A push is all or nothing per bar (issue #16, items 1 and 6): when computing or writing online fails, nothing
advances, the error is raised, and the same push retried computes, serves and stores the bar. Online rows a
killed pushing process computed from bars it never stored are dropped before a new process serves them."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sqlite3
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import redis
from push_workers import killable_fs, push_then_wait
from servers import RedisServer

import pitstore
from pitstore import BackendError, FeatureSet, SchemaMismatchError, Store
from pitstore.online import SqliteOnlineStore
from pitstore.testing import synthetic_bars

MINUTE = timedelta(minutes=1)
NOW_MINUTE = datetime.now(UTC).replace(second=0, microsecond=0)
_FAIL = {"on": False}  # makes `fragile` raise: a user's Python feature that fails on some bar


@pitstore.feature
def fragile(b: pl.DataFrame) -> pl.Series:
    """The close, or an error while the test says so."""
    if _FAIL["on"]:
        raise RuntimeError("fragile feature failed")
    return b["close"]


def _bars(n: int, *, seed: int = 0, symbols: int = 1) -> pl.DataFrame:
    """1-minute bars whose last one closes at the current minute."""
    bars = synthetic_bars(symbols, n, timeframe="1m", start=datetime(2024, 1, 2, tzinfo=UTC), seed=seed)
    last = bars["ts"].max()
    assert isinstance(last, datetime)
    return bars.with_columns(pl.col("ts") + (NOW_MINUTE - last))


def _set(name: str, *features: Any) -> FeatureSet:
    return FeatureSet(name, list(features), timeframe="1m", ttl=timedelta(hours=12))


MAIN = _set("main", pitstore.sma(5), pitstore.rsi(3),
            pitstore.expr("hl", (pl.col("high") - pl.col("low")) / pl.col("close")))


def _batch(tmp: Path, bars: pl.DataFrame, fs: FeatureSet) -> pl.DataFrame:
    with Store.open(tmp, online_url="memory://") as s:
        s.ingest(bars)
        s.backfill(fs)
        out: pl.DataFrame = s.read(fs.name)
        return out


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _online_row(want: pl.DataFrame, fs: FeatureSet, ts: datetime) -> tuple[int, tuple[float | None, ...]]:
    row = want.filter(pl.col("ts") == ts).row(0, named=True)
    return _us(ts), tuple(row[c] for c in fs.columns)


@pytest.fixture
def store59(tmp_path: Path) -> Iterator[tuple[Store, pl.DataFrame]]:
    """The issue's repro: 60 bars of one symbol, 59 ingested and backfilled (online tier: SQLite)."""
    bars = _bars(60)
    with Store.open(tmp_path / "s", online_url="sqlite://") as s:
        s.ingest(bars.head(59))
        s.backfill(MAIN)
        yield s, bars


def test_the_issue_repro_pushes_and_stores_the_60th_bar(store59: tuple[Store, pl.DataFrame], tmp_path: Path) -> None:
    store, bars = store59
    report = store.push(bars.tail(1))
    assert (report.bars, report.duplicates) == (1, 0)
    want = _batch(tmp_path / "a", bars, MAIN)
    assert report.rows["main@1"].equals(want.tail(1))
    assert store.push(bars.tail(1)).duplicates == 1  # now it is one
    assert store.flush() == 1
    assert store.bars("S0000").height == 60
    assert store.read("main").equals(want)


def test_a_failing_feature_advances_nothing_and_the_retry_is_exact(tmp_path: Path) -> None:
    """Two sets: `main` (window, TA-Lib, expression) is stepped before `other`'s Python feature raises. Nothing
    may stay advanced: the retry is no duplicate, and its rows and the stored rows are a batch backfill's."""
    other = _set("other", fragile)
    bars = _bars(62)
    with Store.open(tmp_path / "s", online_url="sqlite://") as s:
        s.ingest(bars.head(59))
        s.backfill(MAIN)
        s.backfill(other)
        s.push(bars[59:60], feature_sets=[MAIN, other])
        before = s.get_online("S0000", "main")[0]
        _FAIL["on"] = True
        try:
            with pytest.raises(RuntimeError, match="fragile"):
                s.push(bars[60:62])  # two bars of the symbol: two rounds, both must be undone
        finally:
            _FAIL["on"] = False
        assert s.live.pending == 1
        assert s.get_online("S0000", "main")[0] == before  # nothing of the failed push is served
        report = s.push(bars[60:62])
        assert (report.bars, report.duplicates) == (2, 0)
        want = {fs.name: _batch(tmp_path / fs.name, bars, fs) for fs in (MAIN, other)}
        for name, frame in want.items():
            assert report.rows[f"{name}@1"].equals(frame.tail(2))
        assert s.flush() == 3
        assert s.bars("S0000").height == 62
        for name, frame in want.items():
            assert s.read(name).equals(frame)


def test_a_locked_online_store_raises_and_the_retry_serves_the_bar(store59: tuple[Store, pl.DataFrame],
                                                                   tmp_path: Path) -> None:
    """Item 6: another connection holds the online SQLite file's write lock past the busy timeout."""
    store, bars = store59
    path = store.root / "online.sqlite"
    store.serving.online.close()
    store.serving.online = SqliteOnlineStore(path, busy_timeout=0.2)  # the real backend, a short lock wait
    new = bars.tail(1)
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(BackendError, match="locked"):
            store.push(new)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert store.live.pending == 0
    report = store.push(new)
    assert (report.bars, report.duplicates) == (1, 0)
    want = _batch(tmp_path / "a", bars, MAIN)
    assert tuple(store.serving.online.get_latest("main@1", ["S0000"])[0]) == _online_row(want, MAIN, NOW_MINUTE)
    assert store.flush() == 1
    assert store.read("main").equals(want)


def test_a_failing_second_online_table_takes_the_first_tables_rows_back(store59: tuple[Store, pl.DataFrame],
                                                                       tmp_path: Path) -> None:
    """`main`'s row is written, then `other`'s write fails (its online table holds other columns, as another
    process left it): `main` must not go on serving the row of a bar that was not accepted."""
    store, bars = store59
    other = _set("other", pitstore.ema(3))
    store.backfill(other)
    store.serving.online.put_latest("other@1", ["not_ema"], [("S0000", 1, (1.0,))])
    stored_last = bars["ts"][58]
    with pytest.raises(SchemaMismatchError):
        store.push(bars.tail(1), feature_sets=[MAIN, other])
    assert store.get_online("S0000", "main")[0].ts == stored_last  # refilled from the offline tier
    store.serving.online.delete("other@1")
    report = store.push(bars.tail(1))
    assert (report.bars, report.duplicates) == (1, 0)
    assert store.get_online("S0000", "main")[0].ts == NOW_MINUTE
    assert report.rows["main@1"].equals(_batch(tmp_path / "a", bars, MAIN).tail(1))


@pytest.mark.slow  # a private redis-server filled to its maxmemory
def test_redis_out_of_memory_raises_and_the_retry_serves_the_bar(tmp_path: Path) -> None:
    server = RedisServer("--maxmemory", "2mb", "--maxmemory-policy", "noeviction")
    server.start()
    try:
        bars = _bars(60)
        with Store.open(tmp_path / "s", online_url=server.url, online_namespace="oom") as s:
            s.ingest(bars.head(59))
            s.backfill(MAIN)
            client = redis.Redis.from_url(server.url)
            with pytest.raises(redis.ResponseError):  # fill it up: the next write is refused
                for i in range(10_000):
                    client.set(f"ballast:{i}", b"x" * 10_000)
            with pytest.raises(BackendError, match="maxmemory"):
                s.push(bars.tail(1))
            assert s.live.pending == 0
            client.flushdb()
            report = s.push(bars.tail(1))
            assert (report.bars, report.duplicates) == (1, 0)
            assert s.get_online("S0000", "main")[0].ts == NOW_MINUTE
            assert s.flush() == 1
            assert s.read("main").equals(_batch(tmp_path / "a", bars, MAIN))
            client.close()
    finally:
        server.kill()


def test_rows_of_a_killed_pusher_are_dropped_and_a_resumed_feed_replaces_them(tmp_path: Path) -> None:
    """A process pushes 3 bars (buffered, not stored) and is SIGKILLed. The next process must not serve its row
    as ok, and a bar older than that row but newer than the stored ones becomes the online row."""
    fs = killable_fs()
    bars = _bars(63)
    root = tmp_path / "s"
    with Store.open(root, online_url="sqlite://") as s:
        s.ingest(bars.head(60))
        s.backfill(fs)
        s.materialize(fs)
    ctx = multiprocessing.get_context("spawn")
    results, hold = ctx.Queue(), ctx.Event()
    proc = ctx.Process(target=push_then_wait, args=(str(root), bars.tail(3), results, hold))
    proc.start()
    try:
        assert results.get(timeout=120) == ("pushed", 3, 3)
        assert proc.pid is not None
        os.kill(proc.pid, signal.SIGKILL)
        proc.join(timeout=60)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.is_alive():
            proc.kill()
    stored_last, dead_ts = bars["ts"][59], bars["ts"][62]
    with Store.open(root, online_url="sqlite://") as s:
        assert s.bars("S0000").height == 60  # the killed process's bars never reached the offline tier
        vector = s.get_online("S0000", "k")[0]
        assert vector.ts == stored_last and vector.status == "ok"  # the stored latest row, not the dead one
        resumed = bars[60:61]  # older than the dead row, newer than stored
        report = s.push(resumed, feature_sets=fs)
        assert (report.bars, report.duplicates) == (1, 0)
        want = _batch(tmp_path / "a", bars.head(61), fs)
        assert tuple(s.serving.online.get_latest("k@1", ["S0000"])[0]) == _online_row(want, fs, bars["ts"][60])
        assert dead_ts > bars["ts"][60]

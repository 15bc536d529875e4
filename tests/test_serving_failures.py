"""Serving through the Store while servers fail (DESIGN sections 3.3-3.5), against private redis-server and
PostgreSQL instances these tests start, kill and restart themselves (never the shared servers), and misses
filled once across real processes.

* Redis down: reads fall back (history tier, then offline tier) with status ``fallback``; pushes are queued,
  then replayed within a second of Redis coming back, none lost.
* PostgreSQL down: online reads are unaffected, point-in-time look-ups fall back to the offline tier with the
  same answer; history writes are queued and drained by the next write once it is back.
* Every server down: requests are still answered from the offline tier (``unknown_symbol`` for unknown symbols);
  the one place an error surfaces is ``close`` with queued online writes that could not be written.
* Online misses requested by 8 processes at once are filled once (Redis lock, or file lock with SQLite).
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest
import serving_workers
from psycopg import sql
from servers import PrivatePostgres, RedisServer, private_postgres, wait_for
from spawn import run_processes

from pitstore import FeatureSet, Store, standard_features
from pitstore.errors import BackendUnavailableError
from pitstore.online.redis import RedisOnlineStore
from pitstore.online.serving import FeatureVector
from pitstore.testing import synthetic_bars

TABLE = "minute_core@1"
N_SYMBOLS = 6
# Minute bars with a 1 h TTL: rows of the last minutes are fresh ("ok") however slow the machine is.
FS = FeatureSet("minute_core", standard_features().features, timeframe="1m", ttl=timedelta(hours=1))
NAMES = list(FS.columns)


def _minute() -> datetime:
    return datetime.now(UTC).replace(second=0, microsecond=0)


def _bars(end: datetime, n_bars: int = 150) -> pl.DataFrame:
    """Minute bars of S0000..S0005 whose last bar is at ``end``."""
    bars = synthetic_bars(N_SYMBOLS, n_bars, timeframe="1m", start=datetime(2024, 1, 2, tzinfo=UTC))
    return bars.with_columns(pl.col("ts") + (end - bars["ts"].max()))


def _live_bars(symbols: list[str], ts: datetime, seed: int) -> pl.DataFrame:
    """One new bar at ``ts`` for each of ``symbols`` (any valid bar will do: the test compares what push computed)."""
    bars = synthetic_bars(N_SYMBOLS, 1, timeframe="1m", seed=seed).filter(pl.col("symbol").is_in(symbols))
    return bars.with_columns(pl.lit(ts).cast(pl.Datetime("us", "UTC")).alias("ts"))


def _latest(frame: pl.DataFrame) -> dict[str, dict[str, Any]]:
    """The last row of each symbol of a (symbol, ts, columns...) frame sorted by ts within a symbol."""
    last = frame.sort("symbol", "ts", maintain_order=True).group_by("symbol", maintain_order=True).last()
    return {r["symbol"]: r for r in last.iter_rows(named=True)}


def _same(v: FeatureVector, row: dict[str, Any]) -> bool:
    """``v`` carries exactly the row's ts and feature values (NaN equal to NaN)."""
    def eq(a: float | None, b: float | None) -> bool:
        return a == b or (a is not None and b is not None and math.isnan(a) and math.isnan(b))

    return v.ts == row["ts"] and v.values.keys() == set(NAMES) and all(eq(v.values[n], row[n]) for n in NAMES)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    if server.alive():
        server.kill()


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    yield from private_postgres()


@pytest.fixture
def pg(private_pg: PrivatePostgres) -> PrivatePostgres:
    """The private cluster, running, with an empty ``pitstore`` schema (the history tier's)."""
    if not private_pg.running():  # a failed test may have left it stopped
        private_pg.start()
    with psycopg.connect(private_pg.url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS pitstore CASCADE"))
    return private_pg


def _history_rows(url: str, store: Store, start: datetime) -> pl.DataFrame:
    """The latest version of each of ``store``'s history rows of TABLE at or after ``start``, read by a separate
    connection."""
    from pitstore.history import PostgresHistory
    from pitstore.history.recent import catalog_scope

    with PostgresHistory(url, scope=catalog_scope(store.catalog)) as h:
        rows = pl.from_arrow(h.scan(TABLE, start=int(start.timestamp() * 1_000_000)))
    assert isinstance(rows, pl.DataFrame)
    return rows.drop("recorded_at")


# --- 1. Redis down ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("with_history", [False, True], ids=["offline", "history"])
def test_redis_down_reads_fall_back_pushes_are_queued_and_replayed(
    with_history: bool, redis_server: RedisServer, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    postgres_url = request.getfixturevalue("pg").url if with_history else None
    namespace = f"pst_{uuid.uuid4().hex[:12]}"
    t = _minute()
    store = Store.open(tmp_path / "store", online_url=redis_server.url, online_namespace=namespace,
                       postgres_url=postgres_url)
    try:
        store.ingest(_bars(t - timedelta(minutes=4)))
        store.backfill(FS)
        assert store.materialize(FS) == N_SYMBOLS
        symbols = sorted(store.symbols())
        assert [v.status for v in store.get_online(symbols, "minute_core")] == ["ok"] * N_SYMBOLS
        offline = _latest(store.read("minute_core"))
        if with_history:  # materialize synced the history tier: it can answer the fallback reads
            assert store.serving.history is not None
            assert store.serving.history.latest(TABLE, symbols) == [
                (int(offline[s]["ts"].timestamp() * 1_000_000), tuple(offline[s][c] for c in NAMES)) for s in symbols]

        redis_server.kill()
        vectors = store.get_online([*symbols, "NOPE"], "minute_core")
        assert [v.status for v in vectors] == ["fallback"] * N_SYMBOLS + ["unknown_symbol"]
        assert all(_same(v, offline[v.symbol]) for v in vectors[:-1])

        # Pushes while Redis is down: nothing raises, every row is queued. Each push holds the newest row of
        # some symbols, so the final state shows whether any push was lost.
        pushes = [(symbols, t - timedelta(minutes=3)), (symbols[:3], t - timedelta(minutes=2)),
                  (symbols[3:], t - timedelta(minutes=1)), (symbols[:1], t)]
        pushed: list[pl.DataFrame] = []
        for i, (chosen, ts) in enumerate(pushes):
            report = store.push(_live_bars(chosen, ts, seed=10 + i))
            assert report.bars == len(chosen)
            pushed.append(report.rows[TABLE])
        expected = _latest(pl.concat(pushed))
        assert isinstance(store.serving.online, RedisOnlineStore)
        assert store.serving.online.pending() == sum(len(c) for c, _ in pushes)
        vectors = store.get_online(symbols, "minute_core")  # the pushed rows, from this process's memory
        assert [v.status for v in vectors] == ["fallback"] * N_SYMBOLS
        assert all(_same(v, expected[v.symbol]) for v in vectors)

        if with_history:
            # Another process (no pushed rows in memory, not yet in the offline tier): only the history tier
            # has them, so this is where its fallback answers come from.
            assert store.serving.history is not None and store.serving.history.wait_written(10.0)
            assert store.serving.history.pending() == 0
            other = Store.open(tmp_path / "store", online_url=redis_server.url, online_namespace=namespace,
                               postgres_url=postgres_url)
            try:
                vectors = other.get_online(symbols, "minute_core")
                assert [v.status for v in vectors] == ["fallback"] * N_SYMBOLS
                assert all(_same(v, expected[v.symbol]) for v in vectors)
            finally:
                other.close()

        redis_server.start()  # returns once the server accepts connections (on the same port)

        def back() -> bool:
            return all(v.status == "ok" for v in store.get_online(symbols, "minute_core"))

        assert wait_for(back, 5.0, "reads served by Redis again") < 1.0
        assert store.serving.online.pending() == 0
        vectors = store.get_online(symbols, "minute_core")
        assert all(_same(v, expected[v.symbol]) for v in vectors)
        # What Redis itself holds (the restarted server started empty): every column of every pushed row.
        raw = RedisOnlineStore(redis_server.url, namespace=namespace)
        try:
            rows = raw.get_latest(TABLE, symbols)
            assert [(r.ts, r.values) if r else None for r in rows] == [
                (int(expected[s]["ts"].timestamp() * 1_000_000), tuple(expected[s][c] for c in NAMES))
                for s in symbols]
        finally:
            raw.close()
    finally:
        store.close()


# --- 2. PostgreSQL down --------------------------------------------------------------------------------------------


def test_postgres_down_online_unaffected_lookups_fall_back_writes_queued(pg: PrivatePostgres, tmp_path: Path) -> None:
    t = _minute()
    with Store.open(tmp_path / "store", online_url="sqlite://", postgres_url=pg.url) as store:
        bars = _bars(t - timedelta(minutes=10))
        store.ingest(bars)
        store.backfill(FS)
        store.materialize(FS)
        symbols = sorted(store.symbols())
        history = store.serving.history
        assert history is not None
        before = store.get_online(symbols, "minute_core")
        assert [v.status for v in before] == ["ok"] * N_SYMBOLS

        # Look-ups inside the history window (every stored row is in it): the history tier answers them.
        times = sorted(set(bars["ts"].to_list()))
        probes = [(s, times[-k] + timedelta(seconds=sec)) for k, s, sec in
                  [(1, "S0000", 0), (2, "S0001", 30), (5, "S0002", 59), (40, "S0003", 1), (120, "S0005", 0)]]
        table = store.serving.tables("minute_core")[0]
        answers = {}
        for s, as_of in probes:
            entries = store.catalog.feature_entries("minute_core", 1, [s])
            via_history = store.serving.router.history_asof(table, s, int(as_of.timestamp() * 1_000_000), entries)
            answers[(s, as_of)] = store.get_features(s, as_of, "minute_core")
            assert via_history is not None and via_history == answers[(s, as_of)]
            assert answers[(s, as_of)].status == "ok"

        pg.stop()
        assert store.get_online(symbols, "minute_core") == before
        for (s, as_of), want in answers.items():
            entries = store.catalog.feature_entries("minute_core", 1, [s])
            assert store.serving.router.history_asof(table, s, int(as_of.timestamp() * 1_000_000), entries) is None
            assert store.get_features(s, as_of, "minute_core") == want  # from the offline tier

        first = store.push(_live_bars(symbols, t - timedelta(minutes=9), seed=1))  # does not raise
        assert history.pending() == N_SYMBOLS
        vectors = store.get_online(symbols, "minute_core")
        assert [v.status for v in vectors] == ["ok"] * N_SYMBOLS
        assert all(_same(v, _latest(first.rows[TABLE])[v.symbol]) for v in vectors)
        assert store.get_features("S0002", t, "minute_core") == vectors[2]

        pg.start()
        history.ping()  # calls fail fast for a second after a failure (the breaker); ping goes through at once
        assert history.pending() == 0
        second = store.push(_live_bars(symbols, t - timedelta(minutes=8), seed=2))
        assert history.wait_written(10.0) and history.pending() == 0  # by the writer thread, after the push
        got = _history_rows(pg.url, store, t - timedelta(minutes=9))
        want = pl.concat([first.rows[TABLE], second.rows[TABLE]]).sort("symbol", "ts")
        assert got.sort("symbol", "ts").equals(want)


# --- every server down -------------------------------------------------------------------------------------------


def test_every_server_down_the_offline_tier_still_answers(
    redis_server: RedisServer, pg: PrivatePostgres, tmp_path: Path
) -> None:
    """Online and history tiers both down: no read raises (the offline tier is local); an unknown symbol is
    ``missing``; pushes are queued. The error surfaces only at ``close``, which refuses to drop queued online
    rows silently."""
    namespace = f"pst_{uuid.uuid4().hex[:12]}"
    t = _minute()
    store = Store.open(tmp_path / "store", online_url=redis_server.url, online_namespace=namespace,
                       postgres_url=pg.url)
    closed = False
    try:
        store.ingest(_bars(t - timedelta(minutes=4)))
        store.backfill(FS)
        store.materialize(FS)
        symbols = sorted(store.symbols())
        offline = _latest(store.read("minute_core"))
        as_of = offline["S0001"]["ts"] - timedelta(minutes=30, seconds=10)
        want_past = store.get_features("S0001", as_of, "minute_core")
        assert want_past.status == "ok"

        redis_server.kill()
        pg.stop()
        vectors = store.get_online([*symbols, "NOPE"], "minute_core")
        assert [v.status for v in vectors] == ["fallback"] * N_SYMBOLS + ["unknown_symbol"]
        assert all(_same(v, offline[v.symbol]) for v in vectors[:-1])
        assert vectors[-1].ts is None and vectors[-1].values == dict.fromkeys(NAMES)
        assert store.get_features("S0001", as_of, "minute_core") == want_past
        latest = store.get_features("S0001", t, "minute_core")
        assert latest.status == "ok" and _same(latest, offline["S0001"])
        missing = store.get_features("NOPE", t, "minute_core")
        assert missing.status == "unknown_symbol" and missing.values == dict.fromkeys(NAMES)

        report = store.push(_live_bars(symbols, t - timedelta(minutes=3), seed=3))
        assert store.serving.history is not None and store.serving.history.pending() == N_SYMBOLS
        assert isinstance(store.serving.online, RedisOnlineStore)
        assert store.serving.online.pending() == N_SYMBOLS
        pushed = _latest(report.rows[TABLE])
        vectors = store.get_online(symbols, "minute_core")
        assert [v.status for v in vectors] == ["fallback"] * N_SYMBOLS
        assert all(_same(v, pushed[v.symbol]) for v in vectors)

        closed = True
        with pytest.raises(BackendUnavailableError, match=f"closed with {N_SYMBOLS} queued rows not written"):
            store.close()
    finally:
        if not closed:
            store.close()


# --- 3. concurrent misses fill once across processes -----------------------------------------------------------


def _run_get_online(root: Path, online_url: str, namespace: str, lists: list[list[str]]) -> list[Any]:
    """One spawned process per symbol list, all calling ``get_online`` at once (after a barrier); their
    ``(fills, vectors)`` in the order they finished."""
    out = run_processes(serving_workers.get_online_once,
                        [(str(root), online_url, namespace, symbols, "minute_core") for symbols in lists])
    errors = [o[1] for o in out if o[0] == "error"]
    assert not errors, errors[0]
    return out


def _offline_only(root: Path, online_url: str, namespace: str) -> dict[str, dict[str, Any]]:
    """A store whose rows are stored offline, none online (every symbol is an online miss); its last rows."""
    with Store.open(root, online_url=online_url, online_namespace=namespace) as store:
        store.ingest(_bars(_minute() - timedelta(minutes=1)))
        store.backfill(FS)
        symbols = sorted(store.symbols())
        assert store.serving.online.get_latest(TABLE, symbols) == [None] * N_SYMBOLS
        return _latest(store.read("minute_core"))


def _expected(offline: dict[str, dict[str, Any]], symbols: list[str]) -> list[tuple[Any, ...]]:
    return [(s, offline[s]["ts"], "ok", repr({n: offline[s][n] for n in NAMES})) for s in symbols]


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["redis", "sqlite"])
def test_concurrent_misses_are_filled_once_across_processes(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    """8 processes ask for the same 6 symbols, none of them online yet: one process fills them (under the
    Redis lock, or the file lock with SQLite), the others read what it wrote; all get the same ok answers."""
    online_url = request.getfixturevalue("redis_server").url if backend == "redis" else "sqlite://"
    namespace = f"pst_{uuid.uuid4().hex[:12]}"
    offline = _offline_only(tmp_path / "store", online_url, namespace)
    symbols = sorted(offline)
    out = _run_get_online(tmp_path / "store", online_url, namespace, [symbols] * 8)
    assert [vectors for _, vectors in out] == [_expected(offline, symbols)] * 8
    assert sum(fills for fills, _ in out) == N_SYMBOLS  # each symbol filled once, by one of the processes


@pytest.mark.slow
def test_concurrent_misses_with_overlapping_symbol_lists_are_filled_once(tmp_path: Path) -> None:
    namespace = f"pst_{uuid.uuid4().hex[:12]}"
    offline = _offline_only(tmp_path / "store", "sqlite://", namespace)
    s = sorted(offline)
    lists = [s, s[1:], s[:-1], s[2:], s[:3], s[::2], s[1::2], s[1:5]]
    out = _run_get_online(tmp_path / "store", "sqlite://", namespace, lists)
    def by_symbols(vectors: list[tuple[Any, ...]]) -> list[str]:
        return [v[0] for v in vectors]

    got = sorted((vectors for _, vectors in out), key=by_symbols)  # in the order the processes finished
    assert got == sorted((_expected(offline, chosen) for chosen in lists), key=by_symbols)
    assert sum(fills for fills, _ in out) == N_SYMBOLS

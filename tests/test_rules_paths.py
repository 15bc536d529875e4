"""One set of time rules, every read path (issue #17): the same look-ups through ``get_historical``,
``get_features``, ``get_online`` (memory, SQLite and Redis online tiers, the fallback when Redis is down) and
the PostgreSQL history tier give identical values and statuses, equal to the rules of DESIGN section 2 written
out by brute force here (not through :mod:`pitstore.rules`): a row at ``ts`` is served at ``t`` when
``ts + lag <= t``; it is stale when ``ts < t - ttl`` with the effective TTL (the set's own, else ``lag + 2 bar
spacings``); a symbol without rows is ``unknown_symbol``, one without an available row ``no_data_yet``.

The look-ups sit on the edges: exactly at a bar's ``ts`` (two symbols share every ts), ±1 µs around
``ts + lag``, the TTL edge exactly and ±1 µs (after a gap in the bars, so that no newer row hides it), before
a symbol's first bar, and a symbol never stored. ``get_online`` judges at now: its clock is set to each time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest

from pitstore import FeatureSet, Store, ret, sma
from pitstore.online.serving import FeatureVector
from pitstore.testing import synthetic_bars

US = timedelta(microseconds=1)
STEP = timedelta(hours=1)
START = datetime(2024, 3, 4, 10, tzinfo=UTC)
SYMBOLS = ("AAA", "BBB", "LATE")  # AAA and BBB share every ts; LATE starts 6 bars later
UNKNOWN = "ZZZ"
Answer = tuple[str, datetime | None, dict[str, float | None]]


def _sets(prefix: str) -> list[tuple[FeatureSet, timedelta, timedelta]]:
    """(set, lag, effective TTL): no lag and the default TTL (2 h), a lag and the default (10 min + 2 h), a lag
    and an own TTL (90 min)."""
    lag = timedelta(minutes=10)
    return [
        (FeatureSet(f"{prefix}_plain", [ret(1), sma(3)], timeframe="1h"), timedelta(0), 2 * STEP),
        (FeatureSet(f"{prefix}_lag", [ret(1), sma(3)], timeframe="1h", availability_lag=lag), lag, lag + 2 * STEP),
        (FeatureSet(f"{prefix}_ttl", [ret(1), sma(3)], timeframe="1h", availability_lag=lag,
                    ttl=timedelta(minutes=90)), lag, timedelta(minutes=90)),
    ]


def _bars() -> pl.DataFrame:
    """Hourly bars with a 5-hour gap (longer than every TTL here) between bars 9 and 10."""
    hours = [*range(10), *range(15, 22)]
    base = synthetic_bars(1, len(hours), timeframe="1h", start=START)
    times = pl.Series("ts", [START + h * STEP for h in hours], dtype=pl.Datetime("us", "UTC"))
    one = base.with_columns(times)
    parts = [one.with_columns(pl.lit(s).alias("symbol"), pl.col("close") * (k + 1), pl.col("open") * (k + 1),
                              pl.col("high") * (k + 1), pl.col("low") * (k + 1)) for k, s in enumerate(SYMBOLS)]
    parts[2] = parts[2].slice(6)
    return pl.concat(parts).sort("symbol", "ts")


def _times(bars: pl.DataFrame, lag: timedelta, ttl: timedelta) -> list[datetime]:
    """The edges around the first bar, the bars either side of the gap, LATE's first bar and the last bar."""
    ts = sorted(set(bars["ts"].to_list()))
    late = bars.filter(pl.col("symbol") == "LATE")["ts"][0]
    out = {ts[0] - STEP}
    for anchor in (ts[0], ts[1], ts[9], ts[10], late, ts[-1]):
        for edge in (timedelta(0), lag, ttl):
            out.update(anchor + edge + d for d in (-US, timedelta(0), US))
    out.add(ts[-1] + 10 * STEP)
    return sorted(out)


def _expected(rows: pl.DataFrame, symbol: str, t: datetime, lag: timedelta, ttl: timedelta,
              columns: list[str]) -> Answer:
    """DESIGN section 2, literally, over the stored rows of one set."""
    mine = [r for r in rows.iter_rows(named=True) if r["symbol"] == symbol]
    if not mine:
        return "unknown_symbol", None, dict.fromkeys(columns)
    seen = [r for r in mine if r["ts"] + lag <= t]
    if not seen:
        return "no_data_yet", None, dict.fromkeys(columns)
    last = max(seen, key=lambda r: r["ts"])
    if last["ts"] < t - ttl:
        return "stale", last["ts"], dict.fromkeys(columns)
    return "ok", last["ts"], {c: last[c] for c in columns}


def _answer(v: FeatureVector) -> Answer:
    return v.status, v.ts, v.values


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // US


class _Clock:
    """The "now" of get_online, set by the test."""

    def __init__(self) -> None:
        self.now = 0

    def __call__(self) -> int:
        return self.now


def _check_paths(store: Store, fs: FeatureSet, lag: timedelta, ttl: timedelta, *, online_ok: str = "ok",
                 historical: bool = True, rows: pl.DataFrame | None = None) -> set[str]:
    """Every look-up through every read path of ``store`` equals the brute-force rule over ``rows`` (default:
    the stored ones); returns the statuses."""
    bars = store.read(fs.name) if rows is None else rows
    columns = list(fs.columns)
    symbols = [*SYMBOLS, UNKNOWN]
    times = _times(bars, lag, ttl)
    want = {(s, t): _expected(bars, s, t, lag, ttl, columns) for s in symbols for t in times}
    if historical:
        entities = pl.DataFrame({"symbol": [s for s, _ in want], "ts": [t for _, t in want]},
                                schema={"symbol": pl.String, "ts": pl.Datetime("us", "UTC")})
        got = store.get_historical(entities, fs.name)
        for (key, (status, _, values)), row in zip(want.items(), got.iter_rows(named=True), strict=True):
            assert (row["status"], {c: row[c] for c in columns}) == (status, values), ("get_historical", key)
    for (s, t), expected in want.items():
        assert _answer(store.get_features(s, t, fs.name)) == expected, ("get_features", s, t)
    clock = _Clock()
    store.serving.clock = clock
    for t in times:
        clock.now = _us(t)
        for v in store.get_online(symbols, fs.name):
            status, ts, values = want[(v.symbol, t)]
            status = online_ok if status == "ok" else status
            assert _answer(v) == (status, ts, values), ("get_online", v.symbol, t)
    return {a[0] for a in want.values()}


@pytest.fixture(params=["memory", "memory-fill", "sqlite", "redis"])
def online_store(request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[Store]:
    """A store whose sets are materialized online (``memory-fill``: not; the first read fills the tier)."""
    kind = request.param
    options: dict[str, str] = {"online_url": f"{kind.split('-')[0]}://"}
    if kind == "redis":
        options = {"online_url": request.getfixturevalue("redis_url"), "online_namespace": namespace}
    with Store.open(tmp_path / "store", **options) as store:
        store.ingest(_bars())
        for fs, _, _ in _sets(namespace):
            store.backfill(fs)
            if kind != "memory-fill":
                store.materialize(fs)
        yield store
        if kind == "redis":
            for fs, _, _ in _sets(namespace):
                store.serving.online.delete(f"{fs.name}@1", [*SYMBOLS, UNKNOWN])


@pytest.mark.parametrize("which", range(3), ids=["plain", "lag", "own-ttl"])
def test_every_path_gives_the_same_answer(online_store: Store, namespace: str, which: int) -> None:
    fs, lag, ttl = _sets(namespace)[which]
    statuses = _check_paths(online_store, fs, lag, ttl)
    assert statuses == {"ok", "stale", "no_data_yet", "unknown_symbol"}


def test_pushed_rows_not_yet_stored_give_the_same_answer(tmp_path: Path, namespace: str) -> None:
    """Rows pushed and not yet flushed (answered from memory) follow the same rules as stored ones."""
    bars = _bars()
    last = bars["ts"].max()
    sets = _sets(namespace)
    with Store.open(tmp_path / "batch", online_url="memory://") as batch:
        batch.ingest(bars)
        want = {}
        for fs, _, _ in sets:
            batch.backfill(fs)
            want[fs.name] = batch.read(fs.name)
    with Store.open(tmp_path / "live", online_url="memory://", live_flush_bars=1_000) as live:
        live.ingest(bars.filter(pl.col("ts") < last - 2 * STEP))
        for fs, _, _ in sets:
            live.backfill(fs)
        report = live.push(bars.filter(pl.col("ts") >= last - 2 * STEP), feature_sets=[fs for fs, _, _ in sets])
        assert report.pending_offline == 3 * len(SYMBOLS)
        for fs, lag, ttl in sets:
            _check_paths(live, fs, lag, ttl, historical=False, rows=want[fs.name])
        live.flush()
        for fs, lag, ttl in sets:
            _check_paths(live, fs, lag, ttl, rows=want[fs.name])


# --- the PostgreSQL history tier ------------------------------------------------------------------------------


@pytest.fixture
def pg_store(postgres_url: str, namespace: str, tmp_path: Path) -> Iterator[Callable[..., Store]]:
    """Stores on one root with the history tier; their PostgreSQL tables are deleted at the end."""
    opened: list[Store] = []

    def open_(**options: Any) -> Store:
        store = Store.open(tmp_path / "store", **{"online_url": "memory://", "postgres_url": postgres_url,
                                                  **options})
        opened.append(store)
        return store

    yield open_
    for store in reversed(opened):
        store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        keys = "SELECT table_key FROM pitstore.history_tables WHERE starts_with(table_id, %s)"
        conn.execute(f"DELETE FROM pitstore.history_rows WHERE table_key IN ({keys})", (namespace + "_",))
        conn.execute("DELETE FROM pitstore.history_tables WHERE starts_with(table_id, %s)", (namespace + "_",))


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_the_history_tier_gives_the_same_answer(pg_store: Callable[..., Store], namespace: str) -> None:
    """The history tier's SQL (``ts <= t - lag``, one index seek) answers every look-up of the rule, through
    get_features, and through get_online as the fallback when the online tier is unreachable."""
    store = pg_store()
    store.ingest(_bars())
    for fs, _, _ in _sets(namespace):
        store.backfill(fs)
        store.materialize(fs)  # also syncs the history tier
    history = store.serving.history
    assert history is not None
    answered = 0
    for fs, lag, ttl in _sets(namespace):
        table = store.serving.tables(fs.name)[0]
        bars = store.read(fs.name)
        columns = list(fs.columns)
        for s in [*SYMBOLS, UNKNOWN]:
            for t in _times(bars, lag, ttl):
                status, ts, values = _expected(bars, s, t, lag, ttl, columns)
                row = history.asof(table.table_id, s, _us(t), lag // US)
                # The SQL's row is the as-of row of the rule (the TTL is applied on top, in Python).
                assert (row[0] if row else None) == (None if ts is None else _us(ts)), ("history.asof", s, t)
                entries = store.catalog.feature_entries(fs.name, 1, [s])
                via = store.serving.router.history_asof(table, s, _us(t), entries)
                if via is not None:
                    answered += 1
                    assert _answer(via) == (status, ts, values), ("history tier", s, t)
        _check_paths(store, fs, lag, ttl)
    assert answered > 0, "the history tier answered no look-up"
    down = pg_store(online_url=f"redis://127.0.0.1:{_closed_port()}/0")
    for fs, lag, ttl in _sets(namespace):
        _check_paths(down, fs, lag, ttl, online_ok="fallback", historical=False)

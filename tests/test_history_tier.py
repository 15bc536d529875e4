"""The history tier (real PostgreSQL) through the Store: materialize copies the last ``history_days`` of rows,
every tier gives the same as-of answer, restatements never leave old values served, pushes reach it before any flush.
The tests of which tier may answer run on the in-memory backend too (``postgres_url="memory://name"``).

The Store's history tier always uses the schema ``pitstore``: each test isolates itself by unique feature-set
names (so unique ``table_id``s) and deletes its rows afterwards.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest

import pitstore
from pitstore import FeatureSet, Store
from pitstore.online.serving import FeatureVector
from pitstore.testing import synthetic_bars

HOUR = timedelta(hours=1)
US = timedelta(microseconds=1)
DAYS = 7  # history_days of these tests
NOW_HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // US


def _bars(n_symbols: int = 4, n_bars: int = 24 * 30, *, seed: int = 0, end: datetime = NOW_HOUR) -> pl.DataFrame:
    """Hourly bars with gaps, S0000's last one at ``end``; the other symbols (of other lengths) end at or before
    it, so their newest rows differ."""
    bars = synthetic_bars(n_symbols, n_bars, timeframe="1h", start=datetime(2024, 1, 1, tzinfo=UTC), seed=seed,
                          gaps=0.05, ragged=True)
    last = bars.filter(pl.col("symbol") == "S0000")["ts"].max()
    assert isinstance(last, datetime)
    return bars.with_columns(pl.col("ts") + (end - last)).filter(pl.col("ts") <= end)


def _sets(prefix: str) -> tuple[FeatureSet, FeatureSet]:
    core = FeatureSet(f"{prefix}_core", [pitstore.ema(5), pitstore.rsi(3), pitstore.sma(4), pitstore.macd(3, 10, 4),
                                         pitstore.talib("ADX")], timeframe="1h")
    lagged = FeatureSet(f"{prefix}_lag", [pitstore.ema(5), pitstore.ret(2)], timeframe="1h",
                        availability_lag=timedelta(minutes=90), ttl=timedelta(hours=5))
    return core, lagged


def _delete_tables(url: str, prefix: str) -> None:
    """Delete the history rows and tables whose table_id starts with ``prefix`` (this test's only)."""
    with psycopg.connect(url, autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = 'pitstore'").fetchone() is None:
            return
        keys = "SELECT table_key FROM pitstore.history_tables WHERE starts_with(table_id, %s)"
        conn.execute(f"DELETE FROM pitstore.history_rows WHERE table_key IN ({keys})", (prefix,))
        conn.execute("DELETE FROM pitstore.history_tables WHERE starts_with(table_id, %s)", (prefix,))


# The history backend of a test: PostgreSQL unless a test also asks for the in-memory one, where the logic above
# the backend (which entries are synced, when the history tier may answer) is the same without a server.
POSTGRES = pytest.param("postgres", marks=pytest.mark.postgres)
BOTH = pytest.mark.parametrize("backend", [POSTGRES, "memory"])


@pytest.fixture(params=[POSTGRES])
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def open_store(backend: str, request: pytest.FixtureRequest, namespace: str,
               tmp_path: Path) -> Iterator[Callable[..., Store]]:
    """Opens stores on one root with the history tier (closed and their PostgreSQL rows deleted at the end)."""
    opened: list[Store] = []
    url = request.getfixturevalue("postgres_url") if backend == "postgres" else f"memory://{namespace}"

    def open_(**options: Any) -> Store:
        settings = {"online_url": "memory://", "postgres_url": url, "history_days": DAYS, **options}
        store = Store.open(tmp_path / "store", **settings)
        opened.append(store)
        return store

    yield open_
    for store in reversed(opened):
        store.close()
    if backend == "postgres":
        _delete_tables(url, namespace + "_")


def _pg(store: Store, table_id: str, **options: Any) -> pl.DataFrame:
    history = store.serving.history
    assert history is not None
    frame = pl.from_arrow(history.db.scan(table_id, **options))
    assert isinstance(frame, pl.DataFrame)
    return frame


# --- 1. materialize -----------------------------------------------------------------------------------------


def test_materialize_writes_the_last_days_once(open_store: Callable[..., Store], namespace: str) -> None:
    core, _ = _sets(namespace)
    bars = _bars()
    store = open_store()
    store.ingest(bars)
    store.backfill(core)
    table_id = f"{core.name}@1"
    assert store.materialize(core) == 4
    offline = store.read(core.name)
    cutoff = offline["ts"].max() - timedelta(days=DAYS)
    window = offline.filter(pl.col("ts") >= cutoff)
    stored = _pg(store, table_id, all_versions=True)
    assert 0 < window.height < offline.height
    assert not stored["tombstone"].any()
    assert stored.drop("recorded_at", "tombstone").equals(window)
    # Each row is recorded at its offline entry's recorded_at.
    recorded = {e.symbol: e.recorded_at for e in store.catalog.feature_entries(core.name, 1)}
    assert len(recorded) == 4
    got = stored.select("symbol", pl.col("recorded_at").dt.epoch("us")).unique().sort("symbol")
    in_window = sorted(set(window["symbol"].to_list()))
    assert len(in_window) >= 2
    assert got.rows() == [(s, recorded[s]) for s in in_window]

    # Again, from this store and from another instance: no new rows, no new versions.
    assert store.materialize(core) == 4
    other = open_store()
    other.materialize(f"{core.name}@1")
    assert _pg(store, table_id, all_versions=True).equals(stored)
    # Some symbols only: their window ends at their own newest row (older rows may be added), never a new
    # version of a row already there.
    store.materialize(core, symbols=["S0001", "S0003"])
    some = _pg(store, table_id, all_versions=True)
    assert some.join(stored, on=["symbol", "ts", "recorded_at"], how="semi").height == stored.height
    assert some.select("symbol", "ts").is_unique().all()
    rows = some.drop("recorded_at", "tombstone")
    assert rows.join(offline, on=["symbol", "ts"], how="anti").is_empty()
    assert rows.equals(offline.join(some.select("symbol", "ts"), on=["symbol", "ts"], how="semi"))
    stored = some

    # Bars appended and backfilled: the next materialize adds the new rows only.
    more = bars.filter(pl.col("symbol") == "S0000").tail(5).with_columns(pl.col("ts") + timedelta(days=1))
    assert more.filter(pl.col("ts") <= NOW_HOUR).is_empty()
    store.ingest(more)
    store.backfill(core)
    store.materialize(core)
    again = _pg(store, table_id, all_versions=True)
    assert again.height == stored.height + 5
    assert again.join(stored, on=["symbol", "ts", "recorded_at"], how="semi").height == stored.height
    newest = store.read(core.name, symbols=["S0000"]).tail(5)
    assert again.filter(pl.col("ts") > NOW_HOUR).drop("recorded_at", "tombstone").equals(newest)


# --- 2. every tier gives the same answer --------------------------------------------------------------------


def _probes(rows: pl.DataFrame, lag: timedelta, cutoff: datetime, rng: random.Random) -> list[datetime]:
    """Times around the rows of one symbol: before, at and between rows, at the window edge, after the last."""
    ts: list[datetime] = rows["ts"].to_list()
    if not ts:
        return [cutoff - timedelta(days=1), cutoff, NOW_HOUR, NOW_HOUR + timedelta(days=1)]
    out = [ts[0] - HOUR, ts[0], ts[0] + lag, cutoff - US, cutoff, cutoff + lag, cutoff + lag - US, ts[-1],
           ts[-1] + lag - US, ts[-1] + lag, ts[-1] + 3 * HOUR, ts[-1] + timedelta(days=30)]
    inside = [t for t in ts if t >= cutoff]
    for t in rng.sample(ts, 25) + rng.sample(inside, min(25, len(inside))):
        out += [t + d for d in (timedelta(0), -US, US, 30 * timedelta(minutes=1), lag, lag - US)]
    span = (ts[-1] - ts[0] + 2 * timedelta(days=1)) // US
    out += [ts[0] - timedelta(days=1) + rng.randrange(span) * US for _ in range(40)]
    return out


def _expected(rows: pl.DataFrame, t: datetime, lag: timedelta, ttl: timedelta | None,
              columns: Sequence[str]) -> tuple[str, datetime | None, dict[str, Any]]:
    """The as-of rule of DESIGN section 2, by brute force."""
    seen = rows.filter(pl.col("ts") + lag <= t)
    if seen.is_empty():
        return "no_data_yet" if rows.height else "unknown_symbol", None, dict.fromkeys(columns)
    last = seen.row(-1, named=True)
    if ttl is not None and last["ts"] < t - ttl:
        return "stale", last["ts"], dict.fromkeys(columns)
    return "ok", last["ts"], {c: last[c] for c in columns}


def _compare_tiers(store: Store, fs: FeatureSet, symbols: Sequence[str], seed: int) -> Counter[str]:
    """For many probes: the online, history and offline tiers (where they answer) and get_features agree with
    each other and with the brute-force as-of rule; returns how often each tier answered."""
    serving = store.serving
    table = serving.tables(fs.name)[0]
    version = table.sel.version
    offline = store.read(fs.name)
    cutoff = offline["ts"].max() - timedelta(days=DAYS)
    rng = random.Random(seed)
    answered: Counter[str] = Counter()
    wrong: dict[str, list[tuple[str, datetime]]] = {}
    for symbol in symbols:
        rows = offline.filter(pl.col("symbol") == symbol)
        entries = store.catalog.feature_entries(fs.name, version, [symbol])
        for t in _probes(rows, fs.availability_lag, cutoff, rng):
            want = _expected(rows, t, fs.availability_lag, table.ttl, fs.columns)
            off = serving.router.offline_asof(table, symbol, _us(t))
            assert (off.status, off.ts, off.values) == want, ("offline", symbol, t)
            answers: dict[str, FeatureVector | None] = {
                "online": serving.router.online_asof(table, symbol, _us(t), entries),
                "history": serving.router.history_asof(table, symbol, _us(t), entries),
                "public": store.get_features(symbol, t, fs.name),
            }
            for tier, got in answers.items():
                if got is not None:
                    answered[tier] += 1
                    if (got.status, got.ts, got.values) != want:
                        wrong.setdefault(tier, []).append((symbol, t))
    assert not wrong, "; ".join(f"{tier}: {len(bad)} of {answered[tier]} answers wrong, e.g. "
                                + ", ".join(f"{sym} at {t.isoformat()}" for sym, t in bad[:2])
                                for tier, bad in wrong.items())
    return answered


@BOTH
def test_every_tier_gives_the_same_answer(open_store: Callable[..., Store], namespace: str) -> None:
    store = open_store()
    store.ingest(_bars(seed=1))
    for fs in _sets(namespace):
        store.backfill(fs)
        store.materialize(fs)
        answered = _compare_tiers(store, fs, ["S0000", "S0001", "S0002", "S0003", "NOPE"], seed=2)
        assert answered["history"] > 100 and answered["online"] > 10, answered
    # A second instance (nothing cached, empty in-process online tier) answers the same from PostgreSQL.
    other = open_store()
    for fs in _sets(namespace):
        other.register(fs)
        answered = _compare_tiers(other, fs, ["S0002", "S0003"], seed=3)
        assert answered["history"] > 50, answered


# --- 3. restatements ----------------------------------------------------------------------------------------


def _restated(bars: pl.DataFrame, symbol: str, at: datetime, factor: float) -> pl.DataFrame:
    bar = bars.filter((pl.col("symbol") == symbol) & (pl.col("ts") == at))
    assert bar.height == 1
    close = pl.col("close") * factor
    return bar.with_columns(close.alias("close"), pl.max_horizontal("high", close).alias("high"),
                            pl.min_horizontal("low", close).alias("low"))


def _window_values(store: Store, fs: FeatureSet, symbol: str, start: datetime) -> tuple[list[Any], list[Any]]:
    """get_features at every row ts of ``symbol`` from ``start`` on, and the offline rows there."""
    rows = store.read(fs.name, symbols=[symbol], start=start)
    got = [store.get_features(symbol, t, fs.name) for t in rows["ts"]]
    return [(v.ts, v.values) for v in got], [(r["ts"], {c: r[c] for c in fs.columns})
                                                for r in rows.iter_rows(named=True)]


# In memory, the batch job only: the history tier is then stale, and must know it is not to answer.
@pytest.mark.parametrize(("backend", "who"), [pytest.param("postgres", "this store", marks=pytest.mark.postgres),
                                              pytest.param("postgres", "a batch job", marks=pytest.mark.postgres),
                                              ("memory", "a batch job")])
def test_a_restatement_backfilled_never_leaves_old_values_served(
    open_store: Callable[..., Store], namespace: str, who: str,
) -> None:
    """A bar inside the window restated, ingested and backfilled, by this store or by a batch job on the same
    root (``Store.open(root)``: the default SQLite online tier, no PostgreSQL): every tier that answers gives
    the restated values, never the old ones; a materialize re-syncs the history tier."""
    core, lagged = _sets(namespace)
    bars = _bars(seed=4)
    store = open_store(online_url="sqlite://")
    store.ingest(bars)
    for fs in (core, lagged):
        store.backfill(fs)
        store.materialize(fs)
    at = NOW_HOUR - 3 * timedelta(days=1)
    symbol = "S0000"
    old = store.read(core.name, symbols=[symbol], start=at)
    job = store if who == "this store" else open_store(online_url="sqlite://", postgres_url=None)
    job.ingest(_restated(bars, symbol, at, 1.05))
    for fs in (core, lagged):
        assert job.backfill(fs).full == [symbol]
    assert not store.read(core.name, symbols=[symbol], start=at).equals(old)
    for fs in (core, lagged):
        answered = _compare_tiers(store, fs, [symbol, "S0001"], seed=5)
        if who == "this store":
            assert answered["history"] > 50, answered  # re-synced: the history tier answers
    got, want = _window_values(store, core, symbol, at - timedelta(days=1))
    assert got == want
    # A materialize re-syncs: the history tier answers again, with the restated values.
    for fs in (core, lagged):
        store.materialize(fs)
        assert _compare_tiers(store, fs, [symbol], seed=6)["history"] > 50


@BOTH
def test_a_removed_bar_is_not_served_from_the_history_tier(open_store: Callable[..., Store],
                                                            namespace: str) -> None:
    """A restatement that drops a bar (a range replaced without it): its row is gone from the offline tier,
    and no tier serves it after the re-sync, which leaves a tombstone for it in PostgreSQL (and for nothing
    else); what was known before stays readable there."""
    core, _ = _sets(namespace)
    bars = _bars(seed=7)
    store = open_store()
    store.ingest(bars)
    store.backfill(core)
    store.materialize(core)
    symbol = "S0000"
    table_id = f"{core.name}@1"
    mine = bars.filter(pl.col("symbol") == symbol)
    gone = mine["ts"][-30]
    before = store.catalog.feature_entries(core.name, 1, [symbol])[-1].recorded_at
    store.ingest(mine.filter((pl.col("ts") >= mine["ts"][-40]) & (pl.col("ts") != gone)), replace_range=True)
    assert store.backfill(core).full == [symbol]
    assert gone not in store.read(core.name, symbols=[symbol])["ts"].to_list()
    got = store.get_features(symbol, gone, core.name)
    assert got.ts == mine["ts"][-31], got
    assert _compare_tiers(store, core, [symbol], seed=8)["history"] > 50

    entry = store.catalog.feature_entries(core.name, 1, [symbol])[-1]
    dead = _pg(store, table_id, all_versions=True).filter(pl.col("tombstone"))
    assert dead.select("symbol", "ts", pl.col("recorded_at").dt.epoch("us")).rows() == [
        (symbol, gone, entry.recorded_at)]
    history = store.serving.history
    assert history is not None
    assert history.db.asof(table_id, symbol, _us(gone))[0] == _us(mine["ts"][-31])
    assert history.db.asof(table_id, symbol, _us(gone), as_known_at=entry.recorded_at - 1)[0] == _us(gone)
    assert history.db.asof(table_id, symbol, _us(gone), as_known_at=before)[0] == _us(gone)
    # Syncing again writes nothing; another instance answers from PostgreSQL alike.
    assert store.materialize(core) == 4 and _pg(store, table_id, all_versions=True)["tombstone"].sum() == 1
    other = open_store()
    other.register(core)
    assert _compare_tiers(other, core, [symbol], seed=9)["history"] > 50


# --- 4. live pushes -----------------------------------------------------------------------------------------


def test_pushed_rows_reach_the_history_tier_before_any_flush(open_store: Callable[..., Store],
                                                             namespace: str) -> None:
    """Rows pushed by one store reach PostgreSQL (through the writer thread) before any flush, and a second store
    (another process: empty in-process online tier, no pushed rows in memory) answers look-ups in the pushed
    range from there."""
    core, lagged = _sets(namespace)
    bars = _bars(3, 24 * 20, seed=9)
    cut = NOW_HOUR - 10 * HOUR
    live = open_store()
    live.ingest(bars.filter(pl.col("ts") < cut))
    for fs in (core, lagged):
        live.backfill(fs)
        live.materialize(fs)
    reports = [live.push(part) for _, part in bars.filter(pl.col("ts") >= cut).sort("ts", "symbol").group_by(
        "ts", maintain_order=True)]
    pushed = pl.concat([r.rows[f"{core.name}@1"] for r in reports]).sort("symbol", "ts")
    assert pushed.height == bars.filter(pl.col("ts") >= cut).height
    assert live.serving.history is not None and live.serving.history.wait_written(10.0)
    assert live.live.pending == pushed["symbol"].len()  # not flushed: PostgreSQL has them from the pushes
    in_pg = _pg(live, f"{core.name}@1", start=_us(cut))
    assert in_pg.drop("recorded_at").equals(pushed)

    reader = open_store()
    for fs in (core, lagged):
        reader.register(fs)
    probes = [cut + k * timedelta(minutes=20) for k in range(-6, 40)]
    for symbol in ("S0000", "S0001", "S0002"):
        for t in probes:
            for fs in (core, lagged):
                want = live.get_features(symbol, t, fs.name)
                assert reader.get_features(symbol, t, fs.name) == want, (symbol, t, fs.name)
    live.flush()
    batch = open_store(postgres_url=None)
    for symbol in ("S0000", "S0001", "S0002"):
        for t in probes:
            for fs in (core, lagged):
                want = batch.serving.router.offline_asof(batch.serving.tables(fs.name)[0], symbol, _us(t))
                assert live.get_features(symbol, t, fs.name) == want, (symbol, t, fs.name)
                assert reader.get_features(symbol, t, fs.name) == want, (symbol, t, fs.name)


def test_a_push_does_not_wait_for_postgresql(open_store: Callable[..., Store], namespace: str,
                                             postgres_url: str) -> None:
    """Another session holds a lock on the history table (a stalled PostgreSQL, for writers): pushes return and
    are served all the same; their rows reach PostgreSQL once the lock goes."""
    core, _ = _sets(namespace)
    bars = _bars(3, 24 * 5, seed=15)
    cut = NOW_HOUR - 3 * HOUR
    store = open_store()
    store.ingest(bars.filter(pl.col("ts") < cut))
    store.backfill(core)
    store.materialize(core)
    history = store.serving.history
    assert history is not None
    hours = [part for _, part in bars.filter(pl.col("ts") >= cut).sort("ts", "symbol").group_by(
        "ts", maintain_order=True)]
    with psycopg.connect(postgres_url) as locker:  # one transaction until the block ends
        locker.execute("LOCK TABLE pitstore.history_rows IN EXCLUSIVE MODE")
        reports: list[Any] = []
        pushing = threading.Thread(target=lambda: reports.extend(store.push(h) for h in hours))
        pushing.start()
        pushing.join(30.0)
        assert not pushing.is_alive(), "a push waited for PostgreSQL"
        assert history.pending() == sum(h.height for h in hours) > 0
        assert not history.wait_written(0.5)
        last = pl.concat(hours).group_by("symbol").agg(pl.col("ts").max()).sort("symbol")
        vectors = store.get_online(last["symbol"].to_list(), core.name)
        assert [v.ts for v in vectors] == last["ts"].to_list()  # served online (status: by the 5-minute TTL)
        # A look-up inside the pushed range: PostgreSQL does not have those rows yet, this process does.
        first = reports[0].rows[f"{core.name}@1"].row(0, named=True)
        got = store.get_features(first["symbol"], first["ts"], core.name)
        assert got.ts == first["ts"] and got.values == {c: first[c] for c in core.columns}
    assert history.wait_written(30.0) and history.pending() == 0
    pushed = pl.concat([r.rows[f"{core.name}@1"] for r in reports]).sort("symbol", "ts")
    assert _pg(store, f"{core.name}@1", start=_us(cut)).drop("recorded_at").equals(pushed)


def test_a_pushed_restatement_rewrites_the_history_tier(open_store: Callable[..., Store], namespace: str) -> None:
    core, _ = _sets(namespace)
    bars = _bars(3, 24 * 20, seed=10)
    store = open_store()
    store.ingest(bars)
    store.backfill(core)
    store.materialize(core)
    at = NOW_HOUR - 30 * HOUR
    report = store.push(_restated(bars, "S0000", at, 0.97))
    assert report.restated == {"S0000": 1}
    got, want = _window_values(store, core, "S0000", at - 5 * HOUR)
    assert got == want
    assert _compare_tiers(store, core, ["S0000"], seed=11)["history"] > 20


def test_a_restatement_while_pushed_bars_are_buffered(open_store: Callable[..., Store], namespace: str) -> None:
    """A live store pushes bars (rows computed from the history it knows, written to PostgreSQL); meanwhile a
    batch job restates an older bar and backfills. The live store's flush computes the pushed bars' rows from
    the restated history: no tier may keep serving the rows computed before the restatement."""
    core, _ = _sets(namespace)
    bars = _bars(3, 24 * 20, seed=12)
    cut = NOW_HOUR - 10 * HOUR
    live = open_store(online_url="sqlite://")
    live.ingest(bars.filter(pl.col("ts") < cut))
    live.backfill(core)
    live.materialize(core)
    for _, part in bars.filter(pl.col("ts") >= cut).sort("ts", "symbol").group_by("ts", maintain_order=True):
        live.push(part)
    job = open_store(online_url="sqlite://", postgres_url=None)
    job.ingest(_restated(bars, "S0000", cut - 20 * HOUR, 1.05))
    assert job.backfill(core).full == ["S0000"]
    live.flush()
    _compare_tiers(live, core, ["S0000", "S0001"], seed=13)
    reader = open_store()
    reader.register(core)
    _compare_tiers(reader, core, ["S0000"], seed=14)


def test_pushed_rows_written_after_the_flush_that_restates_them_stay_superseded(
    open_store: Callable[..., Store], namespace: str,
) -> None:
    """The history writer lags behind (PostgreSQL busy): the pushed rows, computed before another store restated
    an older bar, reach PostgreSQL only after the flush recorded their recomputed entry. They are versions of
    what was known at the push, so the flush's re-sync supersedes them: no tier serves the pre-restatement rows."""
    core, _ = _sets(namespace)
    bars = _bars(3, 24 * 20, seed=12)
    cut = NOW_HOUR - 10 * HOUR
    live = open_store(online_url="sqlite://")
    live.ingest(bars.filter(pl.col("ts") < cut))
    live.backfill(core)
    live.materialize(core)
    history = live.serving.history
    assert history is not None
    # The writer thread is held until the flush waits for it, i.e. after the flush's backfill committed.
    gate = threading.Event()
    write, wait_written = history.db.write, history.wait_written

    def held_write(*args: Any, **kwargs: Any) -> int:
        assert gate.wait(60.0), "the flush never waited for the history writer"
        return write(*args, **kwargs)

    def releasing_wait(timeout: float) -> bool:
        gate.set()
        return wait_written(timeout)

    history.db.write = held_write  # type: ignore[method-assign]
    history.wait_written = releasing_wait  # type: ignore[method-assign]
    for _, part in bars.filter(pl.col("ts") >= cut).sort("ts", "symbol").group_by("ts", maintain_order=True):
        live.push(part)
    assert history.pending() > 0 and not gate.is_set()
    job = open_store(online_url="sqlite://", postgres_url=None)
    job.ingest(_restated(bars, "S0000", cut - 20 * HOUR, 1.05))
    assert job.backfill(core).full == ["S0000"]
    live.flush()
    assert gate.is_set() and history.pending() == 0
    assert _compare_tiers(live, core, ["S0000", "S0001"], seed=17)["history"] > 50
    reader = open_store()
    reader.register(core)
    assert _compare_tiers(reader, core, ["S0000"], seed=18)["history"] > 50

"""Live pushes (embedded tiers): ``store.push`` gives the rows of a batch backfill bit for bit, skips duplicates,
recomputes restatements without ever serving an older row as the latest, answers look-ups of rows not yet
flushed, and rejects bad bars without changing anything."""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import pitstore
import pitstore.live.engine
import pitstore.sources.ingest
from pitstore import FeatureSet, InvalidInputError, Store
from pitstore.features.base import Feature
from pitstore.live.engine import PushReport
from pitstore.testing import synthetic_bars

Live = tuple[Store, FeatureSet, pl.DataFrame, pl.DataFrame]
NOW_MINUTE = datetime.now(UTC).replace(second=0, microsecond=0)  # the last bar of "recent" data closes here
MINUTE = timedelta(minutes=1)

# Every built-in, with default and non-default parameters, and a TA-Lib function.
FEATURES: list[Feature] = [
    pitstore.ret(), pitstore.ret(7), pitstore.log_ret(), pitstore.log_ret(3),
    pitstore.vol(), pitstore.vol(5, periods_per_year=365), pitstore.mom(), pitstore.mom(3),
    pitstore.sma(), pitstore.sma(2), pitstore.ema(), pitstore.ema(5), pitstore.rsi(), pitstore.rsi(3),
    pitstore.macd(), pitstore.macd(3, 10, 4), pitstore.bollinger(), pitstore.bollinger(5, 1.5),
    pitstore.atr(), pitstore.atr(3), pitstore.vwap(), pitstore.vwap(3), pitstore.zscore(), pitstore.zscore(4),
    pitstore.talib("ADX"),
]


def _fs(name: str = "live_all", **options: Any) -> FeatureSet:
    # The data ends at NOW_MINUTE, fixed when the module loads: a TTL of hours keeps "ok" meaning "ok" however
    # long the suite runs before these tests (the 5-minute default would turn them stale on a slow machine).
    options.setdefault("ttl", timedelta(hours=12))
    return FeatureSet(name, FEATURES, timeframe="1m", **options)


def _minute_bars(n_symbols: int, n_bars: int, *, seed: int = 0, gaps: float = 0.0,
                 end: datetime = NOW_MINUTE) -> pl.DataFrame:
    """1-minute bars, sorted by (symbol, ts), the last one closing at ``end``."""
    bars = synthetic_bars(n_symbols, n_bars, timeframe="1m", start=datetime(2024, 1, 2, tzinfo=UTC), seed=seed,
                          gaps=gaps)
    return bars.with_columns(pl.col("ts") + (end - _last(bars)))


def _last(bars: pl.DataFrame) -> datetime:
    last = bars["ts"].max()
    assert isinstance(last, datetime)
    return last


def _with_more(n_symbols: int, n_bars: int, extra: int, *, seed: int) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Bars ending at the current minute, and the next ``extra`` minutes of the same walk."""
    full = _minute_bars(n_symbols, n_bars + extra, seed=seed, end=NOW_MINUTE + extra * MINUTE)
    return full.filter(pl.col("ts") <= NOW_MINUTE), full.filter(pl.col("ts") > NOW_MINUTE)


def _by_minute(bars: pl.DataFrame) -> Iterator[pl.DataFrame]:
    """The bars of each minute (every symbol that has one), oldest minute first."""
    for _, part in bars.sort("ts", "symbol").group_by("ts", maintain_order=True):
        yield part


def _rows(reports: Sequence[PushReport], table_id: str) -> pl.DataFrame:
    return pl.concat([r.rows[table_id] for r in reports if table_id in r.rows]).sort("symbol", "ts")


def _batch(tmp: Path, bars: pl.DataFrame, fs: FeatureSet) -> pl.DataFrame:
    """The rows a batch ingest and backfill of ``bars`` store."""
    with Store.open(tmp, online_url="memory://") as s:
        s.ingest(bars)
        s.backfill(fs)
        out: pl.DataFrame = s.read(fs.name)
        return out


def _restate(bars: pl.DataFrame, symbol: str, ts: datetime, factor: float = 1.01) -> pl.DataFrame:
    """The bar of ``symbol`` at ``ts`` with a different close (high and low kept consistent)."""
    bar = bars.filter((pl.col("symbol") == symbol) & (pl.col("ts") == ts))
    assert bar.height == 1
    close = pl.col("close") * factor
    return bar.with_columns(close.alias("close"), pl.max_horizontal("high", close).alias("high"),
                            pl.min_horizontal("low", close).alias("low"))


def _replace(bars: pl.DataFrame, new: pl.DataFrame) -> pl.DataFrame:
    return pl.concat([bars.join(new, on=["symbol", "ts"], how="anti"), new]).sort("symbol", "ts")


class _Recorder:
    """The real online store, recording the (table, symbol, ts) of every row it is given (a spy, not a mock:
    every call goes through to the real backend)."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.given: list[tuple[str, str, int]] = []

    def put_latest(self, table_id: str, columns: Sequence[str], rows: Sequence[Any], **kwargs: Any) -> int:
        self.given.extend((table_id, s, t) for s, t, _ in rows)
        written: int = self.inner.put_latest(table_id, columns, rows, **kwargs)
        return written

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def _online(store: Store, table_id: str, symbols: Sequence[str]) -> dict[str, Any]:
    return dict(zip(symbols, store.serving.online.get_latest(table_id, list(symbols)), strict=True))


def _as_online(frame: pl.DataFrame, columns: Sequence[str]) -> tuple[int, tuple[float | None, ...]]:
    """The last row of ``frame`` as the online tier stores it: (ts in µs, values)."""
    last = frame.row(-1, named=True)
    return (last["ts"] - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1), tuple(
        last[c] for c in columns)


# --- 1. parity --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("online_url", ["memory://", "sqlite://"])
def test_pushing_a_day_bar_by_bar_equals_a_batch_backfill(tmp_path: Path, online_url: str) -> None:
    """Store A ingests history and the day at once; store B ingests the history, then pushes the day one minute
    at a time (every symbol of the minute in one push). The pushed rows and, after flush, B's stored rows are
    A's, bit for bit; a symbol B has no history for (S0004) is computed from its first bar."""
    fs = _fs()
    bars = _minute_bars(5, 690, gaps=0.03)
    cut = _last(bars) - 389 * MINUTE  # the day: the last 390 minutes
    bars = bars.filter((pl.col("symbol") != "S0004") | (pl.col("ts") >= cut))  # S0004 starts with the day
    history, day = bars.filter(pl.col("ts") < cut), bars.filter(pl.col("ts") >= cut)
    assert "S0004" not in history["symbol"].to_list()
    want = _batch(tmp_path / "a", bars, fs)

    with Store.open(tmp_path / "b", online_url=online_url) as b:
        b.ingest(history)
        b.backfill(fs)
        table_id = f"{fs.name}@{b.register(fs)}"
        reports = [b.push(minute) for minute in _by_minute(day)]
        assert sum(r.bars for r in reports) == day.height
        assert all(r.duplicates == 0 and not r.restated for r in reports)
        assert reports[-1].pending_offline == day.height  # nothing flushed yet (live_flush_bars: 50 000)
        pushed = _rows(reports, table_id)
        assert pushed.columns == want.columns
        assert pushed.equals(want.filter(pl.col("ts") >= cut))

        # The online tier holds each symbol's last pushed row.
        symbols = sorted(set(bars["symbol"].to_list()))
        online = _online(b, table_id, symbols)
        for s in symbols:
            assert tuple(online[s]) == _as_online(want.filter(pl.col("symbol") == s), fs.columns)

        assert b.flush() == day.height
        assert b.flush() == 0
        assert b.read(fs.name).equals(want)
        assert b.bars("S0001").equals(bars.filter(pl.col("symbol") == "S0001"))


@pitstore.feature(lookback=1)
def overnight_gap(b: pl.DataFrame) -> pl.Series:
    """Open over the previous close, minus one (the README's Python feature)."""
    return b["open"] / b["close"].shift(1) - 1


def test_pushing_expression_and_python_features_equals_a_batch_backfill(tmp_path: Path) -> None:
    """The README's set (built-ins, TA-Lib, an expression and a Python feature) pushed a minute at a time, then
    three minutes in one push: A's rows bit for bit, for symbols with history and for one without (S0002)."""
    fs = FeatureSet("readme", [
        *pitstore.standard_features().features, pitstore.rsi(14), pitstore.macd(12, 26, 9),
        pitstore.sma(50).alias("trend"), pitstore.talib("ADX", timeperiod=14),
        pitstore.expr("hl_range", (pl.col("high") - pl.col("low")) / pl.col("close")),
        pitstore.expr("close_sum", pl.col("close").cum_sum()), overnight_gap,
    ], timeframe="1m", ttl=timedelta(hours=12))
    bars = _minute_bars(3, 150)
    cut = _last(bars) - 29 * MINUTE
    bars = bars.filter((pl.col("symbol") != "S0002") | (pl.col("ts") >= cut))
    history, day = bars.filter(pl.col("ts") < cut), bars.filter(pl.col("ts") >= cut)
    want = _batch(tmp_path / "a", bars, fs)
    with Store.open(tmp_path / "b", online_url="memory://") as b:
        b.ingest(history)
        b.backfill(fs)
        minutes = list(_by_minute(day))
        reports = [b.push(minute) for minute in minutes[:-3]] + [b.push(pl.concat(minutes[-3:]))]
        assert sum(r.bars for r in reports) == day.height
        assert _rows(reports, "readme@1").equals(want.filter(pl.col("ts") >= cut))
        for s in ("S0000", "S0002"):
            assert tuple(_online(b, "readme@1", [s])[s]) == _as_online(want.filter(pl.col("symbol") == s),
                                                                       fs.columns)
        assert b.flush() == day.height
        assert b.read(fs.name).equals(want)


def test_pushing_without_any_history_and_flush_on_close(tmp_path: Path) -> None:
    """A store with no bars at all: every symbol is new; rows equal a batch backfill from the first bar, and
    close() writes the pushed bars to the offline tier."""
    fs = _fs("from_scratch")
    bars, more = _with_more(3, 120, 5, seed=4)
    want = _batch(tmp_path / "a", bars, fs)
    with Store.open(tmp_path / "b", online_url="memory://") as b:
        b.register(fs)
        reports = [b.push(minute) for minute in _by_minute(bars)]
        assert _rows(reports, "from_scratch@1").equals(want)
        assert reports[0].rows["from_scratch@1"].drop("symbol", "ts").null_count().row(0) == (3,) * len(fs.columns)
    with Store.open(tmp_path / "b", online_url="memory://") as b:  # close() flushed
        assert b.read(fs.name).equals(want)
        # Another process: the set (built-ins and TA-Lib only) is rebuilt from the catalog; priming resumes.
        assert b.push(bars.tail(1)).duplicates == 1
        report = b.push(more, feature_sets=fs)
        assert report.rows["from_scratch@1"].equals(
            _batch(tmp_path / "c", pl.concat([bars, more]), fs).filter(pl.col("ts") > NOW_MINUTE))


# --- 2. duplicates and restatements -----------------------------------------------------------------------


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Store, FeatureSet, pl.DataFrame, pl.DataFrame]]:
    """A store with history backfilled and the last 30 minutes pushed bar by bar (ending at the current
    minute); the first 20 pushed minutes flushed, the last 10 still buffered. Also yields the bars of the
    next 2 minutes (not pushed)."""
    fs = _fs()
    bars, more = _with_more(3, 300, 2, seed=1)
    cut = NOW_MINUTE - 29 * MINUTE
    with Store.open(tmp_path / "live", online_url="sqlite://") as s:
        s.ingest(bars.filter(pl.col("ts") < cut))
        s.backfill(fs)
        s.materialize(fs)
        for i, minute in enumerate(_by_minute(bars.filter(pl.col("ts") >= cut))):
            if i == 20:
                s.flush()
            s.push(minute)
        yield s, fs, bars, more


def test_duplicates_are_skipped(live: Live, tmp_path: Path) -> None:
    s, fs, bars, more = live
    table_id = "live_all@1"
    before = _online(s, table_id, ["S0000", "S0001", "S0002"])
    last = bars.filter(pl.col("ts") == NOW_MINUTE)
    report = s.push(last)
    assert (report.bars, report.duplicates, report.restated, report.rows) == (0, 3, {}, {})
    assert report.pending_offline == 30
    assert _online(s, table_id, ["S0000", "S0001", "S0002"]) == before
    # A re-sent latest bar followed by a new one: the duplicate is skipped, the new one computed.
    new = more.filter(pl.col("symbol") == "S0001").head(1)
    report = s.push(pl.concat([new, last.filter(pl.col("symbol") == "S0001")]))
    assert (report.bars, report.duplicates, report.restated) == (1, 1, {})
    want = _batch(tmp_path / "batch", pl.concat([bars, new]).sort("symbol", "ts"), fs)
    assert report.rows[table_id].equals(want.filter(pl.col("ts") > NOW_MINUTE))


@pytest.mark.parametrize(("minutes_back", "flush"), [(0, True), (0, False), (5, False), (25, False)])
def test_a_restated_bar_is_recomputed_and_never_moves_the_online_row_back(
    live: Live, tmp_path: Path, minutes_back: int, flush: bool,
) -> None:
    """The latest bar, a buffered one (not flushed yet) or a flushed one restated."""
    s, fs, bars, more = live
    table_id = "live_all@1"
    symbols = ["S0000", "S0001", "S0002"]
    if flush:
        s.flush()
    known_before = datetime.now(UTC)
    old_rows = s.read(fs.name)
    old_online = _online(s, table_id, symbols)
    recorder = _Recorder(s.serving.online)
    s.serving.online = recorder

    at = NOW_MINUTE - minutes_back * MINUTE
    restated = _restate(bars, "S0001", at)
    report = s.push(restated)
    assert report.restated == {"S0001": 1}
    assert report.bars == 0 and report.duplicates == 0 and report.pending_offline == 0  # flushed first
    fixed = _replace(bars, restated)
    want = _batch(tmp_path / "batch", fixed, fs)
    want_s1 = want.filter(pl.col("symbol") == "S0001")
    assert report.rows[table_id].equals(want_s1.filter(pl.col("ts") >= at))
    assert not report.rows[table_id].equals(old_rows.filter((pl.col("symbol") == "S0001") & (pl.col("ts") >= at)))

    # The online row of S0001 keeps the latest ts with the recomputed values; the others are untouched.
    online = _online(s, table_id, symbols)
    assert tuple(online["S0001"]) == _as_online(want_s1, fs.columns)
    assert online["S0001"].ts == old_online["S0001"].ts
    assert online["S0000"] == old_online["S0000"] and online["S0002"] == old_online["S0002"]
    latest = {sym: row.ts for sym, row in old_online.items()}
    assert all(t >= latest[sym] for _, sym, t in recorder.given), recorder.given
    got = s.get_online(["S0001"], fs.name)[0]
    assert got.status == "ok" and got.values == dict(zip(fs.columns, _as_online(want_s1, fs.columns)[1], strict=True))

    # Offline: the restated values now, what was stored before for what was known before.
    assert s.read(fs.name).equals(want)
    assert s.read(fs.name, as_known_at=known_before).equals(old_rows)
    old_at = s.get_features("S0001", at, fs.name, as_known_at=known_before)
    old_row = old_rows.filter((pl.col("symbol") == "S0001") & (pl.col("ts") <= at)).row(-1, named=True)
    assert (old_at.ts, old_at.values) == (old_row["ts"], {c: old_row[c] for c in fs.columns})
    assert s.get_features("S0001", at, fs.name).values == {
        c: want_s1.filter(pl.col("ts") == at)[c][0] for c in fs.columns}

    # Pushing goes on from the recomputed state.
    report = s.push(more)
    assert report.bars == 6 and not report.restated
    want = _batch(tmp_path / "batch2", _replace(pl.concat([bars, more]), restated), fs)
    assert report.rows[table_id].equals(want.filter(pl.col("ts") > NOW_MINUTE))


def test_a_restatement_and_new_bars_in_one_push(live: Live, tmp_path: Path) -> None:
    """S0001: a restated bar then two new ones in one push; S0002: two new bars. Rows: S0002's new rows and
    S0001's recomputed rows from the restated bar on, all equal to a batch backfill; the bars between the
    restated one and the new ones are kept."""
    s, fs, bars, more = live
    at = NOW_MINUTE - 3 * MINUTE
    restated = _restate(bars, "S0001", at, 0.98)
    more = more.filter(pl.col("symbol") != "S0000")
    fixed = _replace(pl.concat([bars, more]), restated)
    push = pl.concat([more, restated]).sample(fraction=1.0, shuffle=True, seed=3)
    report = s.push(push)
    s.flush()
    assert s.bars("S0001").equals(fixed.filter(pl.col("symbol") == "S0001"))
    assert report.restated == {"S0001": 1}
    want = _batch(tmp_path / "batch", fixed, fs)
    got = report.rows["live_all@1"].sort("symbol", "ts")
    assert got.equals(want.filter(((pl.col("symbol") == "S0001") & (pl.col("ts") >= at))
                                  | ((pl.col("symbol") == "S0002") & (pl.col("ts") > NOW_MINUTE))))
    online = _online(s, "live_all@1", ["S0001", "S0002"])
    for sym in ("S0001", "S0002"):
        assert tuple(online[sym]) == _as_online(want.filter(pl.col("symbol") == sym), fs.columns)
    assert s.read(fs.name).equals(want)


def test_two_restated_bars_of_a_symbol_in_one_push(live: Live, tmp_path: Path) -> None:
    """Two corrected older bars in one push: both restated, the bars between them kept."""
    s, fs, bars, _ = live
    restated = pl.concat([_restate(bars, "S0002", NOW_MINUTE - k * MINUTE, 1.0 + k / 100) for k in (12, 4)])
    fixed = _replace(bars, restated)
    report = s.push(restated)
    assert s.bars("S0002").equals(fixed.filter(pl.col("symbol") == "S0002"))
    assert report.restated == {"S0002": 2}
    want = _batch(tmp_path / "batch", fixed, fs)
    assert report.rows["live_all@1"].equals(
        want.filter((pl.col("symbol") == "S0002") & (pl.col("ts") >= NOW_MINUTE - 12 * MINUTE)))
    assert s.read(fs.name).equals(want)


def test_an_identical_older_bar_changes_nothing(live: Live) -> None:
    """A feed re-sending an older bar unchanged: no restatement, no new values, the online row stays."""
    s, fs, bars, _ = live
    s.flush()
    rows = s.read(fs.name)
    online = _online(s, "live_all@1", ["S0001"])
    report = s.push(bars.filter((pl.col("symbol") == "S0001") & (pl.col("ts") == NOW_MINUTE - 7 * MINUTE)))
    assert report.restated == {} and report.bars == 0
    assert s.read(fs.name).equals(rows)
    assert _online(s, "live_all@1", ["S0001"]) == online
    got = report.rows.get("live_all@1")
    if got is not None:  # the rows from that bar on, recomputed: the same values as before
        assert got.equals(rows.filter((pl.col("symbol") == "S0001") & (pl.col("ts") >= NOW_MINUTE - 7 * MINUTE)))


# --- 3. look-ups of rows not yet flushed ------------------------------------------------------------------


@pytest.mark.slow  # thousands of look-ups against a batch store
def test_get_features_between_the_last_flushed_and_the_latest_pushed_row(tmp_path: Path) -> None:
    """As-of look-ups over rows pushed but not flushed are answered (from memory) exactly as a batch store
    answers them, with an availability lag and a TTL too; and again after the flush."""
    plain = _fs("plain")
    lagged = FeatureSet("lagged", [pitstore.ema(5), pitstore.rsi(3), pitstore.talib("ADX")], timeframe="1m",
                        availability_lag=timedelta(minutes=2), ttl=timedelta(minutes=3))
    bars = _minute_bars(3, 200, seed=2, gaps=0.1)
    flushed_to = NOW_MINUTE - 20 * MINUTE
    cut = NOW_MINUTE - 40 * MINUTE
    with Store.open(tmp_path / "batch", online_url="memory://") as batch:
        batch.ingest(bars)
        batch.backfill(plain)
        batch.backfill(lagged)
        with Store.open(tmp_path / "live", online_url="sqlite://") as s:
            s.ingest(bars.filter(pl.col("ts") < cut))
            s.backfill(plain)
            s.backfill(lagged)
            pushed = bars.filter(pl.col("ts") >= cut)
            for minute in _by_minute(pushed.filter(pl.col("ts") <= flushed_to)):
                s.push(minute)
            s.flush()
            for minute in _by_minute(pushed.filter(pl.col("ts") > flushed_to)):
                s.push(minute)
            assert s.live.pending > 0
            probes = [NOW_MINUTE - k * timedelta(seconds=30) for k in range(0, 100)]
            probes += [NOW_MINUTE + timedelta(hours=1), cut - timedelta(microseconds=1)]
            rng = random.Random(7)
            probes += [NOW_MINUTE - timedelta(microseconds=rng.randrange(3_600_000_000)) for _ in range(40)]
            refs: list[str | list[str]] = ["plain", "lagged", ["plain:ema_5", "lagged:ema_5"]]

            def check() -> None:
                for sym in ("S0000", "S0001", "S0002", "NOPE"):
                    for t in probes:
                        for ref in refs:
                            got, want = s.get_features(sym, t, ref), batch.get_features(sym, t, ref)
                            assert got == want, (sym, t, ref)

            check()
            s.flush()
            assert s.live.pending == 0 and not any(s.serving.pending.snapshot(["plain@1", "lagged@1"]).values())
            check()


# --- 4. invalid bars --------------------------------------------------------------------------------------


def _bad_batches(good: pl.DataFrame) -> dict[str, pl.DataFrame]:
    first = pl.int_range(pl.len()) == 0
    return {
        "nan close": good.with_columns(pl.when(first).then(float("nan")).otherwise(pl.col("close")).alias("close")),
        "naive ts": good.with_columns(pl.col("ts").dt.replace_time_zone(None)),
        "negative volume": good.with_columns(pl.when(first).then(-1.0).otherwise(pl.col("volume")).alias("volume")),
        "missing column": good.drop("volume"),
        "duplicate bar": pl.concat([good, good.head(1)]),
        "empty symbol": good.with_columns(pl.when(first).then(pl.lit("")).otherwise(pl.col("symbol")).alias("symbol")),
    }


def test_invalid_bars_raise_and_change_nothing(live: Live,
                                               tmp_path: Path) -> None:
    s, fs, bars, more = live
    symbols = ["S0000", "S0001", "S0002"]
    # The first bad bar is S0002's: S0000's and S0001's good bars in the same push must not be applied either.
    good = more.sort("symbol", descending=True)
    stored = {sym: s.bars(sym) for sym in symbols}
    online = _online(s, "live_all@1", symbols)
    pending = s.serving.pending.snapshot()
    for what, bad in _bad_batches(good).items():
        with pytest.raises(InvalidInputError) as info:
            s.push(bad)
        assert isinstance(info.value, ValueError), what
        assert _online(s, "live_all@1", symbols) == online, what
        assert s.serving.pending.snapshot() == pending, what
        assert s.live.pending == 30, what
    s.flush()
    for sym in symbols:
        assert s.bars(sym).equals(pl.concat([stored[sym], bars.filter((pl.col("symbol") == sym)
                                                                       & (pl.col("ts") > NOW_MINUTE - 10 * MINUTE))]))
    # State did not move: the good bars are new bars now, computed as a batch would.
    report = s.push(good)
    assert (report.bars, report.duplicates, report.restated) == (6, 0, {})
    want = _batch(tmp_path / "batch", pl.concat([bars, more]), fs)
    assert report.rows["live_all@1"].sort("symbol", "ts").equals(want.filter(pl.col("ts") > NOW_MINUTE))


def test_push_needs_feature_sets(tmp_path: Path) -> None:
    with Store.open(tmp_path, online_url="memory://") as s, pytest.raises(InvalidInputError):
        s.push(_minute_bars(1, 3))


# --- 5. several bars per push, any order ------------------------------------------------------------------


@pytest.mark.parametrize("flush_bars", [50_000, 37])
def test_chunks_of_bars_in_any_order(tmp_path: Path, flush_bars: int) -> None:
    """Pushes of several minutes of several symbols, rows shuffled; with ``flush_bars=37`` the offline tier is
    written during the pushes. Rows, online rows and stored rows equal a batch backfill."""
    fs = _fs()
    bars = _minute_bars(4, 400, seed=5, gaps=0.05)
    cut = NOW_MINUTE - 150 * MINUTE
    want = _batch(tmp_path / "a", bars, fs)
    day = bars.filter(pl.col("ts") >= cut)
    rng = random.Random(11)
    with Store.open(tmp_path / "b", online_url="sqlite://", live_flush_bars=flush_bars) as b:
        b.ingest(bars.filter(pl.col("ts") < cut))
        b.backfill(fs)
        reports = []
        start = cut
        while start <= NOW_MINUTE:
            end = start + rng.randint(1, 12) * MINUTE
            chunk = day.filter((pl.col("ts") >= start) & (pl.col("ts") < end))
            start = end
            if chunk.height:
                reports.append(b.push(chunk.sample(fraction=1.0, shuffle=True, seed=rng.randrange(1000))))
                assert reports[-1].bars == chunk.height
                b.live.join()  # the background flush this push started, if any
                assert b.live.pending < flush_bars
        assert _rows(reports, "live_all@1").equals(want.filter(pl.col("ts") >= cut))
        symbols = ["S0000", "S0001", "S0002", "S0003"]
        online = _online(b, "live_all@1", symbols)
        for sym in symbols:
            assert tuple(online[sym]) == _as_online(want.filter(pl.col("symbol") == sym), fs.columns)
        if flush_bars < 50_000:
            assert len(b.catalog.feature_entries(fs.name, 1, ["S0000"])) > 2  # flushed during the pushes
        b.flush()
        assert b.read(fs.name).equals(want)
        vectors = b.get_online(symbols, fs.name)
        assert [v.status for v in vectors] == ["ok"] * 4


class _GatedIngest:
    """The real ingest, but the flush thread's call waits for ``gate`` (or raises ``fail`` once): the test sees
    what pushes do while a background flush is still writing."""

    def __init__(self, fail: BaseException | None = None) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.fail = fail

    def ingest(self, *args: Any, **kwargs: Any) -> Any:
        if threading.current_thread().name == "pitstore-live-flush":
            self.entered.set()
            assert self.gate.wait(60), "the test never opened the gate"
            if self.fail is not None:
                fail, self.fail = self.fail, None
                raise fail
        return pitstore.sources.ingest.ingest(*args, **kwargs)


def test_a_full_buffer_is_written_in_the_background(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Once ``live_flush_bars`` are buffered a push hands them to a flush thread and returns: while that thread
    is held, later pushes return, are served online and by get_features from memory, and count as pending;
    once it is let go, the offline tier equals a batch backfill and nothing stays in memory."""
    fs = _fs()
    bars = _minute_bars(4, 200, seed=12)
    cut = NOW_MINUTE - 9 * MINUTE
    want = _batch(tmp_path / "a", bars, fs)
    gated = _GatedIngest()
    monkeypatch.setattr(pitstore.live.engine, "_ingest", gated)
    with Store.open(tmp_path / "b", online_url="memory://", live_flush_bars=8) as b:
        b.ingest(bars.filter(pl.col("ts") < cut))
        b.backfill(fs)
        minutes = list(_by_minute(bars.filter(pl.col("ts") >= cut)))
        assert [b.push(m).pending_offline for m in minutes[:2]] == [4, 8]  # the second one started the flush
        assert gated.entered.wait(60)
        reports = [b.push(m) for m in minutes[2:5]]  # the flush thread is held: these return all the same
        assert not gated.gate.is_set()
        assert [r.pending_offline for r in reports] == [12, 16, 20]
        got = b.get_online(["S0002"], fs.name)[0]
        assert (got.status, got.ts) == ("ok", minutes[4]["ts"][0])
        at = minutes[1]["ts"][0]
        assert b.get_features("S0002", at, fs.name).values == dict(
            zip(fs.columns, want.filter((pl.col("symbol") == "S0002") & (pl.col("ts") == at)).drop(
                "symbol", "ts").row(0), strict=True))
        gated.gate.set()
        b.live.join()
        assert b.live.pending == 12  # the three pushes made while the thread was held
        assert len(b.read(fs.name, symbols=["S0002"]).filter(pl.col("ts") >= cut)) == 2
        for m in minutes[5:]:
            b.push(m)
        b.flush()
        assert b.live.pending == 0
        assert b.read(fs.name).equals(want)
        assert not b.serving.pending.snapshot()


def test_a_failed_background_flush_loses_no_bar(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                caplog: pytest.LogCaptureFixture) -> None:
    """The flush thread's write fails: the error is logged, its bars go back to the buffer, and the next flush
    writes every bar."""
    fs = _fs()
    bars = _minute_bars(3, 150, seed=13)
    cut = NOW_MINUTE - 5 * MINUTE
    want = _batch(tmp_path / "a", bars, fs)
    gated = _GatedIngest(fail=OSError("disk full"))
    gated.gate.set()
    monkeypatch.setattr(pitstore.live.engine, "_ingest", gated)
    with Store.open(tmp_path / "b", online_url="memory://", live_flush_bars=6) as b:
        b.ingest(bars.filter(pl.col("ts") < cut))
        b.backfill(fs)
        for m in _by_minute(bars.filter(pl.col("ts") >= cut)):
            b.push(m)
        b.live.join()
        assert "background flush of 6 pushed bars failed" in caplog.text
        assert b.live.pending == 18
        assert b.flush() == 18
        assert b.read(fs.name).equals(want)


def test_one_push_of_the_whole_day(tmp_path: Path) -> None:
    fs = _fs()
    bars = _minute_bars(3, 500, seed=6)
    cut = NOW_MINUTE - 389 * MINUTE
    want = _batch(tmp_path / "a", bars, fs)
    with Store.open(tmp_path / "b", online_url="memory://") as b:
        b.ingest(bars.filter(pl.col("ts") < cut))
        b.backfill(fs)
        day = bars.filter(pl.col("ts") >= cut).reverse()
        report = b.push(day)
        assert report.bars == day.height
        assert report.rows["live_all@1"].equals(want.filter(pl.col("ts") >= cut))

"""A feature set's timeframe is checked against the bars: bars closer together than half its spacing (bars of
another timeframe mixed into a series) are refused by backfill and push with an InvalidInputError naming the
symbol and both ts, before anything is computed or stored. Larger gaps (nights, weekends, halts) are fine, and
so are real bars of the timeframe: daily closes across DST changes and early closes, an hourly session's
half-hour last bar. Ingest does not know a timeframe and checks nothing of the kind."""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from zoneinfo import ZoneInfo

import polars as pl
import pytest

import pitstore
from pitstore import FeatureSet, InvalidInputError, Store
from pitstore.testing import synthetic_bars

NEW_YORK = ZoneInfo("America/New_York")
HOLIDAYS = {date(2024, 1, 1), date(2024, 1, 15), date(2024, 2, 19), date(2024, 3, 29), date(2024, 5, 27),
            date(2024, 6, 19), date(2024, 7, 4), date(2024, 9, 2), date(2024, 11, 28), date(2024, 12, 25)}
EARLY_CLOSES = {date(2024, 7, 3), date(2024, 11, 29), date(2024, 12, 24)}  # 13:00 New York


def _with_ts(ts: list[datetime], symbol: str = "AAPL", seed: int = 0) -> pl.DataFrame:
    """Bars of ``symbol`` at ``ts`` (a seeded walk's prices)."""
    walk = synthetic_bars(1, len(ts), seed=seed).with_columns(pl.lit(symbol).alias("symbol"))
    return walk.with_columns(pl.Series("ts", ts, dtype=pl.Datetime("us", "UTC")))


def _us_daily_closes(year: int = 2024) -> list[datetime]:
    """A US equity year's daily bars stamped at the close in New York (16:00, 13:00 on early closes): in UTC
    21:00 in winter, 20:00 in summer, 18:00 or 17:00 on early closes; no weekends or holidays."""
    out = []
    day = date(year, 1, 1)
    while day.year == year:
        if day.weekday() < 5 and day not in HOLIDAYS:
            close = time(13) if day in EARLY_CLOSES else time(16)
            out.append(datetime.combine(day, close, NEW_YORK).astimezone(UTC))
        day += timedelta(days=1)
    return out


def _us_hourly_closes(days: int = 10) -> list[datetime]:
    """US equity hourly bars aligned to the 09:30 open, stamped at their close: 10:30 ... 15:30 and the
    half-hour bar closing at 16:00 (New York), weekdays only, across the March DST change."""
    out = []
    day = date(2024, 3, 4)
    while len(out) < 7 * days:
        if day.weekday() < 5:
            for hour, minute in [(10, 30), (11, 30), (12, 30), (13, 30), (14, 30), (15, 30), (16, 0)]:
                out.append(datetime.combine(day, time(hour, minute), NEW_YORK).astimezone(UTC))
        day += timedelta(days=1)
    return out


def _fs(timeframe: str) -> FeatureSet:
    # TTLs of weeks: the tests are about spacing, not staleness.
    return FeatureSet(f"tf_{timeframe}", [pitstore.ret(), pitstore.ema(3), pitstore.rsi(3)], timeframe=timeframe,
                      ttl=timedelta(weeks=520))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "store", online_url="sqlite://") as s:
        yield s


# --- real bars of a timeframe pass ------------------------------------------------------------------------


@pytest.mark.parametrize("stamp", ["close", "midnight"])
def test_real_daily_bars_pass(store: Store, stamp: str) -> None:
    """A year of US daily bars, stamped at the close (DST shifts, early closes) or at UTC midnight, with
    weekends and holidays: backfilled and pushed under a 1d set."""
    ts = _us_daily_closes()
    if stamp == "midnight":
        ts = [datetime.combine(t.date(), time(0), UTC) for t in ts]
    if stamp == "close":  # before an early close: 21 hours, the closest two real daily bars come
        assert min(b - a for a, b in itertools.pairwise(ts)) == timedelta(hours=21)
    bars = _with_ts(ts)
    fs = _fs("1d")
    store.ingest(bars.head(200))
    assert store.backfill(fs).full == ["AAPL"]
    report = store.push(bars.slice(200))
    assert report.bars == bars.height - 200
    store.flush()
    assert store.read(fs.name).equals(pitstore.compute(fs, bars))


def test_real_hourly_bars_with_a_half_hour_last_bar_pass(store: Store) -> None:
    """Hourly bars of a 09:30 session: the last one closes 30 minutes after the one before (half the spacing,
    the closest the rule allows)."""
    bars = _with_ts(_us_hourly_closes())
    fs = _fs("1h")
    store.ingest(bars.head(40))
    store.backfill(fs)
    assert store.push(bars.slice(40)).bars == bars.height - 40
    store.flush()
    assert store.read(fs.name).equals(pitstore.compute(fs, bars))


# --- backfill refuses bars of another timeframe ------------------------------------------------------------


def _assert_names(exc: pytest.ExceptionInfo[InvalidInputError], symbol: str, before: datetime,
                  after: datetime) -> None:
    assert exc.value.symbol == symbol and exc.value.column == "ts"
    message = str(exc.value)
    assert before.isoformat() in message and after.isoformat() in message, message


def test_backfill_refuses_minute_bars_under_an_hourly_set(store: Store) -> None:
    """1-minute bars under a 1h set: refused naming the symbol and the first two bars too close together;
    the other symbol's hourly bars are fine, and nothing of the batch is written."""
    hourly = _with_ts([datetime(2024, 1, 2, 14, tzinfo=UTC) + k * timedelta(hours=1) for k in range(20)], "BBB")
    minutes = _with_ts([datetime(2024, 1, 2, 14, 30, tzinfo=UTC) + k * timedelta(minutes=1) for k in range(90)],
                       "AAA")
    store.ingest(pl.concat([hourly, minutes]))
    fs = _fs("1h")
    with pytest.raises(InvalidInputError, match="closer than half the 1h timeframe") as exc:
        store.backfill(fs)
    _assert_names(exc, "AAA", datetime(2024, 1, 2, 14, 30, tzinfo=UTC), datetime(2024, 1, 2, 14, 31, tzinfo=UTC))
    assert store.catalog.feature_entries(fs.name, 1, None) == []
    # Under a 1m set the same minute bars are fine.
    assert store.backfill(_fs("1m"), symbols=["AAA"]).full == ["AAA"]


def test_backfill_refuses_an_intraday_bar_inside_a_daily_series(store: Store) -> None:
    """A later ingest adds a 1h bar to a daily series (ingest checks no spacing): the 1d set refuses it."""
    daily = _with_ts(_us_daily_closes()[:60])
    store.ingest(daily)
    fs = _fs("1d")
    store.backfill(fs)
    rows = store.read(fs.name)
    day = daily["ts"][30]
    assert isinstance(day, datetime)
    intraday = _with_ts([day - timedelta(hours=1)], seed=3)
    report = store.ingest(intraday)  # stored: ingest does not know the timeframe
    assert report.rows == 1
    with pytest.raises(InvalidInputError, match="closer than half the 1d timeframe") as exc:
        store.backfill(fs)
    _assert_names(exc, "AAPL", day - timedelta(hours=1), day)
    assert store.read(fs.name).equals(rows)  # the stored rows stay as they were


# --- push refuses bars of another timeframe ---------------------------------------------------------------


@pytest.fixture
def hourly(store: Store) -> Iterator[tuple[Store, FeatureSet, pl.DataFrame]]:
    """Hourly bars of AAPL stored and backfilled, the last 5 pushed (buffered)."""
    bars = _with_ts([datetime(2024, 1, 2, tzinfo=UTC) + k * timedelta(hours=1) for k in range(50)])
    fs = _fs("1h")
    store.ingest(bars.head(45))
    store.backfill(fs)
    store.push(bars.slice(45), fs)
    yield store, fs, bars


def test_push_refuses_a_bar_too_close_to_the_latest(hourly: tuple[Store, FeatureSet, pl.DataFrame]) -> None:
    """A minute bar after the latest hourly one (pushed, not stored): refused, nothing changes; the next
    hourly bar is computed as if it had never been sent."""
    s, fs, bars = hourly
    last = bars["ts"][-1]
    assert isinstance(last, datetime)
    online = s.serving.online.get_latest(f"{fs.name}@1", ["AAPL"])
    pending = s.live.pending
    with pytest.raises(InvalidInputError, match="closer than half the 1h timeframe") as exc:
        s.push(_with_ts([last + timedelta(minutes=1), last + timedelta(hours=1)], seed=4))
    _assert_names(exc, "AAPL", last, last + timedelta(minutes=1))
    assert s.serving.online.get_latest(f"{fs.name}@1", ["AAPL"]) == online
    assert s.live.pending == pending
    more = _with_ts([last + timedelta(hours=1)], seed=5)
    report = s.push(more)
    assert report.bars == 1
    want = pitstore.compute(fs, pl.concat([bars, more]))
    assert report.rows[f"{fs.name}@1"].equals(want.tail(1))


def test_push_refuses_minute_bars_among_themselves(hourly: tuple[Store, FeatureSet, pl.DataFrame]) -> None:
    s, _, bars = hourly
    last = bars["ts"][-1]
    assert isinstance(last, datetime)
    later = [last + timedelta(hours=2) + k * timedelta(minutes=1) for k in range(3)]
    with pytest.raises(InvalidInputError, match="closer than half") as exc:
        s.push(_with_ts(later, seed=6))
    _assert_names(exc, "AAPL", later[0], later[1])
    assert s.live.pending == 5


def test_push_refuses_a_restatement_inserting_a_bar_of_another_timeframe(
    hourly: tuple[Store, FeatureSet, pl.DataFrame],
) -> None:
    """An older bar between two stored ones is a restatement: refused before it is stored when it is too
    close to its neighbours (a correction of a stored bar at its own ts passes)."""
    s, _, bars = hourly
    at = bars["ts"][20]
    assert isinstance(at, datetime)
    stored = s.bars("AAPL")
    with pytest.raises(InvalidInputError, match="closer than half") as exc:
        s.push(_with_ts([at + timedelta(minutes=10)], seed=7))
    _assert_names(exc, "AAPL", at, at + timedelta(minutes=10))
    assert s.bars("AAPL").equals(stored)
    fixed = bars.slice(20, 1).with_columns(pl.col("volume") + 1)
    assert s.push(fixed).restated == {"AAPL": 1}


def test_the_strictest_live_set_is_checked(store: Store) -> None:
    """A push computes every live set: minute bars with a 1m and a 1h set live are refused for the 1h one."""
    bars = _with_ts([datetime(2024, 1, 2, 14, 30, tzinfo=UTC) + k * timedelta(minutes=1) for k in range(30)])
    store.ingest(bars.head(20))
    minute, hour = _fs("1m"), _fs("1h")
    store.backfill(minute)
    assert store.push(bars.slice(20, 1), minute).bars == 1
    with pytest.raises(InvalidInputError, match=f"feature set {hour.name!r}"):
        store.push(bars.slice(21, 1), [minute, hour])

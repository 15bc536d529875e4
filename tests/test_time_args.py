"""Time arguments at the API edge: any timezone-aware time is the UTC instant it names; naive ones are errors.

Every Store entry point that takes a time, and the CLI, goes through ``pitstore.timeutil.utc``. A New York
time must give exactly the answer of the equal UTC instant (the bar times are chosen so that reading the New
York wall clock as UTC, or dropping the offset, would give a different answer).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import polars as pl
import pytest
from clirun import run
from polars.testing import assert_frame_equal

from pitstore import Store, standard_features, timeutil
from pitstore.errors import InvalidInputError
from pitstore.testing import synthetic_bars

NY = ZoneInfo("America/New_York")
FS = standard_features()
# A bar's ts (daily bars at 00:00 UTC), just after the 2015 DST change: 2015-03-09 20:00 in New York.
T = datetime(2015, 3, 10, tzinfo=UTC)
T_END = T + timedelta(days=20)


def bars() -> pl.DataFrame:
    return synthetic_bars(2, 120)


@dataclass
class Filled:
    store: Store
    known: datetime  # after the first backfill, before a restatement of S0000


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Filled]:
    root = tmp_path_factory.mktemp("time-args")
    with Store.open(root) as store:
        store.ingest(bars())
        store.backfill(FS)
        known = datetime.now(UTC)
        restated = bars().with_columns(
            pl.when((pl.col("symbol") == "S0000") & (pl.col("ts") >= T - timedelta(days=5)))
            .then(pl.col(c) * 1.1).otherwise(pl.col(c)).alias(c) for c in ("open", "high", "low", "close"))
        store.ingest(restated)
        store.backfill(FS)
        yield Filled(store, known)


def ny(t: datetime) -> datetime:
    return t.astimezone(NY)


def ny_pandas(t: datetime) -> datetime:
    ts: datetime = pd.Timestamp(t).tz_convert("America/New_York")
    return ts


# Each entry point as f(filled, time) -> a result comparable with ==, or a polars frame.
CALLS: dict[str, Callable[[Filled, datetime], Any]] = {
    "read start": lambda f, t: f.store.read(FS.name, start=t),
    "read end": lambda f, t: f.store.read(FS.name, end=t),
    "read as_known_at": lambda f, t: f.store.read(FS.name, as_known_at=t),
    "get_features as_of": lambda f, t: f.store.get_features("S0000", t, FS.name),
    "get_features as_known_at": lambda f, t: f.store.get_features("S0000", T_END, FS.name, as_known_at=t),
    "get_historical as_known_at": lambda f, t: f.store.get_historical(
        pl.DataFrame({"symbol": ["S0000", "S0001"], "ts": [T_END, T]}), FS.name, as_known_at=t),
}
# The time given to each. New York is behind UTC, so its wall clock read as UTC is earlier than the instant:
# a start just after a bar, an end or as_of at a bar, then include or exclude one more bar. as_known_at
# replays before the restatement, so it is the real instant of that.
WHEN: dict[str, Callable[[Filled], datetime]] = {
    k: (lambda f: f.known) if "as_known_at" in k else (lambda f: T) for k in CALLS
}
WHEN["read start"] = lambda f: T + timedelta(hours=1)


def same(a: Any, b: Any) -> None:
    if isinstance(a, pl.DataFrame):
        assert_frame_equal(a, b)
    else:
        assert a == b


def differs(a: Any, b: Any) -> bool:
    return not a.equals(b) if isinstance(a, pl.DataFrame) else bool(a != b)


@pytest.mark.parametrize("convert", [ny, ny_pandas], ids=["datetime", "pandas"])
@pytest.mark.parametrize("call", list(CALLS))
def test_new_york_time_gives_the_answer_of_the_equal_utc_instant(
    filled: Filled, call: str, convert: Callable[[datetime], datetime]
) -> None:
    t = WHEN[call](filled)
    want = CALLS[call](filled, t)
    same(CALLS[call](filled, convert(t)), want)
    # The instant matters: the New York wall clock read as UTC is another answer (so the check has teeth).
    wall = convert(t).replace(tzinfo=UTC)
    if "as_known_at" not in call:  # (as_known_at: minutes apart both see the same recorded entries)
        assert differs(CALLS[call](filled, wall), want), call


def test_as_known_at_in_new_york_replays_before_the_restatement(filled: Filled) -> None:
    """The as_known_at checks above compare something: before the restatement S0000's values differ."""
    now = filled.store.get_features("S0000", T_END, FS.name)
    then = filled.store.get_features("S0000", T_END, FS.name, as_known_at=ny(filled.known))
    assert now.status == then.status == "ok" and now.values != then.values


def test_backfill_start_and_end_in_new_york_store_what_utc_ones_do(tmp_path: Path) -> None:
    """backfill(start=, end=) in New York time writes the same rows as the equal UTC instants."""
    got = []
    for i, (start, end) in enumerate([(T, T_END), (ny(T), ny(T_END))]):
        with Store.open(tmp_path / str(i)) as store:
            store.ingest(bars())
            store.backfill(FS, start=start, end=end)
            got.append(store.read(FS.name))
    assert got[0].height > 0 and got[0]["ts"].min() == T and got[0]["ts"].max() == T_END
    assert_frame_equal(got[0], got[1])


NAIVE = datetime(2015, 3, 10)


@pytest.mark.parametrize("bad", [NAIVE, date(2015, 3, 10), np.datetime64("2015-03-10T00:00:00"),
                                 "2015-03-10T00:00:00"], ids=["naive", "date", "datetime64", "naive-string"])
@pytest.mark.parametrize("call", [*CALLS, "backfill start", "backfill end"])
def test_naive_or_non_datetime_time_is_invalid_input_naming_the_argument(filled: Filled, call: str,
                                                                          bad: Any) -> None:
    calls: dict[str, Callable[[Filled, Any], Any]] = {
        **CALLS,
        "backfill start": lambda f, t: f.store.backfill(FS, start=t),
        "backfill end": lambda f, t: f.store.backfill(FS, end=t),
    }
    before = filled.store.read(FS.name)
    with pytest.raises(InvalidInputError, match=call.split()[-1]):
        calls[call](filled, bad)
    assert_frame_equal(filled.store.read(FS.name), before)  # nothing written


def test_utc_converts_to_a_plain_utc_datetime() -> None:
    """The one conversion: a plain datetime with tzinfo=UTC, to the microsecond (pandas' ns truncated)."""
    t = timeutil.utc(pd.Timestamp("2015-03-09 20:00:00.000001999", tz="America/New_York"), "as_of")
    assert type(t) is datetime and t.tzinfo is UTC and t == datetime(2015, 3, 10, 0, 0, 0, 1, tzinfo=UTC)
    assert timeutil.utc("2015-03-09T20:00:00-04:00", "--start") == timeutil.utc("2015-03-10T00:00:00Z", "--start") == T
    with pytest.raises(InvalidInputError, match="out of the datetime range"):
        timeutil.utc(datetime(1, 1, 1, tzinfo=ZoneInfo("Asia/Tokyo")), "start")


def test_cli_times_with_an_offset_are_the_utc_instant(filled: Filled) -> None:
    """pitstore get --start/--end/--as-known-at with a New York offset prints what the Z times print."""
    root = filled.store.root
    args = ["get", FS.name, "--symbols", "S0000", "--json", "--root", str(root)]
    utc_out = run(*args, "--start", T.isoformat(), "--end", T_END.isoformat(),
                  "--as-known-at", filled.known.isoformat())
    ny_out = run(*args, "--start", ny(T).isoformat(), "--end", ny(T_END).isoformat(),
                 "--as-known-at", ny(filled.known).isoformat())
    assert ny_out == utc_out and T.isoformat()[:10] in utc_out

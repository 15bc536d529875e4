"""Coarser bars from stored bars: buckets by close time, each stamped with its last bar (never a future
time), OHLCV aggregated by their rules, indicators on them computed once through the compute cache."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from pitstore import Store
from pitstore.errors import InvalidInputError
from pitstore.sources.resample import resample_bars
from pitstore.testing import synthetic_bars

START = datetime(2024, 1, 2, 14, 31, tzinfo=UTC)  # the first minute bar of a 14:30 UTC session open


def _minutes(n: int) -> pl.DataFrame:
    return synthetic_bars(1, n, timeframe="1m", start=START, seed=5)


def test_hour_buckets_hold_the_bars_that_close_in_them() -> None:
    bars = _minutes(150)  # 14:31 .. 17:00
    hours = resample_bars(bars, "1h")
    assert hours["ts"].to_list() == [datetime(2024, 1, 2, h, tzinfo=UTC) for h in (15, 16, 17)]
    for row in hours.iter_rows(named=True):
        inside = bars.filter((pl.col("ts") > row["ts"] - timedelta(hours=1)) & (pl.col("ts") <= row["ts"]))
        assert row["open"] == inside["open"][0] and row["close"] == inside["close"][-1]
        assert row["high"] == inside["high"].max() and row["low"] == inside["low"].min()
        assert row["volume"] == pytest.approx(inside["volume"].sum(), rel=1e-12)
    assert hours["volume"].sum() == pytest.approx(bars["volume"].sum(), rel=1e-12)


def test_a_bucket_still_filling_is_stamped_with_its_newest_bar_not_its_end() -> None:
    bars = _minutes(100)  # 14:31 .. 16:10: the 16:00-17:00 hour holds 10 bars so far
    last = resample_bars(bars, "1h").row(-1, named=True)
    assert last["ts"] == bars["ts"][-1] == datetime(2024, 1, 2, 16, 10, tzinfo=UTC)
    assert last["open"] == bars["open"][-10] and last["close"] == bars["close"][-1]
    # What it says at 16:10 is what the full hour's bar says about the bars up to 16:10: a prefix, no future.
    full = resample_bars(_minutes(150), "1h").row(-1, named=True)
    assert full["open"] == last["open"] and full["high"] >= last["high"]


def test_the_stored_timeframe_is_served_as_is_and_a_finer_one_is_refused() -> None:
    bars = _minutes(30)
    assert resample_bars(bars, "1m").equals(bars)
    days = synthetic_bars(1, 30, seed=1)
    with pytest.raises(InvalidInputError, match="cannot be made") as err:
        resample_bars(days, "1h")
    assert err.value.column == "timeframe"
    with pytest.raises(InvalidInputError, match="invalid timeframe"):
        resample_bars(bars, "fortnight")


def test_store_bars_and_indicators_on_a_coarser_timeframe(tmp_path: Path) -> None:
    bars = _minutes(600)
    with Store.open(tmp_path / "s") as store:
        store.ingest(bars)
        hours = store.bars("S0000", timeframe="1h")
        assert hours.equals(resample_bars(store.bars("S0000"), "1h"))
        got = store.get_indicators("S0000", ["sma_3"], timeframe="1h")
        want = hours["close"].rolling_mean(3)
        assert got["ts"].equals(hours["ts"])
        assert got["sma_3"].to_list()[2:] == pytest.approx(want.to_list()[2:], rel=1e-12)
        misses = store.stats()["cache"]["misses"]
        again = store.get_indicators("S0000", ["sma_3"], start=hours["ts"][3], timeframe="1h")
        assert store.stats()["cache"]["misses"] == misses  # a hit: computed once
        assert again.equals(got.filter(pl.col("ts") >= hours["ts"][3]))
        minute = store.compute_feature("sma", "S0000", params={"n": 3})
        assert minute.height == bars.height  # without a timeframe: the stored bars

"""Incremental backfills resume the TA-Lib (recursive) features from the state carried in the process
(pitstore.offline.carry): the rows they write equal a full recompute over the whole history bit for bit, at any
split of the bars into appends; a new process, or another writer's commit, makes the symbol recompute in full."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_offline import assert_bitwise_equal

import pitstore
from pitstore import FeatureSet, Store, atr, ema, macd, mom, ret, rsi, talib, vol
from pitstore.offline.carry import carried
from pitstore.testing import synthetic_bars

# The append bench's recursive features and a few more TA-Lib ones (multi-input, multi-output, an EMA of its own),
# next to window features: the set resumes windows from tails and these from their handles.
CARRIED = FeatureSet("carried", [
    ret(5), vol(20), mom(10), rsi(14), macd(), atr(14), ema(10), talib("RSI", timeperiod=5), talib("ADX"),
    talib("BBANDS", timeperiod=7), talib("OBV"),
])


def test_the_set_carries_every_talib_feature() -> None:
    assert [f.name for f in carried(CARRIED.features)] == ["rsi_14", "macd_12_26_9", "atr_14", "ema_10",
                                                          "talib_rsi_5", "talib_adx_14", "talib_bbands_7_2_2_0",
                                                          "talib_obv"]
    assert carried([pitstore.expr("c", pl.col("close")), rsi(14)]) == []  # an expression: recomputed in full


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), n_bars=st.integers(40, 220),
       splits=st.lists(st.floats(0.05, 0.999), min_size=1, max_size=4), decimals=st.integers(0, 4),
       segments=st.sampled_from([0, 2, 16]))
def test_appends_resumed_from_carried_state_equal_a_full_recompute(
        tmp_path_factory: pytest.TempPathFactory, seed: int, n_bars: int, splits: list[float], decimals: int,
        segments: int) -> None:
    """Random bars (rounded: equal closes, zero gains) cut at random points per symbol; after each append the
    stored rows equal pitstore.compute over all bars known, floats and nulls bit for bit."""
    raw = synthetic_bars(3, n_bars, seed=seed)
    prices = ["open", "high", "low", "close"]
    bars = raw.with_columns(pl.col(c).round(decimals) for c in prices).with_columns(
        pl.max_horizontal(prices).alias("high"), pl.min_horizontal(prices).alias("low"))
    rng = np.random.default_rng(seed)
    pos = pl.int_range(pl.len()).over("symbol")
    cuts = sorted({int(f * n_bars) for f in splits} | {n_bars})
    with Store.open(tmp_path_factory.mktemp("carry") / "s", bar_segments=segments) as store:
        resumed = sent = 0
        limits = dict.fromkeys(bars["symbol"].unique().to_list(), 0)
        for cut in cuts:
            # Per symbol a slightly different cut: some append one bar, some many, some none this time.
            limits = {s: max(n, cut + (int(rng.integers(-3, 1)) if cut < n_bars else 0)) for s, n in limits.items()}
            mine = pos < pl.col("symbol").replace_strict(limits, return_dtype=pl.Int64)
            known = bars.filter(mine)
            store.ingest(bars.filter(mine & (pos >= sent - 3)))  # re-sends a few stored bars: unchanged
            sent = min(limits.values())
            report = store.backfill(CARRIED)
            resumed += len(report.resumed)
            assert_bitwise_equal(store.read(CARRIED.name), pitstore.compute(CARRIED, known), f"cut {cut}")
        assert resumed or len(cuts) == 1 or cuts[0] < 40  # some symbol had the history to carry state


def test_a_new_process_recomputes_once_then_resumes(tmp_path: Path) -> None:
    bars = synthetic_bars(3, 200, seed=3)
    pos = pl.int_range(pl.len()).over("symbol")
    root = tmp_path / "s"
    with Store.open(root) as store:
        store.ingest(bars.filter(pos < 150))
        first = store.backfill(CARRIED)
        assert sorted(first.full) == ["S0000", "S0001", "S0002"] and len(store.carry) == 3
        store.ingest(bars.filter(pos < 160))
        assert sorted(store.backfill(CARRIED).resumed) == ["S0000", "S0001", "S0002"]
    with Store.open(root) as fresh:  # nothing carried: the whole history once, then resumed
        fresh.ingest(bars.filter(pos < 170))
        again = fresh.backfill(CARRIED)
        assert again.resumed == [] and sorted(again.incremental) == ["S0000", "S0001", "S0002"]
        fresh.ingest(bars.filter(pos < 171))
        assert sorted(fresh.backfill(CARRIED).resumed) == ["S0000", "S0001", "S0002"]
        assert_bitwise_equal(fresh.read(CARRIED.name), pitstore.compute(CARRIED, bars.filter(pos < 171)))


def test_state_is_not_resumed_past_another_writers_entry(tmp_path: Path) -> None:
    """A's state stands at its own last entry; after B commits a newer one, A computes the symbol in full."""
    bars = synthetic_bars(2, 200, seed=4)
    pos = pl.int_range(pl.len()).over("symbol")
    root = tmp_path / "s"
    with Store.open(root) as a, Store.open(root) as b:
        a.ingest(bars.filter(pos < 120))
        a.backfill(CARRIED)
        b.ingest(bars.filter(pos < 130))
        assert b.backfill(CARRIED).resumed == []  # B carries nothing yet
        a.ingest(bars.filter(pos < 140))
        mine = a.backfill(CARRIED)
        assert mine.resumed == [] and sorted(mine.incremental) == ["S0000", "S0001"]
        a.ingest(bars.filter(pos < 141))
        assert sorted(a.backfill(CARRIED).resumed) == ["S0000", "S0001"]
        assert_bitwise_equal(a.read(CARRIED.name), pitstore.compute(CARRIED, bars.filter(pos < 141)))


def test_a_restatement_recomputes_and_carries_the_new_state(tmp_path: Path) -> None:
    bars = synthetic_bars(2, 150, seed=6)
    pos = pl.int_range(pl.len()).over("symbol")
    with Store.open(tmp_path / "s") as store:
        store.ingest(bars.filter(pos < 100))
        store.backfill(CARRIED)
        hit = (pl.col("symbol") == "S0001") & (pos == 50)
        restated = bars.with_columns(pl.when(hit).then(pl.col(c) * 1.01).otherwise(pl.col(c)).alias(c)
                                     for c in ("open", "high", "low", "close"))
        store.ingest(restated.filter(pos < 110), replace_range=True)
        report = store.backfill(CARRIED)
        assert report.full == ["S0001"] and report.resumed == ["S0000"]
        store.ingest(restated.filter(pos < 111))
        assert sorted(store.backfill(CARRIED).resumed) == ["S0000", "S0001"]
        assert_bitwise_equal(store.read(CARRIED.name), pitstore.compute(CARRIED, restated.filter(pos < 111)))

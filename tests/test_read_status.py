"""Reads with a damaged entry, entity columns that clash with outputs, and a status per feature set."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import pitstore
from pitstore import CacheCorruptionError, InvalidInputError, Store
from pitstore.offline.entries import EntryReader
from pitstore.offline.reads import read_range
from pitstore.testing import synthetic_bars


def feature_set() -> pitstore.FeatureSet:
    return pitstore.FeatureSet("fs", [pitstore.ret(2).alias("r"), pitstore.sma(3).alias("m")], timeframe="1d")


def entities() -> pl.DataFrame:
    return pl.DataFrame({
        "symbol": ["S0000", "S0001", "S0000", "S0001"],
        "ts": [datetime(2015, 3, 1, tzinfo=UTC), datetime(2015, 3, 1, tzinfo=UTC),
               datetime(2015, 2, 1, tzinfo=UTC), datetime(2015, 2, 1, tzinfo=UTC)],
        "label": [1, 2, 3, 4],
    }).with_columns(pl.col("ts").dt.cast_time_unit("us"))


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:  # one flipped byte in the middle: still a readable Parquet file, maybe, but not the stored one
        data[len(data) // 2] ^= 0x55
        path.write_bytes(bytes(data))


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "store") as s:
        s.ingest(synthetic_bars(2, 60, seed=3))
        s.backfill(feature_set())
        yield s


@pytest.mark.parametrize("how", ["missing", "truncated", "flipped"])
def test_a_damaged_entry_marks_its_symbol_damaged_and_answers_the_others(
        store: Store, how: str, caplog: pytest.LogCaptureFixture) -> None:
    before = store.get_historical(entities(), "fs")
    read_before = store.read("fs")
    assert set(before["status"]) == {"ok"}
    (entry,) = store.catalog.feature_entries("fs", 1, ["S0000"])
    damage(store.root / entry.path, how)
    store.reader = EntryReader(store.root)  # as a new process would: this one's LRU still has the good rows
    with caplog.at_level(logging.WARNING, logger="pitstore"):
        got = store.get_historical(entities(), "fs")
    assert entry.path in caplog.text
    assert got.columns == before.columns
    s0 = got.filter(pl.col("symbol") == "S0000")
    assert s0["status"].to_list() == ["damaged", "damaged"]
    assert s0["r"].null_count() == 2 and s0["m"].null_count() == 2  # never the damaged values, never made up
    assert_frame_equal(got.filter(pl.col("symbol") == "S0001"), before.filter(pl.col("symbol") == "S0001"))
    assert got["label"].to_list() == [1, 2, 3, 4]

    rows = store.read("fs")
    assert_frame_equal(rows.filter(pl.col("symbol") == "S0001").drop("status"),
                       read_before.filter(pl.col("symbol") == "S0001"))
    assert set(rows.filter(pl.col("symbol") == "S0001")["status"]) == {"ok"}
    marked = rows.filter(pl.col("symbol") == "S0000")
    assert marked["status"].to_list() == ["damaged"] and marked["ts"].is_null().all()
    # Internal readers (serving, live) get a typed error naming the file, not a polars error.
    with pytest.raises(CacheCorruptionError, match=entry.path):
        read_range(store.reader, store.catalog, store.registry, "fs", None, None, None, None)


def test_a_damaged_later_segment_is_not_answered_from_an_older_one(tmp_path: Path) -> None:
    """The symbol is damaged as a whole: an as-of look-up must not fall back to a row of an older segment."""
    bars = synthetic_bars(1, 70, seed=4)
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars.head(50))
        store.backfill(feature_set())
        store.ingest(bars)
        store.backfill(feature_set())  # appended bars: a second, incremental segment
        _, second = store.catalog.feature_entries("fs", 1, ["S0000"])
        last_ts = bars["ts"][-1]
        damage(store.root / second.path, "missing")
        got = store.get_historical(pl.DataFrame({"symbol": ["S0000"], "ts": [last_ts]}), "fs")
        assert got["status"].to_list() == ["damaged"] and got["r"].to_list() == [None]


def test_entity_columns_named_like_outputs_are_refused(store: Store) -> None:
    ents = entities().with_columns(status=pl.lit("mine"), r=pl.lit(1.0))
    kept = ents.clone()
    with pytest.raises(InvalidInputError) as info:
        store.get_historical(ents, "fs")
    assert "'status'" in str(info.value) and "'r'" in str(info.value) and "'m'" not in str(info.value)
    assert_frame_equal(ents, kept)
    # A feature not asked for is not a clash; neither is status_<set> with one set... but it is with two.
    assert store.get_historical(entities().with_columns(m=pl.lit(1.0)), "fs:r")["m"].to_list() == [1.0] * 4


def test_status_per_feature_set_across_timeframes(tmp_path: Path) -> None:
    daily = pitstore.FeatureSet("d", [pitstore.ret(2).alias("r")], timeframe="1d")
    hourly = pitstore.FeatureSet("h", [pitstore.sma(3).alias("m")], timeframe="1h")
    with Store.open(tmp_path / "store") as store:
        store.ingest(synthetic_bars(2, 60, seed=3))
        store.backfill(daily)
        store.backfill(hourly, symbols=["S0000"])  # S0001 is absent from h
        alone = store.get_historical(entities(), "d")
        got = store.get_historical(entities(), ["d", "h"])
        assert got.columns == ["symbol", "ts", "label", "r", "m", "status", "status_d", "status_h"]
        assert got["status_d"].to_list() == ["ok"] * 4  # the row has d's values: d says ok
        assert got["status_h"].to_list() == ["ok", "unknown_symbol", "ok", "unknown_symbol"]
        assert got["status"].to_list() == ["ok", "unknown_symbol", "ok", "unknown_symbol"]  # the worst over sets
        assert got["r"].to_list() == alone["r"].to_list()
        with pytest.raises(InvalidInputError, match="status_h"):
            store.get_historical(entities().with_columns(status_h=pl.lit(0)), ["d", "h"])
        assert "status_h" in store.get_historical(entities().with_columns(status_h=pl.lit(0)), "d").columns

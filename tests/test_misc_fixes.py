"""Smaller gaps (issue #16) and correctness items of #19: online frames keep their dtypes, one status vocabulary
for point-in-time reads, bar-based names and annualisation of the standard features, the conventions table."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from pitstore import FeatureSet, Store, ret, sma
from pitstore.testing import synthetic_bars

NOW = datetime.now(UTC)
FS = FeatureSet("online_fs", [ret(1), sma(3)], timeframe="1d")  # default online TTL: 4 days


def _bars_ending(symbol: str, last: datetime) -> pl.DataFrame:
    bars = synthetic_bars(1, 30, start=datetime(2020, 1, 1, tzinfo=UTC)).with_columns(symbol=pl.lit(symbol))
    return bars.with_columns(pl.col("ts") + (last - bars["ts"].max()))


# --- get_online(output=...) keeps the features' dtype ------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "redis"])
def online_store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """A store whose online tier holds FRESH (last bar an hour ago) and OLD (last bar 10 days ago)."""
    if request.param == "redis":
        options = {"online_url": request.getfixturevalue("redis_url"),
                   "online_namespace": request.getfixturevalue("namespace")}
    else:
        options = {"online_url": f"{request.param}://"}
    with Store.open(tmp_path / "store", **options) as store:
        store.ingest(pl.concat([_bars_ending("FRESH", NOW - timedelta(hours=1)),
                                _bars_ending("OLD", NOW - timedelta(days=10))]))
        store.backfill(FS)
        store.materialize(FS)
        yield store
        if request.param == "redis":
            store.serving.online.delete("online_fs@1")


@pytest.mark.parametrize(("symbols", "statuses"), [
    (["NOPE", "NADA"], ["missing", "missing"]),
    (["OLD", "OLD"], ["stale", "stale"]),
    (["OLD", "NOPE", "FRESH"], ["stale", "missing", "ok"]),
], ids=["all-missing", "all-stale", "mixed"])
def test_get_online_frame_keeps_float64_when_values_are_stale_or_missing(
        online_store: Store, symbols: list[str], statuses: list[str]) -> None:
    """A batch whose values are all null (stale or missing) still has Float64 feature columns, not Null."""
    df = online_store.get_online(symbols, "online_fs", output="polars")
    assert df.schema == pl.Schema({"symbol": pl.String, "ts": pl.Datetime("us", "UTC"), "ret_1": pl.Float64,
                                   "sma_3": pl.Float64, "status": pl.String})
    assert df["status"].to_list() == statuses
    fresh = df.filter(pl.col("status") == "ok")
    assert fresh["sma_3"].null_count() == 0
    assert df.filter(pl.col("status") != "ok")["sma_3"].null_count() == len(symbols) - fresh.height
    pandas = online_store.get_online(symbols, "online_fs", output="pandas")
    assert str(pandas["ret_1"].dtype) == "float64"


# --- one status vocabulary for point-in-time reads ------------------------------------------------------------


def test_get_features_says_what_get_historical_says_for_the_same_look_up(tmp_path: Path) -> None:
    """unknown_symbol, no_data_yet, ok, stale and damaged: get_features gives get_historical's status (and values)
    for every look-up, whichever situation it is."""
    fs = FeatureSet("pit_fs", [ret(1), sma(3)], timeframe="1d", ttl=timedelta(days=3))
    bars = synthetic_bars(2, 40, start=datetime(2020, 1, 1, tzinfo=UTC))
    first, last = bars["ts"].min(), bars["ts"].max()
    probes = [("S0000", first - timedelta(days=1)), ("S0000", first), ("S0000", last),
              ("S0000", last + timedelta(days=5)), ("NOPE", last), ("S0001", last)]
    with Store.open(tmp_path / "store", online_url="memory://") as store:
        store.ingest(bars)
        store.backfill(fs)
        (store.root / store.catalog.feature_entries("pit_fs", 1, ["S0001"])[0].path).unlink()  # S0001: damaged
        entities = pl.DataFrame({"symbol": [s for s, _ in probes], "ts": [t for _, t in probes]})
        historical = store.get_historical(entities, "pit_fs")
        want = ["no_data_yet", "ok", "ok", "stale", "unknown_symbol", "damaged"]
        assert historical["status"].to_list() == want
        for (symbol, t), row in zip(probes, historical.iter_rows(named=True), strict=True):
            got = store.get_features(symbol, t, "pit_fs")
            assert got.status == row["status"], (symbol, t)
            assert got.values == {"ret_1": row["ret_1"], "sma_3": row["sma_3"]}, (symbol, t)

"""Type-checked by tests/test_typing.py (mypy --strict), never run: what a typed caller of the public API sees.

Each ``assert_type`` pins a public return type; a signature that falls back to ``Any`` (or to the wrong frame
family) fails the check. Arrow results are not pinned: pyarrow ships no type information, so ``pa.Table`` is Any.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import assert_type

import pandas as pd
import polars as pl

import pitstore
from pitstore import (
    BackfillReport,
    CachedCompute,
    CleanupReport,
    FeatureVector,
    Frame,
    GcReport,
    HistoricalDataset,
    IngestReport,
    PushReport,
    Status,
    Store,
    TierReport,
    VerifyReport,
    VersionSummary,
    WarmReport,
)
from pitstore.client import AsyncClient, Client

T0 = datetime(2024, 1, 2, tzinfo=UTC)


def features_pl(raw: pl.DataFrame, config: dict[str, int]) -> pl.DataFrame:
    return raw.head(config["n"])


def features_lazy(raw: pl.DataFrame, config: int) -> pl.LazyFrame:
    return raw.lazy().head(config)


def features_pd(raw: pd.DataFrame, config: int) -> pd.DataFrame:
    return raw.head(config)


def store_api(store: Store, bars_pl: pl.DataFrame, bars_pd: pd.DataFrame, kind: pitstore.FrameKind) -> None:
    fs = pitstore.standard_features()
    assert_type(Store.open("/tmp/x"), Store)
    assert_type(store.register(fs), int)
    assert_type(store.ingest(bars_pl), IngestReport)
    assert_type(store.backfill(fs), BackfillReport)
    assert_type(store.versions(fs.name), list[VersionSummary])
    assert_type(store.cleanup_versions(fs.name, max_versions=1), CleanupReport)

    # Frames follow the caller's family, or output=.
    assert_type(store.get_historical(bars_pl, "daily_core"), pl.DataFrame)
    assert_type(store.get_historical(bars_pl.lazy(), "daily_core"), pl.DataFrame)
    assert_type(store.get_historical(bars_pd, "daily_core"), pd.DataFrame)
    assert_type(store.get_historical(bars_pd, "daily_core", output="polars"), pl.DataFrame)
    assert_type(store.get_historical(bars_pl, "daily_core", output="pandas"), pd.DataFrame)
    assert_type(store.get_historical("entities/", "daily_core", engine="dask", out="out/"), HistoricalDataset)
    assert_type(store.read("daily_core"), pl.DataFrame)
    assert_type(store.read("daily_core", ["AAPL"], T0, as_known_at=T0, output="pandas"), pd.DataFrame)
    assert_type(store.read("daily_core", output=kind), Frame)
    assert_type(store.get_online(["AAPL"], "daily_core"), list[FeatureVector])
    assert_type(store.get_online("AAPL", "daily_core", output="polars"), pl.DataFrame)
    assert_type(store.get_online("AAPL", "daily_core", output="pandas"), pd.DataFrame)
    assert_type(store.get_features("AAPL", T0, "daily_core"), FeatureVector)
    assert_type(store.get_features("AAPL", T0, "daily_core").status, Status)
    assert_type(store.get_indicators("AAPL", "rsi_14"), pl.DataFrame)
    assert_type(store.get_indicators("AAPL", ["rsi_14"], output="pandas"), pd.DataFrame)
    assert_type(store.compute_feature("rsi", "AAPL", params={"n": 21}), pl.DataFrame)
    assert_type(store.bars("AAPL"), pl.DataFrame)

    # The compute cache gives back what compute returned (a LazyFrame comes back collected).
    assert_type(store.get_or_compute("AAPL", bars_pl, {"n": 3}, features_pl), pl.DataFrame)
    assert_type(store.get_or_compute("AAPL", bars_pl, 3, features_lazy), pl.DataFrame)
    assert_type(store.get_or_compute("AAPL", bars_pd, 3, features_pd), pd.DataFrame)
    cached = store.cached(features_pd)
    assert_type(cached, CachedCompute[pd.DataFrame, int, pd.DataFrame])
    assert_type(cached(bars_pd, 3, symbol="AAPL"), pd.DataFrame)
    assert_type(store.warm_cache(None, [3], features_pd), WarmReport)

    assert_type(store.push(bars_pl), PushReport)
    assert_type(store.gc(dry_run=True), GcReport)
    assert_type(store.verify(), VerifyReport)
    assert_type(store.tier(dry_run=True), TierReport)
    assert_type(store.newest_rows(), dict[str, int])
    assert_type(store.symbols(), list[str])
    with store.hold_version("daily_core@1"):
        pass


def library_api(bars_pl: pl.DataFrame, bars_pd: pd.DataFrame) -> None:
    fs = pitstore.standard_features()
    assert_type(pitstore.compute(fs, bars_pl), pl.DataFrame)
    assert_type(pitstore.compute([pitstore.rsi(14)], bars_pd), pd.DataFrame)
    assert_type(pitstore.compute(fs, bars_pd, output="polars"), pl.DataFrame)
    assert_type(pitstore.validate_bars(bars_pl), pl.DataFrame)


def client_api(client: Client, bars_pl: pl.DataFrame, bars_pd: pd.DataFrame) -> None:
    assert_type(client.get_online("AAPL", "daily_core"), list[FeatureVector])
    assert_type(client.get_online("AAPL", "daily_core", output="polars"), pl.DataFrame)
    assert_type(client.get_historical(bars_pl, "daily_core"), pl.DataFrame)
    assert_type(client.get_historical(bars_pd, "daily_core"), pd.DataFrame)
    assert_type(client.get_ohlcv("AAPL"), pl.DataFrame)
    assert_type(client.get_ohlcv("AAPL", output="pandas"), pd.DataFrame)
    assert_type(client.get_indicators("AAPL"), pl.DataFrame)
    assert_type(client.compute_feature("rsi", "AAPL"), pl.DataFrame)


async def async_client_api(client: AsyncClient, bars_pl: pl.DataFrame) -> None:
    assert_type(await client.get_online("AAPL", "daily_core"), list[FeatureVector])
    assert_type(await client.get_online("AAPL", "daily_core", output="pandas"), pd.DataFrame)
    assert_type(await client.get_historical(bars_pl, "daily_core"), pl.DataFrame)
    assert_type(await client.get_ohlcv("AAPL"), pl.DataFrame)
    assert_type(await client.get_indicators("AAPL", output="pandas"), pd.DataFrame)
    assert_type(await client.compute_feature("rsi", "AAPL"), pl.DataFrame)


def service_api(client: Client) -> None:
    from prometheus_client.registry import Collector
    from starlette.types import ASGIApp

    from pitstore.server import create_app

    assert_type(create_app(), ASGIApp)
    assert_type(client.metrics_collector(), Collector)

"""Retention of superseded entries (pitstore.catalog.retention): a daily append job with restatements, then gc."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import pitstore
from pitstore import InvalidInputError, RetentionError, Store
from pitstore.catalog import sqlite as sqlite_catalog
from pitstore.sources.segments import entry_paths
from pitstore.testing import synthetic_bars

DAY_US = 86_400_000_000
START = datetime(2015, 1, 2, tzinfo=UTC)
HISTORY, APPENDS, RETENTION = 200, 50, 10


def feature_set() -> pitstore.FeatureSet:
    return pitstore.FeatureSet("fs", [pitstore.ret(2).alias("r"), pitstore.ema(5).alias("e")], timeframe="1d")


def data_bytes(root: Path) -> int:
    return sum(p.stat().st_size for top in ("bars", "features") for p in (root / top).rglob("*.parquet"))


def restate(bars: pl.DataFrame, symbol: str, ts: datetime) -> pl.DataFrame:
    hit = (pl.col("symbol") == symbol) & (pl.col("ts") == ts)
    return bars.filter(hit).with_columns(pl.col(c) * 1.01 for c in ("open", "high", "low", "close"))


class Clock:
    """The catalog's clock (recorded_at, superseded_at, the retention checks), one day per daily job."""

    def __init__(self) -> None:
        self.now = int(datetime(2030, 1, 1, tzinfo=UTC).timestamp()) * 1_000_000

    def __call__(self) -> int:
        return self.now

    def at(self) -> datetime:
        return datetime.fromtimestamp(self.now / 1e6, UTC)


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    c = Clock()
    monkeypatch.setattr(sqlite_catalog, "now_us", c)
    return c


def test_a_daily_append_job_stays_proportional_and_replays_inside_the_retention(tmp_path: Path,
                                                                                clock: Clock) -> None:
    bars = synthetic_bars(3, HISTORY + APPENDS, seed=5)
    lookups = pl.DataFrame({"symbol": ["S0000", "S0001", "S0002", "S0001"],
                            "ts": [START + timedelta(days=d) for d in (HISTORY - 5, 100, HISTORY + APPENDS, 30)]}) \
        .with_columns(pl.col("ts").dt.cast_time_unit("us"))
    answers: list[tuple[datetime, pl.DataFrame]] = []
    with Store.open(tmp_path / "store", retention_days=RETENTION) as store:
        store.ingest(bars.filter(pl.col("ts") < START + timedelta(days=HISTORY)))
        store.backfill(feature_set())
        for day in range(APPENDS):
            clock.now += DAY_US
            store.ingest(bars.filter(pl.col("ts") == START + timedelta(days=HISTORY + day)))
            if day % 7 == 3:  # now and then a vendor restates an old bar: a full recompute supersedes the entries
                store.ingest(restate(bars, "S0001", bars["ts"][30 + day]))
            store.backfill(feature_set())
            clock.now += DAY_US // 2
            answers.append((clock.at(), store.get_historical(lookups, "fs", as_known_at=clock.at())))
        clock.now += DAY_US // 2
        live_bytes = sum(e.n_rows for e in store.catalog.live_bars())
        before = data_bytes(store.root)
        report = store.gc()
        after = data_bytes(store.root)
        assert report.superseded and report.bytes_freed > 0
        # Kept: the live snapshots and entries, and the ~RETENTION days of superseded ones a replay can need
        # (appends are segments sharing their base: superseded snapshots cost little, gc frees what no row lists).
        assert after < before, (before, after)
        live_files = sum((store.root / p).stat().st_size for e in store.catalog.live_bars() for p in entry_paths(e))
        assert after < (RETENTION + 3) * 2 * live_files, (after, live_files, live_bytes)
        horizon = clock.now - RETENTION * DAY_US
        inside = [(t, a) for t, a in answers if t.timestamp() * 1e6 >= horizon]
        outside = [t for t, _ in answers if t.timestamp() * 1e6 < horizon]
        assert len(inside) >= RETENTION // 2 and outside  # one job every 1.5 days
        for t, expected in inside:
            assert_frame_equal(store.get_historical(lookups, "fs", as_known_at=t), expected)
        for t in outside:
            with pytest.raises(RetentionError, match="retention_days") as info:
                store.get_historical(lookups, "fs", as_known_at=t)
            assert isinstance(info.value, InvalidInputError)
            with pytest.raises(RetentionError):
                store.read("fs", as_known_at=t)
        assert_frame_equal(store.get_historical(lookups, "fs"), answers[-1][1])  # now: unchanged

    # The horizon gc recorded holds for a process with a longer retention: it cannot answer from what is gone.
    with Store.open(tmp_path / "store", retention_days=365) as store, pytest.raises(RetentionError):
        store.get_historical(lookups, "fs", as_known_at=outside[0])


def test_a_restatement_dropped_by_gc_before_the_backfill_still_forces_a_full_recompute(
        tmp_path: Path, clock: Clock) -> None:
    """Backfill reads restatements off the chain of bar snapshots: gc must not lose one by deleting it."""
    bars = synthetic_bars(2, 80, seed=6)
    with Store.open(tmp_path / "store", retention_days=1) as store:
        store.ingest(bars.filter(pl.col("ts") < START + timedelta(days=70)))
        store.backfill(feature_set())
        clock.now += DAY_US
        store.ingest(restate(bars, "S0000", bars["ts"][10]))  # restated: a snapshot that is not appended-only
        clock.now += DAY_US
        store.ingest(bars.filter(pl.col("ts").is_between(START + timedelta(days=70), START + timedelta(days=75))))
        assert store.catalog.live_bars(["S0000"])[0].appended_only  # then appended to
        clock.now += 5 * DAY_US
        store.gc()  # both snapshots since the features were computed are superseded for days: deleted
        report = store.backfill(feature_set())
        assert "S0000" in report.full and "S0001" in report.incremental
        expected = pitstore.compute(feature_set(), store.bars("S0000").vstack(store.bars("S0001")))
        assert_frame_equal(store.read("fs"), expected)


def test_retention_days_setting_is_checked(tmp_path: Path) -> None:
    with pytest.raises(pitstore.ConfigError, match="retention_days"):
        Store.open(tmp_path / "s", retention_days=-1)

"""A backfill computing more symbols in full than compaction allows loose entries (``pack_above``, from
``Store.backfill``: ``AUTO_ENTRIES``) writes their rows straight into compacted files, a file per batch: its
answers are those of a file per symbol (then compacted), through later incremental backfills and a restatement
(the restated symbol's entry in the shared file superseded, the file kept for the others and for as_known_at)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import pitstore
from pitstore import Store
from pitstore.offline import compact
from pitstore.testing import synthetic_bars

DAY = timedelta(days=1)
START = datetime(2015, 1, 2, tzinfo=UTC)
N_SYMBOLS, N_BARS = 6, 80


def feature_set() -> pitstore.FeatureSet:
    return pitstore.FeatureSet("core", [pitstore.ret(2).alias("r"), pitstore.ema(4).alias("e")], timeframe="1d",
                               ttl=timedelta(days=3))


def spine() -> pl.DataFrame:
    rng = np.random.default_rng(4)
    lo = int((START - 3 * DAY).timestamp() * 1e6)
    hi = int((START + (N_BARS + 3) * DAY).timestamp() * 1e6)
    return pl.DataFrame({
        "symbol": np.array([f"S{i:04d}" for i in range(N_SYMBOLS)])[rng.integers(0, N_SYMBOLS, 2_000)],
        "ts": pl.Series(rng.integers(lo, hi, 2_000), dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
    })


def build(path: Path, auto_entries: int, monkeypatch: pytest.MonkeyPatch) -> list[tuple[pl.DataFrame, ...]]:
    """Ingest and backfill in steps (full, incremental, a restatement of S0002); the answers after each."""
    monkeypatch.setattr(compact, "AUTO_ENTRIES", auto_entries)
    bars = synthetic_bars(N_SYMBOLS, N_BARS, seed=8, gaps=0.1)
    answers = []
    with Store.open(path) as store:
        for cut in (50, N_BARS):
            store.ingest(bars.filter(pl.col("ts") < START + cut * DAY))
            store.backfill(feature_set())
            known = datetime.now(UTC)
            answers.append((store.read("core"), store.get_historical(spine(), "core")))
        prices = ("open", "high", "low", "close")
        store.ingest(bars.filter(pl.col("symbol") == "S0002").with_columns(pl.col(c) * 1.2 for c in prices),
                     replace_range=True)
        report = store.backfill(feature_set())
        assert report.full == ["S0002"], report
        answers.append((store.read("core"), store.get_historical(spine(), "core"),
                        store.get_historical(spine(), "core", as_known_at=known)))
    return answers


def test_packed_backfill_answers_as_a_file_per_symbol(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    loose = build(tmp_path / "loose", 1_000, monkeypatch)  # never packed, never compacted
    packed = build(tmp_path / "packed", 2, monkeypatch)  # six symbols in full > 2: packed
    for a, b in zip(loose, packed, strict=True):
        for x, y in zip(a, b, strict=True):
            assert_frame_equal(x, y)
    with Store.open(tmp_path / "packed") as store:
        listed = store.catalog.feature_entries("core", 1)
        firsts = {e.symbol: min(x.first_ts for x in listed if x.symbol == e.symbol) for e in listed}
        first = [e for e in listed if e.first_ts == firsts[e.symbol] and e.symbol != "S0002"]  # 1st backfill's
        assert len(first) == N_SYMBOLS - 1 and all(compact.is_compacted(e.path) for e in first)
        assert len({e.path for e in first}) == 1  # one batch: one file
        assert store.verify().ok


def test_the_backfill_itself_writes_the_packed_files(tmp_path: Path) -> None:
    """pitstore.offline.backfill alone (no compaction after it): packed, every entry is in a compacted file of
    its batch, with the rows of a file per symbol."""
    from pitstore.offline import backfill

    bars = synthetic_bars(N_SYMBOLS, N_BARS, seed=9)
    out = []
    for name, pack_above in (("loose", None), ("packed", 0)):
        with Store.open(tmp_path / name) as store:
            store.ingest(bars)
            fs = feature_set()
            version = store.register(fs)
            report = backfill.backfill(store.storage, store.catalog, fs, version, pack_above=pack_above)
            assert len(report.full) == N_SYMBOLS and report.written_rows == bars.height
            listed = store.catalog.feature_entries("core", version)
            assert all(compact.is_compacted(e.path) for e in listed) == (pack_above is not None)
            out.append((store.read("core"), store.get_historical(spine(), "core"), store.verify().ok))
    assert_frame_equal(out[0][0], out[1][0])
    assert_frame_equal(out[0][1], out[1][1])
    assert out[0][2] and out[1][2]

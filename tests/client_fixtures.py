"""A small served store for the client tests: four symbols of daily bars up to today, the standard set."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl

from pitstore import Store, standard_features
from pitstore.testing import synthetic_bars

SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]
N_BARS = 150


def bars() -> pl.DataFrame:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    out = synthetic_bars(len(SYMBOLS), N_BARS, start=today - timedelta(days=N_BARS - 1), seed=3)
    return out.with_columns(pl.col("symbol").replace({f"S{i:04d}": s for i, s in enumerate(SYMBOLS)}))


def make_store(root: Path) -> Path:
    with Store.open(root) as store:
        store.ingest(bars())
        fs = standard_features()
        store.backfill(fs)
        store.materialize(fs, SYMBOLS)
    return root

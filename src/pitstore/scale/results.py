"""What the Dask engine returns, importable without dask (``pitstore.HistoricalDataset`` is public)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

__all__ = ["HistoricalDataset"]


@dataclass(frozen=True)
class HistoricalDataset:
    """Where ``get_historical(..., out=path)`` wrote its result: one Parquet file per partition, rows sorted by
    ``input_row`` within each file (sort the dataset by it for the input order)."""

    path: Path
    rows: int
    files: list[str]

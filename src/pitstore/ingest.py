"""Ingest: validated bars become one immutable snapshot per symbol; overlapping bars are restatements."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pitstore.bars import BAR_COLUMNS, symbol_runs, validate_bars
from pitstore.catalog.base import BarEntry, Catalog
from pitstore.errors import InvalidInputError
from pitstore.offline import content_hash, encode_symbol, read_entries, write_entry

__all__ = ["IngestReport", "ingest", "load_bars_source"]


@dataclass
class IngestReport:
    """What an ingest did, per kind of change."""

    rows: int = 0
    new_symbols: list[str] = field(default_factory=list)
    appended: list[str] = field(default_factory=list)
    restated: dict[str, int] = field(default_factory=dict)  # symbol -> bars changed or removed (0: gap filled)
    unchanged: list[str] = field(default_factory=list)


def load_bars_source(source: Any) -> Any:
    """Bars from a frame, or from a Parquet or CSV file path (CSV timestamps must carry an offset or 'Z')."""
    if not isinstance(source, str | os.PathLike):
        return source
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return pl.read_parquet(path)
    if suffix in (".csv", ".txt"):
        df = pl.read_csv(path, try_parse_dates=False, schema_overrides={"symbol": pl.String, "ts": pl.String})
        if "ts" not in df.columns:
            return df  # validation names the missing column
        try:
            ts = df["ts"].str.to_datetime(time_unit="us")
        except pl.exceptions.PolarsError as exc:
            raise InvalidInputError(f"{path}: cannot parse ts as timestamps: {exc}", column="ts") from exc
        return df.with_columns(ts)
    raise InvalidInputError(f"unsupported file type {path.suffix!r}: use .parquet or .csv")


def ingest(root: Path, catalog: Catalog, bars: Any) -> IngestReport:
    """Validate ``bars`` (all of them first: nothing is stored when any bar is bad) and store them."""
    df = validate_bars(load_bars_source(bars)).select(BAR_COLUMNS)
    report = IngestReport(rows=df.height)
    names, starts, ends = symbol_runs(df["symbol"])
    live = {e.symbol: e for e in catalog.live_bars(names)}
    for symbol, a, b in zip(names, starts.tolist(), ends.tolist(), strict=True):
        _ingest_symbol(root, catalog, symbol, df.slice(a, b - a), live.get(symbol), report)
    return report


def _ingest_symbol(
    root: Path, catalog: Catalog, symbol: str, new: pl.DataFrame, old_entry: BarEntry | None,
    report: IngestReport,
) -> None:
    lo, hi = new["ts"][0], new["ts"][-1]
    restated = 0
    appended_only = True
    merged = new
    if old_entry is not None:
        old = read_entries(root, [old_entry.path])
        assert old is not None
        in_range = pl.col("ts").is_between(lo, hi)
        kept = old.filter(~in_range)
        merged = pl.concat([kept, new]).sort("ts")
        # Bars of the old snapshot that differ or vanished in the new one are restated; new bars dated
        # before the old last bar fill a gap. Either way earlier history changed: not a pure append.
        old_overlap = old.filter(in_range)
        restated = old_overlap.height - old_overlap.join(new, on=list(BAR_COLUMNS), how="semi").height
        before_end = new.filter(pl.col("ts") <= old["ts"][-1])
        inserted = before_end.height - before_end.join(old, on=list(BAR_COLUMNS), how="semi").height
        appended_only = restated == 0 and inserted == 0
    digest = content_hash(merged)
    if old_entry is not None and digest == old_entry.content_hash:
        report.unchanged.append(symbol)
        return
    path = write_entry(root, f"bars/{encode_symbol(symbol)}", merged)
    ts_us = merged["ts"].dt.epoch("us")
    entry = BarEntry(0, symbol, path, merged.height, int(ts_us[0]), int(ts_us[-1]), digest, appended_only,
                     restated, 0, None)
    try:
        catalog.commit_bars(entry, old_entry.id if old_entry else None)
    except BaseException:
        (root / path).unlink(missing_ok=True)  # never listed; do not leave it behind
        raise
    if old_entry is None:
        report.new_symbols.append(symbol)
    elif not appended_only:
        report.restated[symbol] = restated
    else:
        report.appended.append(symbol)

"""Ingest: validated bars become one immutable snapshot per symbol; overlapping bars are restatements."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

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


# Symbols are ingested in chunks of up to this many bars (stored + new): whole chunks go through each polars
# operation at once (per-symbol calls cost ~10 ms each in overhead), while memory stays bounded.
_CHUNK_BARS = 2_000_000


def ingest(root: Path, catalog: Catalog, bars: Any) -> IngestReport:
    """Validate ``bars`` (all of them first: nothing is stored when any bar is bad) and store them."""
    df = validate_bars(load_bars_source(bars)).select(BAR_COLUMNS)
    report = IngestReport(rows=df.height)
    names, starts, ends = symbol_runs(df["symbol"])
    live = {e.symbol: e for e in catalog.live_bars(names)}
    first, size = 0, 0
    for i, (symbol, a, b) in enumerate(zip(names, starts.tolist(), ends.tolist(), strict=True)):
        old = live.get(symbol)
        size += b - a + (old.n_rows if old is not None else 0)
        if size >= _CHUNK_BARS or i == len(names) - 1:
            lo, hi = int(starts[first]), b
            _ingest_chunk(root, catalog, df.slice(lo, hi - lo), names[first : i + 1], live, report)
            first, size = i + 1, 0
    return report


class _Snapshot(NamedTuple):
    symbol: str
    bars: pl.DataFrame  # the symbol's whole new bar history
    digest: str
    old: BarEntry | None
    restated: int  # bars of the old snapshot that changed or vanished
    appended_only: bool


def _ingest_chunk(root: Path, catalog: Catalog, new: pl.DataFrame, symbols: Sequence[str],
                  live: Mapping[str, BarEntry], report: IngestReport) -> None:
    """Merge ``new`` (the bars of ``symbols``, sorted) into their snapshots; write and commit the changed ones."""
    olds = [live[s] for s in symbols if s in live]
    old = read_entries(root, [e.path for e in olds])
    restated: dict[str, int] = {}
    inserted: dict[str, int] = {}
    merged = new
    if old is not None:
        # Each symbol's new bars replace its stored ones between their first and last ts.
        bounds = new.group_by("symbol").agg(lo=pl.col("ts").min(), hi=pl.col("ts").max())
        old = old.join(bounds, on="symbol", how="left")
        in_range = pl.col("ts").is_between(pl.col("lo"), pl.col("hi"))
        merged = pl.concat([old.filter(~in_range).select(BAR_COLUMNS), new]).sort("symbol", "ts")
        # Stored bars in the range that differ or vanished are restated; new bars dated before the stored last
        # bar fill a gap. Either way earlier history changed: not a pure append.
        keys = list(BAR_COLUMNS)
        restated = _counts(old.filter(in_range).select(keys).join(new, on=keys, how="anti"))
        stored_end = old.group_by("symbol").agg(end=pl.col("ts").max())
        before_end = new.join(stored_end, on="symbol").filter(pl.col("ts") <= pl.col("end")).select(keys)
        inserted = _counts(before_end.join(old.select(keys), on=keys, how="anti"))
    todo: list[_Snapshot] = []
    names, starts, ends = symbol_runs(merged["symbol"])
    for symbol, a, b in zip(names, starts.tolist(), ends.tolist(), strict=True):
        part = merged.slice(a, b - a)
        digest = content_hash(part)
        entry = live.get(symbol)
        if entry is not None and digest == entry.content_hash:
            report.unchanged.append(symbol)
            continue
        n_restated = restated.get(symbol, 0)
        todo.append(_Snapshot(symbol, part, digest, entry, n_restated,
                              n_restated == 0 and inserted.get(symbol, 0) == 0))
    # Files are written on two threads (Parquet encoding releases the GIL); commits stay in order here.
    with ThreadPoolExecutor(max_workers=2) as pool:
        paths = pool.map(lambda t: write_entry(root, f"bars/{encode_symbol(t.symbol)}", t.bars), todo)
        for t, path in zip(todo, paths, strict=True):
            _commit(root, catalog, t, path, report)


def _counts(rows: pl.DataFrame) -> dict[str, int]:
    """Rows per symbol."""
    return dict(rows.group_by("symbol").len().iter_rows())


def _commit(root: Path, catalog: Catalog, t: _Snapshot, path: str, report: IngestReport) -> None:
    ts_us = t.bars["ts"].dt.epoch("us")
    entry = BarEntry(0, t.symbol, path, t.bars.height, int(ts_us[0]), int(ts_us[-1]), t.digest, t.appended_only,
                     t.restated, 0, None)
    try:
        catalog.commit_bars(entry, t.old.id if t.old else None)
    except BaseException:
        (root / path).unlink(missing_ok=True)  # never listed; do not leave it behind
        raise
    if t.old is None:
        report.new_symbols.append(t.symbol)
    elif not t.appended_only:
        report.restated[t.symbol] = t.restated
    else:
        report.appended.append(t.symbol)

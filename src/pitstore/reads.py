"""Point-in-time and range reads over the offline tier."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import polars as pl

from pitstore.catalog.base import Catalog
from pitstore.errors import InvalidInputError
from pitstore.features.registry import Registry
from pitstore.frames import to_polars
from pitstore.offline import EntryReader
from pitstore.pit import ORDER, asof_join, worst_status

__all__ = ["Selection", "get_historical", "read_range", "select"]


@dataclass(frozen=True)
class Selection:
    """The columns asked of one feature-set version, with its serving rules and output names."""

    feature_set: str
    version: int
    columns: tuple[str, ...]
    names: tuple[str, ...]  # output column names (the bare column unless two selections share it)
    availability_lag: timedelta
    ttl: timedelta | None


def select(registry: Registry, features: str | Sequence[str]) -> list[Selection]:
    """Resolve feature references (``"set@2:col"``, ``"set:col"``, ``"set"``) grouped by set version."""
    refs = [features] if isinstance(features, str) else list(features)
    if not refs:
        raise InvalidInputError("no features asked for")
    grouped: dict[tuple[str, int], list[str]] = {}
    for ref in refs:
        r = registry.resolve(ref)
        cols = grouped.setdefault((r.feature_set, r.version), [])
        cols.extend(c for c in r.columns if c not in cols)
    counts: dict[str, int] = {}
    for cols in grouped.values():
        for c in cols:
            counts[c] = counts.get(c, 0) + 1
    out = []
    for (name, version), cols in grouped.items():
        d = registry.get(name, version).definition
        ttl = d.get("ttl_seconds")
        out.append(Selection(
            name, version, tuple(cols),
            tuple(c if counts[c] == 1 else f"{name}@{version}:{c}" for c in cols),
            timedelta(seconds=d.get("availability_lag_seconds") or 0),
            timedelta(seconds=ttl) if ttl is not None else None,
        ))
    return out


def _known_at(as_known_at: datetime | None) -> int | None:
    if as_known_at is None:
        return None
    if as_known_at.tzinfo is None:
        raise InvalidInputError("as_known_at is timezone-naive; give a timezone-aware UTC datetime",
                                value=as_known_at)
    return int(as_known_at.timestamp() * 1_000_000)


def _load(reader: EntryReader, catalog: Catalog, sel: Selection, symbols: Sequence[str] | None,
          as_known_at: int | None) -> tuple[pl.DataFrame, list[str]]:
    entries = catalog.feature_entries(sel.feature_set, sel.version, symbols, as_known_at)
    cols = ["symbol", "ts", *sel.columns]
    rows = reader.read([e.path for e in entries], cols)
    if rows is None:
        rows = pl.DataFrame(schema={"symbol": pl.String, "ts": pl.Datetime("us", "UTC"),
                                    **dict.fromkeys(sel.columns, pl.Float64)})
    return rows, sorted({e.symbol for e in entries})


def _spine(entities: Any) -> pl.DataFrame:
    df = to_polars(entities)
    for col in ("symbol", "ts"):
        if col not in df.columns:
            raise InvalidInputError(f"entities need a {col!r} column", column=col)
    ts_type = df.schema["ts"]
    if not isinstance(ts_type, pl.Datetime):
        raise InvalidInputError(f"entities ts must be a timezone-aware datetime, got {ts_type}", column="ts")
    if ts_type.time_zone is None:
        raise InvalidInputError("entities ts is timezone-naive; pitstore needs timezone-aware UTC timestamps",
                                column="ts", row=0)
    if df["ts"].null_count() or df["symbol"].null_count():
        col = "ts" if df["ts"].null_count() else "symbol"
        raise InvalidInputError(f"entities {col} has null values", column=col,
                                row=int(df[col].is_null().arg_true()[0]))
    return df.with_columns(
        pl.col("symbol").cast(pl.String),
        pl.col("ts").dt.convert_time_zone("UTC").cast(pl.Datetime("us", "UTC")),
    ).with_row_index(ORDER)


def get_historical(reader: EntryReader, catalog: Catalog, registry: Registry, entities: Any,
                   features: str | Sequence[str], as_known_at: datetime | None) -> pl.DataFrame:
    """One output row per entity row, in input order: entity columns, features as of each ts, status."""
    spine = _spine(entities)
    known = _known_at(as_known_at)
    symbols = spine["symbol"].unique().to_list()
    result = spine
    statuses = []
    for i, sel in enumerate(select(registry, features)):
        rows, present = _load(reader, catalog, sel, symbols, known)
        status = f"__status{i}"
        joined = asof_join(spine, rows.rename(dict(zip(sel.columns, sel.names, strict=True))), sel.names,
                           known_symbols=present, availability_lag=sel.availability_lag, ttl=sel.ttl,
                           status_name=status)
        result = result.with_columns(joined.drop(ORDER))
        statuses.append(status)
    return result.with_columns(worst_status([pl.col(s) for s in statuses]).alias("status")).drop(
        ORDER, *statuses
    )


def read_range(reader: EntryReader, catalog: Catalog, registry: Registry, features: str | Sequence[str],
               symbols: Sequence[str] | None, start: datetime | None, end: datetime | None,
               as_known_at: datetime | None) -> pl.DataFrame:
    """Stored rows with ``start <= ts <= end`` for the given symbols, joined across feature sets."""
    known = _known_at(as_known_at)
    out: pl.DataFrame | None = None
    for sel in select(registry, features):
        rows, _ = _load(reader, catalog, sel, symbols, known)
        if start is not None:
            rows = rows.filter(pl.col("ts") >= start)
        if end is not None:
            rows = rows.filter(pl.col("ts") <= end)
        rows = rows.rename(dict(zip(sel.columns, sel.names, strict=True)))
        out = rows if out is None else out.join(rows, on=["symbol", "ts"], how="full", coalesce=True)
    assert out is not None
    return out.sort("symbol", "ts")

"""Point-in-time and range reads over the offline tier."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, Literal

import polars as pl

from pitstore.catalog.base import Catalog, FeatureEntry
from pitstore.catalog.versions import ensure_live, reading
from pitstore.errors import CacheCorruptionError, InvalidInputError
from pitstore.features.registry import Registry
from pitstore.frames import to_polars
from pitstore.offline import prune
from pitstore.offline.entries import EntryReader, Span
from pitstore.offline.pit import ORDER, asof_join, worst_status
from pitstore.offline.prune import range_spans, window_spans, windows_of
from pitstore.rules import DAMAGED, OK, effective_ttl, to_us

__all__ = ["Loaded", "Selection", "get_historical", "known_at_us", "load", "read_range", "select"]


@dataclass(frozen=True)
class Selection:
    """The columns asked of one feature-set version, with its serving rules and output names."""

    feature_set: str
    version: int
    columns: tuple[str, ...]
    names: tuple[str, ...]  # output column names (the bare column unless two selections share it)
    availability_lag: timedelta
    ttl: timedelta  # the effective TTL (pitstore.rules.effective_ttl): the set's own, else its timeframe's default


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
        own = d.get("ttl_seconds")
        lag = timedelta(seconds=d.get("availability_lag_seconds") or 0)
        out.append(Selection(
            name, version, tuple(cols),
            tuple(c if counts[c] == 1 else f"{name}@{version}:{c}" for c in cols),
            lag, effective_ttl(timedelta(seconds=own) if own is not None else None, d["timeframe"], lag),
        ))
    return out


def known_at_us(as_known_at: datetime | None) -> int | None:
    return None if as_known_at is None else to_us(as_known_at, "as_known_at")


@dataclass(frozen=True)
class Loaded:
    rows: pl.DataFrame  # symbol, ts and the selection's columns, of the intact symbols only
    present: list[str]  # symbols with intact stored rows
    damaged: dict[str, list[str]]  # symbol -> its damaged entry files (all its rows are left out of ``rows``)
    first_ts: dict[str, int]  # symbol -> its first stored ts (µs), whether or not ``rows`` were cut to a span


Needs = Callable[[Sequence[FeatureEntry]], dict[int, Span]]  # which entries a read needs, and which rows of them


def load(reader: EntryReader, catalog: Catalog, sel: Selection, symbols: Sequence[str] | None,
         as_known_at: int | None, needs: Needs | None = None) -> Loaded:
    """The stored rows of ``symbols`` (all when None) visible at ``as_known_at`` (µs; now when None), in time
    order per symbol, and which symbols have rows (``present``) or are damaged: what a status is decided on.
    ``needs`` (:mod:`pitstore.offline.prune`): only the rows it names are read (the statuses stay those of all)."""
    # Under the version's lease: no cleanup deletes the listed entries' files before they are read.
    with reading(reader.root, catalog, sel.feature_set, sel.version, check_live=False):
        entries = catalog.feature_entries(sel.feature_set, sel.version, symbols, as_known_at)
        if not entries:
            ensure_live(catalog, sel.feature_set, sel.version)
        spans = needs(entries) if needs is not None and prune.ENABLED else None
        rows, broken = reader.read_checked(entries, ["symbol", "ts", *sel.columns], spans)
    damaged: dict[str, list[str]] = {}
    for e in entries:
        if e.path in broken and e.path not in (files := damaged.setdefault(e.symbol, [])):
            files.append(e.path)  # once: the entries of a compacted file share it
    if rows is None:
        rows = pl.DataFrame(schema={"symbol": pl.String, "ts": pl.Datetime("us", "UTC"),
                                    **dict.fromkeys(sel.columns, pl.Float64)})
    if damaged:
        # The whole symbol, not just the broken segment: an as-of look-up must not fall back to an older row.
        rows = rows.filter(~pl.col("symbol").is_in(pl.Series(list(damaged), dtype=pl.String).implode()))
    present = sorted({e.symbol for e in entries} - damaged.keys())
    first_ts: dict[str, int] = {}
    for e in entries:
        first_ts[e.symbol] = min(first_ts.get(e.symbol, e.first_ts), e.first_ts)
    return Loaded(rows, present, damaged, first_ts)


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


def _status_names(sels: Sequence[Selection]) -> list[str]:
    """One status column per feature-set version when several are asked for (none for a single one)."""
    if len(sels) == 1:
        return []
    names = [s.feature_set for s in sels]
    return [f"status_{s.feature_set}" if names.count(s.feature_set) == 1 else f"status_{s.feature_set}@{s.version}"
            for s in sels]


def _refuse_clashes(spine: pl.DataFrame, sels: Sequence[Selection], status_names: Sequence[str]) -> None:
    """Entity columns pass through untouched: one named like an output column would be overwritten."""
    outputs = {"status", *status_names, *(n for s in sels for n in s.names)}
    clashing = [c for c in spine.columns if c in outputs and c not in ("symbol", "ts")]
    if clashing:
        raise InvalidInputError(
            f"entity columns {clashing} have the names of output columns of get_historical (features and status);"
            " rename them: pitstore never overwrites or drops input data", column=clashing[0])


def get_historical(reader: EntryReader, catalog: Catalog, registry: Registry, entities: Any,
                   features: str | Sequence[str], as_known_at: datetime | None) -> pl.DataFrame:
    """One output row per entity row, in input order: entity columns, features as of each ts, ``status`` (the
    worst over the feature sets asked for) and, when there are several, one ``status_<set>`` per set."""
    spine = _spine(entities)
    known = known_at_us(as_known_at)
    sels = select(registry, features)
    status_names = _status_names(sels)
    _refuse_clashes(spine, sels, status_names)
    symbols = spine["symbol"].unique().to_list()
    result = spine
    statuses = []
    for i, sel in enumerate(sels):
        windows = windows_of(spine, sel.availability_lag, sel.ttl)
        loaded = load(reader, catalog, sel, symbols, known, partial(window_spans, windows=windows))
        status = f"__status{i}"
        joined = asof_join(spine, loaded.rows.rename(dict(zip(sel.columns, sel.names, strict=True))), sel.names,
                           known_symbols=loaded.present, availability_lag=sel.availability_lag, ttl=sel.ttl,
                           status_name=status, damaged_symbols=list(loaded.damaged), stored_from=loaded.first_ts)
        result = result.with_columns(joined.drop(ORDER))
        statuses.append(status)
    result = result.with_columns(worst_status([pl.col(s) for s in statuses]).alias("status"))
    result = result.rename(dict(zip(statuses, status_names, strict=False)))
    entity = [c for c in spine.columns if c != ORDER]
    return result.select(*entity, *(n for sel in sels for n in sel.names), "status", *status_names)


def read_range(reader: EntryReader, catalog: Catalog, registry: Registry, features: str | Sequence[str],
               symbols: Sequence[str] | None, start: datetime | None, end: datetime | None,
               as_known_at: datetime | None, *, on_damage: Literal["raise", "status"] = "raise") -> pl.DataFrame:
    """Stored rows with ``start <= ts <= end`` for the given symbols, joined across feature sets.

    A symbol whose stored entry is damaged: ``on_damage="raise"`` raises CacheCorruptionError naming the files;
    ``"status"`` answers the other symbols and adds a ``status`` column (``ok``, or ``damaged`` on one row per
    damaged symbol, ts and values null), only when some symbol is damaged.
    """
    known = known_at_us(as_known_at)
    out: pl.DataFrame | None = None
    damaged: dict[str, list[str]] = {}
    lo, hi = (None if start is None else to_us(start, "start")), (None if end is None else to_us(end, "end"))
    for sel in select(registry, features):
        loaded = load(reader, catalog, sel, symbols, known, partial(range_spans, start=lo, end=hi))
        for symbol, paths in loaded.damaged.items():
            damaged.setdefault(symbol, []).extend(paths)
        rows = loaded.rows
        if start is not None:
            rows = rows.filter(pl.col("ts") >= start)
        if end is not None:
            rows = rows.filter(pl.col("ts") <= end)
        rows = rows.rename(dict(zip(sel.columns, sel.names, strict=True)))
        out = rows if out is None else out.join(rows, on=["symbol", "ts"], how="full", coalesce=True)
    assert out is not None
    if damaged:
        if on_damage == "raise":
            files = sorted(p for paths in damaged.values() for p in paths)
            raise CacheCorruptionError(f"stored entries of {sorted(damaged)} are damaged: {files};"
                                       " run `pitstore verify --repair`")
        # The symbol's rows in the range cannot be known; say so on one row rather than dropping it silently.
        out = out.filter(~pl.col("symbol").is_in(pl.Series(list(damaged), dtype=pl.String).implode()))
        marks = pl.DataFrame({"symbol": sorted(damaged)}, schema={"symbol": pl.String})
        out = pl.concat([out.with_columns(status=pl.lit(OK)), marks.with_columns(status=pl.lit(DAMAGED))],
                        how="diagonal_relaxed")
    return out.sort("symbol", "ts", nulls_last=True)

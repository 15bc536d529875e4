"""Point-in-time and range reads over the offline tier."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import numpy as np
import polars as pl

from pitstore.catalog.base import Catalog, FeatureEntry
from pitstore.catalog.versions import ensure_live, reading
from pitstore.errors import CacheCorruptionError, InvalidInputError
from pitstore.features.registry import Registry
from pitstore.frames import to_polars
from pitstore.offline import prune
from pitstore.offline.entries import EntryReader, Span, by_symbol_ts
from pitstore.offline.pit import ORDER, asof_join, worst_status
from pitstore.offline.prune import range_spans, window_spans, windows_of
from pitstore.rules import DAMAGED, OK, effective_ttl, to_us

__all__ = ["Loaded", "Selection", "get_historical", "iter_range", "known_at_us", "listed", "load", "load_listed",
           "read_range", "select", "symbol_batches"]


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
    with listed(reader, catalog, sel, symbols, as_known_at) as entries:
        return load_listed(reader, sel, entries, needs(entries) if needs is not None and prune.ENABLED else None)


@contextmanager
def listed(reader: EntryReader, catalog: Catalog, sel: Selection, symbols: Sequence[str] | None,
           as_known_at: int | None) -> Iterator[list[FeatureEntry]]:
    """The entries of ``symbols`` visible at ``as_known_at``, under the version's lease for the whole block: no
    cleanup deletes their files before the block has read them."""
    with reading(reader.root, catalog, sel.feature_set, sel.version, check_live=False):
        entries = catalog.feature_entries(sel.feature_set, sel.version, symbols, as_known_at)
        if not entries:
            ensure_live(catalog, sel.feature_set, sel.version)
        yield entries


def load_listed(reader: EntryReader, sel: Selection, entries: Sequence[FeatureEntry],
                spans: Mapping[int, Span] | None, *, keep: bool = True) -> Loaded:
    """:func:`load` of entries already listed (under :func:`listed`), cut to ``spans`` (None: whole);
    ``keep=False``: the rows are not kept in the reader's cache (one batch of a read larger than a batch)."""
    rows, broken = reader.read_checked(entries, ["symbol", "ts", *sel.columns], spans, keep=keep)
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


# Decoded bytes per row of a selection: the Float64 features, ts, and the symbol (a 16-byte string view).
_ROW_BYTES, _FEATURE_BYTES = 24, 8


def symbol_batches(symbols: Sequence[str], listed_entries: Sequence[tuple[Selection, Sequence[FeatureEntry],
                   Mapping[int, Span] | None]], max_bytes: int | None) -> list[list[str]]:
    """``symbols`` (sorted) cut into consecutive batches whose rows to decode, estimated from the catalog's row
    counts and ts ranges (a span cuts an entry's rows in proportion), are at most about ``max_bytes`` (a symbol
    larger than that is a batch of its own). None: one batch. What keeps a read of a large store near one copy
    of its answer: each batch is decoded, answered and dropped before the next."""
    ordered = sorted(symbols)
    if max_bytes is None:
        return [ordered]
    size = dict.fromkeys(ordered, 0.0)
    for sel, entries, spans in listed_entries:
        row = _ROW_BYTES + _FEATURE_BYTES * len(sel.columns)
        for e in entries:
            if e.symbol not in size or (spans is not None and e.id not in spans):
                continue
            lo, hi = (None, None) if spans is None else spans[e.id]
            a = e.first_ts if lo is None else max(lo, e.first_ts)
            b = e.last_ts if hi is None else min(hi, e.last_ts)
            part = 1.0 if e.last_ts <= e.first_ts else max(b - a, 0) / (e.last_ts - e.first_ts)
            size[e.symbol] += e.n_rows * part * row
    out: list[list[str]] = []
    batch: list[str] = []
    total = 0.0
    for s in ordered:
        if batch and total + size[s] > max_bytes:
            out.append(batch)
            batch, total = [], 0.0
        batch.append(s)
        total += size[s]
    return [*out, batch] if batch else out or [[]]


def _by_symbol(entries: Sequence[FeatureEntry]) -> dict[str, list[FeatureEntry]]:
    out: dict[str, list[FeatureEntry]] = {}
    for e in entries:
        out.setdefault(e.symbol, []).append(e)
    return out


def _of(by_symbol: Mapping[str, Sequence[FeatureEntry]], spans: Mapping[int, Span] | None, symbols: Sequence[str]
        ) -> tuple[list[FeatureEntry], dict[int, Span] | None]:
    """The entries (and spans) of ``symbols``, from the entries by symbol."""
    own = [e for s in symbols for e in by_symbol.get(s, ())]
    return own, None if spans is None else {e.id: spans[e.id] for e in own if e.id in spans}


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
                   features: str | Sequence[str], as_known_at: datetime | None, *,
                   batch_bytes: int | None = None) -> pl.DataFrame:
    """One output row per entity row, in input order: entity columns, features as of each ts, ``status`` (the
    worst over the feature sets asked for) and, when there are several, one ``status_<set>`` per set.
    ``batch_bytes``: the stored rows are decoded in batches of symbols of about that many bytes (None: at once)."""
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
        status = f"__status{i}"
        with listed(reader, catalog, sel, symbols, known) as entries:
            spans = window_spans(entries, windows) if prune.ENABLED else None
            batches = symbol_batches(symbols, [(sel, entries, spans)], batch_bytes)
            if len(batches) == 1:
                joined = _join(spine, load_listed(reader, sel, entries, spans), sel, status)
            else:
                joined = _join_batched(reader, spine, sel, entries, spans, batches, status)
        result = result.with_columns(joined.drop(ORDER))
        statuses.append(status)
    result = result.with_columns(worst_status([pl.col(s) for s in statuses]).alias("status"))
    result = result.rename(dict(zip(statuses, status_names, strict=False)))
    entity = [c for c in spine.columns if c != ORDER]
    return result.select(*entity, *(n for sel in sels for n in sel.names), "status", *status_names)


def _join(spine: pl.DataFrame, loaded: Loaded, sel: Selection, status: str) -> pl.DataFrame:
    return asof_join(spine, loaded.rows.rename(dict(zip(sel.columns, sel.names, strict=True))), sel.names,
                     known_symbols=loaded.present, availability_lag=sel.availability_lag, ttl=sel.ttl,
                     status_name=status, damaged_symbols=list(loaded.damaged), stored_from=loaded.first_ts)


def _join_batched(reader: EntryReader, spine: pl.DataFrame, sel: Selection, entries: Sequence[FeatureEntry],
                  spans: Mapping[int, Span] | None, batches: Sequence[Sequence[str]], status: str) -> pl.DataFrame:
    """:func:`_join` one batch of symbols at a time: the look-ups grouped by batch (stable: input order within
    each), each group joined to its batch's rows alone, then every output column put back in input order one
    at a time, so the pieces and the answer overlap by one column only."""
    batch_of = {s: k for k, batch in enumerate(batches) for s in batch}
    key = spine["symbol"].replace_strict(batch_of, return_dtype=pl.UInt32).to_numpy()
    order = np.argsort(key, kind="stable")  # stable: input order within each batch
    counts = np.bincount(key, minlength=len(batches))
    del key
    grouped = spine.select("symbol", "ts")[order]
    pieces: list[pl.DataFrame] = []
    offset = 0
    by_symbol = _by_symbol(entries)
    for batch, m in zip(batches, counts.tolist(), strict=True):
        own, own_spans = _of(by_symbol, spans, batch)
        sub = grouped.slice(offset, m).with_row_index(ORDER)
        offset += m
        pieces.append(_join(sub, load_listed(reader, sel, own, own_spans, keep=False), sel, status).drop(ORDER))
    del grouped
    inverse = np.empty(len(order), dtype=np.int64)
    inverse[order] = np.arange(len(order))  # output row r is grouped row inverse[r]
    index = pl.Series(inverse)
    columns = []
    for c in pieces[0].columns:
        column = pl.concat([p[c] for p in pieces], rechunk=False)
        pieces = [p.drop(c) for p in pieces]  # this column's pieces are dropped as its ordered copy is made
        columns.append(column.gather(index))
        del column
    return pl.DataFrame(columns).insert_column(0, spine[ORDER])


def read_range(reader: EntryReader, catalog: Catalog, registry: Registry, features: str | Sequence[str],
               symbols: Sequence[str] | None, start: datetime | None, end: datetime | None,
               as_known_at: datetime | None, *, on_damage: Literal["raise", "status"] = "raise",
               batch_bytes: int | None = None) -> pl.DataFrame:
    """Stored rows with ``start <= ts <= end`` for the given symbols, joined across feature sets.

    A symbol whose stored entry is damaged: ``on_damage="raise"`` raises CacheCorruptionError naming the files;
    ``"status"`` answers the other symbols and adds a ``status`` column (``ok``, or ``damaged`` on one row per
    damaged symbol, ts and values null), only when some symbol is damaged. ``batch_bytes``: the rows are
    decoded in batches of symbols of about that many bytes (None: at once), the answer assembled from them.
    """
    frames: list[tuple[pl.DataFrame, dict[str, list[str]]]] = []
    damaged: dict[str, list[str]] = {}
    for out, bad in _range_batches(reader, catalog, registry, features, symbols, start, end, as_known_at,
                                   batch_bytes):
        frames.append((out, bad))
        damaged.update(bad)
    if damaged and on_damage == "raise":
        _raise_damaged(damaged)
    if damaged:  # the status column on every batch, marks where the damaged symbols are
        frames = [(_marked(out, sorted(bad)), bad) for out, bad in frames]
    # The batches are consecutive runs of the sorted symbols: each sorted, in order, they are the sorted answer.
    return pl.concat([out for out, _ in frames], how="vertical", rechunk=False)


def iter_range(reader: EntryReader, catalog: Catalog, registry: Registry, features: str | Sequence[str],
               symbols: Sequence[str] | None, start: datetime | None, end: datetime | None,
               as_known_at: datetime | None, *, on_damage: Literal["raise", "status"] = "raise",
               batch_bytes: int | None = None) -> Iterator[pl.DataFrame]:
    """:func:`read_range` as consecutive batches of its sorted symbols, each decoded only when asked for: their
    rows, in order, are read_range's. ``on_damage="status"`` marks damage as read_range does, but per batch: a
    batch holding a damaged symbol has the ``status`` column, the others none."""
    for out, bad in _range_batches(reader, catalog, registry, features, symbols, start, end, as_known_at,
                                   batch_bytes):
        if bad and on_damage == "raise":
            _raise_damaged(bad)
        yield _marked(out, sorted(bad)) if bad else out


def _raise_damaged(damaged: Mapping[str, list[str]]) -> None:
    files = sorted(p for paths in damaged.values() for p in paths)
    raise CacheCorruptionError(f"stored entries of {sorted(damaged)} are damaged: {files};"
                               " run `pitstore verify --repair`")


def _range_batches(reader: EntryReader, catalog: Catalog, registry: Registry, features: str | Sequence[str],
                   symbols: Sequence[str] | None, start: datetime | None, end: datetime | None,
                   as_known_at: datetime | None, batch_bytes: int | None
                   ) -> Iterator[tuple[pl.DataFrame, dict[str, list[str]]]]:
    """Per batch of consecutive sorted symbols: its rows in range, joined across the sets and sorted by symbol
    and ts (the damaged symbols' rows left out), and its damaged symbols with their files."""
    known = known_at_us(as_known_at)
    lo, hi = (None if start is None else to_us(start, "start")), (None if end is None else to_us(end, "end"))
    sels = select(registry, features)
    with ExitStack() as leases:  # every version's lease held until all batches are read
        parts = []
        for sel in sels:
            entries = leases.enter_context(listed(reader, catalog, sel, symbols, known))
            parts.append((sel, entries, range_spans(entries, lo, hi) if prune.ENABLED else None))
        names = {e.symbol for _, entries, _ in parts for e in entries}
        batches = symbol_batches(sorted(names), parts, batch_bytes)
        keep = len(batches) == 1
        grouped = [_by_symbol(entries) for _, entries, _ in parts]
        for batch in batches:
            out: pl.DataFrame | None = None
            damaged: dict[str, list[str]] = {}
            for (sel, entries, spans), by_symbol in zip(parts, grouped, strict=True):
                own, own_spans = (entries, spans) if keep else _of(by_symbol, spans, batch)
                loaded = load_listed(reader, sel, own, own_spans, keep=keep)
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
            if damaged:  # a symbol damaged in one set: its rows of the other sets go too
                out = out.filter(~pl.col("symbol").is_in(pl.Series(list(damaged), dtype=pl.String).implode()))
            yield by_symbol_ts(out), damaged


def _marked(out: pl.DataFrame, damaged: list[str]) -> pl.DataFrame:
    """``out`` (without the rows of ``damaged``) sorted by symbol and ts; with ``damaged`` (a read that found
    damage) a ``status`` column and one ``damaged`` row per damaged symbol."""
    # The symbol's rows in the range cannot be known; say so on one row rather than dropping it silently.
    marks = pl.DataFrame({"symbol": damaged}, schema={"symbol": pl.String})
    out = pl.concat([out.with_columns(status=pl.lit(OK)), marks.with_columns(status=pl.lit(DAMAGED))],
                    how="diagonal_relaxed")
    return by_symbol_ts(out)

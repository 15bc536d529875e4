"""Ingest: validated bars become one immutable snapshot per symbol; overlapping bars are restatements.

One ingest is one catalog transaction: every changed symbol's snapshot file is written first, then all of
them are committed together. On any failure nothing is committed and the files written are removed (a kill
leaves only unlisted files, which ``gc`` removes). The commit is optimistic: when another process committed
a symbol meanwhile, that symbol is re-read, re-merged and the commit retried (bounded).

Bars dated after a symbol's last stored bar are a pure append: they go into one segment file for the whole
ingest (a row group per symbol, :mod:`pitstore.sources.segments`) and the new snapshot is the old one's parts plus
that row group, so an append costs the new bars, not the history. The stored bars are not read then (verify
checks every part's hash). The append that would make more than ``max_segments`` segments writes the symbol's
whole bars as a new base instead (compaction, through the merge path, which hash-checks what it reads).
"""

from __future__ import annotations

import os
import random
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pitstore.cache.core import LOCK_DIR
from pitstore.cache.lock import KeyLocks
from pitstore.catalog.base import BarEntry, Catalog
from pitstore.datahash import table_hash
from pitstore.errors import CacheCorruptionError, ConflictError, InvalidInputError
from pitstore.frames import to_polars
from pitstore.offline.entries import content_hash, encode_symbol
from pitstore.sources.bars import BAR_COLUMNS, symbol_runs, validate_bars
from pitstore.sources.layout import BarLayout
from pitstore.sources.segments import (
    Part,
    chained_hash,
    encode_parts,
    parts_of,
    read_bars,
    read_part,
    write_base,
    write_segment,
)
from pitstore.storage import Storage, as_storage

__all__ = ["IngestReport", "ingest", "load_bars_source"]


@dataclass
class IngestReport:
    """What an ingest did, per kind of change (all of it committed in one transaction)."""

    rows: int = 0
    new_symbols: list[str] = field(default_factory=list)
    appended: list[str] = field(default_factory=list)
    restated: dict[str, int] = field(default_factory=dict)  # symbol -> stored bars whose values changed
    # (0: earlier history changed only by filled gaps or removed bars)
    unchanged: list[str] = field(default_factory=list)
    removed: dict[str, int] = field(default_factory=dict)  # symbol -> stored bars removed (replace_range only)
    retries: int = 0  # commits retried because another process committed one of these symbols meanwhile


def load_bars_source(source: Any, layout: BarLayout | None = None) -> Any:
    """Bars from a frame, or from a Parquet or CSV file path, in ``layout`` (default: pitstore's own columns, or
    vendor names in any case; CSV timestamps must carry an offset or 'Z' unless ``layout.tz`` says their zone)."""
    layout = layout or BarLayout()
    if not isinstance(source, str | os.PathLike):
        return layout.apply(to_polars(source))
    path = Path(source)
    if not path.is_file():
        raise InvalidInputError(f"no such file: {path}")
    suffix = path.suffix.lower()
    if suffix in (".parquet", ".pq"):
        return layout.apply(_read(path, "Parquet", lambda: pl.read_parquet(path)))
    if suffix in (".csv", ".txt"):
        header = _read(path, "CSV", lambda: pl.read_csv(path, n_rows=0)).columns
        # Symbols and timestamps are read as text (20240102 is a date, 0700 a symbol), then parsed by the layout.
        text = {c: pl.String for c, target in {**dict.fromkeys(header), **layout.renames(header)}.items()
                if (target or c) in ("symbol", "ts")}
        df = _read(path, "CSV", lambda: pl.read_csv(path, try_parse_dates=False, schema_overrides=text))
        return layout.apply(df)
    raise InvalidInputError(f"{path}: unsupported file type {path.suffix!r}: use .parquet or .csv")


def _read(path: Path, kind: str, read: Callable[[], pl.DataFrame]) -> pl.DataFrame:
    """``read()``, its failures on a damaged file (garbage, truncated, not UTF-8) as InvalidInputError."""
    if path.stat().st_size == 0:
        raise InvalidInputError(f"{path}: the file is empty")
    try:
        return read()
    except (pl.exceptions.PolarsError, OSError) as exc:
        raise InvalidInputError(f"{path}: not a readable {kind} file: {exc}") from exc


def _validated(bars: Any, max_future: timedelta | None, layout: BarLayout | None) -> pl.DataFrame:
    """The bars of a frame or file, validated; a file's bad bars are reported naming the file."""
    try:
        return validate_bars(load_bars_source(bars, layout), max_future=max_future).select(BAR_COLUMNS)
    except InvalidInputError as exc:
        if not isinstance(bars, str | os.PathLike) or str(bars) in exc.problem:
            raise
        raise InvalidInputError(f"{bars}: {exc.problem}", column=exc.column, symbol=exc.symbol, row=exc.row,
                                value=exc.value) from exc


# Symbols are ingested in chunks of up to this many bars (stored + new): whole chunks go through each polars
# operation at once (per-symbol calls cost ~10 ms each in overhead), while memory stays bounded.
_CHUNK_BARS = 2_000_000
# Optimistic commits: each lost race means another ingest of one of these symbols committed, so a few
# attempts with jittered, growing back-off turn contention into success; past that it is a real conflict.
_COMMIT_ATTEMPTS = 5
# Snapshot files written at once: each is small and ends in two fsyncs, so more writers than cores overlap the
# waits (1,000 daily symbols on 2 cores: 6 writers ~25% faster than 2, measured; memory: 6 encoded files).
_WRITERS = 6
_BACKOFF_SECONDS = 0.005
DEFAULT_SEGMENTS = 16  # Settings.bar_segments
_KEYS = list(BAR_COLUMNS)
# A damaged snapshot can make polars' decoder panic (PanicException, a BaseException) rather than raise an error.
_UNREADABLE = (OSError, pl.exceptions.PolarsError, pl.exceptions.PanicException)
_ON = ["symbol", "ts"]


class _Planned(NamedTuple):
    """A symbol's new snapshot, written but not committed yet."""

    entry: BarEntry  # id and recorded_at are set by the commit
    expected: BarEntry | None  # the live snapshot it supersedes
    restated: int  # stored bars whose values changed
    removed: int  # stored bars removed (replace_range)
    appended_only: bool
    written: str  # the file this plan wrote: the snapshot, or the segment file it shares with other symbols


def ingest(root: Path, catalog: Catalog, bars: Any, *, replace_range: bool = False,
           max_future: timedelta | None = None, layout: BarLayout | None = None,
           storage: Storage | None = None, max_segments: int = DEFAULT_SEGMENTS) -> IngestReport:
    """Validate ``bars`` (all of them first: nothing is stored when any bar is bad) and store them, all or nothing.
    ``max_future``: bars dated more than that after now are refused. ``layout``: the source's vendor layout.

    By default the new bars overlay the stored ones: a stored bar with the same (symbol, ts) is replaced, every
    other stored bar is kept. With ``replace_range`` each symbol's new bars replace all its stored bars between
    their first and last ts (``IngestReport.removed`` counts the stored bars that are gone).
    ``storage``: where the snapshots go (default: files under ``root``, which keeps the retry lock either way).
    ``max_segments``: appends kept as segments before a symbol's bars are rewritten as one base.
    """
    data = storage if storage is not None else as_storage(root)
    df = _validated(bars, max_future, layout)
    names, starts, ends = symbol_runs(df["symbol"])
    spans = {s: (a, b) for s, a, b in zip(names, starts.tolist(), ends.tolist(), strict=True)}
    planned: dict[str, _Planned] = {}
    unchanged: set[str] = set()
    todo: list[str] = names
    try:
        with ExitStack() as retrying:
            for attempt in range(_COMMIT_ATTEMPTS):
                live = {e.symbol: e for e in catalog.live_bars(todo)}
                _plan(data, df, todo, spans, live, replace_range, planned, unchanged, max_segments)
                try:
                    committed = catalog.commit_bars_batch([(p.entry, _id(p.expected)) for p in planned.values()])
                    return _report(df.height, names, planned, committed, unchanged, attempt)
                except ConflictError:
                    if attempt == _COMMIT_ATTEMPTS - 1:
                        raise
                todo = _stale(catalog, planned)
                dropped = {planned.pop(s).written for s in todo}  # re-planned from the snapshot now live
                for path in dropped - {p.written for p in planned.values()}:  # a segment file may be shared
                    data.delete(path)
                if attempt == 0:
                    # Retries queue on one lock per store, so they never race each other again: each further
                    # conflict is with a first attempt that committed, and N racing ingests need no N attempts.
                    retrying.enter_context(KeyLocks(root / LOCK_DIR / "ingest").hold("retry"))
                time.sleep(random.uniform(0, _BACKOFF_SECONDS * 2**attempt))  # back-off, not synchronisation
        raise AssertionError("unreachable")
    except BaseException:
        for path in {p.written for p in planned.values()}:  # never listed: do not leave them behind
            data.delete(path)
        raise


def _id(entry: BarEntry | None) -> int | None:
    return entry.id if entry is not None else None


def _stale(catalog: Catalog, planned: Mapping[str, _Planned]) -> list[str]:
    """Planned symbols whose live snapshot is no longer the one they were merged with."""
    live = {e.symbol: e.id for e in catalog.live_bars(list(planned))}
    return sorted(s for s, p in planned.items() if live.get(s) != _id(p.expected))


def _plan(data: Storage, df: pl.DataFrame, symbols: Sequence[str], spans: Mapping[str, tuple[int, int]],
          live: Mapping[str, BarEntry], replace_range: bool, planned: dict[str, _Planned], unchanged: set[str],
          max_segments: int) -> None:
    """Write the new snapshots of ``symbols``: pure appends as one segment file, the others merged in chunks of
    bounded size."""
    ts = df["ts"].dt.epoch("us").to_numpy()
    appends = [s for s in symbols if (e := live.get(s)) is not None and ts[spans[s][0]] > e.last_ts
               and len(parts_of(e)) <= max_segments]
    if appends:
        _plan_appends(data, df, ts, appends, spans, live, planned)
        unchanged.difference_update(appends)
        chosen = set(appends)
        symbols = [s for s in symbols if s not in chosen]
    chunk: list[str] = []
    size = 0
    for i, symbol in enumerate(symbols):
        a, b = spans[symbol]
        old = live.get(symbol)
        chunk.append(symbol)
        size += b - a + (old.n_rows if old is not None else 0)
        if size >= _CHUNK_BARS or i == len(symbols) - 1:
            new = pl.concat([df.slice(spans[s][0], spans[s][1] - spans[s][0]) for s in chunk])
            _plan_chunk(data, new, chunk, live, replace_range, planned, unchanged)
            chunk, size = [], 0


def _plan_appends(data: Storage, df: pl.DataFrame, ts: np.ndarray, symbols: Sequence[str],
                  spans: Mapping[str, tuple[int, int]], live: Mapping[str, BarEntry], planned: dict[str, _Planned]
                  ) -> None:
    """One segment file with the new bars of ``symbols`` (each after its last stored bar), a row group each, and
    their snapshots: the live one's parts plus that row group. The stored bars are not read. ``ts``: ``df``'s
    timestamps in µs (a polars expression per symbol cost more than the rest of its snapshot)."""
    frames = [df.slice(a, b - a) for a, b in (spans[s] for s in symbols)]
    path, groups = write_segment(data, frames)
    table = df.to_arrow()  # once: a hash covers values, not layout, so a slice hashes as its own frame would
    for symbol, frame, group in zip(symbols, frames, groups, strict=True):
        old = live[symbol]
        a, b = spans[symbol]
        parts = [*parts_of(old), Part(path, group, frame.height, table_hash(table.slice(a, b - a)).hex)]
        last = int(ts[b - 1])
        bar = BarEntry(0, symbol, old.path, old.n_rows + frame.height, old.first_ts, last, chained_hash(parts), True,
                       0, 0, None, encode_parts(parts))
        planned[symbol] = _Planned(bar, old, 0, 0, True, path)


def _plan_chunk(data: Storage, new: pl.DataFrame, symbols: Sequence[str], live: Mapping[str, BarEntry],
                replace_range: bool, planned: dict[str, _Planned], unchanged: set[str]) -> None:
    """Merge ``new`` (the bars of ``symbols``, sorted) into their snapshots and write the changed ones."""
    old = _read_verified(data, [live[s] for s in symbols if s in live])
    merged, restated, removed, inserted = (new, {}, {}, {}) if old is None else _merge(old, new, replace_range)
    todo: list[tuple[pl.DataFrame, _Planned]] = []
    names, starts, ends = symbol_runs(merged["symbol"])
    for symbol, a, b in zip(names, starts.tolist(), ends.tolist(), strict=True):
        part = merged.slice(a, b - a)
        digest = content_hash(part)
        entry = live.get(symbol)
        unchanged.discard(symbol)
        same = digest == entry.content_hash if entry is not None and entry.parts is None else (
            entry is not None and part.height == entry.n_rows and not (restated.get(symbol) or removed.get(symbol)
                                                                      or inserted.get(symbol)))
        if same:
            unchanged.add(symbol)
            continue
        n_restated, n_removed = restated.get(symbol, 0), removed.get(symbol, 0)
        ts_us = part["ts"].dt.epoch("us")
        appended_only = n_restated == 0 and n_removed == 0 and inserted.get(symbol, 0) == 0
        bar = BarEntry(0, symbol, "", part.height, int(ts_us[0]), int(ts_us[-1]), digest, appended_only,
                       n_restated + n_removed, 0, None)
        todo.append((part, _Planned(bar, entry, n_restated, n_removed, appended_only, "")))
    _write(data, todo, planned)


def _merge(old: pl.DataFrame, new: pl.DataFrame, replace_range: bool
           ) -> tuple[pl.DataFrame, dict[str, int], dict[str, int], dict[str, int]]:
    """The merged bars, and per symbol: stored bars changed, stored bars removed, new bars before the stored end."""
    if replace_range:
        bounds = new.group_by("symbol").agg(lo=pl.col("ts").min(), hi=pl.col("ts").max())
        in_range = pl.col("ts").is_between(pl.col("lo"), pl.col("hi"))
        old_b = old.join(bounds, on="symbol", how="left")
        replaced, kept = old_b.filter(in_range).select(_KEYS), old_b.filter(~in_range).select(_KEYS)
    else:  # overlay: only the stored bars with the same (symbol, ts) are replaced
        replaced = old.join(new.select(_ON), on=_ON, how="semi")
        kept = old.join(new.select(_ON), on=_ON, how="anti")
    merged = pl.concat([kept.select(_KEYS), new]).sort(_ON)
    same_ts = replaced.join(new.select(_ON), on=_ON, how="semi")
    changed = _counts(same_ts.join(new, on=_KEYS, how="anti"))
    removed = _counts(replaced.join(new.select(_ON), on=_ON, how="anti"))
    # New bars dated at or before the stored last bar fill a gap: earlier history changed, not a pure append.
    stored_end = old.group_by("symbol").agg(end=pl.col("ts").max())
    before_end = new.join(stored_end, on="symbol").filter(pl.col("ts") <= pl.col("end")).select(_KEYS)
    inserted = _counts(before_end.join(old.select(_ON), on=_ON, how="anti"))
    return merged, changed, removed, inserted


def _read_verified(data: Storage, entries: Sequence[BarEntry]) -> pl.DataFrame | None:
    """The stored bars of ``entries`` (concatenated in order), each checked against its catalog row: a damaged
    snapshot raises CacheCorruptionError instead of being copied into a new snapshot that would look sound."""
    if not entries:
        return None
    try:
        old = read_bars(data, entries)
    except (*_UNREADABLE, CacheCorruptionError, pa.ArrowException) as exc:  # names the file only
        bad = _unreadable(data, entries)
        raise CacheCorruptionError(f"bars of {bad.symbol!r}: snapshot {bad.path} is unreadable ({exc}); "
                                   "not building on it") from exc
    assert old is not None
    if old.height != sum(e.n_rows for e in entries):
        for e in entries:
            for part in parts_of(e):
                meta = pq.read_metadata(pa.BufferReader(data.read_buffer(part.path)))
                rows = meta.num_rows if part.offset < 0 else min(meta.num_rows - part.offset, part.n_rows)
                if rows != part.n_rows:
                    raise CacheCorruptionError(f"bars of {e.symbol!r}: snapshot {part.path} has {rows} bars, the "
                                               f"catalog says {part.n_rows}; not building on it")
    offset = 0
    for e in entries:
        for part in parts_of(e):
            if content_hash(old.slice(offset, part.n_rows)) != part.content_hash:
                raise CacheCorruptionError(f"bars of {e.symbol!r}: snapshot {part.path} does not match its content "
                                           "hash (damaged); not building on it")
            offset += part.n_rows
    return old


def _unreadable(data: Storage, entries: Sequence[BarEntry]) -> BarEntry:
    """The first entry whose file cannot be read (the first one when each reads alone)."""
    for e in entries:
        for part in parts_of(e):
            try:
                read_part(data, part)
            except (*_UNREADABLE, CacheCorruptionError, pa.ArrowException):
                return e._replace(path=part.path)
    return entries[0]


def _write(data: Storage, todo: Sequence[tuple[pl.DataFrame, _Planned]], planned: dict[str, _Planned]) -> None:
    """Write the snapshot files (threads: Parquet encoding releases the GIL, fsyncs wait on the disk). Every file
    written is recorded in ``planned`` before the first failure is raised, so the caller can remove them all."""
    with ThreadPoolExecutor(max_workers=_WRITERS) as pool:
        futures: list[tuple[_Planned, Future[str]]] = [
            (p, pool.submit(write_base, data, f"bars/{encode_symbol(p.entry.symbol)}", part)) for part, p in todo]
    errors = [exc for _, f in futures if (exc := f.exception()) is not None]
    for p, f in futures:
        if f.exception() is None:
            planned[p.entry.symbol] = p._replace(entry=p.entry._replace(path=f.result()), written=f.result())
    if errors:
        raise errors[0]


def _counts(rows: pl.DataFrame) -> dict[str, int]:
    """Rows per symbol."""
    return dict(rows.group_by("symbol").len().iter_rows())


def _report(rows: int, names: Sequence[str], planned: Mapping[str, _Planned], committed: Sequence[BarEntry],
            unchanged: set[str], retries: int) -> IngestReport:
    report = IngestReport(rows=rows, retries=retries)
    done = {e.symbol for e in committed}
    for symbol in names:  # input order
        p = planned.get(symbol)
        if p is None or symbol not in done:
            if symbol in unchanged:
                report.unchanged.append(symbol)
            continue
        if p.expected is None:
            report.new_symbols.append(symbol)
        elif p.appended_only:
            report.appended.append(symbol)
        else:
            report.restated[symbol] = p.restated
            if p.removed:
                report.removed[symbol] = p.removed
    return report

"""Compaction: the live entries of a feature-set version rewritten into few large files (issue #18, item 1).

Incremental backfills leave one small file per symbol and run (50 runs over 500 symbols: 25,500 files), and a
cold read pays for opening, hashing and decoding each. Compaction writes the live rows of a (set, version) into
files of at most :data:`MAX_FILE_ROWS` rows, sorted by symbol then ts, in row groups of one symbol each (at
most :data:`pitstore.offline.entries.ROW_GROUP_ROWS` rows, statistics on, the groups listed in the file's metadata),
and then, in ONE catalog transaction, points every entry it copied at the file now holding its rows
(:meth:`Catalog.repoint_features`). Nothing else of an entry changes: its id, symbol, ts range, rows and
``recorded_at`` / ``superseded_at`` are the same, so every read and every ``as_known_at`` answer is the same
before and after (the rows are the same bytes' values, re-encoded). Entries recorded later stay in their own
files until the next compaction, which writes them into new files of their own (files already compacted are
never rewritten: a compaction costs the rows added since the last one).

Crash safety: the new files are published before the transaction (a kill before it leaves orphans, which gc
removes); the old files are deleted after it, only while no reader holds the version's lease (a reader that
listed the old paths must still find them), else gc's orphan sweep deletes them later under the same lease.
A damaged entry is left where it is (verify reports it), its symbol's other entries are compacted.
"""

from __future__ import annotations

import io
import json
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pitstore.catalog import versions as _versions
from pitstore.catalog.base import Catalog, FeatureEntry
from pitstore.datahash import file_hash
from pitstore.offline import entries as offline
from pitstore.offline.entries import (
    _COMPRESSION_LEVEL,
    COMPACTED_DIR,
    GROUPS_KEY,
    RUNS_KEY,
    EntryReader,
    is_compacted,
)
from pitstore.storage import Storage

__all__ = ["AUTO_ENTRIES", "MAX_FILE_ROWS", "CompactReport", "compact", "is_compacted", "loose_entries",
           "write_compacted", "write_packed"]

MAX_FILE_ROWS = 4_000_000  # rows per compacted file (cut at symbol boundaries): bounds the memory of one write
# A backfill compacts a version when more of its live entries than this are outside compacted files: about
# one file per symbol of a small universe is fine, a run of incremental backfills over many symbols is not.
AUTO_ENTRIES = 256
# Columns pyarrow dictionary-encodes (its default is every column): a dictionary of float features only grows until
# pyarrow gives up on it, and building it was three quarters of writing a row group (4.6x faster without, measured).
DICTIONARY_COLUMNS = ["symbol"]


@dataclass
class CompactReport:
    """What ``compact`` did (or, with ``dry_run``, would do)."""

    dry_run: bool
    versions: list[str] = field(default_factory=list)  # "name@v" compacted
    entries: int = 0  # entries now pointing into a compacted file
    rows: int = 0
    files_written: list[str] = field(default_factory=list)
    files_deleted: list[str] = field(default_factory=list)  # files no entry points to any more
    left_for_gc: list[str] = field(default_factory=list)  # the same, kept while a reader holds the version
    held: list[str] = field(default_factory=list)  # versions ("name@v") whose reader kept those files
    damaged: list[str] = field(default_factory=list)  # files left out: damaged (run `pitstore verify`)
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def loose_entries(entries: list[FeatureEntry]) -> int:
    """Live entries not in a compacted file."""
    return sum(1 for e in entries if e.superseded_at is None and not is_compacted(e.path))


def compact(root: Path, storage: Storage, catalog: Catalog, *, feature_set: str | None = None,
            version: int | None = None, min_entries: int = 2, dry_run: bool = False) -> CompactReport:
    """Compact every version (of ``feature_set``, or only ``version`` of it) with at least ``min_entries``
    live entries outside compacted files."""
    t0 = time.perf_counter()
    report = CompactReport(dry_run)
    names = [feature_set] if feature_set is not None else catalog.names()
    for name in names:
        for row in catalog.versions(name):
            if version is None or row.version == version:
                _version(root, storage, catalog, name, row.version, min_entries, report)
    report.seconds = time.perf_counter() - t0
    return report


def _version(root: Path, storage: Storage, catalog: Catalog, name: str, version: int, min_entries: int,
             report: CompactReport) -> None:
    label = f"{name}@{version}"
    written: dict[str, tuple[str, int, str]] = {}  # symbol -> new path, size, hash
    # Under the version's lease: no cleanup retires the files while they are read.
    with _versions.reading(root, catalog, name, version, check_live=False):
        # Only the entries outside compacted files: a compaction costs what was added since the last one, not
        # the version's history (an incremental backfill of many symbols must not rewrite everything).
        entries = [e for e in catalog.feature_entries(name, version) if not is_compacted(e.path)]
        if loose_entries(entries) < min_entries:
            return
        report.versions.append(label)
        if report.dry_run:
            report.entries += len(entries)
            report.rows += sum(e.n_rows for e in entries)
            return
        reader = EntryReader(root, 0, storage)  # nothing kept: this process reads them once
        columns = pq.read_schema(pa.BufferReader(storage.read_buffer(entries[0].path))).names
        base = entries[0].path.rsplit("/", 2)[0]  # features/<set>/v<version>
        damaged: dict[str, str] = {}
        for batch in _batches(entries):  # a file's worth of rows at a time: memory stays that of one file
            rows, broken = reader.read_checked(batch, columns)
            damaged.update(broken)
            if rows is None:
                continue
            for path, size, digest, part in write_packed(storage, base, offline.by_symbol_ts(rows)):
                report.files_written.append(path)
                for symbol in part["symbol"].unique().to_list():
                    written[symbol] = (path, size, digest)
            del rows
        report.damaged.extend(sorted(damaged))
        intact = [e for e in entries if e.path not in damaged]
        if not intact:
            return
    moves = [(e.id, e.path, *written[e.symbol]) for e in intact if e.symbol in written]
    moved = catalog.repoint_features(moves)  # the one commit: every entry, or (killed) none
    report.entries += moved
    report.rows += sum(e.n_rows for e in intact)
    referenced = catalog.referenced_paths()
    for path in {p for p, _, _ in written.values()} - referenced:  # lost every race: nothing points to it
        storage.delete(path)
    retired = sorted({e.path for e in intact} - referenced)
    with _versions._exclusive(root, catalog, name, version, dry_run=False) as holding:
        if holding:  # no reader has the old paths listed: they can go now
            for path in retired:
                storage.delete(path)
            report.files_deleted.extend(retired)
        elif retired:
            report.left_for_gc.extend(retired)
            report.held.append(label)


def write_packed(storage: Storage, directory: str, rows: pl.DataFrame) -> list[tuple[str, int, str, pl.DataFrame]]:
    """``rows`` (sorted by symbol, then ts) written as compacted files under ``directory`` (features/<set>/v<n>);
    per file its path, size, hash and rows. What a compaction writes, for a backfill that writes its rows so
    directly rather than a file per symbol first."""
    out = []
    for part in _files(rows):
        path, size, digest = write_compacted(storage, f"{directory}/{COMPACTED_DIR}", part)
        out.append((path, size, digest, part))
    return out


def _batches(entries: list[FeatureEntry]) -> list[list[FeatureEntry]]:
    """``entries`` by symbol, whole symbols cut into batches of at most MAX_FILE_ROWS rows (by the catalog's
    counts; a symbol with more is a batch of its own), as :func:`_files` cuts the rows of a batch."""
    by_symbol: dict[str, list[FeatureEntry]] = {}
    for e in entries:
        by_symbol.setdefault(e.symbol, []).append(e)
    out: list[list[FeatureEntry]] = []
    batch: list[FeatureEntry] = []
    rows = 0
    for symbol in sorted(by_symbol):
        n = sum(e.n_rows for e in by_symbol[symbol])
        if batch and rows + n > MAX_FILE_ROWS:
            out.append(batch)
            batch, rows = [], 0
        batch.extend(by_symbol[symbol])
        rows += n
    return [*out, batch] if batch else out


def _files(rows: pl.DataFrame) -> list[pl.DataFrame]:
    """``rows`` (sorted by symbol) cut at symbol boundaries into parts of at most MAX_FILE_ROWS rows (a symbol
    with more is a part of its own)."""
    parts, first, last = [], 0, 0
    for _, a, b in _runs(rows):
        if b - first > MAX_FILE_ROWS and last > first:
            parts.append(rows.slice(first, last - first))
            first = a
        last = b
    parts.append(rows.slice(first, last - first))
    return parts


def _runs(rows: pl.DataFrame) -> list[tuple[str, int, int]]:
    """Each symbol of ``rows`` (sorted by symbol) with its first row and the row after its last."""
    counts = rows.group_by("symbol", maintain_order=True).len()
    out, at = [], 0
    for sym, n in counts.iter_rows():
        out.append((str(sym), at, at + int(n)))
        at += int(n)
    return out


def write_compacted(storage: Storage, directory: str, part: pl.DataFrame, *, pack: bool = False
                    ) -> tuple[str, int, str]:
    """One compacted file of ``part`` (each symbol's rows together): row groups of one symbol each, listed in its
    metadata; its path, size and hash. ``pack``: symbols with few rows share row groups of up to ROW_GROUP_ROWS
    rows (an incremental backfill's new rows of all its symbols: a group per symbol and row is dear to write)."""
    table = part.to_arrow(compat_level=pl.CompatLevel.oldest())
    epochs = part["ts"].dt.epoch("us").to_numpy()
    cuts: list[tuple[int, int]] = []
    groups: list[list[Any]] = []
    per_group: list[int] = []
    for sym, a, b in _runs(part):
        if pack and cuts and b - cuts[-1][0] <= offline.ROW_GROUP_ROWS:  # fits into the open group: joins it
            cuts[-1] = (cuts[-1][0], b)
            groups.append([sym, b - a, int(epochs[a]), int(epochs[b - 1])])
            per_group[-1] += 1
            continue
        for c in range(a, b, offline.ROW_GROUP_ROWS):
            d = min(b, c + offline.ROW_GROUP_ROWS)
            cuts.append((c, d))
            groups.append([sym, d - c, int(epochs[c]), int(epochs[d - 1])])
            per_group.append(1)
    meta = {**(table.schema.metadata or {}), GROUPS_KEY: json.dumps(groups).encode()}
    if any(n > 1 for n in per_group):
        meta[RUNS_KEY] = json.dumps(per_group).encode()
    schema = table.schema.with_metadata(meta)
    sink = io.BytesIO()
    with pq.ParquetWriter(sink, schema, compression="zstd", compression_level=_COMPRESSION_LEVEL,
                          write_statistics=True, use_dictionary=DICTIONARY_COLUMNS) as writer:
        for c, d in cuts:
            writer.write_table(table.slice(c, d - c), row_group_size=d - c)
    body = sink.getbuffer()
    path = f"{directory}/{uuid.uuid4().hex}.parquet"
    storage.put(path, body)
    return path, len(body), file_hash(body)

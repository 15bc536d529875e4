"""Tiering: move rows older than the window out of the PostgreSQL history tier into Parquet archives.

For each history table ("feature_set@version") one run does, in this order:

1. scan every version (symbol, ts, recorded_at, tombstone, values) with ``ts < cutoff`` (cutoff = now - window),
   tombstones included: an archive keeps them as versions flagged ``tombstone``, so that a row a restatement
   removed does not come back to life once the tombstone has left PostgreSQL;
2. drop the versions an earlier run already archived (same (symbol, ts, recorded_at): the history tier refuses
   other values for a stored key, so the key identifies the values);
3. publish the rest as one Parquet file, ``history/<feature set>/v<version>/<uuid>.parquet`` (temporary file,
   fsync, rename, directory fsync), then commit its ``history_archives`` catalog row;
4. only then delete from PostgreSQL exactly the versions of step 1 (by key, not by time: a version written
   after the scan, even with an old ts, stays in PostgreSQL for the next run).

A kill at any point loses nothing: before step 3's commit the rows are all still in PostgreSQL (a published
file without its row is an orphan that ``gc`` removes after its grace period); after it they are in the
archive, and possibly still in PostgreSQL too, until a re-run, whose step 2 then skips them and whose step 4
deletes them. A reader that merges both tiers meanwhile sees such a version twice with identical values and
keeps one (:func:`read_archive` likewise keeps one per key, should two concurrent runs ever archive the same).

:func:`latest_versions` turns archived versions into the rows the history tier's scan gives for them.
"""

from __future__ import annotations

import io
import math
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from pitstore.cache.core import LOCK_DIR
from pitstore.cache.lock import KeyLocks, ProcessLocks
from pitstore.catalog import shared_locks
from pitstore.catalog.base import Catalog, HistoryArchive
from pitstore.catalog.sqlite import now_us as _clock_us
from pitstore.datahash import file_hash
from pitstore.errors import InvalidInputError
from pitstore.filenames import safe_name
from pitstore.history.base import TOMBSTONE, HistoryBackend
from pitstore.sources.bars import validate_symbol
from pitstore.storage import Storage, as_storage

__all__ = ["ARCHIVE_DIR", "TableTier", "TierReport", "archive_dir", "latest_versions", "read_archive",
           "tier"]

ARCHIVE_DIR = "history"  # under the store root
KEY = ["symbol", "ts", "recorded_at"]
_DAY_US = 86_400_000_000
_COMPRESSION_LEVEL = 3  # zstd's default: archives are written once, off the hot path, and kept for years
_TS = pl.Datetime("us", "UTC")
_TABLE_ID = re.compile(r"(?P<name>.+)@(?P<version>\d+)")


@dataclass
class TableTier:
    """What one run did (with ``dry_run``: would do) to one history table."""

    table_id: str
    rows_old: int = 0  # versions with ts < cutoff found in PostgreSQL (tombstones included)
    rows_archived: int = 0  # of those, written to a new archive file
    rows_already_archived: int = 0  # of those, already in an archive (an interrupted earlier run)
    rows_deleted: int = 0  # deleted from PostgreSQL
    files: int = 0
    path: str | None = None  # the new archive, relative to the store root


@dataclass
class TierReport:
    """A tiering run over every table of the history tier."""

    dry_run: bool
    window_days: float
    cutoff: int  # µs UTC: rows with ts < cutoff are moved
    tables: list[TableTier] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def rows_archived(self) -> int:
        return sum(t.rows_archived for t in self.tables)

    @property
    def rows_deleted(self) -> int:
        return sum(t.rows_deleted for t in self.tables)

    @property
    def files(self) -> int:
        return sum(t.files for t in self.tables)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "rows_archived": self.rows_archived, "rows_deleted": self.rows_deleted,
                "files": self.files}


def tier(root: Path, catalog: Catalog, history: HistoryBackend, *, window_days: float = 30,
         now_us: int | None = None, dry_run: bool = False, storage: Storage | None = None) -> TierReport:
    """Move every version with ``ts < now - window_days`` from the history tier into Parquet archives (see the
    module docstring for the order of steps and why it is crash-safe). Idempotent: a second run finds nothing
    to move. ``dry_run`` reads and reports, and changes nothing (no file, no catalog row, no delete).
    ``storage``: where the archives go (default: under ``root``, which keeps the run lock either way)."""
    data = storage if storage is not None else as_storage(root)
    t0 = time.perf_counter()
    report = TierReport(dry_run, window_days, _cutoff(window_days, now_us))
    with _run_lock(root, dry_run, shared_locks(catalog, "tier")):
        for table_id in history.tables():
            report.tables.append(_tier_table(data, catalog, history, table_id, report.cutoff, dry_run))
    report.seconds = time.perf_counter() - t0
    return report


def read_archive(data: Storage | Path, catalog: Catalog, table_id: str, *, symbols: Sequence[str] | None = None,
                 start: int | None = None, end: int | None = None) -> pl.DataFrame:
    """Archived rows of ``table_id`` with ``start <= ts <= end`` (µs UTC, bounds optional): every version,
    columns ``symbol``, ``ts``, ``recorded_at`` (Datetime µs UTC), ``tombstone`` (Boolean: the version says the
    row no longer exists; its features are null) and the feature columns (Float64, NaN and null kept apart),
    sorted by symbol, ts, recorded_at: as the history tier's ``scan(all_versions=True)`` gave them. For the
    rows themselves, as known at a time or now, use :func:`latest_versions`. No archive: an empty frame of the
    key columns and ``tombstone``."""
    wanted = None if symbols is None else _symbol_list(symbols)
    paths = [a.path for a in catalog.history_archives(table_id) if _overlaps(a, start, end)]
    if not paths or wanted == []:
        return pl.DataFrame(schema={"symbol": pl.String, "ts": _TS, "recorded_at": _TS, TOMBSTONE: pl.Boolean})
    storage = as_storage(data)
    lf = pl.concat([_scan_archive(storage, p) for p in paths])
    if wanted is not None:
        lf = lf.filter(pl.col("symbol").is_in(wanted))
    if start is not None:
        lf = lf.filter(pl.col("ts") >= _datetime(start))
    if end is not None:
        lf = lf.filter(pl.col("ts") <= _datetime(end))
    # Two concurrent runs could archive one version twice, with identical values: keep one.
    return lf.sort(KEY).unique(KEY, keep="first", maintain_order=True).collect()


def latest_versions(versions: pl.DataFrame, *, as_known_at: int | None = None) -> pl.DataFrame:
    """The rows ``versions`` (as :func:`read_archive` returns them) hold as known at ``as_known_at`` (µs UTC;
    default: everything recorded): per (symbol, ts) the last version recorded by then, none where that is a
    tombstone, without the ``tombstone`` column; the history tier's ``scan`` answers the same."""
    if as_known_at is not None:
        versions = versions.filter(pl.col("recorded_at").dt.epoch("us") <= as_known_at)
    latest = versions.sort(KEY).unique(["symbol", "ts"], keep="last", maintain_order=True)
    return latest.filter(~pl.col(TOMBSTONE)).drop(TOMBSTONE)


def archive_dir(table_id: str) -> str:
    """Where the archives of ``table_id`` go, relative to the store root: ``history/<feature set>/v<N>``, the
    name encoded so that slashes, dots and ``..`` are harmless."""
    match = _TABLE_ID.fullmatch(table_id)
    if match is None:
        return f"{ARCHIVE_DIR}/{safe_name(table_id)}"
    return f"{ARCHIVE_DIR}/{safe_name(match['name'])}/v{int(match['version'])}"


# --- one table ------------------------------------------------------------------------------------------


def _tier_table(storage: Storage, catalog: Catalog, history: HistoryBackend, table_id: str, cutoff: int,
                dry_run: bool) -> TableTier:
    result = TableTier(table_id)
    old = history.scan(table_id, end=cutoff - 1, all_versions=True)
    result.rows_old = old.num_rows
    if old.num_rows == 0:
        return result
    fresh = _not_archived(storage, catalog, table_id, pl.DataFrame(old))
    result.rows_archived, result.rows_already_archived = fresh.height, old.num_rows - fresh.height
    result.files = int(fresh.height > 0)
    if dry_run:
        result.rows_deleted = old.num_rows
        return result
    if fresh.height:
        result.path = _archive(storage, catalog, table_id, fresh, cutoff).path
    result.rows_deleted = history.delete_versions(table_id, old.select(KEY))
    return result


def _not_archived(storage: Storage, catalog: Catalog, table_id: str, old: pl.DataFrame) -> pl.DataFrame:
    """``old`` without the versions already in an archive (left there by a run killed before its delete)."""
    first, last = _ts_range(old)
    archived = read_archive(storage, catalog, table_id, start=first, end=last)
    if archived.is_empty():
        return old
    return old.join(archived.select(KEY), on=KEY, how="anti", maintain_order="left")


def _archive(storage: Storage, catalog: Catalog, table_id: str, rows: pl.DataFrame, cutoff: int) -> HistoryArchive:
    """Publish ``rows`` as a new archive file, then commit its catalog row (in that order: a row never names a
    file that is not complete on disk)."""
    buf = io.BytesIO()
    rows.write_parquet(buf, compression="zstd", compression_level=_COMPRESSION_LEVEL, statistics=True)
    data = buf.getbuffer()
    directory, name = archive_dir(table_id), f"{uuid.uuid4().hex}.parquet"
    storage.put(f"{directory}/{name}", data)
    first, last = _ts_range(rows)
    return catalog.commit_history_archive(HistoryArchive(
        0, table_id, f"{directory}/{name}", rows.height, first, last, cutoff, len(data), file_hash(data), 0))


# --- helpers --------------------------------------------------------------------------------------------


def _cutoff(window_days: float, now_us: int | None) -> int:
    number = isinstance(window_days, int | float) and not isinstance(window_days, bool)
    if not number or not math.isfinite(window_days) or window_days < 0:
        raise InvalidInputError(f"window days must be a finite number >= 0, got {window_days!r}")
    now = _clock_us() if now_us is None else now_us
    return now - round(window_days * _DAY_US)


@contextmanager
def _run_lock(root: Path, dry_run: bool, shared: ProcessLocks | None = None) -> Iterator[None]:
    """One run at a time per store (a cron job overlapping a manual run would otherwise write the same rows
    twice): a file lock under the root, or with a PostgreSQL catalog an advisory lock there (team mode: the runs
    may be on different machines, each with a root of its own). A dry run changes nothing, so it neither takes
    the lock nor creates its file."""
    if dry_run:
        yield
        return
    with (shared if shared is not None else KeyLocks(root / ARCHIVE_DIR / LOCK_DIR)).hold("tier"):
        yield


def _scan_archive(storage: Storage, path: str) -> pl.LazyFrame:
    """One archive file, with the ``tombstone`` column even when written before tombstones existed."""
    local = storage.local_path(path)
    lf = pl.scan_parquet(local) if local is not None else pl.read_parquet(io.BytesIO(storage.read(path))).lazy()
    names = lf.collect_schema().names()
    if TOMBSTONE in names:
        return lf
    return lf.select(*KEY, pl.lit(False).alias(TOMBSTONE), *names[len(KEY):])


def _overlaps(archive: HistoryArchive, start: int | None, end: int | None) -> bool:
    return (start is None or archive.last_ts >= start) and (end is None or archive.first_ts <= end)


def _ts_range(rows: pl.DataFrame) -> tuple[int, int]:
    """Smallest and greatest ts of non-empty ``rows``, µs (integers: any bigint, unlike Python datetimes)."""
    us = rows["ts"].dt.epoch("us")
    first, last = us.min(), us.max()
    assert isinstance(first, int) and isinstance(last, int)
    return first, last


def _datetime(us: int) -> pl.Expr:
    return pl.lit(us, dtype=pl.Int64).cast(_TS)


def _symbol_list(symbols: Sequence[str]) -> list[str]:
    if isinstance(symbols, str):
        raise InvalidInputError("symbols must be a sequence of symbols, not one string", value=symbols)
    return [validate_symbol(s) for s in symbols]



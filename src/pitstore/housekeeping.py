"""Garbage collection and integrity checks of a store: ``pitstore gc`` and ``pitstore verify``.

Safe while other processes read and write: a cache entry or file is only deleted while holding its key's
lock (so never while it is being computed or published), offline-tier files without a catalog row only
once older than a grace period (an ingest or backfill writes its file just before committing its row),
and catalog rows are removed before their files, so a new reader never finds a row without its file.
A reader that already has a file open keeps reading it after the unlink (POSIX).
"""

from __future__ import annotations

import os
import time
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pitstore.atomic import TMP_SUFFIX
from pitstore.cache.core import CACHE_DIR, LOCK_DIR, ComputeCache
from pitstore.catalog.base import Catalog
from pitstore.catalog.sqlite import now_us
from pitstore.datahash import file_hash
from pitstore.errors import CacheCorruptionError, InvalidInputError
from pitstore.offline import content_hash

__all__ = ["GcReport", "VerifyReport", "gc", "verify"]

# Everything pitstore writes under the root, besides the catalog ("history": pitstore.tiering's archives).
DATA_DIRS = ("bars", "features", CACHE_DIR, "history")
ORPHAN_GRACE_SECONDS = 3600.0  # an unreferenced offline file younger than this may be one being committed


@dataclass
class GcReport:
    """What ``gc`` deleted (or, with ``dry_run``, would delete)."""

    dry_run: bool
    stale_entries: list[str] = field(default_factory=list)  # cache entries not accessed within the retention
    old_versions: list[str] = field(default_factory=list)  # feature entries of versions beyond max_versions
    missing_files: list[str] = field(default_factory=list)  # catalog rows whose file is gone
    orphan_files: list[str] = field(default_factory=list)  # files no catalog row refers to (incl. temporaries)
    busy: list[str] = field(default_factory=list)  # left alone: a process holds their key right now
    lock_files: int = 0
    bytes_freed: int = 0
    vacuumed: bool = False
    seconds: float = 0.0

    @property
    def files_deleted(self) -> int:
        return len(self.stale_entries) + len(self.old_versions) + len(self.orphan_files)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files_deleted": self.files_deleted}


@dataclass
class VerifyReport:
    """Every entry checked (exists, size, hash) and the problems found."""

    checked: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)  # kind, path, problem

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "checked": self.checked, "problems": self.problems}


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def gc(
    root: Path, catalog: Catalog, cache: ComputeCache, *, retention_weeks: float | None = None,
    max_versions: int | None = None, dry_run: bool = False, orphan_grace_seconds: float = ORPHAN_GRACE_SECONDS,
) -> GcReport:
    """Delete stale cache entries, files nobody refers to, rows whose file is gone and versions beyond
    ``max_versions`` per feature set; then VACUUM/ANALYZE the catalog. ``dry_run`` only reports."""
    if retention_weeks is not None and retention_weeks < 0:
        raise InvalidInputError(f"retention weeks must be >= 0, got {retention_weeks}")
    if max_versions is not None and max_versions < 1:
        raise InvalidInputError(f"max versions must be >= 1, got {max_versions}")
    t0 = time.perf_counter()
    report = GcReport(dry_run)

    def hold(key: str) -> AbstractContextManager[bool]:
        # A dry run deletes nothing, so it needs no lock (and must not create lock files).
        return nullcontext(True) if dry_run else cache.locks.hold(key, blocking=False)

    def delete_file(path: Path, bucket: list[str]) -> None:
        bucket.append(str(path.relative_to(root)))
        report.bytes_freed += _size(path)
        if not dry_run:
            path.unlink(missing_ok=True)

    # 1. Cache entries: stale ones, and rows whose file is missing. Each under its key's lock.
    stale_before = None if retention_weeks is None else now_us() - int(retention_weeks * 7 * 86_400e6)
    for entry in catalog.cache_entries():
        path = root / entry.path
        missing = not path.exists()
        stale = stale_before is not None and entry.last_access < stale_before
        if not (missing or stale):
            continue
        with hold(entry.key) as holding:
            if not holding or catalog.cache_get(entry.key) != entry:
                report.busy.append(entry.path)
                continue
            if not dry_run:
                catalog.cache_drop([entry.key])
            if missing:
                report.missing_files.append(entry.path)
            else:
                delete_file(path, report.stale_entries)

    # 2. Offline entries whose file is missing, then versions beyond max_versions.
    bars = catalog.all_bar_entries()
    features = catalog.all_feature_entries()
    for table, rows in (("bar_entries", bars), ("feature_entries", features)):
        gone = [r for r in rows if not (root / r.path).exists()]
        report.missing_files.extend(r.path for r in gone)
        if gone and not dry_run:
            catalog.drop_rows(table, [r.id for r in gone])
    if max_versions is not None:
        newest: dict[str, list[int]] = {}
        for r in features:
            newest.setdefault(r.feature_set, []).append(r.version)
        keep = {name: set(sorted(set(vs))[-max_versions:]) for name, vs in newest.items()}
        retired = [r for r in features if r.version not in keep[r.feature_set] and (root / r.path).exists()]
        if retired and not dry_run:
            catalog.drop_rows("feature_entries", [r.id for r in retired])
        for r in retired:
            delete_file(root / r.path, report.old_versions)

    # 3. Files no row refers to: temporaries of crashed writers and published-but-never-committed files.
    referenced = catalog.referenced_paths()
    now = time.time()
    for top in DATA_DIRS:
        for dirpath, dirnames, filenames in os.walk(root / top):
            dirnames[:] = [d for d in dirnames if d != LOCK_DIR]
            for name in filenames:
                path = Path(dirpath) / name
                if str(path.relative_to(root)) in referenced:
                    continue
                if not (name.endswith(TMP_SUFFIX) or name.endswith(".parquet")):
                    continue
                if top == CACHE_DIR:
                    key = name.lstrip(".").split(".", 1)[0]
                    with hold(key) as holding:
                        # Re-checked under the key's lock: a writer may have committed it since the listing.
                        row = catalog.cache_get(key)
                        if holding and (row is None or row.path != str(path.relative_to(root))):
                            delete_file(path, report.orphan_files)
                        elif not holding:
                            report.busy.append(str(path.relative_to(root)))
                else:
                    try:
                        age = now - path.stat().st_mtime
                    except FileNotFoundError:
                        continue
                    if age >= orphan_grace_seconds:
                        delete_file(path, report.orphan_files)

    if not dry_run:
        report.lock_files = cache.locks.remove_unused()
        catalog.vacuum()
        report.vacuumed = True
    report.seconds = time.perf_counter() - t0
    return report


def verify(root: Path, catalog: Catalog, cache: ComputeCache) -> VerifyReport:
    """Check every entry: its file exists and matches the catalog (cache and history archives: size and
    xxh3-128 of the bytes; bar snapshots: row count and content hash; feature entries: row count)."""
    report = VerifyReport()

    def problem(kind: str, path: str, what: str) -> None:
        report.problems.append({"kind": kind, "path": path, "problem": what})

    for entry in catalog.cache_entries():
        report.checked += 1
        try:
            cache.check(entry)
        except CacheCorruptionError as exc:
            problem("cache", entry.path, str(exc))
    for bar in catalog.all_bar_entries():
        report.checked += 1
        try:
            df = pl.read_parquet(root / bar.path)
        except (OSError, pl.exceptions.PolarsError) as exc:
            problem("bars", bar.path, f"unreadable: {exc}")
            continue
        if df.height != bar.n_rows:
            problem("bars", bar.path, f"{df.height} rows, the catalog says {bar.n_rows}")
        elif content_hash(df) != bar.content_hash:
            problem("bars", bar.path, "content does not match its hash")
    for feat in catalog.all_feature_entries():
        report.checked += 1
        try:
            rows = pq.read_metadata(root / feat.path).num_rows
        except (OSError, pa.ArrowException) as exc:
            problem("features", feat.path, f"unreadable: {exc}")
            continue
        if rows != feat.n_rows:
            problem("features", feat.path, f"{rows} rows, the catalog says {feat.n_rows}")
    for archive in catalog.history_archives():
        report.checked += 1
        what = _check_bytes(root / archive.path, archive.size, archive.file_hash)
        if what is not None:
            problem("history", archive.path, what)
    return report


def _check_bytes(path: Path, size: int, expected_hash: str) -> str | None:
    """What is wrong with the file at ``path`` (None: it has ``size`` bytes hashing to ``expected_hash``)."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        return f"unreadable: {exc}"
    if len(data) != size:
        return f"{len(data)} bytes, the catalog says {size}"
    return None if file_hash(data) == expected_hash else "content does not match its hash"


"""Garbage collection and integrity checks of a store: ``pitstore gc`` and ``pitstore verify``.

Safe while other processes read and write: a cache entry or file is only deleted while holding its key's
lock (so never while it is being computed or published), offline-tier files without a catalog row only
once older than a grace period (an ingest or backfill writes its file just before committing its row),
and catalog rows are removed before their files, so a new reader never finds a row without its file.
A reader that already has a file open keeps reading it after the unlink (POSIX); versions beyond
``max_versions`` are retired only while no reader holds their lease (see :mod:`pitstore.catalog.versions`).
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from pitstore.atomic import TMP_SUFFIX
from pitstore.cache.core import CACHE_DIR, ComputeCache
from pitstore.catalog import versions as _versions
from pitstore.catalog.base import BarEntry, CacheEntry, Catalog, FeatureEntry, HistoryArchive
from pitstore.catalog.sqlite import now_us
from pitstore.errors import CacheCorruptionError, InvalidInputError
from pitstore.features.base import FeatureSet
from pitstore.features.engine import compute_frame
from pitstore.features.registry import fingerprint
from pitstore.filenames import safe_name
from pitstore.offline import backfill as _backfill
from pitstore.offline import compact as _compact
from pitstore.offline.entries import check_file, content_hash, encode_symbol, put_entry, write_entry
from pitstore.sources.segments import PartReader, chained_hash, entry_paths, parts_of, read_bars
from pitstore.storage import Storage

__all__ = ["GcReport", "VerifyReport", "check_bars", "gc", "verify"]

# Everything pitstore writes under the root, besides the catalog ("history": pitstore.history.tiering's archives).
DATA_DIRS = ("bars", "features", CACHE_DIR, "history")
# A damaged file can make polars' decoder panic (PanicException, a BaseException) rather than raise an error.
_UNREADABLE = (OSError, pl.exceptions.PolarsError, pl.exceptions.PanicException)
ORPHAN_GRACE_SECONDS = 3600.0  # an unreferenced offline file younger than this may be one being committed


@dataclass
class GcReport:
    """What ``gc`` deleted (or, with ``dry_run``, would delete)."""

    dry_run: bool
    stale_entries: list[str] = field(default_factory=list)  # cache entries not accessed within the retention
    old_versions: list[str] = field(default_factory=list)  # feature entries of versions beyond max_versions
    # Bar snapshots and feature entries superseded before the retention (pitstore.catalog.retention): as_known_at no
    # longer reaches them.
    superseded: list[str] = field(default_factory=list)
    retired_versions: list[str] = field(default_factory=list)  # those versions ("name@v"): no longer readable
    missing_files: list[str] = field(default_factory=list)  # catalog rows whose file is gone
    orphan_files: list[str] = field(default_factory=list)  # files no catalog row refers to (incl. temporaries)
    busy: list[str] = field(default_factory=list)  # left alone: a process holds their key (or lease: "name@v")
    lock_files: int = 0
    bytes_freed: int = 0
    compacted: list[str] = field(default_factory=list)  # versions whose entries were compacted ("name@v")
    vacuumed: bool = False
    seconds: float = 0.0

    @property
    def files_deleted(self) -> int:
        return len(self.stale_entries) + len(self.old_versions) + len(self.superseded) + len(self.orphan_files)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "files_deleted": self.files_deleted}


@dataclass
class VerifyReport:
    """Every entry checked (exists, size, hash) and the problems found; with ``repair``, what was done.

    ``problems`` are what is broken now (after a repair: what it left); ``found`` what the check found first.
    """

    checked: int = 0
    problems: list[dict[str, str]] = field(default_factory=list)  # kind, path, problem
    repair: bool = False
    found: list[dict[str, str]] = field(default_factory=list)
    repaired: list[dict[str, str]] = field(default_factory=list)  # kind, path, symbol, action
    dropped: list[dict[str, str]] = field(default_factory=list)  # could not be rebuilt: row and file removed
    unrepairable: list[dict[str, str]] = field(default_factory=list)  # left as it is, and why

    @property
    def ok(self) -> bool:
        return not self.problems

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"ok": self.ok, "checked": self.checked, "problems": self.problems}
        if self.repair:
            out |= {"found": self.found, "repaired": self.repaired, "dropped": self.dropped,
                    "unrepairable": self.unrepairable}
        return out


def gc(
    root: Path, catalog: Catalog, cache: ComputeCache, *, retention_weeks: float | None = None,
    max_versions: int | None = None, dry_run: bool = False, orphan_grace_seconds: float = ORPHAN_GRACE_SECONDS,
    superseded_before: int | None = None,
) -> GcReport:
    """Delete stale cache entries, files nobody refers to, rows whose file is gone and versions beyond
    ``max_versions`` per feature set (among those with stored entries); compact versions with more than
    :data:`pitstore.offline.compact.AUTO_ENTRIES` small entries; then VACUUM/ANALYZE the catalog.
    ``dry_run`` only reports. A version whose entries are deleted is retired: no longer listed, and reading it
    raises VersionNotFoundError (registering its definition again brings the number back).
    ``superseded_before`` (µs; :func:`pitstore.catalog.retention.gc_horizon`): bar snapshots and feature entries
    superseded at or before it are deleted, rows first in one transaction, then their files (a crash between
    leaves only unreferenced files, which the next gc removes)."""
    if retention_weeks is not None and retention_weeks < 0:
        raise InvalidInputError(f"retention weeks must be >= 0, got {retention_weeks}")
    if max_versions is not None and max_versions < 1:
        raise InvalidInputError(f"max versions must be >= 1, got {max_versions}")
    t0 = time.perf_counter()
    report = GcReport(dry_run)
    storage = cache.storage  # where the data is (root: local state only, when the data is elsewhere)

    def hold(key: str) -> AbstractContextManager[bool]:
        # A dry run deletes nothing, so it needs no lock (and must not create lock files).
        return nullcontext(True) if dry_run else cache.locks.hold(key, blocking=False)

    def delete_file(path: str, bucket: list[str], size: int | None = None) -> None:
        bucket.append(path)
        report.bytes_freed += (storage.size(path) or 0) if size is None else size
        if not dry_run:
            storage.delete(path)

    # 1. Cache entries: stale ones, and rows whose file is missing. Each under its key's lock.
    stale_before = None if retention_weeks is None else now_us() - int(retention_weeks * 7 * 86_400e6)
    for entry in catalog.cache_entries():
        missing = storage.size(entry.path) is None
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
                delete_file(entry.path, report.stale_entries)

    # 2. Superseded entries past the retention; then entries whose file is missing, versions beyond max_versions.
    if superseded_before is not None:
        _drop_superseded(catalog, superseded_before, report, delete_file)
    bars = catalog.all_bar_entries()
    features = catalog.all_feature_entries()
    sizes: dict[str, int | None] = {}  # compacted entries share a file: asked once
    for table, rows in (("bar_entries", bars), ("feature_entries", features)):
        gone = []
        for r in rows:
            lost = []
            for p in entry_paths(r):
                if p not in sizes:
                    sizes[p] = storage.size(p)
                if sizes[p] is None:
                    lost.append(p)
            if lost:
                gone.append(r)
                report.missing_files.extend(lost)
        if gone and not dry_run:
            catalog.drop_rows(table, [r.id for r in gone])
    if max_versions is not None:
        # The one implementation of `versions cleanup` (pitstore.catalog.versions): leases, retire-then-unlink order.
        versions = _versions.cleanup(root, catalog, max_versions=max_versions, dry_run=dry_run, entries=features,
                                     storage=storage)
        report.retired_versions = versions.retired
        report.old_versions = versions.files
        report.busy.extend(versions.busy)
        report.bytes_freed += versions.bytes_freed

    # Small entries folded into few files (pitstore.offline.compact); the files they leave go under the version's lease.
    compacted = _compact.compact(root, storage, catalog, dry_run=dry_run, min_entries=_compact.AUTO_ENTRIES + 1)
    report.compacted = compacted.versions
    for label in compacted.held:  # their old files are left for a later gc, like any busy version's
        if label not in report.busy:
            report.busy.append(label)

    # 3. Files no row refers to: temporaries of crashed writers and published-but-never-committed files.
    referenced = catalog.referenced_paths()
    now = time.time()
    leases = _version_dirs(catalog)
    for top in DATA_DIRS:
        for obj in storage.list(top):  # hidden directories (the cache's .locks) are never listed
            name = obj.path.rsplit("/", 1)[-1]
            if obj.path in referenced or not (name.endswith(TMP_SUFFIX) or name.endswith(".parquet")):
                continue
            if top == CACHE_DIR:
                key = name.lstrip(".").split(".", 1)[0]
                with hold(key) as holding:
                    # Re-checked under the key's lock: a writer may have committed it since the listing.
                    row = catalog.cache_get(key)
                    if holding and (row is None or row.path != obj.path):
                        delete_file(obj.path, report.orphan_files, obj.size)
                    elif not holding:
                        report.busy.append(obj.path)
            elif now - obj.mtime >= orphan_grace_seconds:
                # Younger: perhaps an ingest or backfill between writing its file and committing its row.
                lease = leases.get(obj.path.rsplit("/", 2)[0]) if top == "features" else None
                if lease is None:
                    delete_file(obj.path, report.orphan_files, obj.size)
                    continue
                # A file compaction left (old, so no grace): a reader that listed it before may still read it.
                with _versions._exclusive(root, catalog, *lease, dry_run=dry_run) as holding:
                    if holding:
                        delete_file(obj.path, report.orphan_files, obj.size)
                    elif (label := f"{lease[0]}@{lease[1]}") not in report.busy:
                        report.busy.append(label)

    if not dry_run:
        report.lock_files = cache.locks.remove_unused()
        catalog.vacuum()
        report.vacuumed = True
    report.seconds = time.perf_counter() - t0
    return report


def _version_dirs(catalog: Catalog) -> dict[str, tuple[str, int]]:
    """The directory of each live version's feature entries -> (name, version): whose lease guards its files."""
    return {f"features/{safe_name(name)}/v{row.version}": (name, row.version)
            for name in catalog.names() for row in catalog.versions(name)}


def _drop_superseded(catalog: Catalog, before: int, report: GcReport,
                     delete_file: Callable[[str, list[str]], None]) -> None:
    if report.dry_run:
        rows: list[BarEntry | FeatureEntry] = [*catalog.all_bar_entries(), *catalog.all_feature_entries()]
        old = [e for e in rows if e.superseded_at is not None and e.superseded_at <= before]
    else:
        bars, features = catalog.drop_superseded(before)  # rows first: no reader finds a row without its file
        old = [*bars, *features]
    # A bar snapshot shares its base and segment files with the snapshots appended to it: a file goes only when
    # no remaining row refers to it.
    dropped = {e.id for e in old if isinstance(e, BarEntry)}, {e.id for e in old if isinstance(e, FeatureEntry)}
    if report.dry_run:
        keep = {p for e in catalog.all_bar_entries() if e.id not in dropped[0] for p in entry_paths(e)} | {
            e.path for e in catalog.all_feature_entries() if e.id not in dropped[1]}
    else:
        keep = catalog.referenced_paths()
    for path in dict.fromkeys(p for e in old for p in entry_paths(e)):
        if path not in keep:
            delete_file(path, report.superseded)


@dataclass(frozen=True)
class _Broken:
    kind: str  # cache, bars, features, history
    path: str
    problem: str
    entry: CacheEntry | BarEntry | FeatureEntry | HistoryArchive

    def as_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "path": self.path, "problem": self.problem}


def _check(root: Path, catalog: Catalog, cache: ComputeCache) -> tuple[int, list[_Broken]]:
    """Entries checked and the broken ones."""
    checked = 0
    broken: list[_Broken] = []
    for entry in catalog.cache_entries():
        checked += 1
        try:
            cache.check(entry)
        except CacheCorruptionError as exc:
            broken.append(_Broken("cache", entry.path, str(exc), entry))
    storage = cache.storage
    seen: dict[str, str | None] = {}  # compacted entries share a file: checked once
    reader = PartReader(storage)  # segment files are shared by snapshots: each decoded once
    for bar in catalog.all_bar_entries():
        checked += 1
        what = check_bars(storage, bar, reader)
        if what is not None:
            broken.append(_Broken("bars", bar.path, what, bar))
    for feat in catalog.all_feature_entries():
        checked += 1
        what = seen[feat.path] if feat.path in seen else seen.setdefault(feat.path, _check_features(storage, feat))
        if what is not None:
            broken.append(_Broken("features", feat.path, what, feat))
    for archive in catalog.history_archives():
        checked += 1
        what = check_file(storage, archive.path, archive.size, archive.file_hash)
        if what is not None:
            broken.append(_Broken("history", archive.path, what, archive))
    return checked, broken


def check_bars(storage: Storage, bar: BarEntry, reader: PartReader | None = None) -> str | None:
    """What is wrong with ``bar``'s files (``reader``: shared by the checks of one verify run, so a segment
    file that many snapshots list is parsed once)."""
    if bar.parts is not None:  # a base and appended segments: each part against its own row count and hash
        parts = parts_of(bar)
        if sum(p.n_rows for p in parts) != bar.n_rows or chained_hash(parts) != bar.content_hash:
            return "its parts do not add up to the snapshot the catalog records"
        for part in parts:
            try:
                df = (reader or PartReader(storage)).part(part)
            except (*_UNREADABLE, pa.ArrowException, CacheCorruptionError) as exc:
                return f"unreadable part {part.path}: {exc}"
            if df.height != part.n_rows:
                return f"part {part.path}: {df.height} rows, the catalog says {part.n_rows}"
            if content_hash(df) != part.content_hash:
                return f"part {part.path} (rows from {part.offset}) does not match its hash"
        return None
    try:
        df = _read(storage, bar.path)
    except _UNREADABLE as exc:
        return f"unreadable: {exc}"
    if df.height != bar.n_rows:
        return f"{df.height} rows, the catalog says {bar.n_rows}"
    return None if content_hash(df) == bar.content_hash else "content does not match its hash"


def _read(storage: Storage, path: str) -> pl.DataFrame:
    local = storage.local_path(path)
    return pl.read_parquet(local if local is not None else io.BytesIO(storage.read(path)))


def _check_features(storage: Storage, feat: FeatureEntry) -> str | None:
    what = check_file(storage, feat.path, feat.size, feat.file_hash)
    if what is not None or feat.file_hash is not None:
        return what
    try:  # recorded before catalogs kept a hash: decode it all, the best check left
        rows = _read(storage, feat.path).height
    except _UNREADABLE as exc:
        return f"unreadable: {exc}"
    return None if rows == feat.n_rows else f"{rows} rows, the catalog says {feat.n_rows}"


def verify(root: Path, catalog: Catalog, cache: ComputeCache, *, repair: bool = False,
           feature_sets: Sequence[FeatureSet] = ()) -> VerifyReport:
    """Check every entry: its file exists and matches the catalog (cache entries, feature entries and history
    archives: size and xxh3-128 of the bytes; bar snapshots: row count and content hash; feature entries
    recorded before the catalog kept their hash: decoded, row count).

    ``repair``: a broken feature entry is recomputed from the bar snapshot it was computed from (the same
    rows; from the symbol's current bars when that snapshot is gone), which needs its definition among
    ``feature_sets`` (definitions with Python code cannot be rebuilt from the catalog): without it the entry is
    dropped. A broken bar snapshot is replaced by a copy of the newest older intact one (later bars are lost:
    re-ingest them), or dropped when there is none (the symbol is lost). A broken cached result is dropped (it
    is recomputed on next use); a broken history archive is left alone (its rows exist nowhere else).
    """
    checked, broken = _check(root, catalog, cache)
    report = VerifyReport(checked, [b.as_dict() for b in broken], repair)
    if not repair or not broken:
        return report
    report.found = report.problems
    _Repair(root, catalog, cache, feature_sets, report).run(broken)
    report.checked, left = _check(root, catalog, cache)
    report.problems = [b.as_dict() for b in left]
    return report


class _Repair:
    def __init__(self, root: Path, catalog: Catalog, cache: ComputeCache, feature_sets: Sequence[FeatureSet],
                 report: VerifyReport) -> None:
        self.root, self.catalog, self.cache, self.report = root, catalog, cache, report
        self.storage = cache.storage
        self.defs: dict[tuple[str, str], FeatureSet] = {(fs.name, fingerprint(fs)): fs for fs in feature_sets}

    def run(self, broken: list[_Broken]) -> None:
        bad_bars = {b.entry.id for b in broken if isinstance(b.entry, BarEntry)}
        for b in broken:
            if isinstance(b.entry, CacheEntry):
                done = self.cache._delete([b.entry])
                (self.report.dropped if done else self.report.unrepairable).append(
                    {"kind": "cache", "path": b.path, "symbol": b.entry.symbol,
                     "action": "dropped: recomputed on next use" if done else "in use by another process"})
            elif isinstance(b.entry, HistoryArchive):
                self.report.unrepairable.append({"kind": "history", "path": b.path, "symbol": "",
                                                 "action": "left alone: its rows exist nowhere else"})
        # Superseded snapshots first: a live one falls back to the newest older snapshot still intact.
        bars = sorted((b.entry for b in broken if isinstance(b.entry, BarEntry)),
                      key=lambda e: e.superseded_at is None)
        for bar in bars:
            self._bars(bar, bad_bars)
        for b in broken:
            if isinstance(b.entry, FeatureEntry):
                self._features(b.entry)

    def _note(self, bucket: list[dict[str, str]], kind: str, path: str, symbol: str, action: str) -> None:
        bucket.append({"kind": kind, "path": path, "symbol": symbol, "action": action})

    def _drop(self, table: str, entry: BarEntry | FeatureEntry) -> None:
        self.catalog.drop_rows(table, [entry.id])  # the row first: a reader never finds a row without its file
        shared = isinstance(entry, BarEntry) and entry.parts is not None
        for path in entry_paths(entry):
            self._release(path, shared)

    def _release(self, path: str, shared: bool = False) -> None:
        """Delete ``path`` unless a row still points to it (a compacted file's other entries, or a base or segment
        file other bar snapshots still list)."""
        if not (shared or _compact.is_compacted(path)) or path not in self.catalog.referenced_paths():
            self.storage.delete(path)

    def _bars(self, bar: BarEntry, bad: set[int]) -> None:
        history = self.catalog.bar_history(bar.symbol, 0)
        if bar.superseded_at is not None:
            newer = [e for e in history if e.id > bar.id]
            if newer and not bar.appended_only:
                # Keep the restatement on record: backfill compares snapshots through this chain.
                self.catalog.mark_bars_restated(newer[0].id)
            self._drop("bar_entries", bar)
            self._note(self.report.dropped, "bars", bar.path, bar.symbol, "dropped a superseded bar snapshot")
            return
        older = [e for e in history if e.id < bar.id and e.id not in bad]
        if not older:
            self._drop("bar_entries", bar)
            self._note(self.report.dropped, "bars", bar.path, bar.symbol,
                       "dropped: no intact older snapshot, the symbol's bars are lost (re-ingest them)")
            return
        prev = older[-1]
        df = read_bars(self.storage, [prev])
        assert df is not None
        path = write_entry(self.storage, f"bars/{encode_symbol(bar.symbol)}", df)
        # Not appended-only: the next backfill recomputes the symbol in full from these bars (one file now).
        self.catalog.commit_bars(prev._replace(path=path, appended_only=False, restated_rows=bar.n_rows,
                                               content_hash=content_hash(df), parts=None),
                                 expected_live_id=bar.id)
        self._drop("bar_entries", bar)
        self._note(self.report.repaired, "bars", bar.path, bar.symbol,
                   f"fell back to the older snapshot of {prev.n_rows} bars up to {_iso(prev.last_ts)};"
                   f" bars after it are lost (re-ingest them)")

    def _features(self, feat: FeatureEntry) -> None:
        fs = self._definition(feat)
        if fs is None:
            self._drop("feature_entries", feat)
            self._note(self.report.dropped, "features", feat.path, feat.symbol,
                       f"dropped: the definition of {feat.feature_set}@{feat.version} is not available (Python code"
                       " cannot be rebuilt from the catalog); pass it to repair, or backfill it again")
            return
        source = {e.id: e for e in self.catalog.bar_history(feat.symbol, 0)}.get(feat.bars_entry_id)
        if source is not None and check_bars(self.storage, source) is None and self._rebuild(fs, feat, source):
            self._note(self.report.repaired, "features", feat.path, feat.symbol,
                       "recomputed from the bar snapshot it was computed from")
            return
        if feat.superseded_at is None and self._recompute(fs, feat):
            self._note(self.report.repaired, "features", feat.path, feat.symbol,
                       "recomputed in full from the symbol's current bars (its snapshot is gone)")
            return
        self._drop("feature_entries", feat)
        self._note(self.report.dropped, "features", feat.path, feat.symbol,
                   "dropped: the bars it was computed from are gone")

    def _definition(self, feat: FeatureEntry) -> FeatureSet | None:
        rows = [r for r in self.catalog.versions(feat.feature_set) if r.version == feat.version]
        return self.defs.get((feat.feature_set, rows[0].fingerprint)) if rows else None

    def _rebuild(self, fs: FeatureSet, feat: FeatureEntry, source: BarEntry) -> bool:
        """The same rows again, into a new file the entry then points at (recorded_at unchanged: as_known_at
        replays stay as they were). False when the recomputed rows are not the entry's."""
        bars = read_bars(self.storage, [source])
        assert bars is not None
        epochs = pl.col("ts").dt.epoch("us")
        part = compute_frame(fs.features, bars).filter(epochs.is_between(feat.first_ts, feat.last_ts))
        if part.height != feat.n_rows:
            return False
        directory = feat.path.rsplit("/", 1)[0]
        if _compact.is_compacted(feat.path):  # out of the shared file, into one of its own
            directory = f"{directory.rsplit('/', 1)[0]}/{encode_symbol(feat.symbol)}"
        path, size, digest = put_entry(self.storage, directory, part)
        self.catalog.replace_feature_file(feat.id, path, size, digest)
        self._release(feat.path)
        return True

    def _recompute(self, fs: FeatureSet, feat: FeatureEntry) -> bool:
        """A full recompute of the symbol from its live bars, superseding its live entries (as a restatement
        does); then the broken row goes."""
        live_bars = self.catalog.live_bars([feat.symbol])
        if not live_bars:
            return False
        live = self.catalog.feature_entries(feat.feature_set, feat.version, [feat.symbol])
        result = _backfill.BackfillReport(fs.name, feat.version)
        _backfill._run(self.storage, self.catalog, fs, feat.version, [_backfill._Plan(live_bars[0], live, True, None)],
                       None, None, result, None, None)
        if not result.full:
            return False
        self._drop("feature_entries", feat)
        return True


def _iso(us: int) -> str:
    return datetime.fromtimestamp(us / 1e6, UTC).isoformat()

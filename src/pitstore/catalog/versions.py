"""Feature-set versions: what each one holds (``pitstore versions list``), retiring old ones (``pitstore versions
cleanup``, ``gc --max-versions``: one implementation) and the reader leases that keep a version from being
deleted under a read.

Leases: a reader of ``name@v`` holds a shared ``flock`` on ``<root>/.locks/versions/name@v.lock`` while it lists
and reads the version's entries (:func:`reading`: every offline read does, and ``Store.hold_version`` for a whole
block of reads). A cleanup takes that lock exclusively without waiting: a version whose lease is held is left
alone (reported busy) and retired by a later run. The kernel drops the lock of a process that dies, so a killed
reader never pins a version. A reader that waited for a cleanup finds the version retired and raises
VersionNotFoundError, never an empty answer that looks live.

Team mode (a PostgreSQL catalog): the processes of one store are on many machines, each with a root of its own,
so the lease is a session-level advisory lock in the catalog instead (:meth:`AdvisoryLocks.shared
<pitstore.catalog.postgres.AdvisoryLocks.shared>`, the cleanup's a try of the exclusive one), of the same key on
every machine; the server drops a dead reader's session and its locks with it.

Order of a retirement, under the exclusive lease: one catalog transaction retires the version and deletes every
entry row of it, then its files are unlinked. A crash in between leaves files no row refers to, which gc's orphan
sweep removes; never a row without its file (what a reader would see as damaged data).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pitstore.cache.core import LOCK_DIR
from pitstore.catalog import shared_locks
from pitstore.catalog.base import Catalog, FeatureEntry
from pitstore.errors import InvalidInputError, PitstoreError, VersionNotFoundError
from pitstore.features.registry import VersionInfo
from pitstore.storage import Storage, as_storage

if TYPE_CHECKING:
    from pitstore.online.serving import Serving

__all__ = ["CleanupReport", "VersionSummary", "cleanup", "ensure_live", "lease_path", "reading", "summaries"]

LEASE_DIR = "versions"


@dataclass(frozen=True)
class VersionSummary(VersionInfo):
    """A registered version with what the store holds of it (``Store.versions``, ``pitstore versions list``)."""

    entries: int  # catalog rows, live and superseded: what a cleanup deletes
    live_entries: int
    rows: int  # feature rows in the live entries
    bytes: int  # on disk, every entry's file
    symbols: int  # symbols with live rows
    online: bool | None  # the online tier holds rows of it (None: it could not be asked)
    history: bool | None  # the history tier or its Parquet archives hold rows of it (None: could not be asked)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "fingerprint": self.fingerprint,
                "created_at": self.created_at.isoformat(), "kind": self.definition.get("kind", "computed"),
                "timeframe": self.definition.get("timeframe"), "columns": list(self.columns),
                "entries": self.entries, "live_entries": self.live_entries, "rows": self.rows, "bytes": self.bytes,
                "symbols": self.symbols, "online": self.online, "history": self.history}


@dataclass
class CleanupReport:
    """What a cleanup retired (or, with ``dry_run``, would retire)."""

    dry_run: bool
    max_versions: int
    kept: list[str] = field(default_factory=list)  # "name@v": the newest max_versions with stored entries
    retired: list[str] = field(default_factory=list)  # "name@v": no longer listed or readable
    busy: list[str] = field(default_factory=list)  # "name@v": beyond max_versions, but a reader holds its lease
    files: list[str] = field(default_factory=list)  # entry files deleted
    bytes_freed: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"dry_run": self.dry_run, "max_versions": self.max_versions, "kept": self.kept,
                "retired": self.retired, "busy": self.busy, "files": self.files, "bytes_freed": self.bytes_freed}


def lease_path(root: Path, name: str, version: int) -> Path:
    # Feature-set names are identifiers (registry._REF): safe as a file name as they are.
    return root / LOCK_DIR / LEASE_DIR / f"{name}@{version}.lock"


def _open(path: Path, *, create: bool) -> int | None:
    """A descriptor of the lease file; None when it does not exist (and ``create`` is False) or cannot be made
    (a read-only store: nobody can delete from it through this process either)."""
    try:
        return os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        if not create:
            return None
    except PermissionError:
        return None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_RDONLY | os.O_CREAT, 0o644)
    except PermissionError:
        return None


def not_found(catalog: Catalog, name: str, version: int) -> VersionNotFoundError:
    live = ", ".join(str(r.version) for r in catalog.versions(name))
    return VersionNotFoundError(f"feature set {name!r} has no version {version}; versions: {live or 'none'}")


def ensure_live(catalog: Catalog, name: str, version: int) -> None:
    """VersionNotFoundError when ``name@version`` is retired. Under a lease: a cleanup that ran just before it
    dropped the rows, and no rows must not read as a live version without data."""
    if version not in {r.version for r in catalog.versions(name)}:
        raise not_found(catalog, name, version)


@contextmanager
def reading(root: Path, catalog: Catalog, name: str, version: int, *, check_live: bool = True) -> Iterator[None]:
    """Hold a shared lease on ``name@version`` inside the block: no cleanup deletes its entries meanwhile.
    Raises VersionNotFoundError when it was retired before the lease was held. ``check_live=False``: the caller
    calls :func:`ensure_live` itself when it finds no entries (rows and retirement go in one transaction, so
    entries listed under the lease belong to a live version): one catalog query less per read."""
    team = shared_locks(catalog, LEASE_DIR)
    if team is not None:  # taking an advisory lock writes nothing: a read-only team reader holds one too
        with team.shared(f"{name}@{version}"):
            if check_live:
                ensure_live(catalog, name, version)
            yield
        return
    # A read-only store writes nothing, lease files included: it takes a lease only where one exists.
    fd = _open(lease_path(root, name, version), create=catalog.mode == "rw")
    try:
        if fd is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)  # waits only while a cleanup retires this very version (short)
        if check_live:
            ensure_live(catalog, name, version)
        yield
    finally:
        if fd is not None:
            os.close(fd)  # closing releases the flock


@contextmanager
def _exclusive(root: Path, catalog: Catalog, name: str, version: int, *, dry_run: bool) -> Iterator[bool]:
    """Hold ``name@version``'s lease exclusively, without waiting; yields False when a reader holds it. A dry
    run only tests it (and creates no lease file)."""
    team = shared_locks(catalog, LEASE_DIR)
    if team is not None:
        with team.hold(f"{name}@{version}", blocking=False) as holding:
            if not dry_run:
                yield holding
                return
        yield holding
        return
    fd = _open(lease_path(root, name, version), create=not dry_run)
    if fd is None:
        yield True  # no lease file: no reader ever held one (a dry run), or a store we cannot lock
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            yield False
            return
        if dry_run:
            fcntl.flock(fd, fcntl.LOCK_UN)
        yield True
    finally:
        os.close(fd)


def _size(storage: Storage, e: FeatureEntry) -> int:
    return e.size if e.size is not None else storage.size(e.path) or 0


def cleanup(root: Path, catalog: Catalog, *, max_versions: int, names: Sequence[str] | None = None,
            dry_run: bool = False, entries: Sequence[FeatureEntry] | None = None,
            storage: Storage | None = None) -> CleanupReport:
    """Retire the versions of each feature set in ``names`` (all when None) beyond the newest ``max_versions``
    that have stored entries, with their files. Rows left of a version already retired (by a run that crashed,
    or written by a backfill that raced a retirement) are always removed. ``entries``: the catalog's feature
    entries when the caller has them already (gc). ``storage``: where the files are (default: under ``root``)."""
    data = storage if storage is not None else as_storage(root)
    if max_versions < 1:
        raise InvalidInputError(f"max versions must be >= 1, got {max_versions}")
    report = CleanupReport(dry_run, max_versions)
    by_version: dict[tuple[str, int], list[FeatureEntry]] = {}
    for e in catalog.all_feature_entries() if entries is None else entries:
        by_version.setdefault((e.feature_set, e.version), []).append(e)
    chosen = sorted({n for n, _ in by_version}) if names is None else list(names)
    for name in chosen:
        live = {r.version for r in catalog.versions(name)}
        stored = sorted(v for n, v in by_version if n == name)
        keep = [v for v in stored if v in live][-max_versions:]
        report.kept.extend(f"{name}@{v}" for v in keep)
        for v in stored:
            if v not in keep:
                _retire(root, data, catalog, name, v, by_version[(name, v)], report)
    return report


def _retire(root: Path, storage: Storage, catalog: Catalog, name: str, version: int, rows: list[FeatureEntry],
            report: CleanupReport) -> None:
    label = f"{name}@{version}"
    with _exclusive(root, catalog, name, version, dry_run=report.dry_run) as holding:
        if not holding:
            report.busy.append(label)
            return
        if not report.dry_run:
            # Rows first, in one transaction with the retirement: a crash after it leaves unreferenced files
            # (gc's orphan sweep removes them), never a row without its file.
            catalog.retire_versions([(name, version)], drop_entries=True)
        report.retired.append(label)
        for e in {e.path: e for e in rows}.values():  # compacted entries share a file
            if storage.size(e.path) is None:
                continue  # its row was a missing-file row: nothing to free
            report.files.append(e.path)
            report.bytes_freed += _size(storage, e)
            if not report.dry_run:
                storage.delete(e.path)


def summaries(data: Storage | Path, catalog: Catalog, infos: Sequence[VersionInfo],
              tiers: Callable[[], Serving] | None) -> list[VersionSummary]:
    """``infos`` (versions of one feature set) with what the store holds of each. ``tiers`` opens the online and
    history tiers to ask (None, or failing to open: not asked, reported as None)."""
    if not infos:
        return []
    serving = None
    with suppress(PitstoreError):  # an unreachable online tier: the listing still says what the offline tier holds
        serving = tiers() if tiers is not None else None
    storage = as_storage(data)
    name = infos[0].name
    rows = [e for e in catalog.all_feature_entries() if e.feature_set == name]
    out = []
    for info in infos:
        mine = [e for e in rows if e.version == info.version]
        live = [e for e in mine if e.superseded_at is None]
        table = f"{name}@{info.version}"
        out.append(VersionSummary(
            info.name, info.version, info.fingerprint, info.created_at, info.definition,
            entries=len(mine), live_entries=len(live), rows=sum(e.n_rows for e in live),
            bytes=sum(_size(storage, e) for e in {e.path: e for e in mine}.values()),  # a compacted file once
            symbols=len({e.symbol for e in live}),
            online=_online(serving, table), history=_history(catalog, serving, table),
        ))
    return out


def _online(serving: Serving | None, table: str) -> bool | None:
    if serving is None:
        return None
    try:
        return serving.online.columns(table) is not None
    except PitstoreError:  # unreachable: say so rather than "no"
        return None


def _history(catalog: Catalog, serving: Serving | None, table: str) -> bool | None:
    if catalog.history_archives(table):
        return True
    if serving is None:
        return None
    if serving.history is None:
        return False  # no history tier configured, and no archives of one
    try:
        return serving.history.db.columns(table) is not None
    except PitstoreError:
        return None

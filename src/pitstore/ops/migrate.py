"""Move a store between modes (``pitstore migrate``): embedded (SQLite catalog, files under the root) to team mode
(PostgreSQL catalog, data on S3 or a shared disk) and back, verified entry by entry.

The target becomes the same store: catalog rows are copied as they are (ids, ``recorded_at``/``superseded_at``,
version numbers and fingerprints, cache statistics, the retention horizon, the store id that keys its history-tier
rows and Redis namespace), every file under its same relative path. Each source file is checked against its row
(size and xxh3-128, or a bar snapshot's row count and content hash) before it is copied, and the copy on the target
against the same size and hash before the row is committed there: a broken source file is reported and neither it
nor its row is copied. The target is marked (``store_meta`` key ``migration``) before the first row, so a rerun of
an interrupted migration finds its own work: rows already there and equal are kept, changed ones replaced, rows the
source no longer has removed. A target holding anything else is refused (:class:`ConflictError`), and so is a
finished one that differs from the source (either was written since). At the end every
table is compared row by row with the source and the target is verified (every file's size and hash).

The source should not be written meanwhile: a change made during the copy shows up as a difference at the end (run
it again to pick it up).
"""

from __future__ import annotations

import io
import json
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from pitstore.catalog.base import TABLES, BarEntry, CacheEntry, FeatureEntry, HistoryArchive, table_columns
from pitstore.config import Settings
from pitstore.datahash import file_hash
from pitstore.errors import ConfigError, ConflictError
from pitstore.offline.entries import check_file, content_hash
from pitstore.ops.housekeeping import check_bars
from pitstore.sources.segments import entry_paths
from pitstore.store import Store

__all__ = ["MARKER", "MigrationReport", "migrate"]

MARKER = "migration"  # the target's store_meta key: {"store_id", "source", "state": "copying" | "done", "at"}
# Tables whose rows name a file (copied and checked before the row is committed), in an order where what a row
# refers to comes first; then the tables of plain rows.
_FILE_TABLES: dict[str, type[BarEntry] | type[FeatureEntry] | type[CacheEntry] | type[HistoryArchive]] = {
    "bar_entries": BarEntry, "feature_entries": FeatureEntry, "cache_entries": CacheEntry,
    "history_archives": HistoryArchive}
_PLAIN_TABLES = ("feature_set_versions", "retired_versions", "cache_stats", "history_synced", "online_requests",
                 "store_meta")
_BATCH_ROWS = 256  # rows committed per transaction (after each of their files is checked on the target)
_BATCH_BYTES = 64 << 20
_COPY_THREADS = 8  # files in flight at once (object stores answer each request in milliseconds)
_KIND = {"bar_entries": "bars", "feature_entries": "features", "cache_entries": "cache",
         "history_archives": "history"}

Progress = Callable[[str, int, int], None]  # (kind, files done, files of that kind)


@dataclass
class MigrationReport:
    """What a migration copied, found broken and checked."""

    source: str  # where the catalog and the data were (no passwords)
    target: str
    store_id: str = ""
    resumed: bool = False  # the target held an earlier, interrupted run of this migration
    copied: dict[str, int] = field(default_factory=dict)  # files copied by kind (bars, features, cache, history)
    kept: dict[str, int] = field(default_factory=dict)  # rows already on the target and equal (a resumed run)
    removed: dict[str, int] = field(default_factory=dict)  # target rows of an earlier run the source no longer has
    rows: dict[str, int] = field(default_factory=dict)  # rows of each table on the target at the end
    bytes_copied: int = 0
    corrupt: list[dict[str, str]] = field(default_factory=list)  # source files not copied: kind, path, problem
    differences: list[str] = field(default_factory=list)  # tables whose rows differ at the end, and how
    verify_problems: list[dict[str, str]] = field(default_factory=list)  # target files failing verify
    checked: int = 0  # entries verify checked on the target
    seconds: float = 0.0

    @property
    def entries(self) -> int:
        """Entries (rows naming a file) on the target."""
        return sum(self.rows.get(t, 0) for t in _FILE_TABLES)

    @property
    def ok(self) -> bool:
        """Everything is on the target, identical and intact."""
        return not (self.corrupt or self.differences or self.verify_problems)

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ok": self.ok, "entries": self.entries}


def migrate(source: Store | Settings, target: Store | Settings, *, progress: Progress | None = None) -> MigrationReport:
    """Copy the store ``source`` to ``target`` (settings or open stores: e.g. an embedded root to a
    ``catalog_url`` + ``data_url`` team store, or back) and verify it; see the module's description.

    Raises ConflictError when the target holds another store (or this one, changed since a finished migration),
    ConfigError when source and target are the same catalog. A finished target is only verified again."""
    t0 = time.perf_counter()
    src = source if isinstance(source, Store) else Store(source)
    try:
        dst = target if isinstance(target, Store) else Store(target)
        try:
            report = _Migration(src, dst, progress).run()
        finally:
            if not isinstance(target, Store):
                dst.close()
    finally:
        if not isinstance(source, Store):
            src.close()
    report.seconds = time.perf_counter() - t0
    return report


def _where(store: Store) -> str:
    return f"catalog {store.settings.catalog_location}, data {store.storage.url}"


class _Migration:
    def __init__(self, src: Store, dst: Store, progress: Progress | None) -> None:
        if src.settings.catalog_location == dst.settings.catalog_location:
            raise ConfigError(f"source and target are the same catalog ({src.settings.catalog_location})")
        self.src, self.dst, self.progress = src, dst, progress
        self.report = MigrationReport(_where(src), _where(dst))
        # The same data location (e.g. a shared disk kept as is): nothing to copy, only to check.
        self.same_data = src.storage.url == dst.storage.url
        # Files many rows share (a compacted feature file, a bar snapshot's base and segments): copied once.
        self._copied: dict[str, int | str] = {}
        self._copied_lock = threading.Lock()

    def run(self) -> MigrationReport:
        store_id = self.src.catalog.store_id()
        self.report.store_id = store_id
        marker = self._claim(store_id)
        skipped: dict[str, set[tuple[Any, ...]]] = {}
        for table in ("feature_set_versions", "retired_versions"):
            self._plain(table, marker)
        for table, kind in _FILE_TABLES.items():
            skipped[table] = self._files(table, kind, marker)
        for table in _PLAIN_TABLES[2:]:
            self._plain(table, marker)
        self._compare(skipped)
        verified = self.dst.verify()
        self.report.checked, self.report.verify_problems = verified.checked, verified.problems
        if self.report.ok:
            self._mark(store_id, "done")
        return self.report

    # --- the target's identity -----------------------------------------------------------------------------

    def _claim(self, store_id: str) -> str:
        """The target's state ("fresh", "copying" or "done"), after refusing one that holds another store; a fresh
        target gets the store id and a "copying" marker before any other row."""
        meta = dict(self.dst.catalog.dump_rows("store_meta"))
        held = {t: len(self.dst.catalog.dump_rows(t)) for t in TABLES if t != "store_meta"}
        if MARKER in meta:
            mark = json.loads(meta[MARKER])
            if meta.get("store_id") != store_id:
                raise ConflictError(f"the target ({self.report.target}) holds store {meta.get('store_id')}, migrated"
                                    f" from {mark.get('source')}; this source is store {store_id}")
            self.report.resumed = mark.get("state") == "copying"
            return str(mark.get("state"))
        if any(held.values()) or set(meta) - {"replay_from"}:
            what = meta.get("store_id", "no store id")
            raise ConflictError(f"the target ({self.report.target}) already holds a store ({what};"
                                f" {sum(held.values()):,} catalog rows); migrate into an empty catalog")
        # One transaction: a target with the store id but no marker would be refused by the rerun.
        self.dst.catalog.load_rows("store_meta", [("store_id", store_id), self._marker(store_id, "copying")])
        return "fresh"

    def _marker(self, store_id: str, state: str) -> tuple[str, str]:
        return MARKER, json.dumps({"store_id": store_id, "source": self.report.source, "state": state,
                                   "at": datetime.now(UTC).isoformat()})

    def _mark(self, store_id: str, state: str) -> None:
        self.dst.catalog.load_rows("store_meta", [self._marker(store_id, state)])

    # --- rows ----------------------------------------------------------------------------------------------

    def _diff(self, table: str, marker: str) -> tuple[list[tuple[Any, ...]], dict[tuple[Any, ...], tuple[Any, ...]],
                                                      list[tuple[Any, ...]]]:
        """(source rows the target lacks or holds differently, the target's rows by key, target keys to remove)."""
        cols, key = table_columns(table)
        at = [cols.index(c) for c in key]
        rows = [r for r in self.src.catalog.dump_rows(table) if not (table == "store_meta" and r[0] == MARKER)]
        have = {tuple(r[i] for i in at): tuple(r) for r in self.dst.catalog.dump_rows(table)}
        if table == "store_meta":
            have.pop((MARKER,), None)
        mine = {tuple(r[i] for i in at) for r in rows}
        extra = [k for k in have if k not in mine]
        todo = [r for r in rows if have.get(tuple(r[i] for i in at)) != tuple(r)]
        if (extra or todo) and marker == "done":
            # A finished migration is only checked again: one side was written since (the team already works on
            # the target, or the source moved on), and copying either way could lose the other's writes.
            n = len(extra) + len(todo)
            raise ConflictError(f"the target ({self.report.target}) differs from the source in {n:,} {table} rows:"
                                " one of them was written after the migration finished; migrate into an empty"
                                " catalog")
        self.report.kept[table] = len(rows) - len(todo)
        self.report.removed[table] = len(extra)
        return todo, have, extra

    def _plain(self, table: str, marker: str) -> None:
        todo, _, extra = self._diff(table, marker)
        if todo or extra:
            self.dst.catalog.load_rows(table, todo, delete=extra)

    def _files(self, table: str, kind: type[Any], marker: str) -> set[tuple[Any, ...]]:
        """Copy the files of ``table``'s rows, then commit the rows in batches; returns the keys left out (their
        source file is broken)."""
        todo, _, extra = self._diff(table, marker)
        name = _KIND[table]
        if extra:  # rows of an earlier run the source has dropped since; their files are left to gc
            self.dst.catalog.load_rows(table, [], delete=extra)
        # Superseded rows first: a batch never holds two live snapshots of a symbol (PostgreSQL's unique index).
        todo.sort(key=lambda r: kind(*r).superseded_at is None if table in ("bar_entries", "feature_entries")
                  else False)
        left_out: set[tuple[Any, ...]] = set()
        done = 0
        with ThreadPoolExecutor(_COPY_THREADS) as pool:
            for batch in _batches(todo, kind):
                ready = []
                for row, outcome in zip(batch, pool.map(lambda r: self._copy(kind(*r)), batch), strict=True):
                    entry = kind(*row)
                    if isinstance(outcome, str):
                        self.report.corrupt.append({"kind": name, "path": entry.path, "problem": outcome})
                        left_out.add(_key(table, row))
                    else:
                        ready.append(row)
                        self.report.bytes_copied += outcome
                if ready:
                    self.dst.catalog.load_rows(table, ready)  # after every file of them is checked on the target
                done += len(batch)
                self.report.copied[name] = self.report.copied.get(name, 0) + len(ready)
                if self.progress is not None:
                    self.progress(name, done, len(todo))
        return left_out

    def _copy(self, entry: BarEntry | FeatureEntry | CacheEntry | HistoryArchive) -> int | str:
        """Bytes copied, or what is wrong (a broken source file, or a copy that does not match)."""
        if isinstance(entry, BarEntry) and entry.parts is not None:
            # A base plus segments: each part is checked by its own rows and hash, on both sides.
            problem = check_bars(self.src.storage, entry)
            if problem is not None:
                return f"source file: {problem}"
            copied = 0
            for path in entry_paths(entry):
                outcome = self._copy_file(path, None)
                if isinstance(outcome, str):
                    return outcome
                copied += outcome
            problem = check_bars(self.dst.storage, entry)
            return copied if problem is None else f"target copy: {problem}"
        return self._copy_file(entry.path, entry)

    def _copy_file(self, path: str, entry: BarEntry | FeatureEntry | CacheEntry | HistoryArchive | None) -> int | str:
        """Copy one file (checked against ``entry``'s row when given); a file copied before counts 0 bytes."""
        with self._copied_lock:
            done = self._copied.get(path)
        if done is not None:
            return done if isinstance(done, str) else 0
        try:
            body = self.src.storage.read(path)
        except FileNotFoundError:
            return "file is missing"
        except OSError as exc:
            return f"unreadable: {exc}"
        problem = _source_problem(entry, body) if entry is not None else None
        if problem is not None:
            return f"source file: {problem}"
        if not self.same_data:
            try:
                self.dst.storage.put(path, body)
            except OSError as exc:
                return f"cannot write the target's copy: {exc}"
        # The target's copy against the size and xxh3 of the bytes just checked (a bar row records a content hash
        # of the decoded table, the bytes checked above against it).
        problem = check_file(self.dst.storage, path, len(body), file_hash(body))
        outcome: int | str = f"target copy: {problem}" if problem is not None else (0 if self.same_data else len(body))
        with self._copied_lock:
            self._copied[path] = outcome
        return outcome

    # --- the end -------------------------------------------------------------------------------------------

    def _compare(self, skipped: dict[str, set[tuple[Any, ...]]]) -> None:
        """Every table row by row, source against target (rows left out for a broken file excepted)."""
        for table in TABLES:
            cols, key = table_columns(table)
            at = [cols.index(c) for c in key]

            def keyed(rows: Iterable[tuple[Any, ...]], at: Sequence[int] = at) -> dict[tuple[Any, ...], Any]:
                return {tuple(r[i] for i in at): tuple(r) for r in rows}

            want = keyed(self.src.catalog.dump_rows(table))
            got = keyed(self.dst.catalog.dump_rows(table))
            if table == "store_meta":
                want.pop((MARKER,), None)
                got.pop((MARKER,), None)
            for k in skipped.get(table, ()):
                want.pop(k, None)
            self.report.rows[table] = len(got)
            missing = [k for k in want if k not in got]
            extra = [k for k in got if k not in want]
            changed = [k for k in want if k in got and want[k] != got[k]]
            if missing or extra or changed:
                self.report.differences.append(
                    f"{table}: {len(missing)} missing, {len(extra)} extra, {len(changed)} different"
                    f" (first: {(missing or extra or changed)[0]!r}); was the source written during the migration?"
                    " run it again")


def _key(table: str, row: tuple[Any, ...]) -> tuple[Any, ...]:
    cols, key = table_columns(table)
    return tuple(row[cols.index(c)] for c in key)


def _batches(rows: list[tuple[Any, ...]], kind: type[Any]) -> Iterable[list[tuple[Any, ...]]]:
    batch: list[tuple[Any, ...]] = []
    size = 0
    for row in rows:
        batch.append(row)
        size += getattr(kind(*row), "size", None) or 0
        if len(batch) >= _BATCH_ROWS or size >= _BATCH_BYTES:
            yield batch
            batch, size = [], 0
    if batch:
        yield batch


def _source_problem(entry: BarEntry | FeatureEntry | CacheEntry | HistoryArchive, body: bytes) -> str | None:
    """What is wrong with a source file's bytes, by what its row records."""
    if isinstance(entry, BarEntry) or (isinstance(entry, FeatureEntry) and entry.file_hash is None):
        try:  # a bar snapshot records its content's hash; an old feature entry only its rows: decode it
            df = pl.read_parquet(io.BytesIO(body))
        except (OSError, pl.exceptions.PolarsError) as exc:
            return f"unreadable: {exc}"
        if df.height != entry.n_rows:
            return f"{df.height} rows, the catalog says {entry.n_rows}"
        if isinstance(entry, BarEntry) and content_hash(df) != entry.content_hash:
            return "content does not match its hash"
        return None
    if entry.size is not None and len(body) != entry.size:
        return f"{len(body)} bytes, the catalog says {entry.size}"
    return None if file_hash(body) == entry.file_hash else "content does not match its hash"

"""The catalog interface that every catalog backend implements, as small protocols by job.

``Catalog`` is their composition: what a store opens. A caller that needs one job is typed against that part
(the compute cache against :class:`CacheIndex`, the feature registry against :class:`VersionRegistry`), so a
test can hand it a smaller fake and a reader can see at a glance what it touches."""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple, Protocol

from pitstore.errors import InvalidInputError

__all__ = [
    "TABLES",
    "AccessStats",
    "BarEntries",
    "BarEntry",
    "CacheEntry",
    "CacheIndex",
    "CacheStatsRow",
    "Catalog",
    "FeatureCommit",
    "FeatureEntries",
    "FeatureEntry",
    "HistoryArchive",
    "HistoryIndex",
    "Housekeeping",
    "VersionRegistry",
    "VersionRow",
    "check_distinct_symbols",
    "commit_what",
    "table_columns",
]


class BarEntry(NamedTuple):
    """The full bar history of one symbol (a snapshot): one immutable Parquet file, or a base file plus appended
    segments (``parts``, see :mod:`pitstore.sources.segments`)."""

    id: int
    symbol: str
    path: str  # relative to the store root
    n_rows: int
    first_ts: int  # microseconds since the epoch, UTC
    last_ts: int
    content_hash: str
    appended_only: bool  # the previous snapshot's bars are unchanged in this one
    restated_rows: int  # bars of the previous snapshot that changed or disappeared
    recorded_at: int
    superseded_at: int | None
    # JSON list of [path, row_group, n_rows, content_hash]: a base file (row group -1) then appended segments
    # (pitstore.sources.segments); None: the whole history is the one file at ``path``.
    parts: str | None = None


class FeatureEntry(NamedTuple):
    """One immutable segment of computed feature rows of one symbol, for one feature-set version."""

    id: int
    feature_set: str
    version: int
    symbol: str
    path: str
    n_rows: int
    first_ts: int
    last_ts: int
    bars_entry_id: int  # the bar snapshot it was computed from
    recorded_at: int
    superseded_at: int | None
    size: int | None = None  # bytes of the file (None: recorded before catalogs kept it)
    file_hash: str | None = None  # xxh3-128 of the file's bytes (see pitstore.datahash.file_hash)


# One commit of :meth:`FeatureEntries.commit_features_batch`: the entry, the ids it supersedes, the live ids expected.
FeatureCommit = tuple[FeatureEntry, Sequence[int], Sequence[int]]


class CacheEntry(NamedTuple):
    """One stored result of ``get_or_compute``: a Parquet file whose size and xxh3-128 the catalog records."""

    key: str  # sha256 hex over symbol, raw range, raw content hash, config and compute fingerprint
    symbol: str
    path: str  # relative to the store root
    size: int  # bytes of the file
    file_hash: str  # xxh3-128 of the file's bytes
    kind: str  # frame family the compute returned: polars, pandas or arrow
    n_rows: int
    first_ts: int | None  # first and last timestamp of the raw input (µs UTC), when it had one
    last_ts: int | None
    compute_seconds: float
    created_at: int  # µs UTC
    last_access: int
    hits: int


class HistoryArchive(NamedTuple):
    """Rows moved out of the PostgreSQL history tier by one tiering run, for one table: one immutable Parquet file
    of every version (symbol, ts, recorded_at, values) with ``ts < cutoff`` that was not archived before."""

    id: int
    table_id: str  # "feature_set@version" of the history tier
    path: str  # relative to the store root
    n_rows: int
    first_ts: int  # smallest and greatest ts in the file, µs UTC
    last_ts: int
    cutoff: int  # the run archived rows with ts < cutoff
    size: int  # bytes of the file
    file_hash: str  # xxh3-128 of the file's bytes
    recorded_at: int  # when the catalog row was committed, µs UTC


class CacheStatsRow(NamedTuple):
    """Counters of the compute cache for one symbol, since the store was created."""

    symbol: str
    hits: int
    misses: int
    compute_seconds: float  # spent computing misses
    saved_seconds: float  # compute time that hits did not spend
    hash_seconds: float  # spent hashing raw inputs for keys
    hash_bytes: int
    corruptions: int  # entries found broken on read, dropped and recomputed


@dataclass(frozen=True)
class VersionRow:
    """One registered version of a feature set, as stored."""

    name: str
    version: int
    fingerprint: str
    definition: str  # canonical JSON of the definition
    created_at: str  # ISO-8601 UTC


class VersionRegistry(Protocol):
    """Feature sets and their versions: the registry."""

    def register_version(self, name: str, fingerprint: str, definition: str) -> VersionRow:
        """Return the version with this fingerprint, creating the next integer version if new (atomic); a
        retired one is live again."""
        ...

    def retire_versions(self, versions: Sequence[tuple[str, int]], *, drop_entries: bool = False) -> None:
        """Retire (name, version) pairs: :meth:`versions` no longer lists them. ``drop_entries``: also delete
        every feature entry row of them, in the same transaction (their files are deleted after it)."""
        ...

    def versions(self, name: str) -> list[VersionRow]:
        """The live (not retired) versions of ``name``, oldest first (empty when unknown)."""
        ...

    def names(self) -> list[str]:
        """Names of every registered feature set."""
        ...


class BarEntries(Protocol):
    """Bar snapshots: one live per symbol, superseded ones kept for ``as_known_at``."""

    def live_bars(self, symbols: Sequence[str] | None = None, as_known_at: int | None = None) -> list[BarEntry]:
        """The bar snapshot of each symbol visible at ``as_known_at`` (now when None)."""
        ...

    def bar_history(self, symbol: str, after_id: int) -> list[BarEntry]:
        """Bar snapshots of ``symbol`` newer than ``after_id``, oldest first."""
        ...

    def commit_bars(self, entry: BarEntry, expected_live_id: int | None) -> BarEntry:
        """Publish a bar snapshot, superseding the live one (ConflictError if it is not ``expected_live_id``)."""
        ...

    def commit_bars_batch(self, items: Sequence[tuple[BarEntry, int | None]]) -> list[BarEntry]:
        """Publish snapshots of distinct symbols (each with the live id it supersedes) in one transaction: all
        of them, or none and ConflictError when any symbol's live snapshot is not the expected one."""
        ...

    def all_bar_entries(self) -> list[BarEntry]:
        """Every bar snapshot, live or superseded, by id."""
        ...

    def mark_bars_restated(self, entry_id: int) -> None:
        """Record that bar snapshot ``entry_id`` does not merely append to its predecessor (one was dropped)."""
        ...


class FeatureEntries(Protocol):
    """Feature entries of feature-set versions, committed optimistically."""

    def feature_entries(
        self, feature_set: str, version: int, symbols: Sequence[str] | None = None, as_known_at: int | None = None
    ) -> list[FeatureEntry]:
        """Feature entries visible at ``as_known_at`` (now when None), by symbol then time."""
        ...

    def commit_features(self, entry: FeatureEntry, *, supersede: Sequence[int], expected_live: Sequence[int]) -> bool:
        """Publish a feature entry unless the symbol's live entries changed meanwhile (then False)."""
        ...

    def commit_features_batch(self, items: Sequence[FeatureCommit]) -> list[int | None]:
        """:meth:`commit_features` of each item (entry, supersede, expected_live), all in ONE transaction: every
        item whose symbol's live entries are still as expected is published (its new id), the others are not
        (None), and a kill leaves all of them or none. Items are of distinct (set, version, symbol)."""
        ...

    def all_feature_entries(self) -> list[FeatureEntry]:
        """Every feature entry, live or superseded, by id."""
        ...

    def replace_feature_file(self, entry_id: int, path: str, size: int, file_hash: str) -> None:
        """Point a feature entry at a rebuilt copy of its file (same rows; ``verify --repair``)."""
        ...

    def repoint_features(self, moves: Sequence[tuple[int, str, str, int, str]]) -> int:
        """In one transaction, point feature entries at the compacted file now holding their rows: each move is
        (entry id, the path it must still have, new path, new size, new xxh3-128). An entry deleted or repointed
        meanwhile is left as it is (its rows in the new file are then unused). Nothing else of a row changes
        (recorded_at, superseded_at: ``as_known_at`` answers stay the same). Returns the entries moved."""
        ...


class CacheIndex(Protocol):
    """The compute cache: its keys' entries and its counters per symbol."""

    def cache_get(self, key: str) -> CacheEntry | None:
        """The entry stored for ``key``, if any."""
        ...

    def cache_put(self, entry: CacheEntry) -> None:
        """Record (or replace) the entry of ``entry.key``."""
        ...

    def cache_drop(self, keys: Sequence[str]) -> int:
        """Delete the rows of ``keys``; returns how many existed."""
        ...

    def cache_entries(self, symbol: str | None = None, accessed_before: int | None = None) -> list[CacheEntry]:
        """Entries of ``symbol`` (all when None), optionally only those last accessed before a time."""
        ...

    def cache_record(self, symbol: str, *, hit_key: str | None = None, hits: int = 0, misses: int = 0,
                     compute_seconds: float = 0.0, saved_seconds: float = 0.0, hash_seconds: float = 0.0,
                     hash_bytes: int = 0, corruptions: int = 0) -> None:
        """Add to the symbol's counters; ``hit_key`` also marks that entry as accessed now."""
        ...

    def cache_stats(self) -> list[CacheStatsRow]:
        """Counters per symbol."""
        ...


class AccessStats(Protocol):
    """How often each symbol is read online (``warm(top=N)``)."""

    def add_requests(self, counts: dict[str, int]) -> None:
        """Add to the count of online reads per symbol."""
        ...

    def top_requested(self, n: int) -> list[str]:
        """The ``n`` symbols read online most often."""
        ...


class HistoryIndex(Protocol):
    """What the catalog knows of the history tier: archives tiering wrote, entries synced into it."""

    def commit_history_archive(self, entry: HistoryArchive) -> HistoryArchive:
        """Record an archive file (already published); returns it with its id and ``recorded_at`` set."""
        ...

    def history_archives(self, table_id: str | None = None) -> list[HistoryArchive]:
        """Archives of ``table_id`` (all when None), by table, then first_ts, then id."""
        ...

    def history_synced(self, table_id: str, entry_ids: Sequence[int]) -> dict[int, int]:
        """Of ``entry_ids``, those whose rows are in the history tier: entry id -> first ts synced."""
        ...

    def mark_history_synced(self, table_id: str, marks: dict[int, int]) -> None:
        """Record entries (id -> first ts synced) as copied into the history tier."""
        ...


class Housekeeping(Protocol):
    """Statistics, garbage collection, retention and maintenance over every table."""

    def counts(self) -> dict[str, int]:
        """Row counts for stats: live and total bar and feature entries, and their rows."""
        ...

    def referenced_paths(self) -> set[str]:
        """Every file path any catalog row refers to (bars, features, cache, history archives; live or
        superseded)."""
        ...

    def drop_rows(self, table: str, ids: Sequence[int]) -> int:
        """Delete rows of ``bar_entries`` or ``feature_entries`` by id (their files are gone or retired)."""
        ...

    def drop_superseded(self, before: int) -> tuple[list[BarEntry], list[FeatureEntry]]:
        """In one transaction: delete every bar snapshot and feature entry superseded at or before ``before``
        (µs), mark the next kept snapshot of a symbol restated where a deleted one was (backfill reads
        restatements off that chain), and record ``before`` as the replay horizon (:meth:`replay_from`; it
        only ever moves forward). Returns the deleted rows: their files are deleted after the commit."""
        ...

    def replay_from(self) -> int | None:
        """The earliest ``as_known_at`` (µs) the catalog still holds every entry for (None: nothing dropped)."""
        ...

    def vacuum(self) -> None:
        """Reclaim space and refresh the query planner's statistics."""
        ...


class Catalog(VersionRegistry, BarEntries, FeatureEntries, CacheIndex, AccessStats, HistoryIndex, Housekeeping,
              Protocol):
    """The whole catalog of a store: every part above, plus how it is open, its identity and its lifetime."""

    mode: str  # how it is open: "rw", or read-only ("ro"; SQLite also "immutable")

    def close(self) -> None: ...

    def store_id(self) -> str:
        """This store's identity, made once and kept: what keeps its rows apart on shared servers."""
        ...

    # --- whole tables (pitstore.ops.migrate) ---------------------------------------------------------------

    def dump_rows(self, table: str) -> list[tuple[Any, ...]]:
        """Every row of ``table`` (a name of :data:`TABLES`), columns as :data:`TABLES` lists them, in primary key
        order: what a migration copies and compares (``appended_only`` as a bool on every backend)."""
        ...

    def load_rows(self, table: str, rows: Sequence[tuple[Any, ...]], *,
                  delete: Sequence[tuple[Any, ...]] = ()) -> None:
        """In one transaction: delete the rows whose primary keys are ``delete``, then insert ``rows`` as given
        (ids included; a row whose key exists is replaced). Id sequences move past the largest id, so later
        commits never reuse one."""
        ...


# Every catalog table: its columns and primary key (the order dump_rows gives and load_rows takes).
TABLES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "feature_set_versions": (("name", "version", "fingerprint", "definition", "created_at"), ("name", "version")),
    "retired_versions": (("name", "version", "retired_at"), ("name", "version")),
    "bar_entries": (BarEntry._fields, ("id",)),
    "feature_entries": (FeatureEntry._fields, ("id",)),
    "cache_entries": (CacheEntry._fields, ("key",)),
    "cache_stats": (CacheStatsRow._fields, ("symbol",)),
    "history_archives": (HistoryArchive._fields, ("id",)),
    "history_synced": (("table_id", "entry_id", "from_ts"), ("table_id", "entry_id")),
    "online_requests": (("symbol", "requests"), ("symbol",)),
    "store_meta": (("key", "value"), ("key",)),
}


def commit_what(items: Sequence[FeatureCommit]) -> str:
    """What a failed :meth:`FeatureEntries.commit_features_batch` was doing, for its error message."""
    return f"commit features of {items[0][0].symbol!r}" if len(items) == 1 else f"commit {len(items)} feature entries"


def table_columns(table: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """(columns, primary key) of a catalog table; ValueError for any other name (never interpolated unchecked)."""
    if table not in TABLES:
        raise ValueError(f"not a catalog table: {table!r}")
    return TABLES[table]


def check_distinct_symbols(items: Sequence[tuple[BarEntry, int | None]]) -> None:
    """A batch of bar snapshots names each symbol once: two would both supersede the same live snapshot (and
    SQLite would keep both live). Every backend's ``commit_bars_batch`` checks this first."""
    counts = Counter(e.symbol for e, _ in items)
    twice = sorted(s for s, n in counts.items() if n > 1)
    if twice:
        shown = ", ".join(repr(s) for s in twice[:5]) + (f" and {len(twice) - 5} more" if len(twice) > 5 else "")
        raise InvalidInputError(f"a batch of bar snapshots names {shown} more than once", column="symbol")

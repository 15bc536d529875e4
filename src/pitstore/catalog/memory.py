"""In-memory catalog: the same answers as the SQLite and PostgreSQL catalogs, kept in this process only.

For tests, examples and throw-away stores (``catalog_url="memory://"``): nothing is written anywhere, and the
rows are gone when the process exits. Instances opened on one name share one state (each is a "process's view"
of it, as two SQLite connections to one file are), so optimistic commits, conflicts and supersede behave as on
a server; every call holds the state's lock, which makes each one a transaction. A state outlives the catalogs
opened on it (until the process ends), as a file or a schema outlives its connections.
"""

from __future__ import annotations

import itertools
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

from pitstore.catalog.base import (
    BarEntry,
    CacheEntry,
    CacheStatsRow,
    FeatureCommit,
    FeatureEntry,
    HistoryArchive,
    VersionRow,
    check_distinct_symbols,
    commit_what,
)
from pitstore.errors import BackendError, ConfigError, ConflictError, ReadOnlyStoreError
from pitstore.rules import commit_time
from pitstore.sources.segments import part_paths

__all__ = ["MemoryCatalog", "memory_state_name"]

_T = TypeVar("_T")
_FAR_FUTURE = 2**62


def memory_state_name(url: str, root: Path) -> str:
    """The state a ``memory://[name]`` catalog URL names for a store at ``root``: the root is part of it, since
    catalog rows hold paths relative to it (two roots never share rows)."""
    parts = urlsplit(url)
    if parts.scheme != "memory" or parts.query or parts.fragment:
        raise ConfigError(f"a memory catalog URL is memory:// or memory://name, got {url!r}")
    return f"{parts.netloc}{parts.path}|{Path(root).absolute()}"


@dataclass
class _State:
    """Every table of one catalog. Ids, like SQLite's AUTOINCREMENT, are never reused."""

    lock: threading.Lock = field(default_factory=threading.Lock)
    versions: dict[tuple[str, int], VersionRow] = field(default_factory=dict)
    retired: set[tuple[str, int]] = field(default_factory=set)
    bars: dict[int, BarEntry] = field(default_factory=dict)  # by id: insertion order is id order
    live_bar: dict[str, int] = field(default_factory=dict)  # symbol -> id of its live snapshot
    features: dict[int, FeatureEntry] = field(default_factory=dict)
    by_symbol: dict[tuple[str, int, str], list[int]] = field(default_factory=dict)  # (set, version, symbol) -> ids
    cache: dict[str, CacheEntry] = field(default_factory=dict)
    stats: dict[str, CacheStatsRow] = field(default_factory=dict)
    archives: dict[int, HistoryArchive] = field(default_factory=dict)
    synced: dict[tuple[str, int], int] = field(default_factory=dict)  # (table_id, entry id) -> first ts synced
    requests: dict[str, int] = field(default_factory=dict)
    ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    replay_from: int | None = None
    store_id: str | None = None
    last_t: int = 0

    def now(self) -> int:
        """µs since the epoch, strictly increasing: two commits never share a time, however close (the lock is
        held), so ``as_known_at=t - 1`` always sees what was live just before a commit at ``t``."""
        self.last_t = commit_time(time.time_ns() // 1000, self.last_t)
        return self.last_t


_STATES: dict[str, _State] = {}
_STATES_LOCK = threading.Lock()


class MemoryCatalog:
    """A catalog in this process's memory. ``name``: instances of one name share their rows (None: a private
    state of this instance's own)."""

    def __init__(self, name: str | None = None, *, read_only: bool = False) -> None:
        self.name = name
        self.read_only = read_only
        self.mode = "ro" if read_only else "rw"
        self._closed = False
        if name is None:
            if read_only:
                raise ReadOnlyStoreError("memory://", "create a catalog (there is none to read)")
            self._state = _State()
            return
        with _STATES_LOCK:
            state = _STATES.get(name)
            if state is None:
                if read_only:  # creating it would be a write
                    raise ReadOnlyStoreError(f"memory catalog {name!r}", "create a catalog (there is none to read)")
                state = _STATES[name] = _State()
        self._state = state

    def __repr__(self) -> str:
        return f"MemoryCatalog({self.name!r})"

    # --- plumbing --------------------------------------------------------------------------------------

    def _read(self, op: Callable[[_State], _T]) -> _T:
        with self._state.lock:
            self._check_open()
            return op(self._state)

    def _write(self, what: str, op: Callable[[_State], _T]) -> _T:
        """``op`` under the state's lock: all of it or (when it raises before changing anything) none of it."""
        if self.read_only:  # the last line of defence, as in the other backends
            raise ReadOnlyStoreError(f"memory catalog {self.name!r}", what)
        with self._state.lock:
            self._check_open()
            return op(self._state)

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError(f"{self!r} is closed")

    # --- registry --------------------------------------------------------------------------------------

    def register_version(self, name: str, fingerprint: str, definition: str) -> VersionRow:
        def op(s: _State) -> VersionRow:
            for row in s.versions.values():
                if row.name == name and row.fingerprint == fingerprint:
                    s.retired.discard((name, row.version))
                    return row
            last = max((v for n, v in s.versions if n == name), default=0)
            row = VersionRow(name, last + 1, fingerprint, definition, datetime.now(UTC).isoformat())
            s.versions[(name, row.version)] = row
            return row

        return self._write(f"register {name!r}", op)

    def retire_versions(self, versions: Sequence[tuple[str, int]], *, drop_entries: bool = False) -> None:
        def op(s: _State) -> None:
            s.retired.update((name, v) for name, v in versions)
            if drop_entries:
                gone = set(versions)
                for key in [k for k in s.by_symbol if (k[0], k[1]) in gone]:
                    for i in s.by_symbol.pop(key):
                        del s.features[i]

        self._write("retire versions", op)

    def versions(self, name: str) -> list[VersionRow]:
        return self._read(lambda s: sorted((r for (n, v), r in s.versions.items()
                                            if n == name and (n, v) not in s.retired), key=lambda r: r.version))

    def names(self) -> list[str]:
        return self._read(lambda s: sorted({n for n, _ in s.versions}))

    # --- bars -----------------------------------------------------------------------------------------

    def live_bars(self, symbols: Sequence[str] | None = None, as_known_at: int | None = None) -> list[BarEntry]:
        t = _FAR_FUTURE if as_known_at is None else as_known_at
        wanted = None if symbols is None else set(symbols)

        def op(s: _State) -> list[BarEntry]:
            if as_known_at is None:  # the live ones: no scan of superseded history
                rows = [s.bars[i] for sym, i in s.live_bar.items() if wanted is None or sym in wanted]
            else:
                rows = [b for b in s.bars.values() if _visible(b, t) and (wanted is None or b.symbol in wanted)]
            return sorted(rows, key=lambda b: (b.symbol, b.id))

        return self._read(op)

    def bar_history(self, symbol: str, after_id: int) -> list[BarEntry]:
        return self._read(lambda s: [b for b in s.bars.values() if b.symbol == symbol and b.id > after_id])

    def commit_bars(self, entry: BarEntry, expected_live_id: int | None) -> BarEntry:
        return self.commit_bars_batch([(entry, expected_live_id)])[0]

    def commit_bars_batch(self, items: Sequence[tuple[BarEntry, int | None]]) -> list[BarEntry]:
        check_distinct_symbols(items)
        if not items:
            return []

        def op(s: _State) -> list[BarEntry]:
            changed = [e.symbol for e, expected in items if s.live_bar.get(e.symbol) != expected]
            if changed:
                shown = ", ".join(repr(c) for c in changed[:5]) + (f" and {len(changed) - 5} more"
                                                                   if len(changed) > 5 else "")
                raise ConflictError(f"bars of {shown} changed during the ingest; retry it")
            t = s.now()
            out = []
            for entry, _ in items:
                old = s.live_bar.get(entry.symbol)
                if old is not None:
                    s.bars[old] = s.bars[old]._replace(superseded_at=t)
                new = entry._replace(id=next(s.ids), appended_only=bool(entry.appended_only), recorded_at=t,
                                     superseded_at=None)
                s.bars[new.id] = new
                s.live_bar[new.symbol] = new.id
                out.append(new)
            return out

        return self._write(f"commit bars of {len(items)} symbol(s)", op)

    def all_bar_entries(self) -> list[BarEntry]:
        return self._read(lambda s: list(s.bars.values()))

    def mark_bars_restated(self, entry_id: int) -> None:
        def op(s: _State) -> None:
            if entry_id in s.bars:
                s.bars[entry_id] = s.bars[entry_id]._replace(appended_only=False)

        self._write(f"mark bar snapshot {entry_id} restated", op)

    # --- feature entries ------------------------------------------------------------------------------

    def feature_entries(
        self, feature_set: str, version: int, symbols: Sequence[str] | None = None, as_known_at: int | None = None
    ) -> list[FeatureEntry]:
        t = _FAR_FUTURE if as_known_at is None else as_known_at

        def op(s: _State) -> list[FeatureEntry]:
            if symbols is None:
                keys = [k for k in s.by_symbol if k[0] == feature_set and k[1] == version]
            else:
                keys = [(feature_set, version, sym) for sym in set(symbols)]
            rows = [s.features[i] for k in keys for i in s.by_symbol.get(k, ())]
            return sorted((e for e in rows if _visible(e, t)), key=lambda e: (e.symbol, e.first_ts, e.id))

        return self._read(op)

    def commit_features(self, entry: FeatureEntry, *, supersede: Sequence[int], expected_live: Sequence[int]) -> bool:
        return self.commit_features_batch([(entry, supersede, expected_live)])[0] is not None

    def commit_features_batch(self, items: Sequence[FeatureCommit]) -> list[int | None]:
        def op(s: _State) -> list[int | None]:
            done: list[int | None] = []
            t = s.now()
            for entry, supersede, expected_live in items:
                key = (entry.feature_set, entry.version, entry.symbol)
                live = [i for i in s.by_symbol.get(key, ()) if s.features[i].superseded_at is None]
                if sorted(live) != sorted(expected_live):
                    done.append(None)
                    continue
                for i in supersede:
                    if i in s.features:
                        s.features[i] = s.features[i]._replace(superseded_at=t)
                new = entry._replace(id=next(s.ids), recorded_at=t, superseded_at=None)
                s.features[new.id] = new
                s.by_symbol.setdefault(key, []).append(new.id)
                done.append(new.id)
            return done

        what = commit_what(items)
        return self._write(what, op)

    def all_feature_entries(self) -> list[FeatureEntry]:
        return self._read(lambda s: list(s.features.values()))

    def replace_feature_file(self, entry_id: int, path: str, size: int, file_hash: str) -> None:
        def op(s: _State) -> None:
            if entry_id in s.features:
                s.features[entry_id] = s.features[entry_id]._replace(path=path, size=size, file_hash=file_hash)

        self._write(f"repair feature entry {entry_id}", op)

    def repoint_features(self, moves: Sequence[tuple[int, str, str, int, str]]) -> int:
        def op(s: _State) -> int:
            moved = 0
            for entry_id, old, new, size, digest in moves:
                e = s.features.get(entry_id)
                if e is not None and e.path == old:
                    s.features[entry_id] = e._replace(path=new, size=size, file_hash=digest)
                    moved += 1
            return moved

        return self._write("repoint compacted feature entries", op)

    # --- compute cache ---------------------------------------------------------------------------------

    def cache_get(self, key: str) -> CacheEntry | None:
        return self._read(lambda s: s.cache.get(key))

    def cache_put(self, entry: CacheEntry) -> None:
        def op(s: _State) -> None:
            s.cache[entry.key] = entry

        self._write(f"record cache entry of {entry.symbol!r}", op)

    def cache_drop(self, keys: Sequence[str]) -> int:
        return self._write("drop cache entries", lambda s: sum(s.cache.pop(k, None) is not None for k in keys))

    def cache_entries(self, symbol: str | None = None, accessed_before: int | None = None) -> list[CacheEntry]:
        def op(s: _State) -> list[CacheEntry]:
            rows = [e for e in s.cache.values() if (symbol is None or e.symbol == symbol)
                    and (accessed_before is None or e.last_access < accessed_before)]
            return sorted(rows, key=lambda e: (e.symbol, e.created_at, e.key))

        return self._read(op)

    def cache_record(self, symbol: str, *, hit_key: str | None = None, hits: int = 0, misses: int = 0,
                     compute_seconds: float = 0.0, saved_seconds: float = 0.0, hash_seconds: float = 0.0,
                     hash_bytes: int = 0, corruptions: int = 0) -> None:
        def op(s: _State) -> None:
            o = s.stats.get(symbol, CacheStatsRow(symbol, 0, 0, 0.0, 0.0, 0.0, 0, 0))
            s.stats[symbol] = CacheStatsRow(symbol, o.hits + hits, o.misses + misses,
                                            o.compute_seconds + compute_seconds, o.saved_seconds + saved_seconds,
                                            o.hash_seconds + hash_seconds, o.hash_bytes + hash_bytes,
                                            o.corruptions + corruptions)
            entry = None if hit_key is None else s.cache.get(hit_key)
            if entry is not None:
                s.cache[entry.key] = entry._replace(last_access=s.now(), hits=entry.hits + 1)

        self._write(f"record cache statistics of {symbol!r}", op)

    def cache_stats(self) -> list[CacheStatsRow]:
        return self._read(lambda s: [s.stats[k] for k in sorted(s.stats)])

    # --- online requests -------------------------------------------------------------------------------

    def add_requests(self, counts: dict[str, int]) -> None:
        def op(s: _State) -> None:
            for symbol, n in counts.items():
                s.requests[symbol] = s.requests.get(symbol, 0) + n

        self._write("record online requests", op)

    def top_requested(self, n: int) -> list[str]:
        return self._read(lambda s: sorted(s.requests, key=lambda k: (-s.requests[k], k))[:max(n, 0)])

    # --- history archives and sync marks ------------------------------------------------------------

    def commit_history_archive(self, entry: HistoryArchive) -> HistoryArchive:
        def op(s: _State) -> HistoryArchive:
            new = entry._replace(id=next(s.ids), recorded_at=s.now())
            s.archives[new.id] = new
            return new

        return self._write(f"record history archive of {entry.table_id!r}", op)

    def history_archives(self, table_id: str | None = None) -> list[HistoryArchive]:
        return self._read(lambda s: sorted((a for a in s.archives.values()
                                            if table_id is None or a.table_id == table_id),
                                           key=lambda a: (a.table_id, a.first_ts, a.id)))

    def history_synced(self, table_id: str, entry_ids: Sequence[int]) -> dict[int, int]:
        return self._read(lambda s: {i: s.synced[(table_id, i)] for i in entry_ids if (table_id, i) in s.synced})

    def mark_history_synced(self, table_id: str, marks: dict[int, int]) -> None:
        def op(s: _State) -> None:
            for i, t in marks.items():
                s.synced[(table_id, i)] = min(t, s.synced.get((table_id, i), t))

        self._write(f"mark history sync of {table_id!r}", op)

    # --- housekeeping ----------------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        def op(s: _State) -> dict[str, int]:
            live_bars = [b for b in s.bars.values() if b.superseded_at is None]
            live_features = [e for e in s.features.values() if e.superseded_at is None]
            return {"bar_entries_live": len(live_bars), "bar_entries_total": len(s.bars),
                    "bars_live": sum(b.n_rows for b in live_bars), "feature_entries_live": len(live_features),
                    "feature_entries_total": len(s.features),
                    "feature_rows_live": sum(e.n_rows for e in live_features)}

        return self._read(op)

    def referenced_paths(self) -> set[str]:
        def op(s: _State) -> set[str]:
            paths = {r.path for rows in (s.bars.values(), s.features.values(), s.cache.values(), s.archives.values())
                     for r in rows}
            return paths | {p for b in s.bars.values() if b.parts is not None for p in part_paths(b.parts)}

        return self._read(op)

    def drop_rows(self, table: str, ids: Sequence[int]) -> int:
        if table not in ("bar_entries", "feature_entries"):
            raise ValueError(f"not an entry table: {table!r}")

        def op(s: _State) -> None:
            for i in ids:
                if table == "bar_entries":
                    _drop_bar(s, i)
                else:
                    _drop_feature(s, i)

        self._write(f"delete rows of {table}", op)
        return len(ids)

    def drop_superseded(self, before: int) -> tuple[list[BarEntry], list[FeatureEntry]]:
        def old(e: BarEntry | FeatureEntry) -> bool:
            return e.superseded_at is not None and e.superseded_at <= before

        def op(s: _State) -> tuple[list[BarEntry], list[FeatureEntry]]:
            bars = [b for b in s.bars.values() if old(b)]
            features = [e for e in s.features.values() if old(e)]
            for bar in (b for b in bars if not b.appended_only):
                # The restatement must stay on record for a backfill computed from a snapshot before it.
                nxt = min((b.id for b in s.bars.values() if b.symbol == bar.symbol and b.id > bar.id and not old(b)),
                          default=None)
                if nxt is not None:
                    s.bars[nxt] = s.bars[nxt]._replace(appended_only=False)
            gone = {e.id for e in features}
            for key in [k for k in s.synced if k[1] in gone]:
                del s.synced[key]
            for e in features:
                _drop_feature(s, e.id)
            for b in bars:
                _drop_bar(s, b.id)
            s.replay_from = before if s.replay_from is None else max(s.replay_from, before)
            return bars, features

        return self._write("drop superseded entries", op)

    def replay_from(self) -> int | None:
        return self._read(lambda s: s.replay_from)

    def vacuum(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(f"memory catalog {self.name!r}", "vacuum the catalog")
        self._read(lambda s: None)  # nothing to reclaim; a closed catalog still says so

    # --- identity and lifetime -------------------------------------------------------------------------

    def store_id(self) -> str:
        def op(s: _State) -> str:
            if s.store_id is None:
                if self.read_only:
                    raise ReadOnlyStoreError(f"memory catalog {self.name!r}", "create the store id")
                s.store_id = uuid.uuid4().hex
            return s.store_id

        return self._read(op)

    def close(self) -> None:
        """Idempotent; the rows stay for the next catalog opened on this name."""
        self._closed = True

    # --- whole tables (pitstore.ops.migrate) ---------------------------------------------------------------

    def dump_rows(self, table: str) -> list[tuple[Any, ...]]:
        # Its state is not the tables (retired versions keep no retired_at): a copy would invent values.
        raise ConfigError(f"{self!r}: a memory catalog cannot be migrated (it lives in one process, for tests)")

    def load_rows(self, table: str, rows: Sequence[tuple[Any, ...]], *,
                  delete: Sequence[tuple[Any, ...]] = ()) -> None:
        raise ConfigError(f"{self!r}: a memory catalog cannot be migrated (it lives in one process, for tests)")


def _visible(e: BarEntry | FeatureEntry, t: int) -> bool:
    return e.recorded_at <= t and (e.superseded_at is None or e.superseded_at > t)


def _drop_bar(s: _State, entry_id: int) -> None:
    bar = s.bars.pop(entry_id, None)
    if bar is not None and s.live_bar.get(bar.symbol) == entry_id:
        del s.live_bar[bar.symbol]


def _drop_feature(s: _State, entry_id: int) -> None:
    e = s.features.pop(entry_id, None)
    if e is not None:
        ids = s.by_symbol[(e.feature_set, e.version, e.symbol)]
        ids.remove(entry_id)
        if not ids:
            del s.by_symbol[(e.feature_set, e.version, e.symbol)]

"""In-memory history tier: :class:`PostgresHistory`'s answers, kept in this process (``postgres_url="memory://"``).

What it is for: the logic above the backend (which offline entries are synced, when the history tier may answer
a look-up, how restatements and tombstones reach it) runs and is tested without a PostgreSQL server; the
conformance suite (:mod:`pitstore.testing.history`) holds it to the same answers. Instances opened on one name
share their rows, as two connections to one schema do. Rows are validated exactly as for PostgreSQL (the same
checks in :mod:`pitstore.history._rows`); values are kept as Python floats, so NaN, infinities and -0.0 survive.

Per (table, symbol) the versions sit in a list sorted by ``(ts, recorded_at)``; a look-up bisects to its bound and
walks down, so an as-of read costs O(log n) plus the tombstones it steps over.
"""

from __future__ import annotations

import bisect
import math
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pyarrow as pa

from pitstore.errors import (
    BackendError,
    ConfigError,
    ConflictError,
    DefinitionError,
    InvalidInputError,
    SchemaMismatchError,
)
from pitstore.history._rows import (
    INT8_MAX,
    KEY_COLUMNS,
    TS_TYPE,
    bound,
    check_columns,
    check_table_id,
    checked_rows,
    known,
    micros,
    spans,
    symbol_list,
    version_keys,
)
from pitstore.history.base import TOMBSTONE, AsofRow, StoreScope

__all__ = ["MemoryHistory"]

_T = TypeVar("_T")
Values = tuple[float | None, ...] | None  # None: a tombstone
_Version = tuple[int, int, Values]  # (ts, recorded_at, values)


@dataclass
class _Table:
    columns: tuple[str, ...]
    rows: dict[str, list[_Version]] = field(default_factory=dict)  # symbol -> versions by (ts, recorded_at)


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    migrated: bool = False
    tables: dict[tuple[str, str, str], _Table] = field(default_factory=dict)  # (table_id, store_id, fingerprint)
    last_t: int = 0

    def now(self) -> int:
        """The default recorded_at: µs since the epoch, strictly increasing, so a later write is a later version."""
        self.last_t = max(time.time_ns() // 1000, self.last_t + 1)
        return self.last_t


_STATES: dict[str, _State] = {}
_STATES_LOCK = threading.Lock()


class MemoryHistory:
    """Recent feature rows of many tables in this process's memory. ``name``: instances of one name share their
    rows (None: a state of this instance's own); ``scope``: as :class:`PostgresHistory`'s, the store whose tables
    it sees (None: the unscoped ones)."""

    def __init__(self, name: str | None = None, *, scope: StoreScope | None = None) -> None:
        if scope is not None and (not isinstance(scope.store_id, str) or not scope.store_id.isprintable()
                                  or not scope.store_id):
            raise ConfigError(f"invalid store id {scope.store_id!r}: a non-empty printable string")
        if name is None:
            self._state = _State()
        else:
            with _STATES_LOCK:
                self._state = _STATES.setdefault(name, _State())
        self.name = name
        self._scope = scope
        self._store_id = "" if scope is None else scope.store_id
        self._fingerprints: dict[str, str] = {}  # table_id -> fingerprint, as PostgresHistory caches them
        self._closed = False

    def __repr__(self) -> str:
        store = "" if self._scope is None else f", store={self._store_id!r}"
        return f"MemoryHistory({self.name!r}{store})"

    # --- plumbing --------------------------------------------------------------------------------------

    def _run(self, op: Callable[[_State], _T]) -> _T:
        with self._state.lock:
            if self._closed:
                raise BackendError(f"{self!r} is closed")
            if not self._state.migrated:
                raise BackendError(f"{self!r} is not set up for the history tier (call migrate())")
            return op(self._state)

    def _key(self, table_id: str) -> tuple[str, str, str] | None:
        if self._scope is None:
            return (table_id, "", "")
        fp = self._fingerprints.get(table_id)
        if fp is None:
            fp = self._scope.fingerprint(table_id)
            if fp is None:
                return None  # not cached: the store may register the version at any time
            self._fingerprints[table_id] = fp  # a version's definition never changes
        return (table_id, self._store_id, fp)

    def _table(self, s: _State, table_id: str) -> _Table | None:
        key = self._key(table_id)
        return None if key is None else s.tables.get(key)

    # --- schema ---------------------------------------------------------------------------------------

    def migrate(self) -> None:
        with self._state.lock:
            if self._closed:
                raise BackendError(f"{self!r} is closed")
            self._state.migrated = True

    def tables(self) -> list[str]:
        return self._run(lambda s: sorted(t for t, store, fp in s.tables if store == self._store_id
                                          and self._key(t) == (t, store, fp)))

    def columns(self, table_id: str) -> tuple[str, ...] | None:
        check_table_id(table_id)

        def op(s: _State) -> tuple[str, ...] | None:
            table = self._table(s, table_id)
            return None if table is None else table.columns

        return self._run(op)

    # --- writes ---------------------------------------------------------------------------------------

    def write(self, table_id: str, columns: Sequence[str], rows: Any, *, recorded_at: int | None = None,
              replaces: Sequence[tuple[str, int, int]] = ()) -> int:
        check_table_id(table_id)
        cols = check_columns(columns)
        if TOMBSTONE in cols:
            raise DefinitionError(f"feature column {TOMBSTONE!r} clashes with the marker of tombstones in scans")
        df = checked_rows(rows, cols)
        rec = None if recorded_at is None else micros(recorded_at, "recorded_at")
        replaced = spans(replaces)
        new: dict[str, list[tuple[int, Values]]] = {}
        for symbol, ts, *vals in df.iter_rows():
            new.setdefault(symbol, []).append((ts, tuple(vals)))

        def op(s: _State) -> int:
            table = self._register(s, table_id, cols)
            if df.is_empty() and not replaced["symbols"]:
                return 0
            at = s.now() if rec is None else rec
            # Checked in full before anything is stored: a write is all or nothing.
            adds: list[tuple[str, _Version]] = []
            for symbol, items in new.items():
                stored = table.rows.get(symbol, [])
                for ts, vals in items:
                    i = bisect.bisect_left(stored, (ts, at), key=_key2)
                    if i < len(stored) and stored[i][:2] == (ts, at):
                        if not _same(stored[i][2], vals):
                            raise ConflictError(
                                f"{table_id!r}: ({symbol!r}, ts={ts}) recorded at {at} is already stored with"
                                " other values; a restatement needs a later recorded_at")
                        continue  # a replay: nothing new
                    adds.append((symbol, (ts, at, vals)))
            tombs: set[tuple[str, int]] = set()
            for symbol, lo, hi in zip(replaced["symbols"], replaced["lo"], replaced["hi"], strict=True):
                present = {ts for ts, _ in new.get(symbol, ())}
                for ts, rec_at, vals in _latest_per_ts(table.rows.get(symbol, []), lo, hi, at):
                    if vals is None or ts in present:
                        continue  # already gone, or restated by this write
                    if rec_at == at:
                        raise ConflictError(
                            f"{table_id!r}: ({symbol!r}, ts={ts}) is stored with this write's recorded_at but"
                            " absent from it, in a span it replaces; a restatement needs a later recorded_at")
                    tombs.add((symbol, ts))
            for symbol, version in [*adds, *((sym, (ts, at, None)) for sym, ts in sorted(tombs))]:
                bisect.insort(table.rows.setdefault(symbol, []), version, key=_key2)
            return len(adds) + len(tombs)

        return self._run(op)

    def _register(self, s: _State, table_id: str, columns: tuple[str, ...]) -> _Table:
        key = self._key(table_id)
        if key is None:
            raise DefinitionError(f"history table {table_id!r}: no such feature-set version in this store")
        table = s.tables.setdefault(key, _Table(columns))
        if table.columns != columns:
            raise SchemaMismatchError(
                f"history table {table_id!r} has columns {list(table.columns)}, the write has {list(columns)}")
        return table

    def delete_before(self, table_id: str, ts: int) -> int:
        check_table_id(table_id)
        cutoff = micros(ts, "ts")

        def op(s: _State) -> int:
            table = self._table(s, table_id)
            if table is None:
                return 0
            gone = 0
            for symbol, versions in table.rows.items():
                i = bisect.bisect_left(versions, (cutoff, -(2**63)), key=_key2)
                gone += i
                table.rows[symbol] = versions[i:]
            return gone

        return self._run(op)

    def delete_versions(self, table_id: str, keys: Any) -> int:
        check_table_id(table_id)
        symbols, ts, recorded = version_keys(keys)
        wanted: dict[str, set[tuple[int, int]]] = {}
        for symbol, t, r in zip(symbols, ts, recorded, strict=True):
            wanted.setdefault(symbol, set()).add((t, r))

        def op(s: _State) -> int:
            table = self._table(s, table_id)
            if table is None:
                return 0
            gone = 0
            for symbol, names in wanted.items():
                versions = table.rows.get(symbol, [])
                kept = [v for v in versions if v[:2] not in names]
                gone += len(versions) - len(kept)
                if versions:
                    table.rows[symbol] = kept
            return gone

        return self._run(op)

    # --- reads ----------------------------------------------------------------------------------------

    def asof(self, table_id: str, symbol: str, t: int, *, lag: int = 0,
             as_known_at: int | None = None) -> AsofRow | None:
        check_table_id(table_id)
        [name] = symbol_list([symbol])
        limit, at = bound(t, lag), known(as_known_at)
        return self._run(lambda s: _asof(self._table(s, table_id), name, limit, at))

    def asof_many(self, table_id: str, symbols: Sequence[str], ts: Sequence[int], *, lag: int = 0,
                  as_known_at: int | None = None) -> list[AsofRow | None]:
        check_table_id(table_id)
        names = symbol_list(symbols)
        if isinstance(ts, str | bytes) or len(ts) != len(names):
            raise InvalidInputError(f"asof_many needs as many timestamps as symbols ({len(names)})", column="ts")
        limits, at = [bound(t, lag) for t in ts], known(as_known_at)

        def op(s: _State) -> list[AsofRow | None]:
            table = self._table(s, table_id)
            return [_asof(table, n, b, at) for n, b in zip(names, limits, strict=True)]

        return self._run(op)

    def latest(self, table_id: str, symbols: Sequence[str]) -> list[AsofRow | None]:
        check_table_id(table_id)
        names = symbol_list(symbols)

        def op(s: _State) -> list[AsofRow | None]:
            table = self._table(s, table_id)
            return [_asof(table, n, INT8_MAX, INT8_MAX) for n in names]

        return self._run(op)

    def scan(self, table_id: str, *, symbols: Sequence[str] | None = None, start: int | None = None,
             end: int | None = None, as_known_at: int | None = None, all_versions: bool = False) -> pa.Table:
        check_table_id(table_id)
        names = None if symbols is None else symbol_list(symbols)
        lo = -(2**63) if start is None else micros(start, "start")
        hi = INT8_MAX if end is None else micros(end, "end")
        at = known(as_known_at)

        def op(s: _State) -> pa.Table:
            table = self._table(s, table_id)
            columns = () if table is None else table.columns
            out: list[tuple[str, int, int, Values]] = []
            if table is not None:
                for symbol in sorted(table.rows if names is None else set(names) & set(table.rows)):
                    versions = [v for v in table.rows[symbol] if lo <= v[0] <= hi and v[1] <= at]
                    if not all_versions:
                        versions = [v for v in _last_per_ts(versions) if v[2] is not None]
                    out.extend((symbol, *v) for v in versions)
            return _scan_table(out, columns, all_versions)

        return self._run(op)

    def window_start(self, table_id: str) -> int | None:
        check_table_id(table_id)

        def op(s: _State) -> int | None:
            table = self._table(s, table_id)
            if table is None:
                return None
            starts = [next((ts for ts, _, vals in _last_per_ts(v) if vals is not None), None)
                      for v in table.rows.values()]
            return min((t for t in starts if t is not None), default=None)

        return self._run(op)

    # --- lifetime -------------------------------------------------------------------------------------

    def ping(self) -> None:
        with self._state.lock:
            if self._closed:
                raise BackendError(f"{self!r} is closed")

    def close(self) -> None:
        self._closed = True


def _key2(v: _Version) -> tuple[int, int]:
    return v[0], v[1]


def _same(a: Values, b: Values) -> bool:
    """Equal stored values, as PostgreSQL compares float8[] (NaN equals NaN; null equals null)."""
    if a is None or b is None:
        return a is b
    return len(a) == len(b) and all(x == y or (x is not None and y is not None and math.isnan(x) and math.isnan(y))
                                    or (x is None and y is None) for x, y in zip(a, b, strict=True))


def _last_per_ts(versions: Sequence[_Version]) -> list[_Version]:
    """The latest version of each ts of ``versions`` (sorted by ts then recorded_at), in ts order."""
    return [v for i, v in enumerate(versions) if i + 1 == len(versions) or versions[i + 1][0] != v[0]]


def _latest_per_ts(versions: Sequence[_Version], lo: int, hi: int, at: int) -> list[_Version]:
    """The latest version recorded at or before ``at`` of each ts in ``[lo, hi]``."""
    i = bisect.bisect_left(versions, (lo, -(2**63)), key=_key2)
    j = bisect.bisect_right(versions, (hi, INT8_MAX), key=_key2)
    return _last_per_ts([v for v in versions[i:j] if v[1] <= at])


def _asof(table: _Table | None, symbol: str, limit: int, at: int) -> AsofRow | None:
    """The greatest ts <= ``limit`` whose latest version known at ``at`` is not a tombstone: a walk down from the
    bound, which visits each version at most once."""
    if table is None:
        return None
    versions = table.rows.get(symbol, [])
    i = bisect.bisect_right(versions, (limit, INT8_MAX), key=_key2) - 1
    while i >= 0:
        ts = versions[i][0]
        while i >= 0 and versions[i][0] == ts and versions[i][1] > at:
            i -= 1  # recorded after as_known_at: not known yet
        if i >= 0 and versions[i][0] == ts:
            vals = versions[i][2]
            if vals is not None:
                return ts, vals
        while i >= 0 and versions[i][0] == ts:
            i -= 1  # the older versions of a ts its latest hides
    return None


def _scan_table(rows: list[tuple[str, int, int, Values]], columns: tuple[str, ...], all_versions: bool) -> pa.Table:
    """The scan layout of :meth:`PostgresHistory.scan`."""
    arrays: list[Any] = [pa.array([r[0] for r in rows], pa.string()),
                         pa.array([r[1] for r in rows], pa.int64()).cast(TS_TYPE),
                         pa.array([r[2] for r in rows], pa.int64()).cast(TS_TYPE)]
    names = list(KEY_COLUMNS)
    if all_versions:
        arrays.append(pa.array([r[3] is None for r in rows], pa.bool_()))
        names.append(TOMBSTONE)
    for i, c in enumerate(columns):
        arrays.append(pa.array([None if r[3] is None else r[3][i] for r in rows], pa.float64()))
        names.append(c)
    return pa.table(arrays, names=names)

"""PostgreSQL catalog: the manifest of a team store, shared by processes on many machines (DESIGN 3.2, 3.6).

The same rows and answers as :class:`pitstore.catalog.sqlite.SqliteCatalog`, in one schema per store (tables in
:mod:`pitstore.catalog.pg_schema`). SQLite serialises writers on one file lock; here each read-then-write commit
takes transaction-scoped advisory locks on what it checks (a symbol's bars, a symbol's entries of one version, a
feature-set name), sorted so two commits never deadlock, then reads the committed state (READ COMMITTED: every
statement sees what committed before it) and writes. Writers of different symbols never wait for each other.
Entry times (``recorded_at``, ``superseded_at``) come from the server's clock: one clock for every machine.

Also :class:`AdvisoryLocks`: single flight of compute-cache keys and tiering runs, and reader leases on versions,
across machines (session advisory locks, which the server drops when a holder's session ends, a killed
process's included).
"""

from __future__ import annotations

import hashlib
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from datetime import UTC, datetime
from typing import Any, TypeVar
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import psycopg
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict, make_conninfo

from pitstore.cache.lock import ProcessLocks
from pitstore.catalog import pg_schema
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
    table_columns,
)
from pitstore.errors import BackendError, BackendUnavailableError, ConfigError, ConflictError, ReadOnlyStoreError
from pitstore.sources.segments import part_paths

__all__ = ["DEFAULT_SCHEMA", "AdvisoryLocks", "PostgresCatalog", "catalog_target"]

DEFAULT_SCHEMA = "pitstore_catalog"
_T = TypeVar("_T")
_Conn = psycopg.Connection[Any]
_FAR_FUTURE = 2**62
_WRITE_ATTEMPTS = 5  # a transaction the server aborted (deadlock, serialization) is run again, from scratch
# A machine that vanishes without closing its sockets: its sessions (and advisory locks) end within ~25 s.
_KEEPALIVE = {"keepalives": 1, "keepalives_idle": 10, "keepalives_interval": 5, "keepalives_count": 3}
_BAR_COLS = ("id, symbol, path, n_rows, first_ts, last_ts, content_hash, appended_only, restated_rows, "
             "recorded_at, superseded_at, parts")
_FEATURE_COLS = ("id, feature_set, version, symbol, path, n_rows, first_ts, last_ts, bars_entry_id, "
                 "recorded_at, superseded_at, size, file_hash")
_CACHE_COLS = ("key, symbol, path, size, file_hash, kind, n_rows, first_ts, last_ts, compute_seconds, created_at,"
               " last_access, hits")
_ARCHIVE_COLS = "id, table_id, path, n_rows, first_ts, last_ts, cutoff, size, file_hash, recorded_at"
_VISIBLE = "recorded_at <= %(t)s AND (superseded_at IS NULL OR superseded_at > %(t)s)"
_TICK = ("INSERT INTO commit_clock VALUES (0, (extract(epoch FROM clock_timestamp()) * 1000000)::bigint)"
         " ON CONFLICT (id) DO UPDATE SET t = GREATEST(EXCLUDED.t, commit_clock.t + 1) RETURNING t")


def catalog_target(url: str, schema: str | None = None) -> tuple[str, str]:
    """``(connection URL, schema)`` of a catalog URL: ``?schema=`` in the URL wins over ``schema``, then the
    default; the option is removed from what libpq sees (it is not a libpq parameter)."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgresql", "postgres"):
        raise ConfigError(f"catalog_url must be a postgresql:// URL, got {parts.scheme or url!r}")
    query = parse_qsl(parts.query, keep_blank_values=True)
    chosen = [v for k, v in query if k == "schema"]
    dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"])))
    try:
        conninfo_to_dict(dsn)
    except psycopg.Error as exc:
        raise ConfigError(f"invalid catalog URL: {_cause(exc)}") from None
    name = chosen[-1] if chosen else (schema or DEFAULT_SCHEMA)
    if not name or len(name.encode()) > 63 or "\x00" in name:
        raise ConfigError(f"invalid PostgreSQL schema name {name!r}: 1 to 63 bytes")
    return dsn, name


def lock_key(*parts: object) -> int:
    """A signed 64-bit advisory lock key for ``parts`` (a collision only makes two commits wait for each other)."""
    text = "\x1f".join(str(p) for p in parts)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big", signed=True)


class _Link:
    """One connection shared by threads under a lock: opened lazily, replaced after a fork or when lost, psycopg
    errors mapped to the error tree."""

    def __init__(self, dsn: str, schema: str, timeout: float, name: str) -> None:
        info = conninfo_to_dict(dsn)
        # Never the password: this text goes into error messages and logs.
        self.where = "PostgreSQL catalog at {}:{}/{} schema {!r}".format(
            info.get("host") or info.get("hostaddr") or "localhost", info.get("port") or 5432,
            info.get("dbname") or info.get("user") or "postgres", schema)
        self.dsn, self.schema, self.timeout, self.name = dsn, schema, max(2, round(timeout)), name
        self.lock = threading.Lock()
        self._conn: _Conn | None = None
        self._pid = os.getpid()
        self._inherited: list[_Conn] = []

    def connect(self, name: str | None = None) -> _Conn:
        """A new connection with ``search_path`` set to the schema (BackendUnavailableError when unreachable),
        named ``pitstore-<name>-<pid>`` in ``pg_stat_activity``."""
        try:
            conninfo = make_conninfo(self.dsn, connect_timeout=self.timeout, client_encoding="utf8",
                                     application_name=f"pitstore-{name or self.name}-{os.getpid()}", **_KEEPALIVE)
            conn = psycopg.connect(conninfo, autocommit=True)
        except psycopg.Error as exc:
            raise BackendUnavailableError(f"{self.where} is unavailable: {_cause(exc)}") from exc
        try:
            conn.execute(sql.SQL("SET search_path TO {}").format(sql.Identifier(self.schema)))
        except psycopg.Error as exc:
            conn.close()
            raise BackendUnavailableError(f"{self.where} is unavailable: {_cause(exc)}") from exc
        return conn

    def _connection(self) -> _Conn:
        if self._pid != os.getpid():
            # A forked child must not use the parent's socket, nor close it (libpq would end the parent's
            # session): the inherited object is kept, unused.
            if self._conn is not None:
                self._inherited.append(self._conn)
            self._conn, self._pid = None, os.getpid()
        if self._conn is None or self._conn.closed:
            self._conn = self.connect()
        return self._conn

    def run(self, what: str, op: Callable[[_Conn], _T], *, write: bool) -> _T:
        """``op(conn)`` under the lock; a write runs in one transaction. Retried: a read whose connection was
        lost; a write the server aborted (deadlock, serialization failure) or whose connection was lost before
        COMMIT was sent (the server rolled it back). A loss during COMMIT is reported: its outcome is unknown."""
        with self.lock:
            lost = 0
            for attempt in range(_WRITE_ATTEMPTS):
                conn = self._connection()
                committing = False
                try:
                    if not write:
                        return op(conn)
                    with conn.transaction():
                        out = op(conn)
                        committing = True
                    return out
                except psycopg.Error as exc:
                    if conn.closed or conn.broken:
                        self.discard()
                        lost += 1
                        if committing or lost > 1:
                            raise BackendUnavailableError(
                                f"{self.where}: connection lost during {what}"
                                f"{' (commit outcome unknown)' if committing else ''}: {_cause(exc)}") from exc
                        continue
                    retry = isinstance(exc, pg_errors.SerializationFailure | pg_errors.DeadlockDetected)
                    if not retry or attempt == _WRITE_ATTEMPTS - 1:
                        raise self.error(what, exc) from exc
            raise AssertionError("unreachable")

    def error(self, what: str, exc: psycopg.Error) -> Exception:
        if isinstance(exc, pg_errors.UniqueViolation):
            return ConflictError(f"{self.where}: {what}: a concurrent commit got there first: {_cause(exc)}")
        if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
            return BackendError(f"{self.where}: no pitstore catalog in this schema: {_cause(exc)}")
        state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
        return BackendError(f"{self.where}: cannot {what}{state}: {_cause(exc)}")

    def discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = None

    def close(self) -> None:
        with self.lock:
            if self._pid == os.getpid():
                self.discard()


class PostgresCatalog:
    """A catalog in one PostgreSQL schema (created, with a ``schema_version`` row, on first open)."""

    def __init__(self, url: str, *, schema: str | None = None, read_only: bool = False,
                 connect_timeout: float = 5.0) -> None:
        dsn, self.schema = catalog_target(url, schema)
        self.read_only = read_only
        self.mode = "ro" if read_only else "rw"
        self._link = _Link(dsn, self.schema, connect_timeout, "catalog")
        self.where = self._link.where
        self._locks: dict[str, AdvisoryLocks] = {}
        self._bar_cols = _BAR_COLS
        if read_only:
            if self._check_schema() < 2:  # read as it is, without segments (added by migration 2)
                self._bar_cols = _BAR_COLS.replace(", parts", ", NULL AS parts")
        else:
            self._migrate()

    def __repr__(self) -> str:
        return f"PostgresCatalog({self.where})"

    # --- schema ---------------------------------------------------------------------------------------

    def _migrate(self) -> None:
        """Create or upgrade the schema under a lock on its name: concurrent openers apply each step once."""
        ident = sql.Identifier(self.schema)

        def op(conn: _Conn) -> None:
            conn.execute("SELECT pg_advisory_xact_lock(%s)", (lock_key("pitstore:migrate", self.schema),))
            # CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege even when the schema exists.
            if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone() is None:
                conn.execute(sql.SQL("CREATE SCHEMA {}").format(ident))
            # The history tier's layout of this table: both may share one schema.
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (component text NOT NULL, version integer NOT"
                         " NULL, applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))")
            current = self._version(conn)
            if current > pg_schema.SCHEMA_VERSION:
                raise BackendError(f"{self.where} has catalog version {current}, newer than this pitstore's"
                                   f" {pg_schema.SCHEMA_VERSION}; upgrade pitstore")
            for version, statements in pg_schema.MIGRATIONS:
                if version > current:
                    for statement in statements:
                        conn.execute(statement.encode())
                    conn.execute("INSERT INTO schema_version (component, version) VALUES (%s, %s)",
                                 (pg_schema.COMPONENT, version))

        self._link.run("create the catalog", op, write=True)

    def _check_schema(self) -> int:
        def op(conn: _Conn) -> int:
            if conn.execute("SELECT to_regclass('schema_version')").fetchone() in (None, (None,)):
                return 0
            return self._version(conn)

        version = self._link.run("read the catalog version", op, write=False)
        if version == 0:
            raise ReadOnlyStoreError(self.where, "create a catalog (there is none to read)")
        return version

    @staticmethod
    def _version(conn: _Conn) -> int:
        row = conn.execute("SELECT coalesce(max(version), 0) FROM schema_version WHERE component = %s",
                           (pg_schema.COMPONENT,)).fetchone()
        return int(row[0]) if row else 0

    # --- plumbing --------------------------------------------------------------------------------------

    def _rows(self, query: str, params: Sequence[object] | dict[str, object] = ()) -> list[tuple[Any, ...]]:
        return self._link.run("read", lambda conn: conn.execute(query.encode(), params).fetchall(), write=False)

    def _write(self, what: str, op: Callable[[_Conn], _T]) -> _T:
        """``op`` in one transaction."""
        if self.read_only:  # the last line of defence: the facade refuses writes before touching anything
            raise ReadOnlyStoreError(self.where, what)
        return self._link.run(what, op, write=True)

    @staticmethod
    def _lock(conn: _Conn, *names: tuple[object, ...]) -> None:
        """Transaction advisory locks on ``names``, in key order (two commits never wait for each other in a
        cycle); held until COMMIT or ROLLBACK."""
        keys = sorted({lock_key("pitstore:catalog", *n) for n in names})
        conn.execute("SELECT count(pg_advisory_xact_lock(k)) FROM (SELECT unnest(%s::bigint[]) AS k) s", (keys,))

    @staticmethod
    def _now(conn: _Conn) -> int:
        """This commit's time (pitstore.rules.commit_time, on the server's clock). The clock row stays locked
        until COMMIT, so commits get their times in the order they become visible: a replay at ``t`` never
        gains a row later. Called after the op's advisory locks (always the last lock taken: no cycles)."""
        row = conn.execute(_TICK).fetchone()
        assert row is not None
        return int(row[0])

    # --- registry --------------------------------------------------------------------------------------

    def register_version(self, name: str, fingerprint: str, definition: str) -> VersionRow:
        def op(conn: _Conn) -> tuple[Any, ...]:
            self._lock(conn, ("version", self.schema, name))
            row = conn.execute("SELECT name, version, fingerprint, definition, created_at FROM feature_set_versions"
                               " WHERE name = %s AND fingerprint = %s", (name, fingerprint)).fetchone()
            if row is None:
                last = conn.execute("SELECT coalesce(max(version), 0) FROM feature_set_versions WHERE name = %s",
                                    (name,)).fetchone()
                assert last is not None
                row = (name, last[0] + 1, fingerprint, definition, datetime.now(UTC).isoformat())
                conn.execute("INSERT INTO feature_set_versions VALUES (%s, %s, %s, %s, %s)", row)
            else:
                conn.execute("DELETE FROM retired_versions WHERE name = %s AND version = %s", (name, row[1]))
            return row

        return VersionRow(*self._write(f"register {name!r}", op))

    def retire_versions(self, versions: Sequence[tuple[str, int]], *, drop_entries: bool = False) -> None:
        def op(conn: _Conn) -> None:
            self._lock(conn, *[("version", self.schema, name) for name, _ in versions])
            t = self._now(conn)
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO retired_versions VALUES (%s, %s, %s) ON CONFLICT DO NOTHING",
                                [(name, v, t) for name, v in versions])
                if drop_entries:  # in the same transaction: a version is either live with rows or gone
                    cur.executemany("DELETE FROM feature_entries WHERE feature_set = %s AND version = %s",
                                    list(versions))

        if versions:
            self._write("retire versions", op)

    def versions(self, name: str) -> list[VersionRow]:
        rows = self._rows("SELECT name, version, fingerprint, definition, created_at FROM feature_set_versions v"
                          " WHERE name = %s AND NOT EXISTS (SELECT 1 FROM retired_versions r"
                          " WHERE r.name = v.name AND r.version = v.version) ORDER BY version", (name,))
        return [VersionRow(*r) for r in rows]

    def names(self) -> list[str]:
        return [r[0] for r in self._rows("SELECT DISTINCT name FROM feature_set_versions ORDER BY name")]

    # --- bars -----------------------------------------------------------------------------------------

    def live_bars(self, symbols: Sequence[str] | None = None, as_known_at: int | None = None) -> list[BarEntry]:
        params: dict[str, object] = {"t": _FAR_FUTURE if as_known_at is None else as_known_at,
                                     "s": None if symbols is None else list(symbols)}
        rows = self._rows(f"SELECT {self._bar_cols} FROM bar_entries WHERE {_VISIBLE}"
                          " AND (%(s)s::text[] IS NULL OR symbol = ANY(%(s)s)) ORDER BY symbol, id", params)
        return [BarEntry(*r) for r in rows]

    def bar_history(self, symbol: str, after_id: int) -> list[BarEntry]:
        rows = self._rows(f"SELECT {self._bar_cols} FROM bar_entries WHERE symbol = %s AND id > %s ORDER BY id",
                          (symbol, after_id))
        return [BarEntry(*r) for r in rows]

    def commit_bars(self, entry: BarEntry, expected_live_id: int | None) -> BarEntry:
        return self.commit_bars_batch([(entry, expected_live_id)])[0]

    def commit_bars_batch(self, items: Sequence[tuple[BarEntry, int | None]]) -> list[BarEntry]:
        check_distinct_symbols(items)
        if not items:
            return []
        symbols = [e.symbol for e, _ in items]

        def op(conn: _Conn) -> list[BarEntry]:
            self._lock(conn, *[("bars", self.schema, s) for s in symbols])
            live = dict(conn.execute("SELECT symbol, id FROM bar_entries WHERE superseded_at IS NULL"
                                     " AND symbol = ANY(%s)", (symbols,)).fetchall())
            changed = [e.symbol for e, expected in items if live.get(e.symbol) != expected]
            if changed:
                shown = ", ".join(repr(s) for s in changed[:5]) + (f" and {len(changed) - 5} more"
                                                                    if len(changed) > 5 else "")
                raise ConflictError(f"bars of {shown} changed during the ingest; retry it")
            t = self._now(conn)
            conn.execute("UPDATE bar_entries SET superseded_at = %s WHERE superseded_at IS NULL AND symbol = ANY(%s)",
                         (t, symbols))
            with conn.cursor() as cur:
                cur.executemany(
                    "INSERT INTO bar_entries (symbol, path, n_rows, first_ts, last_ts, content_hash, appended_only,"
                    " restated_rows, recorded_at, parts) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                    [(e.symbol, e.path, e.n_rows, e.first_ts, e.last_ts, e.content_hash, bool(e.appended_only),
                      e.restated_rows, t, e.parts) for e, _ in items], returning=True)
                ids = []
                while True:
                    ids.append(_one(cur)[0])
                    if not cur.nextset():
                        break
            return [e._replace(id=i, recorded_at=t) for (e, _), i in zip(items, ids, strict=True)]

        return self._write(f"commit bars of {len(items)} symbol(s)", op)

    # --- feature entries ------------------------------------------------------------------------------

    def feature_entries(
        self, feature_set: str, version: int, symbols: Sequence[str] | None = None, as_known_at: int | None = None
    ) -> list[FeatureEntry]:
        params: dict[str, object] = {"fs": feature_set, "v": version, "s": None if symbols is None else list(symbols),
                                     "t": _FAR_FUTURE if as_known_at is None else as_known_at}
        rows = self._rows(f"SELECT {_FEATURE_COLS} FROM feature_entries WHERE feature_set = %(fs)s AND version = %(v)s"
                          f" AND {_VISIBLE} AND (%(s)s::text[] IS NULL OR symbol = ANY(%(s)s))"
                          " ORDER BY symbol, first_ts, id", params)
        return [FeatureEntry(*r) for r in rows]

    def commit_features(self, entry: FeatureEntry, *, supersede: Sequence[int], expected_live: Sequence[int]) -> bool:
        return self.commit_features_batch([(entry, supersede, expected_live)])[0] is not None

    def commit_features_batch(self, items: Sequence[FeatureCommit]) -> list[int | None]:
        def op(conn: _Conn) -> list[int | None]:
            self._lock(conn, *(("features", self.schema, e.feature_set, e.version, e.symbol) for e, _, _ in items))
            keys = sorted({(e.feature_set, e.version) for e, _, _ in items})
            live: dict[tuple[str, int, str], list[int]] = {}
            for fs, version in keys:  # one query per (set, version), not per symbol
                symbols = [e.symbol for e, _, _ in items if (e.feature_set, e.version) == (fs, version)]
                for symbol, i in conn.execute(
                        "SELECT symbol, id FROM feature_entries WHERE feature_set = %s AND version = %s"
                        " AND symbol = ANY(%s) AND superseded_at IS NULL ORDER BY id",
                        (fs, version, symbols)).fetchall():
                    live.setdefault((fs, version, symbol), []).append(i)
            t = self._now(conn)
            ok = [live.get((e.feature_set, e.version, e.symbol), []) == sorted(expected) for e, _, expected in items]
            superseded = [i for (_, supersede, _), d in zip(items, ok, strict=True) if d for i in supersede]
            if superseded:
                conn.execute("UPDATE feature_entries SET superseded_at = %s WHERE id = ANY(%s)", (t, superseded))
            rows = [(e.feature_set, e.version, e.symbol, e.path, e.n_rows, e.first_ts, e.last_ts, e.bars_entry_id, t,
                     e.size, e.file_hash) for (e, _, _), d in zip(items, ok, strict=True) if d]
            ids: list[int] = []
            if rows:
                with conn.cursor() as cur:
                    cur.executemany(
                        "INSERT INTO feature_entries (feature_set, version, symbol, path, n_rows, first_ts, last_ts,"
                        " bars_entry_id, recorded_at, size, file_hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s,"
                        " %s, %s) RETURNING id", rows, returning=True)
                    while True:  # one result set per row, in order
                        row = cur.fetchone()
                        assert row is not None
                        ids.append(int(row[0]))
                        if not cur.nextset():
                            break
            published = iter(ids)
            return [next(published) if d else None for d in ok]

        what = commit_what(items)
        return self._write(what, op)

    def counts(self) -> dict[str, int]:
        """Row counts for stats: live and total entries."""
        names = ("bar_entries_live", "bar_entries_total", "bars_live", "feature_entries_live",
                 "feature_entries_total", "feature_rows_live")
        rows = self._rows(
            "SELECT count(*) FILTER (WHERE superseded_at IS NULL), count(*),"
            " coalesce(sum(n_rows) FILTER (WHERE superseded_at IS NULL), 0) FROM bar_entries"
            " UNION ALL SELECT count(*) FILTER (WHERE superseded_at IS NULL), count(*),"
            " coalesce(sum(n_rows) FILTER (WHERE superseded_at IS NULL), 0) FROM feature_entries")
        return dict(zip(names, (int(v) for r in rows for v in r), strict=True))

    # --- compute cache ---------------------------------------------------------------------------------

    def cache_get(self, key: str) -> CacheEntry | None:
        rows = self._rows(f"SELECT {_CACHE_COLS} FROM cache_entries WHERE key = %s", (key,))
        return CacheEntry(*rows[0]) if rows else None

    def cache_put(self, entry: CacheEntry) -> None:
        cols = _CACHE_COLS.replace(" ", "").split(",")
        update = ", ".join(f"{c} = excluded.{c}" for c in cols[1:])
        query = (f"INSERT INTO cache_entries ({_CACHE_COLS}) VALUES ({', '.join(['%s'] * len(cols))})"
                 f" ON CONFLICT (key) DO UPDATE SET {update}")  # INSERT OR REPLACE of SQLite
        self._write(f"record cache entry of {entry.symbol!r}", lambda conn: conn.execute(query.encode(),
                                                                                             tuple(entry)))

    def cache_drop(self, keys: Sequence[str]) -> int:
        return self._write("drop cache entries", lambda conn: conn.execute(
            "DELETE FROM cache_entries WHERE key = ANY(%s)", (list(keys),)).rowcount)

    def cache_entries(self, symbol: str | None = None, accessed_before: int | None = None) -> list[CacheEntry]:
        rows = self._rows(f"SELECT {_CACHE_COLS} FROM cache_entries WHERE (%(s)s::text IS NULL OR symbol = %(s)s)"
                          " AND (%(t)s::bigint IS NULL OR last_access < %(t)s) ORDER BY symbol, created_at, key",
                          {"s": symbol, "t": accessed_before})
        return [CacheEntry(*r) for r in rows]

    def cache_record(self, symbol: str, *, hit_key: str | None = None, hits: int = 0, misses: int = 0,
                     compute_seconds: float = 0.0, saved_seconds: float = 0.0, hash_seconds: float = 0.0,
                     hash_bytes: int = 0, corruptions: int = 0) -> None:
        # One statement, its own transaction (autocommit): the counters' upsert, the hit entry's access mark and
        # synchronous_commit off for this commit only (set_config local: the WAL flush need not be awaited; a
        # server crash may lose the last moments of statistics, never an entry). One round trip on the hit path
        # instead of four (BEGIN, SET LOCAL, the upsert, COMMIT: 0.29 of a 0.94 ms hit, bench_catalog).
        # Concurrent upserts of a symbol's counters add up (ON CONFLICT locks the row).
        query = (
            "WITH cfg AS (SELECT set_config('synchronous_commit', 'off', true)),"
            " stats AS (INSERT INTO cache_stats AS c VALUES (%(s)s, %(h)s, %(m)s, %(cs)s, %(ss)s, %(hs)s, %(hb)s,"
            " %(co)s) ON CONFLICT (symbol) DO UPDATE"
            " SET hits = c.hits + excluded.hits, misses = c.misses + excluded.misses,"
            " compute_seconds = c.compute_seconds + excluded.compute_seconds,"
            " saved_seconds = c.saved_seconds + excluded.saved_seconds,"
            " hash_seconds = c.hash_seconds + excluded.hash_seconds,"
            " hash_bytes = c.hash_bytes + excluded.hash_bytes, corruptions = c.corruptions + excluded.corruptions"
            " RETURNING 1),"
            " hit AS (UPDATE cache_entries SET last_access = (extract(epoch FROM clock_timestamp()) * 1000000)::bigint,"
            " hits = hits + 1 WHERE key = %(k)s RETURNING 1)"
            " SELECT (SELECT count(*) FROM stats), (SELECT count(*) FROM hit), (SELECT count(*) FROM cfg)")
        params = {"s": symbol, "h": hits, "m": misses, "cs": compute_seconds, "ss": saved_seconds,
                  "hs": hash_seconds, "hb": hash_bytes, "co": corruptions, "k": hit_key}

        if self.read_only:
            raise ReadOnlyStoreError(self.where, f"record cache statistics of {symbol!r}")
        # Not in a transaction of run(write=True): that is the three round trips saved. A retry after a lost
        # connection may count a hit twice (statistics, not entries).
        self._link.run(f"record cache statistics of {symbol!r}",
                       lambda conn: conn.execute(query, params).fetchone(), write=False)

    def cache_stats(self) -> list[CacheStatsRow]:
        rows = self._rows("SELECT symbol, hits, misses, compute_seconds, saved_seconds, hash_seconds, hash_bytes,"
                          " corruptions FROM cache_stats ORDER BY symbol")
        return [CacheStatsRow(*r) for r in rows]

    # --- history archives ------------------------------------------------------------------------------

    def commit_history_archive(self, entry: HistoryArchive) -> HistoryArchive:
        def op(conn: _Conn) -> HistoryArchive:
            t = self._now(conn)
            new_id = _one(conn.execute(
                "INSERT INTO history_archives (table_id, path, n_rows, first_ts, last_ts, cutoff, size, file_hash,"
                " recorded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s) RETURNING id",
                (entry.table_id, entry.path, entry.n_rows, entry.first_ts, entry.last_ts, entry.cutoff, entry.size,
                 entry.file_hash, t)))[0]
            return entry._replace(id=new_id, recorded_at=t)

        return self._write(f"record history archive of {entry.table_id!r}", op)

    def history_archives(self, table_id: str | None = None) -> list[HistoryArchive]:
        rows = self._rows(f"SELECT {_ARCHIVE_COLS} FROM history_archives WHERE (%(t)s::text IS NULL OR table_id ="
                          " %(t)s) ORDER BY table_id, first_ts, id", {"t": table_id})
        return [HistoryArchive(*r) for r in rows]

    def history_synced(self, table_id: str, entry_ids: Sequence[int]) -> dict[int, int]:
        if not entry_ids:
            return {}
        rows = self._rows("SELECT entry_id, from_ts FROM history_synced WHERE table_id = %s AND entry_id = ANY(%s)",
                          (table_id, list(entry_ids)))
        return {int(r[0]): int(r[1]) for r in rows}

    def mark_history_synced(self, table_id: str, marks: dict[int, int]) -> None:
        def op(conn: _Conn) -> None:
            with conn.cursor() as cur:
                cur.executemany("INSERT INTO history_synced AS h (table_id, entry_id, from_ts) VALUES (%s, %s, %s)"
                                " ON CONFLICT (table_id, entry_id) DO UPDATE SET"
                                " from_ts = least(h.from_ts, excluded.from_ts)",
                                [(table_id, i, t) for i, t in marks.items()])

        if marks:
            self._write(f"mark history sync of {table_id!r}", op)

    # --- online requests -------------------------------------------------------------------------------

    def add_requests(self, counts: dict[str, int]) -> None:
        def op(conn: _Conn) -> None:
            with conn.cursor() as cur:
                # Sorted: concurrent batches lock the rows in one order (no deadlock).
                cur.executemany("INSERT INTO online_requests AS o VALUES (%s, %s) ON CONFLICT (symbol) DO UPDATE SET"
                                " requests = o.requests + excluded.requests", sorted(counts.items()))

        if counts:
            self._write("record online requests", op)

    def top_requested(self, n: int) -> list[str]:
        rows = self._rows("SELECT symbol FROM online_requests ORDER BY requests DESC, symbol LIMIT %s", (n,))
        return [str(r[0]) for r in rows]

    # --- housekeeping ----------------------------------------------------------------------------------

    def referenced_paths(self) -> set[str]:
        rows = self._rows("SELECT path FROM bar_entries UNION ALL SELECT path FROM feature_entries"
                          " UNION ALL SELECT path FROM cache_entries UNION ALL SELECT path FROM history_archives")
        segments = [] if self._bar_cols != _BAR_COLS else self._rows(  # no parts column: none to list
            "SELECT parts FROM bar_entries WHERE parts IS NOT NULL")
        return {str(r[0]) for r in rows} | {p for (parts,) in segments for p in part_paths(parts)}

    def drop_rows(self, table: str, ids: Sequence[int]) -> int:
        if table not in ("bar_entries", "feature_entries"):
            raise ValueError(f"not an entry table: {table!r}")
        query = f"DELETE FROM {table} WHERE id = ANY(%s)".encode()
        self._write(f"delete rows of {table}", lambda conn: conn.execute(query, (list(ids),)))
        return len(ids)

    def drop_superseded(self, before: int) -> tuple[list[BarEntry], list[FeatureEntry]]:
        old = "superseded_at IS NOT NULL AND superseded_at <= %(t)s"

        def op(conn: _Conn) -> tuple[list[BarEntry], list[FeatureEntry]]:
            params = {"t": before}
            bars = [BarEntry(*r) for r in conn.execute(
                f"SELECT {self._bar_cols} FROM bar_entries WHERE {old} ORDER BY id".encode(), params).fetchall()]
            features = [FeatureEntry(*r) for r in conn.execute(
                f"SELECT {_FEATURE_COLS} FROM feature_entries WHERE {old} ORDER BY id".encode(), params).fetchall()]
            for bar in (b for b in bars if not b.appended_only):
                # The restatement must stay on record for a backfill computed from a snapshot before it.
                conn.execute(f"UPDATE bar_entries SET appended_only = false WHERE id = (SELECT MIN(id) FROM bar_entries"
                             f" WHERE symbol = %(s)s AND id > %(i)s AND NOT ({old}))".encode(),
                             {**params, "s": bar.symbol, "i": bar.id})
            ids = [f.id for f in features]
            conn.execute("DELETE FROM history_synced WHERE entry_id = ANY(%s)", (ids,))
            conn.execute("DELETE FROM feature_entries WHERE id = ANY(%s)", (ids,))
            conn.execute("DELETE FROM bar_entries WHERE id = ANY(%s)", ([b.id for b in bars],))
            conn.execute("INSERT INTO store_meta VALUES ('replay_from', %s) ON CONFLICT (key) DO UPDATE SET value ="
                         " GREATEST(store_meta.value::bigint, excluded.value::bigint)::text", (str(before),))
            return bars, features

        return self._write("drop superseded entries", op)

    def replay_from(self) -> int | None:
        rows = self._rows("SELECT value FROM store_meta WHERE key = 'replay_from'")
        return int(rows[0][0]) if rows else None

    def all_bar_entries(self) -> list[BarEntry]:
        return [BarEntry(*r) for r in self._rows(f"SELECT {self._bar_cols} FROM bar_entries ORDER BY id")]

    def all_feature_entries(self) -> list[FeatureEntry]:
        return [FeatureEntry(*r) for r in self._rows(f"SELECT {_FEATURE_COLS} FROM feature_entries ORDER BY id")]

    def replace_feature_file(self, entry_id: int, path: str, size: int, file_hash: str) -> None:
        self._write(f"repair feature entry {entry_id}", lambda conn: conn.execute(
            "UPDATE feature_entries SET path = %s, size = %s, file_hash = %s WHERE id = %s",
            (path, size, file_hash, entry_id)))

    def mark_bars_restated(self, entry_id: int) -> None:
        self._write(f"mark bar snapshot {entry_id} restated", lambda conn: conn.execute(
            "UPDATE bar_entries SET appended_only = false WHERE id = %s", (entry_id,)))

    def vacuum(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(self.where, "vacuum the catalog")

        def op(conn: _Conn) -> None:
            for table in pg_schema.TABLES:  # this schema's tables only, not the whole database
                conn.execute(sql.SQL("VACUUM (ANALYZE) {}.{}").format(sql.Identifier(self.schema),
                                                                      sql.Identifier(table)))

        self._link.run("vacuum the catalog", op, write=False)  # VACUUM cannot run inside a transaction

    def store_id(self) -> str:
        """A uuid made by the first call (one winner across machines: ON CONFLICT DO NOTHING), then kept."""
        rows = self._rows("SELECT value FROM store_meta WHERE key = 'store_id'")
        if rows:
            return str(rows[0][0])

        def op(conn: _Conn) -> str:
            conn.execute("INSERT INTO store_meta VALUES ('store_id', %s) ON CONFLICT (key) DO NOTHING",
                         (uuid.uuid4().hex,))
            return str(_one(conn.execute("SELECT value FROM store_meta WHERE key = 'store_id'"))[0])

        return self._write("create the store id", op)

    # --- locks and lifetime ----------------------------------------------------------------------------

    def key_locks(self, name: str) -> AdvisoryLocks:
        """Locks of this store's ``name`` keys (e.g. "cache"), one object per name (a version lease is taken per
        read), closed with the catalog."""
        with self._link.lock:
            locks = self._locks.get(name)
            if locks is None:
                locks = self._locks[name] = AdvisoryLocks(self._link, name)
        return locks

    def close(self) -> None:
        for locks in self._locks.values():
            locks.close()
        self._link.close()

    # --- compaction (pitstore.offline.compact) -----------------------------------------------------------------

    def repoint_features(self, moves: Sequence[tuple[int, str, str, int, str]]) -> int:
        def op(conn: _Conn) -> int:
            if not moves:
                return 0
            # One statement: each row is re-checked against its expected path under READ COMMITTED.
            cur = conn.execute(
                "UPDATE feature_entries f SET path = m.new, size = m.size, file_hash = m.digest"
                " FROM unnest(%s::bigint[], %s::text[], %s::text[], %s::bigint[], %s::text[])"
                " AS m(id, old, new, size, digest) WHERE f.id = m.id AND f.path = m.old",
                ([m[0] for m in moves], [m[1] for m in moves], [m[2] for m in moves], [m[3] for m in moves],
                 [m[4] for m in moves]))
            return cur.rowcount
        return self._write("repoint compacted feature entries", op)

    # --- whole tables (pitstore.ops.migrate) ---------------------------------------------------------------

    def dump_rows(self, table: str) -> list[tuple[Any, ...]]:
        cols, key = table_columns(table)
        return self._rows(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {', '.join(key)}")

    def load_rows(self, table: str, rows: Sequence[tuple[Any, ...]], *,
                  delete: Sequence[tuple[Any, ...]] = ()) -> None:
        cols, key = table_columns(table)
        update = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in key)
        # OVERRIDING SYSTEM VALUE: the ids are the source's (feature entries and sync marks refer to them).
        insert = (f"INSERT INTO {table} ({', '.join(cols)}) OVERRIDING SYSTEM VALUE VALUES"
                  f" ({', '.join(['%s'] * len(cols))}) ON CONFLICT ({', '.join(key)}) DO "
                  + (f"UPDATE SET {update}" if update else "NOTHING"))
        where = " AND ".join(f"{c} = %s" for c in key)
        flag = cols.index("appended_only") if table == "bar_entries" else -1

        def op(conn: _Conn) -> None:
            with conn.cursor() as cur:
                if delete:
                    cur.executemany(f"DELETE FROM {table} WHERE {where}".encode(), [tuple(k) for k in delete])
                if rows:  # SQLite's 0/1 as a bool
                    cur.executemany(insert.encode(), [r if flag < 0 else (*r[:flag], bool(r[flag]), *r[flag + 1:])
                                                      for r in rows])
                if "id" in key and rows:
                    # The identity sequence past the largest id: the next commit must not take a copied one.
                    cur.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), max(id)) FROM {table}"
                                .encode())

        self._write(f"load rows of {table}", op)


class AdvisoryLocks(ProcessLocks):
    """Locks named by key across processes and machines: PostgreSQL session advisory locks, one connection per
    held (or awaited) key, idle connections kept for the next one. The server releases a lock when its session
    ends, so a waiter takes over from a holder that died (TCP keepalives detect a vanished machine).

    :meth:`shared` holds a key shared (version leases: many readers, excluded by one retiring ``hold``), on one
    session per process for every shared hold, where they stack: a lease costs two round trips, no connection.
    That session is never one ``hold`` uses: a session's own locks do not conflict with each other."""

    _IDLE_MAX = 4  # idle lock connections kept open per process

    def __init__(self, link: _Link, name: str) -> None:
        super().__init__()
        self._link, self._name = link, name
        self._idle: list[_Conn] = []
        self._pid = os.getpid()
        self._reader: _Link | None = None  # the shared holds' session, opened on the first one

    def _take(self) -> _Conn:
        with self._guard:
            if self._pid != os.getpid():  # never the parent's sessions (see _Link._connection)
                self._idle, self._pid = [], os.getpid()
            while self._idle:
                conn = self._idle.pop()
                if not conn.closed:
                    return conn
        return self._link.connect("lock")

    def _give_back(self, conn: _Conn) -> None:
        with self._guard:
            if len(self._idle) < self._IDLE_MAX and not conn.closed and self._pid == os.getpid():
                self._idle.append(conn)
                return
        conn.close()

    def _key(self, key: str) -> int:
        return lock_key("pitstore:lock", self._link.schema, self._name, key)

    @contextmanager
    def shared(self, key: str) -> Iterator[None]:
        with self._guard:
            if self._reader is None:
                self._reader = _Link(self._link.dsn, self._link.schema, self._link.timeout, "lease")
            reader = self._reader
        k = self._key(key)
        # Waits while a retirement holds the key exclusively (short): other threads' leases queue behind it.
        reader.run(f"take the {self._name} lease {key}",
                   lambda conn: conn.execute("SELECT pg_advisory_lock_shared(%s)", (k,)), write=False)
        try:
            yield
        finally:
            # Not raised: a session that is gone has released the lock already (the read itself is done).
            with suppress(BackendError):
                reader.run(f"release the {self._name} lease {key}",
                           lambda conn: conn.execute("SELECT pg_advisory_unlock_shared(%s)", (k,)), write=False)

    def _acquire(self, key: str, timeout: float | None) -> Callable[[], None] | None:
        k = self._key(key)
        conn = self._take()
        try:
            if timeout is not None and timeout <= 0:
                got = bool(_one(conn.execute("SELECT pg_try_advisory_lock(%s)", (k,)))[0])
            else:
                ms = "0" if timeout is None else str(max(1, round(timeout * 1000)))
                conn.execute("SELECT set_config('lock_timeout', %s, false)", (ms,))  # 0: wait for ever
                try:
                    conn.execute("SELECT pg_advisory_lock(%s)", (k,))
                    got = True
                except pg_errors.LockNotAvailable:
                    got = False
        except psycopg.Error as exc:
            conn.close()
            raise BackendUnavailableError(f"{self._link.where}: cannot lock {self._name} key {key[:16]}: "
                                          f"{_cause(exc)}") from exc
        if not got:
            self._give_back(conn)
            return None

        def release() -> None:
            try:
                conn.execute("SELECT pg_advisory_unlock(%s)", (k,))
            except psycopg.Error:
                conn.close()  # a lost session has released the lock already
                return
            self._give_back(conn)

        return release

    def close(self) -> None:
        with self._guard:
            idle, self._idle = self._idle, []
            mine = self._pid == os.getpid()
            reader, self._reader = self._reader, None
        if mine:
            for conn in idle:
                conn.close()
        if reader is not None:
            reader.close()  # its own pid check: never a parent's session


def _cause(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__


def _one(cur: psycopg.Cursor[Any]) -> tuple[Any, ...]:
    row = cur.fetchone()
    assert row is not None
    return tuple(row)

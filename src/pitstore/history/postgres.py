"""The history tier in PostgreSQL: recent feature rows, bitemporal, one index seek per as-of lookup.

Layout (schema ``pitstore`` by default; timestamps are bigint microseconds since 1970-01-01 UTC, exactly
the integers of the Python API, so nothing is converted or rounded on the way)::

    schema_version (component, version, applied_at)          this module's rows have component 'history'
    history_tables (table_key, table_id, columns, created_at, store_id, fingerprint)
                                                              one row per (table_id, store_id, fingerprint)
    history_rows   (table_key, symbol, ts, recorded_at, vals) PRIMARY KEY in that order; vals is float8[]
    index history_rows_table_ts (table_key, ts)               window_start, delete_before, time-bounded scans
    view  history_view                                        the same rows with timestamptz, for SQL tools

Many stores share one server: a table is one store's (``store_id``, from its catalog) and one definition's
(``fingerprint``), not only ``"feature_set@version"`` (two stores' ``daily@1`` are usually two definitions). An
instance sees only the tables of its :class:`StoreScope`, resolved once per table, so the hot path stays one
index seek on the integer ``table_key``. Without a scope it sees the unscoped tables (``store_id`` and
``fingerprint`` empty): those a pitstore before schema version 3 wrote, and those of direct users of this class.
A store adopts such a table of its name at first use only when its catalog says it synced entries into it
(:attr:`StoreScope.adopt`); otherwise the table stays where it is, readable without a scope, never by a store.

A version whose ``vals`` is NULL is a **tombstone**: the (symbol, ts) no longer exists as of its recorded_at
(a restatement removed the bar). Versions recorded before it still answer ``as_known_at`` queries.

As-of rule (DESIGN section 2): at time ``t`` the row of the symbol with the greatest ``ts`` such that
``ts + lag <= t``; with ``as_known_at=T`` only versions recorded at or before ``T`` exist, and the latest
of those wins; a ts whose winning version is a tombstone has no row. Both are one backward scan of the
primary key from ``(table_key, symbol, t - lag)`` with ``recorded_at <= T`` checked inside the index, stopped
after a few versions (``LIMIT 4``): the first version of each ts is its latest, and the first of those that is
not a tombstone is the answer. Only when all of them are tombstones (or versions they hide) does a second
statement look further down: the one ``asof_many`` and ``latest`` use, which skips tombstones in SQL (DISTINCT ON
over the same backward scan, streaming, one index entry read when there is no tombstone).
"""

from __future__ import annotations

import hashlib
import io
import math
import os
import threading
from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, NamedTuple, TypeVar

import psycopg
import pyarrow as pa
import pyarrow.compute as pc
from psycopg import errors as pg_errors
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg.types.numeric import Int4, Int8

from pitstore.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    ConflictError,
    DefinitionError,
    InvalidInputError,
    SchemaMismatchError,
)
from pitstore.history._rows import (
    INT8_MAX,
    INT8_MIN,
    KEY_COLUMNS,
    check_columns,
    decode_scan,
    encode_rows,
    micros,
)
from pitstore.history._rows import bound as _bound
from pitstore.history._rows import check_table_id as _check_table_id
from pitstore.history._rows import known as _known
from pitstore.history._rows import spans as _spans
from pitstore.history._rows import symbol_list as _symbols
from pitstore.history._rows import version_keys as _version_keys
from pitstore.history.base import TOMBSTONE, AsofRow, StoreScope
from pitstore.sources.bars import validate_symbol

__all__ = ["SCHEMA_VERSION", "TOMBSTONE", "AsofRow", "PostgresHistory", "StoreScope"]

SCHEMA_VERSION = 3
_COMPONENT = "history"
_T = TypeVar("_T")
_Conn = psycopg.Connection[Any]

# Each migration is a list of statements, applied in one transaction with its schema_version row.
_MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (1, (
        """CREATE TABLE {s}.history_tables (
            table_key  integer GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
            table_id   text NOT NULL UNIQUE,
            columns    text[] NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now()
        )""",
        # No foreign key to history_tables: it would add a trigger call per inserted row to bulk writes,
        # and table_key only ever comes from history_tables.
        """CREATE TABLE {s}.history_rows (
            table_key   integer NOT NULL,
            symbol      text COLLATE "C" NOT NULL,
            ts          bigint NOT NULL,
            recorded_at bigint NOT NULL,
            vals        float8[] NOT NULL,
            PRIMARY KEY (table_key, symbol, ts, recorded_at)
        )""",
        "COMMENT ON COLUMN {s}.history_rows.ts IS 'microseconds since 1970-01-01 UTC'",
        "COMMENT ON COLUMN {s}.history_rows.recorded_at IS 'microseconds since 1970-01-01 UTC'",
        "COMMENT ON COLUMN {s}.history_rows.vals IS 'feature values in the order of history_tables.columns'",
        "CREATE INDEX history_rows_table_ts ON {s}.history_rows (table_key, ts)",
        """CREATE VIEW {s}.history_view AS
            SELECT t.table_id, t.columns, r.symbol,
                   timestamptz 'epoch' + r.ts * interval '1 microsecond' AS ts,
                   timestamptz 'epoch' + r.recorded_at * interval '1 microsecond' AS recorded_at,
                   r.vals
            FROM {s}.history_rows r JOIN {s}.history_tables t USING (table_key)""",
    )),
    (2, (
        # Tombstones. Dropping NOT NULL only changes the catalog: no table rewrite, no index rebuild.
        "ALTER TABLE {s}.history_rows ALTER COLUMN vals DROP NOT NULL",
        "COMMENT ON COLUMN {s}.history_rows.vals IS 'feature values in the order of history_tables.columns;"
        " NULL: a tombstone, the (symbol, ts) no longer exists as of recorded_at'",
        # The view keeps every version, tombstones included (a SQL reader picking the latest version must see
        # them), and says which they are; a new column can only go last.
        """CREATE OR REPLACE VIEW {s}.history_view AS
            SELECT t.table_id, t.columns, r.symbol,
                   timestamptz 'epoch' + r.ts * interval '1 microsecond' AS ts,
                   timestamptz 'epoch' + r.recorded_at * interval '1 microsecond' AS recorded_at,
                   r.vals, r.vals IS NULL AS tombstone
            FROM {s}.history_rows r JOIN {s}.history_tables t USING (table_key)""",
    )),
    (3, (
        # Tables of a store and a definition. Existing tables become unscoped ('', ''); a constant default adds
        # the columns without rewriting the table. history_rows is untouched: table_key already ties every row.
        "ALTER TABLE {s}.history_tables ADD COLUMN store_id text NOT NULL DEFAULT '',"
        " ADD COLUMN fingerprint text NOT NULL DEFAULT ''",
        "ALTER TABLE {s}.history_tables DROP CONSTRAINT history_tables_table_id_key",
        "ALTER TABLE {s}.history_tables ADD CONSTRAINT history_tables_scope_key"
        " UNIQUE (table_id, store_id, fingerprint)",
        "COMMENT ON COLUMN {s}.history_tables.store_id IS 'the store (its catalog''s store id) the table belongs to;"
        " empty: unscoped, e.g. written before stores had ids'",
        "COMMENT ON COLUMN {s}.history_tables.fingerprint IS 'fingerprint of the feature-set definition of the rows'",
        """CREATE OR REPLACE VIEW {s}.history_view AS
            SELECT t.table_id, t.columns, r.symbol,
                   timestamptz 'epoch' + r.ts * interval '1 microsecond' AS ts,
                   timestamptz 'epoch' + r.recorded_at * interval '1 microsecond' AS recorded_at,
                   r.vals, r.vals IS NULL AS tombstone, t.store_id, t.fingerprint
            FROM {s}.history_rows r JOIN {s}.history_tables t USING (table_key)""",
    )),
)

# Versions one as-of seek reads: enough for a tombstone with an older version or two above the answer. A
# look-up costs its round trip: 1 or 8 versions read make no measurable difference.
_ASOF_ROWS = 4
_ASOF = (
    "SELECT ts, vals FROM {s}.history_rows"
    " WHERE table_key = {0} AND symbol = {1}::text AND ts <= {2} AND recorded_at <= {3}"
    f" ORDER BY ts DESC, recorded_at DESC LIMIT {_ASOF_ROWS}"
)
# Any number of tombstones skipped in SQL: DISTINCT ON emits the latest version of each ts as the backward index
# scan streams them (no sort, no read-ahead), and the scan stops at the first that is not a tombstone. Without
# tombstones it reads one index entry, as LIMIT 1 did; asof() keeps the plainer plan above for explain_asof.
_ASOF_MANY = (
    "SELECT q.i, r.ts, r.vals FROM unnest(%s::text[], %s::int8[]) WITH ORDINALITY AS q(symbol, bound, i)"
    " JOIN LATERAL (SELECT v.ts, v.vals FROM (SELECT DISTINCT ON (h.ts) h.ts, h.vals FROM {s}.history_rows h"
    "   WHERE h.table_key = %s AND h.symbol = q.symbol AND h.ts <= q.bound AND h.recorded_at <= %s"
    "   ORDER BY h.ts DESC, h.recorded_at DESC) v WHERE v.vals IS NOT NULL LIMIT 1) r ON true"
)
# recorded_at of a write: the caller's, else the server clock at the start of the write's transaction (now() is
# the same value in every statement of one write).
_REC = "coalesce({0}::int8, (extract(epoch FROM now()) * 1000000)::int8)"
# Tombstones for a write that replaces spans (symbol, lo, hi): each (symbol, ts) in a span whose latest version
# recorded at or before the write's is live and which the write does not contain. A live version recorded at
# the write's own recorded_at is not replaced but reported: what was known at a time never changes. Nothing
# stored in a span (an append beyond every stored row): one empty index range scan per span.
_TOMBSTONES = (
    "WITH gone AS (SELECT v.symbol, v.ts, v.recorded_at"
    "  FROM unnest(%(symbols)s::text[], %(lo)s::int8[], %(hi)s::int8[]) AS p(symbol, lo, hi)"
    "  CROSS JOIN LATERAL (SELECT DISTINCT ON (h.ts) h.symbol, h.ts, h.recorded_at, h.vals FROM {s}.history_rows h"
    "    WHERE h.table_key = %(key)s AND h.symbol = p.symbol AND h.ts BETWEEN p.lo AND p.hi AND h.recorded_at <= {rec}"
    "    ORDER BY h.ts DESC, h.recorded_at DESC) v"
    "  WHERE v.vals IS NOT NULL"
    "    AND NOT EXISTS (SELECT FROM pg_temp.{stage} g WHERE g.symbol = v.symbol AND g.ts = v.ts)"
    "), added AS (INSERT INTO {s}.history_rows (table_key, symbol, ts, recorded_at, vals)"
    "  SELECT %(key)s, symbol, ts, {rec}, NULL FROM gone WHERE recorded_at < {rec}"
    "  ORDER BY symbol, ts ON CONFLICT DO NOTHING RETURNING 1)"
    " SELECT (SELECT count(*) FROM added), c.symbol, c.ts FROM (VALUES (1)) AS one (x)"
    "  LEFT JOIN (SELECT symbol, ts FROM gone WHERE recorded_at = {rec} LIMIT 1) c ON true"
)
_STAGE = "pitstore_history_stage"
_INHERITED: list[object] = []  # connections opened by a parent process before fork() (see _connection)
_EXPLAINED = "pitstore_history_explained_asof"


class _Table(NamedTuple):
    key: int
    columns: tuple[str, ...]


class _Queries:
    """Every fixed statement, rendered once for the schema (identifiers quoted by psycopg.sql): composing
    a statement per call would cost about as much as the index seek itself."""

    def __init__(self, schema: str) -> None:
        s = self.schema = sql.Identifier(schema)
        stage = sql.Identifier(_STAGE)

        def q(text: str, *args: sql.Composable, **kwargs: sql.Composable) -> bytes:
            return sql.SQL(text).format(*args, s=s, stage=stage, **kwargs).as_bytes(None)

        self.asof = q(_ASOF, *(sql.Placeholder() for _ in range(4)))
        self.prepare_asof = sql.SQL("PREPARE {} (integer, text, bigint, bigint) AS ").format(
            sql.Identifier(_EXPLAINED)).as_bytes(None) + q(_ASOF, *(sql.SQL(f"${i}") for i in range(1, 5)))
        # EXECUTE's arguments of a utility statement get no parameter types: they are rendered as literals.
        self.explain_prepared = sql.SQL("EXPLAIN (FORMAT JSON) EXECUTE {} ({}, {}, {}, {})")
        self.deallocate = sql.SQL("DEALLOCATE {}").format(sql.Identifier(_EXPLAINED)).as_bytes(None)
        self.asof_many = q(_ASOF_MANY)
        self.create_version_table = q(
            "CREATE TABLE IF NOT EXISTS {s}.schema_version (component text NOT NULL, version integer NOT NULL,"
            " applied_at timestamptz NOT NULL DEFAULT now(), PRIMARY KEY (component, version))"
        )
        self.current_version = q("SELECT coalesce(max(version), 0) FROM {s}.schema_version WHERE component = %s")
        self.add_version = q("INSERT INTO {s}.schema_version (component, version) VALUES (%s, %s)")
        self.migrations = [(v, [q(stmt) for stmt in stmts]) for v, stmts in _MIGRATIONS]
        # The scope's own table, else an unscoped one (store_id '' sorts first): a candidate for adoption.
        self.get_table = q(
            "SELECT table_key, columns, store_id FROM {s}.history_tables WHERE table_id = %s"
            " AND ((store_id = %s AND fingerprint = %s) OR store_id = '') ORDER BY store_id DESC LIMIT 1"
        )
        self.add_table = q(
            "INSERT INTO {s}.history_tables (table_id, store_id, fingerprint, columns) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (table_id, store_id, fingerprint) DO NOTHING"
        )
        self.adopt_table = q(
            "UPDATE {s}.history_tables SET store_id = %s, fingerprint = %s WHERE table_key = %s AND store_id = ''"
        )
        self.create_stage = q(
            'CREATE TEMP TABLE IF NOT EXISTS {stage} (symbol text COLLATE "C" NOT NULL, ts bigint NOT NULL,'
            " vals float8[] NOT NULL) ON COMMIT DELETE ROWS"
        )
        self.copy_stage = q("COPY pg_temp.{stage} (symbol, ts, vals) FROM STDIN (FORMAT csv)")
        rec = _REC.format("%s")
        self.insert = q(
            "INSERT INTO {s}.history_rows (table_key, symbol, ts, recorded_at, vals)"
            f" SELECT %s, symbol, ts, {rec}, vals FROM pg_temp.{{stage}} ORDER BY symbol, ts ON CONFLICT DO NOTHING"
        )
        self.clash = q(
            "SELECT g.symbol, g.ts, r.recorded_at FROM pg_temp.{stage} g JOIN {s}.history_rows r"
            f" ON r.table_key = %s AND r.symbol = g.symbol AND r.ts = g.ts AND r.recorded_at = {rec}"
            " WHERE r.vals IS DISTINCT FROM g.vals LIMIT 1"
        )
        self.tombstones = q(_TOMBSTONES, rec=sql.SQL(_REC.format("%(rec)s")))
        # The first ts of a live row: a forward scan of (table_key, ts) that skips tombstones and the versions a
        # later tombstone hides (a version is live at the latest if no tombstone was recorded after it).
        self.window_start = q(
            "SELECT h.ts FROM {s}.history_rows h WHERE h.table_key = %s AND h.vals IS NOT NULL AND NOT EXISTS"
            " (SELECT FROM {s}.history_rows n WHERE n.table_key = h.table_key AND n.symbol = h.symbol"
            "  AND n.ts = h.ts AND n.recorded_at > h.recorded_at AND n.vals IS NULL) ORDER BY h.ts LIMIT 1"
        )
        self.delete_before = q("DELETE FROM {s}.history_rows WHERE table_key = %s AND ts < %s")
        # Nested loop of primary-key seeks: each named version is deleted exactly, whatever else arrived since.
        self.delete_versions = q(
            "DELETE FROM {s}.history_rows h USING unnest(%s::text[], %s::int8[], %s::int8[]) AS k(symbol, ts, rec)"
            " WHERE h.table_key = %s AND h.symbol = k.symbol AND h.ts = k.ts AND h.recorded_at = k.rec"
        )
        self.tables = q("SELECT table_id, fingerprint FROM {s}.history_tables WHERE store_id = %s ORDER BY table_id")


class PostgresHistory:
    """Recent feature rows of many tables ("feature_set@version") in one PostgreSQL schema.

    ``scope``: the store whose tables this instance reads and writes (see the module docstring); None: the
    unscoped tables.

    One connection per instance, shared by threads under a lock, opened lazily, in autocommit mode (writes
    use explicit transactions); a forked child process opens its own. A connection lost since the last
    call (server restart, failover) is replaced and the call retried once, transparently: every call is
    idempotent. When the server cannot be reached, :class:`BackendUnavailableError` names it and the cause;
    any other server error raises :class:`BackendError`. Timestamps are integer microseconds since
    1970-01-01 UTC, in and out.

    ``connect_timeout`` follows libpq: whole seconds, at least 2 (smaller values are raised to 2). A server
    that stops answering mid-query is only detected by TCP: add e.g. ``tcp_user_timeout=5000`` to the URL.
    """

    def __init__(self, url: str, *, schema: str = "pitstore", scope: StoreScope | None = None,
                 connect_timeout: float = 2.0) -> None:
        try:
            info = conninfo_to_dict(url)
        except psycopg.Error as exc:
            raise ConfigError(f"invalid PostgreSQL URL: {_cause(exc)}") from None
        if not isinstance(schema, str) or not schema or len(schema.encode()) > 63 or "\x00" in schema:
            raise ConfigError(f"invalid PostgreSQL schema name {schema!r}: 1 to 63 bytes")
        if scope is not None and (not isinstance(scope.store_id, str) or not scope.store_id.isprintable()
                                  or not scope.store_id):
            raise ConfigError(f"invalid store id {scope.store_id!r}: a non-empty printable string")
        self._url = url
        self._schema = schema
        self._scope = scope
        self._store_id = "" if scope is None else scope.store_id
        self._fingerprints: dict[str, str] = {}  # table_id -> fingerprint: versions are write-once
        self._declined: set[str] = set()  # unscoped tables the scope does not adopt
        self._timeout = max(2, math.ceil(connect_timeout))
        # Never the password: this text goes into error messages and logs.
        self._where = "PostgreSQL at {}:{}/{}".format(
            info.get("host") or info.get("hostaddr") or "localhost", info.get("port") or 5432,
            info.get("dbname") or info.get("user") or "postgres",
        )
        self._q = _Queries(schema)
        self._lock = threading.Lock()
        self._conn: _Conn | None = None
        self._staged_on: _Conn | None = None
        self._tables: dict[str, _Table] = {}  # column lists are write-once: a cached entry never goes stale
        self._closed = False
        self._pid = os.getpid()

    def __repr__(self) -> str:
        store = "" if self._scope is None else f", store={self._store_id!r}"
        return f"PostgresHistory({self._where}, schema={self._schema!r}{store})"

    def __enter__(self) -> PostgresHistory:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    # --- schema ---------------------------------------------------------------------------------------

    def migrate(self) -> None:
        """Create or upgrade the schema, tables and indexes; idempotent and safe to run concurrently.

        Runs in one transaction under an advisory lock keyed by the schema name, so concurrent callers
        (threads or processes) apply each step exactly once. A database migrated by a newer pitstore is an
        error, not a downgrade.
        """
        lock_key = int.from_bytes(hashlib.blake2b(f"pitstore:migrate:{self._schema}".encode(), digest_size=8)
                                  .digest(), "big", signed=True)

        def op(conn: _Conn) -> None:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (Int8(lock_key),))
                # CREATE SCHEMA IF NOT EXISTS needs the CREATE privilege even when the schema exists.
                if conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self._schema,)).fetchone() is None:
                    conn.execute(sql.SQL("CREATE SCHEMA {}").format(self._q.schema))
                conn.execute(self._q.create_version_table)
                current = _one(conn.execute(self._q.current_version, (_COMPONENT,)))[0]
                if current > SCHEMA_VERSION:
                    raise BackendError(
                        f"{self._where}: schema {self._schema!r} has history version {current}, newer than this"
                        f" pitstore's {SCHEMA_VERSION}; upgrade pitstore"
                    )
                for version, statements in self._q.migrations:
                    if version > current:
                        for statement in statements:
                            conn.execute(statement)
                        conn.execute(self._q.add_version, (_COMPONENT, version))

        self._run("migrate", op)

    def tables(self) -> list[str]:
        """Every table_id ("feature_set@version") of the scope ever written, sorted."""
        def op(conn: _Conn) -> list[str]:
            rows = conn.execute(self._q.tables, (self._store_id,)).fetchall()
            return [t for t, fp in rows if fp == self._fingerprint(t)]

        return self._run("tables", op)

    def columns(self, table_id: str) -> tuple[str, ...] | None:
        """The fixed feature column list of ``table_id``; None when it was never written."""
        _check_table_id(table_id)
        table = self._run("columns", lambda conn: self._table(conn, table_id))
        return None if table is None else table.columns

    # --- writes ---------------------------------------------------------------------------------------

    def write(self, table_id: str, columns: Sequence[str], rows: pa.Table, *, recorded_at: int | None = None,
              replaces: Sequence[tuple[str, int, int]] = ()) -> int:
        """Store ``rows`` (columns ``symbol``, ``ts`` and ``columns``) as versions recorded at ``recorded_at``.

        ``ts`` is timestamp[tz=UTC] or int64 µs; feature columns are numeric, null stays null and NaN stays
        NaN (NaN payload bits are not kept). ``recorded_at`` defaults to the server's clock at the start of the
        write's transaction, one value for the whole call. Bulk path: COPY into a temporary table, then one
        INSERT in (symbol, ts) order. All or nothing.

        ``replaces``: spans ``(symbol, first_ts, last_ts)`` (inclusive) that ``rows`` restate entirely, as a
        recomputed offline entry does. Each (symbol, ts) in a span that is live as known at ``recorded_at``
        (its latest version then is not a tombstone) and absent from ``rows`` gets a tombstone recorded at
        ``recorded_at``, in the same transaction. Nothing outside the spans is touched.

        Idempotent: a (symbol, ts, recorded_at) already stored with the same values is skipped; with
        different values (or stored, but absent from a span replaced at that same time) it raises
        :class:`ConflictError` (what was known at a time never changes; a restatement is a new version with a
        later ``recorded_at``). The first write of ``table_id`` fixes its column list; another list raises
        :class:`SchemaMismatchError`. Returns the versions newly stored, tombstones included.
        """
        _check_table_id(table_id)
        cols = check_columns(columns)
        if TOMBSTONE in cols:
            raise DefinitionError(f"feature column {TOMBSTONE!r} clashes with the marker of tombstones in scans")
        payload, n = encode_rows(rows, cols)
        rec = None if recorded_at is None else micros(recorded_at, "recorded_at")
        spans = _spans(replaces)

        def op(conn: _Conn) -> int:
            table = self._register(conn, table_id, cols)
            if n == 0 and not spans["symbols"]:
                return 0
            if self._staged_on is not conn:
                conn.execute(self._q.create_stage)  # per session, outside the write so a rollback keeps it
                self._staged_on = conn
            at = None if rec is None else Int8(rec)
            with conn.transaction():
                with conn.cursor().copy(self._q.copy_stage) as copy:
                    copy.write(payload)
                inserted = conn.execute(self._q.insert, (Int4(table.key), at)).rowcount
                if inserted < n:
                    clash = conn.execute(self._q.clash, (Int4(table.key), at)).fetchone()
                    if clash is not None:
                        raise ConflictError(
                            f"{table_id!r}: ({clash[0]!r}, ts={clash[1]}) recorded at {clash[2]} is already stored"
                            " with other values; a restatement needs a later recorded_at"
                        )
                if spans["symbols"]:
                    added, symbol, ts = _one(conn.execute(self._q.tombstones,
                                                          {**spans, "key": Int4(table.key), "rec": at}))
                    if symbol is not None:
                        raise ConflictError(
                            f"{table_id!r}: ({symbol!r}, ts={ts}) is stored with this write's recorded_at but"
                            " absent from it, in a span it replaces; a restatement needs a later recorded_at"
                        )
                    inserted += added
            return inserted

        return self._run(f"write to {table_id!r}", op)

    def delete_before(self, table_id: str, ts: int) -> int:
        """Delete every version of the rows of ``table_id`` with ``ts`` strictly before ``ts``; returns the count."""
        _check_table_id(table_id)
        cutoff = micros(ts, "ts")

        def op(conn: _Conn) -> int:
            table = self._table(conn, table_id)
            if table is None:
                return 0
            return conn.execute(self._q.delete_before, (Int4(table.key), Int8(cutoff))).rowcount

        return self._run(f"delete_before in {table_id!r}", op)

    def delete_versions(self, table_id: str, keys: pa.Table) -> int:
        """Delete exactly the versions named by ``keys`` (columns ``symbol``, ``ts``, ``recorded_at``, as
        :meth:`scan` returns them); returns the count. Unlike :meth:`delete_before`, a version written after
        ``keys`` were read survives: what tiering deletes is only what it archived. One transaction."""
        _check_table_id(table_id)
        symbols, ts, recorded = _version_keys(keys)

        def op(conn: _Conn) -> int:
            table = self._table(conn, table_id)
            if table is None or not symbols:
                return 0
            params = (symbols, ts, recorded, Int4(table.key))
            return conn.execute(self._q.delete_versions, params).rowcount

        return self._run(f"delete_versions in {table_id!r}", op)

    # --- reads ----------------------------------------------------------------------------------------

    def asof(self, table_id: str, symbol: str, t: int, *, lag: int = 0,
             as_known_at: int | None = None) -> AsofRow | None:
        """The row of ``symbol`` with the greatest ``ts`` such that ``ts + lag <= t``, as known at
        ``as_known_at`` (default: latest versions), skipping ts whose version then is a tombstone; None when
        there is none. One prepared index seek (a second one below a run of tombstones).
        """
        _check_table_id(table_id)
        validate_symbol(symbol)
        bound, known = _bound(t, lag), _known(as_known_at)

        def op(conn: _Conn) -> AsofRow | None:
            table = self._table(conn, table_id)
            if table is None:
                return None
            cur = conn.cursor(binary=True)
            cur.execute(self._q.asof, (Int4(table.key), symbol, Int8(bound), Int8(known)), prepare=True)
            row, below = _first_live(cur.fetchall())
            if below is not None:
                row = self._many(conn, table, [symbol], [below], known)[0]
            return row

        return self._run(f"asof in {table_id!r}", op)

    def explain_asof(self, table_id: str, symbol: str, t: int, *, lag: int = 0, as_known_at: int | None = None,
                     generic: bool = False) -> dict[str, Any]:
        """The plan of :meth:`asof`'s statement for these arguments (``EXPLAIN (FORMAT JSON)``, its root node).

        ``generic=True`` shows the generic plan, which a prepared statement may switch to after a few runs.
        For operators and tests: the plan must be a LIMIT over one backward primary-key index scan (the
        statement that looks below a run of tombstones, rarely needed, is not shown).
        """
        _check_table_id(table_id)
        validate_symbol(symbol)
        bound, known = _bound(t, lag), _known(as_known_at)

        def op(conn: _Conn) -> dict[str, Any]:
            table = self._table(conn, table_id)
            params = (Int4(-1 if table is None else table.key), symbol, Int8(bound), Int8(known))
            if not generic:
                # Executed as asof() executes it (binary parameters), so the plan is the one it gets.
                cur = conn.cursor(binary=True)
                plan = _one(cur.execute(b"EXPLAIN (FORMAT JSON) " + self._q.asof, params))[0]
            else:
                conn.execute(self._q.prepare_asof)
                try:
                    with conn.transaction():
                        conn.execute("SET LOCAL plan_cache_mode = force_generic_plan")
                        explain = self._q.explain_prepared.format(sql.Identifier(_EXPLAINED),
                                                                  *(sql.Literal(p) for p in params))
                        plan = _one(conn.execute(explain))[0]
                finally:
                    if not conn.closed:
                        conn.execute(self._q.deallocate)
            root: dict[str, Any] = plan[0]["Plan"]
            return root

        return self._run(f"explain asof in {table_id!r}", op)

    def asof_many(self, table_id: str, symbols: Sequence[str], ts: Sequence[int], *, lag: int = 0,
                  as_known_at: int | None = None) -> list[AsofRow | None]:
        """:meth:`asof` for each ``(symbols[i], ts[i])``, in input order, in one round trip."""
        _check_table_id(table_id)
        names = _symbols(symbols)
        if isinstance(ts, str | bytes) or len(ts) != len(names):
            raise InvalidInputError(f"asof_many needs as many timestamps as symbols ({len(names)})", column="ts")
        return self._lookup(table_id, names, [_bound(t, lag) for t in ts], _known(as_known_at))

    def latest(self, table_id: str, symbols: Sequence[str]) -> list[AsofRow | None]:
        """The latest row (greatest ts, latest version, tombstones skipped) of each symbol, in input order."""
        _check_table_id(table_id)
        names = _symbols(symbols)
        return self._lookup(table_id, names, [INT8_MAX] * len(names), INT8_MAX)

    def scan(self, table_id: str, *, symbols: Sequence[str] | None = None, start: int | None = None,
             end: int | None = None, as_known_at: int | None = None, all_versions: bool = False) -> pa.Table:
        """Rows with ``start <= ts <= end`` (bounds optional), the latest version of each (symbol, ts)
        visible at ``as_known_at``, sorted by symbol (code point order) then ts; a (symbol, ts) whose latest
        visible version is a tombstone has no row. ``all_versions=True`` keeps every visible version instead
        (restatements and tombstones included), sorted by symbol, ts then recorded_at, with a boolean column
        ``tombstone`` after ``recorded_at`` (a tombstone's features are null).

        Columns: ``symbol``, ``ts`` and ``recorded_at`` (timestamp[us, tz=UTC]), ``tombstone`` (bool, with
        ``all_versions`` only) and the feature columns (float64). An unknown ``table_id`` gives an empty table
        of those key columns.
        """
        _check_table_id(table_id)
        names = None if symbols is None else _symbols(symbols)
        conds = [sql.SQL("table_key = %s")]
        params: list[Any] = []
        if as_known_at is not None:
            conds.append(sql.SQL("recorded_at <= %s"))
            params.append(micros(as_known_at, "as_known_at"))
        if names is not None:
            conds.append(sql.SQL("symbol = ANY(%s::text[])"))
            params.append(names)
        if start is not None:
            conds.append(sql.SQL("ts >= %s"))
            params.append(micros(start, "start"))
        if end is not None:
            conds.append(sql.SQL("ts <= %s"))
            params.append(micros(end, "end"))

        def op(conn: _Conn) -> pa.Table:
            table = self._table(conn, table_id)
            if table is None or names == []:
                columns = () if table is None else table.columns
                return _tombstones(decode_scan(b"", (*columns, TOMBSTONE)), all_versions)
            values = sql.SQL(", ").join(sql.SQL(f"vals[{i}]") for i in range(1, len(table.columns) + 1))
            # Primary-key order streams from the index with no sort (DISTINCT ON would need one, spilling to
            # disk for large scans); decode_scan keeps the last, i.e. latest visible, version of each key. A
            # tombstone's vals[i] are all null, like a row of nulls: the last column tells them apart.
            query = sql.SQL(
                "COPY (SELECT symbol, ts, recorded_at, {values}, (vals IS NULL)::int FROM {s}.history_rows"
                " WHERE {conds} ORDER BY symbol, ts, recorded_at) TO STDOUT (FORMAT csv)"
            ).format(values=values, s=self._q.schema, conds=sql.SQL(" AND ").join(conds))
            buf = io.BytesIO()
            with conn.cursor().copy(query, (table.key, *params)) as copy:
                for chunk in copy:
                    buf.write(chunk)
            scanned = decode_scan(buf.getvalue(), (*table.columns, TOMBSTONE), latest_only=not all_versions)
            return _tombstones(scanned, all_versions)

        return self._run(f"scan of {table_id!r}", op)

    def window_start(self, table_id: str) -> int | None:
        """The smallest ts of a row held for ``table_id`` (None when empty), tombstoned rows not counted: older
        rows live in the offline tier."""
        _check_table_id(table_id)

        def op(conn: _Conn) -> int | None:
            table = self._table(conn, table_id)
            if table is None:
                return None
            row = conn.execute(self._q.window_start, (Int4(table.key),)).fetchone()
            return None if row is None else int(row[0])

        return self._run(f"window_start of {table_id!r}", op)

    # --- connection -----------------------------------------------------------------------------------

    def ping(self) -> None:
        """Round trip to the server; raises :class:`BackendUnavailableError` when it cannot be reached."""
        self._run("ping", lambda conn: conn.execute("SELECT 1"))

    def close(self) -> None:
        """Close the connection; later calls raise :class:`BackendError`. Idempotent."""
        with self._lock:
            self._closed = True
            self._discard()

    def _lookup(self, table_id: str, names: list[str], bounds: list[int], known: int) -> list[AsofRow | None]:
        if not names:
            return []

        def op(conn: _Conn) -> list[AsofRow | None]:
            table = self._table(conn, table_id)
            if table is None:
                return [None] * len(names)
            return self._many(conn, table, names, bounds, known)

        return self._run(f"asof_many in {table_id!r}", op)

    def _many(self, conn: _Conn, table: _Table, names: list[str], bounds: list[int],
              known: int) -> list[AsofRow | None]:
        """As-of look-ups ``(names[i], bounds[i])`` in one statement, any number of tombstones skipped."""
        out: list[AsofRow | None] = [None] * len(names)
        cur = conn.cursor(binary=True)
        cur.execute(self._q.asof_many, (names, bounds, Int4(table.key), Int8(known)), prepare=True)
        for i, ts, vals in cur:
            out[i - 1] = (ts, tuple(vals))
        return out

    def _fingerprint(self, table_id: str) -> str | None:
        if self._scope is None:
            return ""
        fp = self._fingerprints.get(table_id)
        if fp is None:
            fp = self._scope.fingerprint(table_id)
            if fp is not None:  # not cached when unknown: the store may register it at any time
                self._fingerprints[table_id] = fp
        return fp

    def _table(self, conn: _Conn, table_id: str) -> _Table | None:
        """The scope's table ``table_id`` of its current definition, resolved once (the fingerprint is part
        of the key, so a table of another definition or store is never found)."""
        table = self._tables.get(table_id)
        if table is None:
            fp = self._fingerprint(table_id)
            if fp is None:
                return None
            row = conn.execute(self._q.get_table, (table_id, self._store_id, fp)).fetchone()
            if row is None or (row[2] != self._store_id and not self._adopt(conn, table_id, row[0], fp)):
                return None  # not cached: another process may create it at any time
            table = self._tables[table_id] = _Table(row[0], tuple(row[1]))
        return table

    def _adopt(self, conn: _Conn, table_id: str, key: int, fp: str) -> bool:
        """Make the unscoped table ``key`` the scope's, if the scope claims it; False when it does not, or when
        another instance took it first (then the next call resolves again)."""
        assert self._scope is not None
        if table_id in self._declined:
            return False
        if not self._scope.adopt(table_id):
            self._declined.add(table_id)
            return False
        return bool(conn.execute(self._q.adopt_table, (self._store_id, fp, Int4(key))).rowcount)

    def _register(self, conn: _Conn, table_id: str, columns: tuple[str, ...]) -> _Table:
        table = self._table(conn, table_id)
        if table is None:
            fp = self._fingerprint(table_id)
            if fp is None:
                raise DefinitionError(f"history table {table_id!r}: no such feature-set version in this store")
            # Autocommit, before the write: a rolled-back write must not leave a cached key behind. Two
            # statements, since a concurrent creator's row is invisible to the INSERT's own snapshot.
            conn.execute(self._q.add_table, (table_id, self._store_id, fp, list(columns)))
            table = self._table(conn, table_id)
            assert table is not None
        if table.columns != columns:
            raise SchemaMismatchError(
                f"history table {table_id!r} has columns {list(table.columns)}, the write has {list(columns)}"
            )
        return table

    def _connection(self) -> _Conn:
        if self._closed:
            raise BackendError(f"{self!r} is closed")
        if self._pid != os.getpid():
            # A forked child must not touch the parent's socket, nor close it: libpq would send the server a
            # Terminate message and end the parent's session. The inherited object is kept, unused, for good.
            if self._conn is not None:
                _INHERITED.append(self._conn)
            self._conn = self._staged_on = None
            self._pid = os.getpid()
        if self._conn is None or self._conn.closed:
            try:
                conn = psycopg.connect(self._url, autocommit=True, connect_timeout=self._timeout,
                                       client_encoding="utf8")
            except psycopg.Error as exc:
                raise BackendUnavailableError(f"{self._where} is unavailable: {_cause(exc)}") from exc
            try:
                # Shortest exact float text (the default since PostgreSQL 12, unless a server overrides it).
                conn.execute("SET extra_float_digits = 3")
            except psycopg.Error as exc:
                conn.close()
                raise BackendUnavailableError(f"{self._where} is unavailable: {_cause(exc)}") from exc
            self._conn = conn
        return self._conn

    def _discard(self) -> None:
        if self._conn is not None:
            self._conn.close()
        self._conn = self._staged_on = None

    def _run(self, what: str, op: Callable[[_Conn], _T]) -> _T:
        """``op`` on the connection under the lock, mapping psycopg errors; one retry on a lost connection."""
        with self._lock:
            for attempt in (1, 2):
                conn = self._connection()
                try:
                    return op(conn)
                except psycopg.Error as exc:
                    if not conn.closed:
                        raise self._error(what, exc) from exc
                    self._discard()
                    if attempt == 2:
                        raise BackendUnavailableError(
                            f"{self._where}: connection lost during {what}: {_cause(exc)}") from exc
            raise AssertionError("unreachable")

    def _error(self, what: str, exc: psycopg.Error) -> BackendError:
        if isinstance(exc, pg_errors.UndefinedTable | pg_errors.InvalidSchemaName):
            return BackendError(f"{self._where}: schema {self._schema!r} is not set up for the history tier"
                                f" (call migrate()): {_cause(exc)}")
        state = f" [{exc.sqlstate}]" if exc.sqlstate else ""
        return BackendError(f"{self._where}: {what} failed{state}: {_cause(exc)}")


def _first_live(versions: Sequence[tuple[int, Any]]) -> tuple[AsofRow | None, int | None]:
    """The as-of answer among ``versions`` ((ts, vals) ordered by ts then recorded_at, both descending: the first
    version of a ts is its latest), as ``(row, None)``; or ``(None, bound)`` when all ``_ASOF_ROWS`` of them were
    tombstones or versions they hide and the answer lies at or below ``bound``."""
    dead = None  # the last ts seen: its latest version was a tombstone, its older ones are hidden
    for ts, vals in versions:
        if ts != dead:
            if vals is not None:
                return (ts, tuple(vals)), None
            dead = ts
    if len(versions) < _ASOF_ROWS or dead is None or dead == INT8_MIN:
        return None, None  # every version up to the bound was read
    return None, dead - 1


def _tombstones(scanned: pa.Table, all_versions: bool) -> pa.Table:
    """A scan decoded with the tombstone flag (1.0 or 0.0) as its last column: latest versions lose the
    tombstoned keys and the flag; all versions get the flag as the boolean column ``tombstone`` after
    ``recorded_at``."""
    last = scanned.num_columns - 1
    flag = pc.equal(scanned.column(last), 1.0)
    scanned = scanned.remove_column(last)
    if all_versions:
        return scanned.add_column(len(KEY_COLUMNS), TOMBSTONE, flag)
    return scanned.filter(pc.invert(flag))


def _cause(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:500] or type(exc).__name__


def _one(cur: psycopg.Cursor[Any]) -> Any:
    row = cur.fetchone()
    assert row is not None
    return row

"""SQLite online store (WAL): the embedded, persistent default, shared by the processes of one machine."""

from __future__ import annotations

import mmap
import sqlite3
import threading
import weakref
from collections.abc import Sequence
from contextlib import AbstractContextManager, suppress
from pathlib import Path

from pitstore.errors import BackendError, BackendUnavailableError, ConfigError, InvalidInputError
from pitstore.online.base import InputRow, OnlineRow, check_put, schema_mismatch, validate_table_id
from pitstore.online.codec import decode, decode_columns, encode, encode_columns
from pitstore.sqlite_wal import immediate, switch_to_wal

__all__ = ["SqliteOnlineStore"]

_SCHEMA = """
BEGIN IMMEDIATE;
CREATE TABLE IF NOT EXISTS online_columns (table_id TEXT PRIMARY KEY, columns TEXT NOT NULL) WITHOUT ROWID;
-- row: the codec's bytes (ts included); ts is repeated as a column for the conditional upsert.
-- accessed: a logical clock, MAX(accessed) + 1 per write transaction. Writers serialise on SQLite's lock, so it
-- orders accesses exactly across processes without trusting wall clocks; it drives the LRU eviction.
CREATE TABLE IF NOT EXISTS online (
    table_id TEXT    NOT NULL,
    symbol   TEXT    NOT NULL,
    ts       INTEGER NOT NULL,
    row      BLOB    NOT NULL,
    accessed INTEGER NOT NULL,
    PRIMARY KEY (table_id, symbol)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS online_accessed ON online (accessed);
-- The row count, kept by triggers: COUNT(*) would scan the whole table on every write.
CREATE TABLE IF NOT EXISTS online_count (id INTEGER PRIMARY KEY CHECK (id = 0), n INTEGER NOT NULL);
INSERT OR IGNORE INTO online_count VALUES (0, 0);
CREATE TRIGGER IF NOT EXISTS online_inserted AFTER INSERT ON online BEGIN UPDATE online_count SET n = n + 1; END;
CREATE TRIGGER IF NOT EXISTS online_deleted AFTER DELETE ON online BEGIN UPDATE online_count SET n = n - 1; END;
COMMIT;
"""

_UPSERT = (
    "INSERT INTO online (table_id, symbol, ts, row, accessed) VALUES (?, ?, ?, ?, ?)"
    " ON CONFLICT (table_id, symbol) DO UPDATE SET ts = excluded.ts, row = excluded.row, accessed = excluded.accessed"
    " WHERE excluded.ts >= online.ts"
)
_GET_ONE = "SELECT row FROM online WHERE table_id = ? AND symbol = ?"
_MAX_BATCH = 512  # symbols per SELECT; batches are padded to a power of two so few statements get prepared
_GET_MANY = {
    n: f"SELECT symbol, row FROM online WHERE table_id = ? AND symbol IN ({', '.join('?' * n)})"
    for n in (2**i for i in range(1, _MAX_BATCH.bit_length()))
}
_ACCESS_FLUSH_SECONDS = 1.0  # reads record accesses in memory; a background thread writes them this often
_WAL_INDEX_HEADER = 48  # bytes: the first copy of the WAL-index header at the start of <db>-shm


class SqliteOnlineStore:
    """Online rows in one SQLite file. At most ``max_rows`` rows across tables: a write that goes over the bound
    evicts the least recently accessed rows. Approximately: a read only notes the row in memory, and a background
    thread (started by the first read) writes the noted rows about once per second, so no read ever writes or
    waits for a writer. ``expire_seconds`` is accepted and ignored: the bound already limits the file size."""

    def __init__(self, path: str | Path, *, max_rows: int = 1_000_000, busy_timeout: float = 5.0) -> None:
        if isinstance(max_rows, bool) or not isinstance(max_rows, int) or max_rows < 1:
            raise ConfigError(f"max_rows must be a positive integer, got {max_rows!r}")
        if not isinstance(busy_timeout, int | float) or busy_timeout <= 0:
            raise ConfigError(f"busy_timeout must be a positive number of seconds, got {busy_timeout!r}")
        self.path = Path(path)
        self._max_rows = max_rows
        # Two connections: WAL lets reads go on while a write transaction is open on the other one.
        self._read_lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._touched: dict[str, set[str]] = {}  # table_id -> symbols read since the last access flush
        self._flusher: threading.Thread | None = None
        self._stop = threading.Event()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._writer = self._connect(busy_timeout)
            switch_to_wal(self._writer, busy_timeout)
            self._writer.executescript(_SCHEMA)
            self._reader = self._connect(busy_timeout)
        except (OSError, sqlite3.Error) as exc:
            raise BackendUnavailableError(f"cannot open online store {self.path}: {exc}") from exc
        self._cursor = self._reader.cursor()
        self._header: mmap.mmap | None = None  # the WAL-index header, mapped by the first change_token()
        self._header_failed = False

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        conn = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA synchronous=NORMAL")  # WAL + NORMAL: durable at checkpoints, no fsync per commit
        return conn

    def _transaction(self, what: str) -> AbstractContextManager[sqlite3.Cursor]:
        """A write transaction on the writer (``BEGIN IMMEDIATE``: read-then-write is atomic across processes)."""
        return immediate(self._writer, self._write_lock, f"online store {self.path}: cannot {what}")

    def put_latest(
        self,
        table_id: str,
        columns: Sequence[str],
        rows: Sequence[InputRow],
        *,
        expire_seconds: float | None = None,
    ) -> int:
        cols, latest = check_put(table_id, columns, rows, expire_seconds)
        encoded = [(symbol, ts, encode(ts, values, symbol)) for symbol, ts, values in latest]
        text = encode_columns(cols)
        with self._transaction(f"write {len(encoded)} rows of {table_id!r}") as cur:
            stored = cur.execute("SELECT columns FROM online_columns WHERE table_id = ?", (table_id,)).fetchone()
            if stored is None:
                cur.execute("INSERT INTO online_columns VALUES (?, ?)", (table_id, text))
            elif stored[0] != text:
                raise schema_mismatch(table_id, decode_columns(stored[0]), cols)
            clock = self._record_access(cur)
            cur.executemany(_UPSERT, [(table_id, symbol, ts, row, clock) for symbol, ts, row in encoded])
            written = cur.rowcount
            (count,) = cur.execute("SELECT n FROM online_count").fetchone()
            if count > self._max_rows:
                cur.execute(
                    "DELETE FROM online WHERE (table_id, symbol) IN"
                    " (SELECT table_id, symbol FROM online ORDER BY accessed LIMIT ?)",
                    (count - self._max_rows,),
                )
        return written

    def _record_access(self, cur: sqlite3.Cursor) -> int:
        """Inside a write transaction: advance the clock and stamp the rows read since the last flush with it."""
        (clock,) = cur.execute("SELECT COALESCE(MAX(accessed), 0) + 1 FROM online").fetchone()
        with self._read_lock:
            touched, self._touched = self._touched, {}
        if touched:
            cur.executemany(
                "UPDATE online SET accessed = ? WHERE table_id = ? AND symbol = ?",
                [(clock, table_id, symbol) for table_id, symbols in touched.items() for symbol in symbols],
            )
        return int(clock)

    def get_latest(self, table_id: str, symbols: Sequence[str]) -> list[OnlineRow | None]:
        with self._read_lock:
            try:
                if len(symbols) == 1:
                    hit = self._cursor.execute(_GET_ONE, (table_id, symbols[0])).fetchone()
                    if hit is None:
                        return [None]
                    self._touch(table_id).add(symbols[0])
                    out: list[OnlineRow | None] = [decode(hit[0])]
                else:
                    found = self._select_many(table_id, symbols)
                    self._touch(table_id).update(found)
                    out = [None if (row := found.get(s)) is None else decode(row) for s in symbols]
                if self._flusher is None:
                    self._start_flusher()
            except sqlite3.Error as exc:
                raise BackendError(f"online store {self.path}: cannot read {table_id!r}: {exc}") from exc
            except UnicodeEncodeError as exc:  # a symbol no write could have stored
                raise InvalidInputError(f"symbol is not valid unicode ({exc})", column="symbol") from exc
        return out

    def _select_many(self, table_id: str, symbols: Sequence[str]) -> dict[str, bytes]:
        found: dict[str, bytes] = {}
        for start in range(0, len(symbols), _MAX_BATCH):
            chunk = symbols[start:start + _MAX_BATCH]
            size = 1 << max(1, (len(chunk) - 1).bit_length())
            padding = (chunk[-1],) * (size - len(chunk))  # repeated symbols in IN (...) change nothing
            found.update(self._cursor.execute(_GET_MANY[size], (table_id, *chunk, *padding)))
        return found

    def change_token(self) -> bytes | int:
        """The WAL-index header (https://sqlite.org/walformat.html): every commit, by any connection of any
        process, rewrites it (its frame count, salts and checksums), and a checkpoint does not. Read from a
        mapping of ``<db>-shm``: no system call, unlike ``PRAGMA data_version``, whose read transaction takes
        and drops a lock on the file (about as dear as the read it would save). Fallback when the file cannot
        be mapped: ``PRAGMA data_version``. The reader connection keeps the WAL open, so SQLite never
        re-initialises (truncates) the mapped file while this store is open."""
        header = self._header
        if header is not None:
            return header[:_WAL_INDEX_HEADER]
        if not self._header_failed:
            self._map_header()
            if self._header is not None:
                return self._header[:_WAL_INDEX_HEADER]
        with self._read_lock:
            try:
                return int(self._cursor.execute("PRAGMA data_version").fetchone()[0])
            except sqlite3.Error as exc:
                raise BackendError(f"online store {self.path}: cannot read its data version: {exc}") from exc

    def _map_header(self) -> None:
        with self._read_lock:
            try:
                # A read opens the WAL (and its index) on the reader connection, if not open yet.
                self._cursor.execute("SELECT n FROM online_count").fetchone()
                mode = self._cursor.execute("PRAGMA journal_mode").fetchone()[0]
                if str(mode).lower() != "wal":
                    raise OSError(f"journal mode is {mode}, not wal")
                with open(f"{self.path}-shm", "rb") as f:
                    self._header = mmap.mmap(f.fileno(), _WAL_INDEX_HEADER, access=mmap.ACCESS_READ)
            except (OSError, ValueError, sqlite3.Error):
                self._header_failed = True

    def touch(self, table_id: str, symbols: Sequence[str]) -> None:
        with self._read_lock:
            self._touch(table_id).update(symbols)
            if self._flusher is None:
                self._start_flusher()

    def _touch(self, table_id: str) -> set[str]:
        """Under the read lock: the set of ``table_id``'s symbols read since the last flush."""
        touched = self._touched.get(table_id)
        if touched is None:
            touched = self._touched[table_id] = set()
        return touched

    def _start_flusher(self) -> None:
        # The thread holds only a weak reference: a store dropped without close() is still collected.
        self._flusher = threading.Thread(
            target=_flush_accesses, args=(weakref.ref(self), self._stop), name="pitstore-online-access", daemon=True
        )
        self._flusher.start()

    def _flush_access(self) -> None:
        """Write the rows read since the last flush (a write transaction of its own)."""
        if self._touched:
            with self._transaction("record read accesses") as cur:
                self._record_access(cur)

    def columns(self, table_id: str) -> tuple[str, ...] | None:
        with self._read_lock:
            try:
                hit = self._cursor.execute("SELECT columns FROM online_columns WHERE table_id = ?", (table_id,))
                row = hit.fetchone()
            except sqlite3.Error as exc:
                raise BackendError(f"online store {self.path}: cannot read columns of {table_id!r}: {exc}") from exc
        return None if row is None else decode_columns(row[0])

    def delete(self, table_id: str, symbols: Sequence[str] | None = None) -> int:
        validate_table_id(table_id)
        with self._transaction(f"delete rows of {table_id!r}") as cur:
            if symbols is None:
                cur.execute("DELETE FROM online WHERE table_id = ?", (table_id,))
                deleted = cur.rowcount
                cur.execute("DELETE FROM online_columns WHERE table_id = ?", (table_id,))
            else:
                cur.executemany(
                    "DELETE FROM online WHERE table_id = ? AND symbol = ?", [(table_id, s) for s in set(symbols)]
                )
                deleted = cur.rowcount
        return deleted

    def ping(self) -> None:
        with self._read_lock:
            try:
                self._cursor.execute("SELECT n FROM online_count").fetchone()
            except sqlite3.Error as exc:
                raise BackendUnavailableError(f"online store {self.path} is not usable: {exc}") from exc

    def close(self) -> None:
        """Stop the access flusher, write the last accesses, close both connections. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop.set()
        if self._flusher is not None:
            self._flusher.join()
        try:
            self._flush_access()
        finally:
            with self._write_lock, self._read_lock:
                if self._header is not None:
                    self._header.close()
                    self._header = None
                self._header_failed = True  # closed: change_token() no longer maps anything
                self._reader.close()
                self._writer.close()


def _flush_accesses(ref: weakref.ReferenceType[SqliteOnlineStore], stop: threading.Event) -> None:
    """The access flusher's loop: until stopped or the store is gone."""
    while not stop.wait(_ACCESS_FLUSH_SECONDS):
        store = ref()
        if store is None:
            return
        # A failed round (the lock stayed busy) loses that second's access records: they only order evictions.
        with suppress(BackendError):
            store._flush_access()
        del store

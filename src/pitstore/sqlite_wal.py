"""What every SQLite file of pitstore shares: the switch to WAL and the write transaction."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from pitstore.errors import BackendError

__all__ = ["immediate", "switch_to_wal"]


def switch_to_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Put the database in WAL mode. The switch needs a lock that busy_timeout does not wait for: switch only
    when needed, and retry while another process is creating the same file."""
    deadline = time.monotonic() + timeout
    while conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            conn.execute("PRAGMA journal_mode=WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)  # back-off between attempts to take the lock, not synchronisation


@contextmanager
def immediate(conn: sqlite3.Connection, lock: threading.Lock, what: str) -> Iterator[sqlite3.Cursor]:
    """A write transaction. IMMEDIATE takes the write lock first, so read-then-write is atomic across
    processes; ``what`` completes the BackendError message ("<file>: cannot <what>: ...")."""
    with lock:
        try:
            cur = conn.cursor()
            cur.execute("BEGIN IMMEDIATE")
            try:
                yield cur
                cur.execute("COMMIT")
            except BaseException:
                cur.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:
            raise BackendError(f"{what}: {exc}") from exc

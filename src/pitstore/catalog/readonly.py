"""Opening a SQLite catalog without writing anything: for stores whose root this process may not (or must not)
write, e.g. a shared research copy owned by another user."""

from __future__ import annotations

import re
import sqlite3
from pathlib import Path
from urllib.parse import quote

from pitstore.errors import BackendError

__all__ = ["open_read_only", "shadow_missing"]

_TABLE = re.compile(r"CREATE TABLE IF NOT EXISTS (\w+) \((.*?)\n\);", re.S)


def _uri(path: Path, flag: str) -> str:
    return f"file:{quote(str(path.absolute()))}?{flag}"


def open_read_only(path: Path, timeout: float) -> tuple[sqlite3.Connection, str]:
    """A read-only connection to the catalog at ``path`` and how it was opened: ``"ro"`` or ``"immutable"``."""
    conn = sqlite3.connect(_uri(path, "mode=ro"), uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
        return conn, "ro"
    except sqlite3.OperationalError as exc:
        conn.close()
        wal = path.with_name(path.name + "-wal")
        if wal.exists():
            raise BackendError(f"cannot open catalog {path} read-only: {exc} (its -wal file exists but its -shm"
                               " cannot be read or created here: open it once where the directory is writable,"
                               " or ask its owner to close the writing processes)") from exc
        first = exc
    # A WAL database read with mode=ro needs its -shm (and -wal) to exist or be creatable: in a directory this
    # user cannot write, with no writer running, neither exists. immutable=1 then reads the main file alone,
    # without locks or -shm, which is exact only because no -wal exists: every committed transaction is in the
    # main file. It is not safe against a writer that starts while this connection is open (SQLite would not
    # see, or could misread, pages it checkpoints): a read-only root is not expected to change under readers.
    conn = sqlite3.connect(_uri(path, "immutable=1"), uri=True, timeout=timeout, isolation_level=None,
                           check_same_thread=False)
    try:
        conn.execute("SELECT COUNT(*) FROM sqlite_master").fetchone()
    except sqlite3.Error as exc:
        conn.close()
        raise BackendError(f"cannot open catalog {path} read-only: {first}; immutable: {exc}") from exc
    return conn, "immutable"


def shadow_missing(conn: sqlite3.Connection, schema: str) -> None:
    """Make a catalog written by an older pitstore readable without migrating it: each table of ``schema`` it
    lacks becomes an empty TEMP table (in memory, never in the file), and feature entries without the size and
    hash columns are read through a TEMP view that adds them as NULL (checked by existence only, as before)."""
    conn.execute("PRAGMA temp_store=MEMORY")  # temp tables never go to a file, not even in the temp directory
    have = {r[0] for r in conn.execute("SELECT name FROM main.sqlite_master WHERE type = 'table'")}
    for name, body in _TABLE.findall(schema):
        if name not in have:
            conn.execute(f"CREATE TEMP TABLE {name} ({body}\n)")
    if "feature_entries" in have:
        cols = {r[1] for r in conn.execute("PRAGMA main.table_info(feature_entries)")}
        if not {"size", "file_hash"} <= cols:
            extra = ", ".join(f"NULL AS {c}" for c in ("size", "file_hash") if c not in cols)
            conn.execute(f"CREATE TEMP VIEW feature_entries AS SELECT *, {extra} FROM main.feature_entries")
    if "bar_entries" in have and "parts" not in {r[1] for r in conn.execute("PRAGMA main.table_info(bar_entries)")}:
        conn.execute("CREATE TEMP VIEW bar_entries AS SELECT *, NULL AS parts FROM main.bar_entries")

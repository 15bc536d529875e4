"""SQLite catalog (WAL): the embedded default, safe for several processes on one machine."""

from __future__ import annotations

import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

from pitstore.catalog.base import VersionRow
from pitstore.errors import BackendError

__all__ = ["SqliteCatalog"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS feature_set_versions (
    name        TEXT    NOT NULL,
    version     INTEGER NOT NULL,
    fingerprint TEXT    NOT NULL,
    definition  TEXT    NOT NULL,
    created_at  TEXT    NOT NULL,
    PRIMARY KEY (name, version),
    UNIQUE (name, fingerprint)
);
"""


class SqliteCatalog:
    """A catalog in one SQLite file. Writers serialise on SQLite's lock (``BEGIN IMMEDIATE``)."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open catalog {self.path}: {exc}") from exc

    def register_version(self, name: str, fingerprint: str, definition: str) -> VersionRow:
        with self._lock:
            try:
                cur = self._conn.cursor()
                # IMMEDIATE takes the write lock first, so two processes cannot both pick version N+1.
                cur.execute("BEGIN IMMEDIATE")
                try:
                    row = cur.execute(
                        "SELECT name, version, fingerprint, definition, created_at FROM feature_set_versions"
                        " WHERE name = ? AND fingerprint = ?",
                        (name, fingerprint),
                    ).fetchone()
                    if row is None:
                        (last,) = cur.execute(
                            "SELECT COALESCE(MAX(version), 0) FROM feature_set_versions WHERE name = ?", (name,)
                        ).fetchone()
                        row = (name, last + 1, fingerprint, definition, datetime.now(UTC).isoformat())
                        cur.execute("INSERT INTO feature_set_versions VALUES (?, ?, ?, ?, ?)", row)
                    cur.execute("COMMIT")
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
            except sqlite3.Error as exc:
                raise BackendError(f"catalog {self.path}: cannot register {name!r}: {exc}") from exc
        return VersionRow(*row)

    def versions(self, name: str) -> list[VersionRow]:
        with self._lock:
            rows = self._conn.execute(
                "SELECT name, version, fingerprint, definition, created_at FROM feature_set_versions"
                " WHERE name = ? ORDER BY version",
                (name,),
            ).fetchall()
        return [VersionRow(*r) for r in rows]

    def names(self) -> list[str]:
        with self._lock:
            rows = self._conn.execute("SELECT DISTINCT name FROM feature_set_versions ORDER BY name").fetchall()
        return [r[0] for r in rows]

    def close(self) -> None:
        with self._lock:
            self._conn.close()

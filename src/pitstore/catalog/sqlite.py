"""SQLite catalog (WAL): the embedded default, safe for several processes on one machine."""

from __future__ import annotations

import sqlite3
import threading
import time
import uuid
from collections.abc import Sequence
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

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
from pitstore.catalog.readonly import open_read_only, shadow_missing
from pitstore.errors import BackendError, ConflictError, ReadOnlyStoreError
from pitstore.sources.segments import part_paths
from pitstore.sqlite_wal import immediate, switch_to_wal

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
-- Times are integer microseconds since the epoch, UTC. An entry is visible at knowledge time T when
-- recorded_at <= T and (superseded_at IS NULL OR superseded_at > T).
CREATE TABLE IF NOT EXISTS bar_entries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    symbol        TEXT    NOT NULL,
    path          TEXT    NOT NULL,
    n_rows        INTEGER NOT NULL,
    first_ts      INTEGER NOT NULL,
    last_ts       INTEGER NOT NULL,
    content_hash  TEXT    NOT NULL,
    appended_only INTEGER NOT NULL,  -- 1 when earlier bars were left untouched (no restatement)
    restated_rows INTEGER NOT NULL,
    recorded_at   INTEGER NOT NULL,
    superseded_at INTEGER,
    parts         TEXT  -- base file and appended segments (pitstore.sources.segments); NULL: the one file at path
);
CREATE INDEX IF NOT EXISTS bar_entries_live ON bar_entries (symbol, superseded_at);
CREATE TABLE IF NOT EXISTS feature_entries (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    feature_set   TEXT    NOT NULL,
    version       INTEGER NOT NULL,
    symbol        TEXT    NOT NULL,
    path          TEXT    NOT NULL,
    n_rows        INTEGER NOT NULL,
    first_ts      INTEGER NOT NULL,
    last_ts       INTEGER NOT NULL,
    bars_entry_id INTEGER NOT NULL,
    recorded_at   INTEGER NOT NULL,
    superseded_at INTEGER
);
CREATE INDEX IF NOT EXISTS feature_entries_live ON feature_entries (feature_set, version, symbol, superseded_at);
CREATE TABLE IF NOT EXISTS cache_entries (
    key             TEXT    PRIMARY KEY,
    symbol          TEXT    NOT NULL,
    path            TEXT    NOT NULL,
    size            INTEGER NOT NULL,
    file_hash       TEXT    NOT NULL,
    kind            TEXT    NOT NULL,
    n_rows          INTEGER NOT NULL,
    first_ts        INTEGER,
    last_ts         INTEGER,
    compute_seconds REAL    NOT NULL,
    created_at      INTEGER NOT NULL,
    last_access     INTEGER NOT NULL,
    hits            INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS cache_entries_symbol ON cache_entries (symbol);
CREATE INDEX IF NOT EXISTS cache_entries_access ON cache_entries (last_access);
CREATE TABLE IF NOT EXISTS cache_stats (
    symbol          TEXT    PRIMARY KEY,
    hits            INTEGER NOT NULL DEFAULT 0,
    misses          INTEGER NOT NULL DEFAULT 0,
    compute_seconds REAL    NOT NULL DEFAULT 0,
    saved_seconds   REAL    NOT NULL DEFAULT 0,
    hash_seconds    REAL    NOT NULL DEFAULT 0,
    hash_bytes      INTEGER NOT NULL DEFAULT 0,
    corruptions     INTEGER NOT NULL DEFAULT 0
);
-- Files of rows moved out of the PostgreSQL history tier (pitstore.history.tiering); never superseded: each holds
-- versions no other archive holds, so all of them together are the tiered history.
CREATE TABLE IF NOT EXISTS history_archives (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    table_id    TEXT    NOT NULL,
    path        TEXT    NOT NULL,
    n_rows      INTEGER NOT NULL,
    first_ts    INTEGER NOT NULL,
    last_ts     INTEGER NOT NULL,
    cutoff      INTEGER NOT NULL,
    size        INTEGER NOT NULL,
    file_hash   TEXT    NOT NULL,
    recorded_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS history_archives_table ON history_archives (table_id, first_ts);
-- Feature entries whose rows from from_ts on are in the PostgreSQL history tier (pitstore.history.recent).
CREATE TABLE IF NOT EXISTS history_synced (
    table_id TEXT    NOT NULL,
    entry_id INTEGER NOT NULL,
    from_ts  INTEGER NOT NULL,
    PRIMARY KEY (table_id, entry_id)
);
CREATE TABLE IF NOT EXISTS online_requests (  -- how often each symbol was read online: warm(top=N)
    symbol   TEXT    PRIMARY KEY,
    requests INTEGER NOT NULL
);
-- Versions whose entries gc deleted (--max-versions): not listed, not readable. The row in feature_set_versions
-- stays, so the number is never given to another definition; registering the same definition brings it back.
CREATE TABLE IF NOT EXISTS retired_versions (
    name       TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    retired_at INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);
-- The time of the last commit (µs): each commit takes max(now, last + 1), so no two share a time
-- (pitstore.rules.commit_time).
CREATE TABLE IF NOT EXISTS commit_clock (
    id INTEGER PRIMARY KEY CHECK (id = 0),
    t  INTEGER NOT NULL
);
"""

_BAR_COLS = ("id, symbol, path, n_rows, first_ts, last_ts, content_hash, appended_only, restated_rows, "
             "recorded_at, superseded_at, parts")
_FEATURE_COLS = ("id, feature_set, version, symbol, path, n_rows, first_ts, last_ts, bars_entry_id, "
                 "recorded_at, superseded_at, size, file_hash")
_CACHE_COLS = ("key, symbol, path, size, file_hash, kind, n_rows, first_ts, last_ts, compute_seconds, created_at,"
               " last_access, hits")
_ARCHIVE_COLS = "id, table_id, path, n_rows, first_ts, last_ts, cutoff, size, file_hash, recorded_at"
_VISIBLE = "recorded_at <= :t AND (superseded_at IS NULL OR superseded_at > :t)"
_FAR_FUTURE = 2**62


def now_us() -> int:
    return time.time_ns() // 1000


def _tick(cur: sqlite3.Cursor) -> int:
    """Inside a write transaction (BEGIN IMMEDIATE: writers are serialised): this commit's time."""
    (t,) = cur.execute("INSERT INTO commit_clock VALUES (0, ?) ON CONFLICT (id) DO UPDATE SET t = max(excluded.t,"
                       " t + 1) RETURNING t", (now_us(),)).fetchone()
    return int(t)


class SqliteCatalog:
    """A catalog in one SQLite file. Writers serialise on SQLite's lock (``BEGIN IMMEDIATE``)."""

    def __init__(self, path: str | Path, *, timeout: float = 30.0, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.mode = "rw"  # how the file is open: "rw", or read-only "ro" / "immutable" (pitstore.catalog.readonly)
        self._lock = threading.Lock()
        if read_only:
            if not self.path.is_file():  # creating it would be a write
                raise ReadOnlyStoreError(self.path.parent, "create a catalog (there is none to read)")
            try:
                self._conn, self.mode = open_read_only(self.path, timeout)
                shadow_missing(self._conn, _SCHEMA)  # no migration: an older catalog is read as it is
            except sqlite3.Error as exc:
                raise BackendError(f"cannot open catalog {self.path} read-only: {exc}") from exc
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._conn = sqlite3.connect(
                self.path, timeout=timeout, isolation_level=None, check_same_thread=False
            )
            switch_to_wal(self._conn, timeout)
            self._conn.execute("PRAGMA synchronous=NORMAL")
            self._conn.executescript(_SCHEMA)
            _migrate(self._conn, self._lock)
            _migrate_bar_parts(self._conn, self._lock)
        except sqlite3.Error as exc:
            raise BackendError(f"cannot open catalog {self.path}: {exc}") from exc

    def _read(self, sql: str, params: Sequence[object] | dict[str, object] = ()) -> list[Any]:
        with self._lock:
            try:
                return self._conn.execute(sql, params).fetchall()
            except sqlite3.Error as exc:  # every read: a locked or broken file is a BackendError, never sqlite3's
                raise BackendError(f"catalog {self.path}: cannot read: {exc}") from exc

    def _write(self, what: str) -> AbstractContextManager[sqlite3.Cursor]:
        """A write transaction (``BEGIN IMMEDIATE``: read-then-write is atomic across processes)."""
        if self.read_only:  # the last line of defence: the facade refuses writes before touching any file
            raise ReadOnlyStoreError(self.path.parent, what)
        return immediate(self._conn, self._lock, f"catalog {self.path}: cannot {what}")

    def register_version(self, name: str, fingerprint: str, definition: str) -> VersionRow:
        with self._write(f"register {name!r}") as cur:
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
            else:
                cur.execute("DELETE FROM retired_versions WHERE name = ? AND version = ?", (name, row[1]))
        return VersionRow(*row)

    def retire_versions(self, versions: Sequence[tuple[str, int]], *, drop_entries: bool = False) -> None:
        with self._write("retire versions") as cur:
            t = _tick(cur)
            cur.executemany("INSERT INTO retired_versions VALUES (?, ?, ?) ON CONFLICT DO NOTHING",
                            [(name, v, t) for name, v in versions])
            if drop_entries:
                cur.executemany("DELETE FROM feature_entries WHERE feature_set = ? AND version = ?", versions)

    # --- bars -----------------------------------------------------------------------------------------

    def live_bars(self, symbols: Sequence[str] | None = None, as_known_at: int | None = None) -> list[BarEntry]:
        """The bar entry of each symbol visible at ``as_known_at`` (now when None)."""
        t = _FAR_FUTURE if as_known_at is None else as_known_at
        sql = f"SELECT {_BAR_COLS} FROM bar_entries WHERE {_VISIBLE}"
        rows = self._read(sql + " ORDER BY symbol", {"t": t})
        wanted = None if symbols is None else set(symbols)
        return [BarEntry(*r) for r in rows if wanted is None or r[1] in wanted]

    def bar_history(self, symbol: str, after_id: int) -> list[BarEntry]:
        """Bar entries of ``symbol`` with id greater than ``after_id``, oldest first."""
        rows = self._read(f"SELECT {_BAR_COLS} FROM bar_entries WHERE symbol = ? AND id > ? ORDER BY id",
                          (symbol, after_id))
        return [BarEntry(*r) for r in rows]

    def commit_bars(self, entry: BarEntry, expected_live_id: int | None) -> BarEntry:
        """Publish a new bar snapshot for its symbol, superseding the live one (which must be
        ``expected_live_id``: a concurrent ingest of the same symbol raises ConflictError)."""
        return self.commit_bars_batch([(entry, expected_live_id)])[0]

    def commit_bars_batch(self, items: Sequence[tuple[BarEntry, int | None]]) -> list[BarEntry]:
        """Publish bar snapshots of distinct symbols in one transaction, each superseding its symbol's live
        snapshot, which must be the expected id: otherwise ConflictError names the symbols and nothing is
        written. All entries get the same ``recorded_at``."""
        check_distinct_symbols(items)
        if not items:
            return []
        out: list[BarEntry] = []
        with self._write(f"commit bars of {len(items)} symbol(s)") as cur:
            changed = []
            for entry, expected in items:
                live = cur.execute(
                    "SELECT id FROM bar_entries WHERE symbol = ? AND superseded_at IS NULL", (entry.symbol,)
                ).fetchone()
                if (live[0] if live else None) != expected:
                    changed.append(entry.symbol)
            if changed:
                shown = ", ".join(repr(s) for s in changed[:5]) + (f" and {len(changed) - 5} more" if len(changed) > 5
                                                                    else "")
                raise ConflictError(f"bars of {shown} changed during the ingest; retry it")
            t = _tick(cur)
            cur.executemany("UPDATE bar_entries SET superseded_at = ? WHERE symbol = ? AND superseded_at IS NULL",
                            [(t, e.symbol) for e, _ in items])
            for entry, _ in items:
                cur.execute(
                    "INSERT INTO bar_entries (symbol, path, n_rows, first_ts, last_ts, content_hash, appended_only,"
                    " restated_rows, recorded_at, parts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry.symbol, entry.path, entry.n_rows, entry.first_ts, entry.last_ts, entry.content_hash,
                     int(entry.appended_only), entry.restated_rows, t, entry.parts),
                )
                assert cur.lastrowid is not None
                out.append(entry._replace(id=cur.lastrowid, recorded_at=t))
        return out

    # --- feature entries ------------------------------------------------------------------------------

    def feature_entries(
        self, feature_set: str, version: int, symbols: Sequence[str] | None = None, as_known_at: int | None = None
    ) -> list[FeatureEntry]:
        """Feature entries visible at ``as_known_at`` (now when None), by symbol then time."""
        t = _FAR_FUTURE if as_known_at is None else as_known_at
        params: dict[str, object] = {"fs": feature_set, "v": version, "t": t}
        by_symbol = ""
        if symbols is not None and len(symbols) == 1:
            # One symbol (a point look-up): an index seek, not a scan of every symbol's entries.
            by_symbol, params["s"] = " AND symbol = :s", symbols[0]
        rows = self._read(
            f"SELECT {_FEATURE_COLS} FROM feature_entries WHERE feature_set = :fs AND version = :v AND {_VISIBLE}"
            f"{by_symbol} ORDER BY symbol, first_ts", params)
        wanted = None if symbols is None else set(symbols)
        return [FeatureEntry(*r) for r in rows if wanted is None or r[3] in wanted]

    def commit_features(self, entry: FeatureEntry, *, supersede: Sequence[int], expected_live: Sequence[int]) -> bool:
        """Publish a feature entry, superseding ``supersede``. Returns False (and writes nothing) when the live
        entries of that symbol are no longer ``expected_live``: another process got there first."""
        return self.commit_features_batch([(entry, supersede, expected_live)])[0] is not None

    def commit_features_batch(self, items: Sequence[FeatureCommit]) -> list[int | None]:
        done: list[int | None] = []
        what = commit_what(items)
        with self._write(what) as cur:
            t = _tick(cur)
            for entry, supersede, expected_live in items:
                live = cur.execute(
                    "SELECT id FROM feature_entries WHERE feature_set = ? AND version = ? AND symbol = ?"
                    " AND superseded_at IS NULL ORDER BY id",
                    (entry.feature_set, entry.version, entry.symbol),
                ).fetchall()
                if [r[0] for r in live] != sorted(expected_live):
                    done.append(None)
                    continue
                cur.executemany("UPDATE feature_entries SET superseded_at = ? WHERE id = ?",
                                [(t, i) for i in supersede])
                cur.execute(
                    "INSERT INTO feature_entries (feature_set, version, symbol, path, n_rows, first_ts, last_ts,"
                    " bars_entry_id, recorded_at, size, file_hash) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (entry.feature_set, entry.version, entry.symbol, entry.path, entry.n_rows, entry.first_ts,
                     entry.last_ts, entry.bars_entry_id, t, entry.size, entry.file_hash),
                )
                done.append(cur.lastrowid)
        return done

    def counts(self) -> dict[str, int]:
        """Row counts for stats: live and total entries."""
        live = "superseded_at IS NULL"
        (row,) = self._read(
            f"SELECT (SELECT COUNT(*) FROM bar_entries WHERE {live}), (SELECT COUNT(*) FROM bar_entries),"
            f" (SELECT COALESCE(SUM(n_rows), 0) FROM bar_entries WHERE {live}),"
            f" (SELECT COUNT(*) FROM feature_entries WHERE {live}), (SELECT COUNT(*) FROM feature_entries),"
            f" (SELECT COALESCE(SUM(n_rows), 0) FROM feature_entries WHERE {live})")
        names = ("bar_entries_live", "bar_entries_total", "bars_live", "feature_entries_live",
                 "feature_entries_total", "feature_rows_live")
        return {k: int(v) for k, v in zip(names, row, strict=True)}

    def versions(self, name: str) -> list[VersionRow]:
        rows = self._read(
            "SELECT name, version, fingerprint, definition, created_at FROM feature_set_versions v"
            " WHERE name = ? AND NOT EXISTS (SELECT 1 FROM retired_versions r"
            " WHERE r.name = v.name AND r.version = v.version) ORDER BY version", (name,))
        return [VersionRow(*r) for r in rows]

    def names(self) -> list[str]:
        rows = self._read("SELECT DISTINCT name FROM feature_set_versions ORDER BY name")
        return [r[0] for r in rows]

    # --- compute cache ---------------------------------------------------------------------------------

    def cache_get(self, key: str) -> CacheEntry | None:
        rows = self._read(f"SELECT {_CACHE_COLS} FROM cache_entries WHERE key = ?", (key,))
        return CacheEntry(*rows[0]) if rows else None

    def cache_put(self, entry: CacheEntry) -> None:
        with self._write(f"record cache entry of {entry.symbol!r}") as cur:
            cur.execute(f"INSERT OR REPLACE INTO cache_entries ({_CACHE_COLS}) VALUES ({', '.join('?' * 13)})",
                        tuple(entry))

    def cache_drop(self, keys: Sequence[str]) -> int:
        with self._write("drop cache entries") as cur:
            cur.executemany("DELETE FROM cache_entries WHERE key = ?", [(k,) for k in keys])
            return cur.rowcount  # summed over the statements by sqlite3

    def cache_entries(self, symbol: str | None = None, accessed_before: int | None = None) -> list[CacheEntry]:
        sql = f"SELECT {_CACHE_COLS} FROM cache_entries WHERE (:s IS NULL OR symbol = :s)" \
              " AND (:t IS NULL OR last_access < :t) ORDER BY symbol, created_at"
        return [CacheEntry(*r) for r in self._read(sql, {"s": symbol, "t": accessed_before})]

    def cache_record(self, symbol: str, *, hit_key: str | None = None, hits: int = 0, misses: int = 0,
                     compute_seconds: float = 0.0, saved_seconds: float = 0.0, hash_seconds: float = 0.0,
                     hash_bytes: int = 0, corruptions: int = 0) -> None:
        with self._write(f"record cache statistics of {symbol!r}") as cur:
            cur.execute(
                "INSERT INTO cache_stats VALUES (?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (symbol) DO UPDATE SET"
                " hits = hits + excluded.hits, misses = misses + excluded.misses,"
                " compute_seconds = compute_seconds + excluded.compute_seconds,"
                " saved_seconds = saved_seconds + excluded.saved_seconds,"
                " hash_seconds = hash_seconds + excluded.hash_seconds, hash_bytes = hash_bytes + excluded.hash_bytes,"
                " corruptions = corruptions + excluded.corruptions",
                (symbol, hits, misses, compute_seconds, saved_seconds, hash_seconds, hash_bytes, corruptions),
            )
            if hit_key is not None:
                cur.execute("UPDATE cache_entries SET last_access = ?, hits = hits + 1 WHERE key = ?",
                            (now_us(), hit_key))

    def cache_stats(self) -> list[CacheStatsRow]:
        return [CacheStatsRow(*r) for r in self._read("SELECT * FROM cache_stats ORDER BY symbol")]

    # --- history archives ------------------------------------------------------------------------------

    def commit_history_archive(self, entry: HistoryArchive) -> HistoryArchive:
        with self._write(f"record history archive of {entry.table_id!r}") as cur:
            t = _tick(cur)
            cur.execute(
                "INSERT INTO history_archives (table_id, path, n_rows, first_ts, last_ts, cutoff, size, file_hash,"
                " recorded_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (entry.table_id, entry.path, entry.n_rows, entry.first_ts, entry.last_ts, entry.cutoff, entry.size,
                 entry.file_hash, t),
            )
            new_id = cur.lastrowid
        assert new_id is not None
        return entry._replace(id=new_id, recorded_at=t)

    def history_archives(self, table_id: str | None = None) -> list[HistoryArchive]:
        rows = self._read(f"SELECT {_ARCHIVE_COLS} FROM history_archives WHERE (:t IS NULL OR table_id = :t)"
                          " ORDER BY table_id, first_ts, id", {"t": table_id})
        return [HistoryArchive(*r) for r in rows]

    # --- history tier sync markers -------------------------------------------------------------------

    def history_synced(self, table_id: str, entry_ids: Sequence[int]) -> dict[int, int]:
        if not entry_ids:
            return {}
        marks = ",".join("?" * len(entry_ids))
        rows = self._read(f"SELECT entry_id, from_ts FROM history_synced WHERE table_id = ? AND entry_id IN ({marks})",
                          (table_id, *entry_ids))
        return {int(cast(int, r[0])): int(cast(int, r[1])) for r in rows}

    def mark_history_synced(self, table_id: str, marks: dict[int, int]) -> None:
        with self._write(f"mark history sync of {table_id!r}") as cur:
            cur.executemany("INSERT INTO history_synced (table_id, entry_id, from_ts) VALUES (?, ?, ?)"
                            " ON CONFLICT (table_id, entry_id) DO UPDATE SET from_ts = min(from_ts, excluded.from_ts)",
                            [(table_id, i, t) for i, t in marks.items()])

    # --- online requests -------------------------------------------------------------------------------

    def add_requests(self, counts: dict[str, int]) -> None:
        with self._write("record online requests") as cur:
            cur.executemany("INSERT INTO online_requests VALUES (?, ?) ON CONFLICT (symbol) DO UPDATE SET"
                            " requests = requests + excluded.requests", list(counts.items()))

    def top_requested(self, n: int) -> list[str]:
        rows = self._read("SELECT symbol FROM online_requests ORDER BY requests DESC, symbol LIMIT ?", (n,))
        return [str(r[0]) for r in rows]

    # --- housekeeping ----------------------------------------------------------------------------------

    def referenced_paths(self) -> set[str]:
        rows = self._read("SELECT path FROM bar_entries UNION ALL SELECT path FROM feature_entries"
                          " UNION ALL SELECT path FROM cache_entries UNION ALL SELECT path FROM history_archives")
        segments = self._read("SELECT parts FROM bar_entries WHERE parts IS NOT NULL")
        return {str(r[0]) for r in rows} | {p for (parts,) in segments for p in part_paths(parts)}

    def drop_rows(self, table: str, ids: Sequence[int]) -> int:
        if table not in ("bar_entries", "feature_entries"):
            raise ValueError(f"not an entry table: {table!r}")
        with self._write(f"delete rows of {table}") as cur:
            cur.executemany(f"DELETE FROM {table} WHERE id = ?", [(i,) for i in ids])
        return len(ids)

    def drop_superseded(self, before: int) -> tuple[list[BarEntry], list[FeatureEntry]]:
        old = "superseded_at IS NOT NULL AND superseded_at <= ?"
        with self._write("drop superseded entries") as cur:
            bars = [BarEntry(*r) for r in cur.execute(
                f"SELECT {_BAR_COLS} FROM bar_entries WHERE {old} ORDER BY id", (before,)).fetchall()]
            features = [FeatureEntry(*r) for r in cur.execute(
                f"SELECT {_FEATURE_COLS} FROM feature_entries WHERE {old} ORDER BY id", (before,)).fetchall()]
            for bar in (b for b in bars if not b.appended_only):
                # The restatement must stay on record for a backfill computed from a snapshot before it.
                cur.execute(f"UPDATE bar_entries SET appended_only = 0 WHERE id = (SELECT MIN(id) FROM bar_entries"
                            f" WHERE symbol = ? AND id > ? AND NOT ({old}))", (bar.symbol, bar.id, before))
            cur.executemany("DELETE FROM history_synced WHERE entry_id = ?", [(f.id,) for f in features])
            cur.executemany("DELETE FROM feature_entries WHERE id = ?", [(f.id,) for f in features])
            cur.executemany("DELETE FROM bar_entries WHERE id = ?", [(b.id,) for b in bars])
            cur.execute("CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            cur.execute("INSERT INTO store_meta VALUES ('replay_from', ?) ON CONFLICT (key) DO UPDATE SET value ="
                        " CAST(MAX(CAST(value AS INTEGER), CAST(excluded.value AS INTEGER)) AS TEXT)", (str(before),))
        return bars, features

    def replay_from(self) -> int | None:
        if not self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store_meta'"):
            return None  # created by the first store_id() or gc: a catalog without it never dropped anything
        rows = self._read("SELECT value FROM store_meta WHERE key = 'replay_from'")
        return int(rows[0][0]) if rows else None

    def all_bar_entries(self) -> list[BarEntry]:
        return [BarEntry(*r) for r in self._read(f"SELECT {_BAR_COLS} FROM bar_entries ORDER BY id")]

    def all_feature_entries(self) -> list[FeatureEntry]:
        rows = self._read(f"SELECT {_FEATURE_COLS} FROM feature_entries ORDER BY id")
        return [FeatureEntry(*r) for r in rows]

    def replace_feature_file(self, entry_id: int, path: str, size: int, file_hash: str) -> None:
        with self._write(f"repair feature entry {entry_id}") as cur:
            cur.execute("UPDATE feature_entries SET path = ?, size = ?, file_hash = ? WHERE id = ?",
                        (path, size, file_hash, entry_id))

    def mark_bars_restated(self, entry_id: int) -> None:
        with self._write(f"mark bar snapshot {entry_id} restated") as cur:
            cur.execute("UPDATE bar_entries SET appended_only = 0 WHERE id = ?", (entry_id,))

    def vacuum(self) -> None:
        if self.read_only:
            raise ReadOnlyStoreError(self.path.parent, "vacuum the catalog")
        with self._lock:
            try:
                self._conn.execute("VACUUM")
                self._conn.execute("ANALYZE")
                self._conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
            except sqlite3.Error as exc:
                raise BackendError(f"catalog {self.path}: cannot vacuum: {exc}") from exc

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    # --- identity --------------------------------------------------------------------------------------

    def store_id(self) -> str:
        """A uuid made by the first call (under the write lock: one winner across processes), then kept: the
        history tier and the Redis namespace key this store's rows by it."""
        if self._read("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store_meta'"):
            rows = self._read("SELECT value FROM store_meta WHERE key = 'store_id'")
            if rows:
                return str(rows[0][0])
        with self._write("create the store id") as cur:
            cur.execute("CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            cur.execute("INSERT INTO store_meta VALUES ('store_id', ?) ON CONFLICT (key) DO NOTHING",
                        (uuid.uuid4().hex,))
            return str(cur.execute("SELECT value FROM store_meta WHERE key = 'store_id'").fetchone()[0])

    # --- compaction (pitstore.offline.compact) -----------------------------------------------------------------

    def repoint_features(self, moves: Sequence[tuple[int, str, str, int, str]]) -> int:
        with self._write("repoint compacted feature entries") as cur:
            before = self._conn.total_changes
            cur.executemany("UPDATE feature_entries SET path = ?, size = ?, file_hash = ? WHERE id = ? AND path = ?",
                            [(new, size, digest, i, old) for i, old, new, size, digest in moves])
            return self._conn.total_changes - before

    # --- whole tables (pitstore.ops.migrate) ---------------------------------------------------------------

    def dump_rows(self, table: str) -> list[tuple[Any, ...]]:
        cols, key = table_columns(table)
        if table == "store_meta" and not self._read(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'store_meta'"):
            return []  # made by the first store_id() or gc
        rows = self._read(f"SELECT {', '.join(cols)} FROM {table} ORDER BY {', '.join(key)}")
        if table == "bar_entries":  # stored as 0/1; PostgreSQL gives a bool
            at = cols.index("appended_only")
            return [(*r[:at], bool(r[at]), *r[at + 1:]) for r in rows]
        return [tuple(r) for r in rows]

    def load_rows(self, table: str, rows: Sequence[tuple[Any, ...]], *,
                  delete: Sequence[tuple[Any, ...]] = ()) -> None:
        cols, key = table_columns(table)
        update = ", ".join(f"{c} = excluded.{c}" for c in cols if c not in key) or None
        insert = (f"INSERT INTO {table} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
                  f" ON CONFLICT ({', '.join(key)}) DO " + (f"UPDATE SET {update}" if update else "NOTHING"))
        where = " AND ".join(f"{c} = ?" for c in key)
        with self._write(f"load rows of {table}") as cur:
            if table == "store_meta":
                cur.execute("CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            cur.executemany(f"DELETE FROM {table} WHERE {where}", [tuple(k) for k in delete])
            # AUTOINCREMENT: an explicit id moves sqlite_sequence past it, so new rows never reuse one.
            cur.executemany(insert, [tuple(r) for r in rows])


def _migrate(conn: sqlite3.Connection, lock: threading.Lock) -> None:
    """Bring a catalog created by an older pitstore up to the current schema (added columns are nullable)."""
    with lock:
        have = {r[1] for r in conn.execute("PRAGMA table_info(feature_entries)")}
    if {"size", "file_hash"} <= have:
        return
    with immediate(conn, lock, "catalog: cannot add feature entry size and hash columns") as cur:
        have = {r[1] for r in cur.execute("PRAGMA table_info(feature_entries)")}  # another process may have
        for col, kind in (("size", "INTEGER"), ("file_hash", "TEXT")):
            if col not in have:
                cur.execute(f"ALTER TABLE feature_entries ADD COLUMN {col} {kind}")


def _migrate_bar_parts(conn: sqlite3.Connection, lock: threading.Lock) -> None:
    """Add ``bar_entries.parts`` (appended segments) to a catalog created before it: NULL, one file, as before."""
    with lock:
        have = {r[1] for r in conn.execute("PRAGMA table_info(bar_entries)")}
    if "parts" in have:
        return
    with immediate(conn, lock, "catalog: cannot add the bar entry parts column") as cur:
        if "parts" not in {r[1] for r in cur.execute("PRAGMA table_info(bar_entries)")}:
            cur.execute("ALTER TABLE bar_entries ADD COLUMN parts TEXT")

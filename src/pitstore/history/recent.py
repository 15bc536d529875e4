"""The history tier as the store uses it: the last N days of feature rows in PostgreSQL, kept in step with the
offline tier, and never a reason for a request to fail.

* ``sync`` copies the rows of the offline entries inside the window, each entry with its catalog
  ``recorded_at`` as the version's ``recorded_at``: re-syncing is idempotent and a restated entry becomes a
  new version, as in the offline tier. An entry replaces its span: a row stored there that the entry lacks (a
  restatement removed its bar) gets a tombstone, in the same transaction. Entries synced are marked in the
  catalog, which is how a reader knows the history tier holds every row that could answer a look-up.
* Writes go through one bounded queue, written in order. ``write`` (syncs) writes at once; ``write_later``
  (pushes) leaves it to a writer thread, so a push never waits for PostgreSQL; pushed rows are recorded at the
  push, so a restated entry recorded after it supersedes them even if the writer writes them later. While
  PostgreSQL is unreachable the queue keeps what it holds, and the writer retries once the breaker closes.
* Many stores may share one server: the store's tables are its own (:func:`catalog_scope`), keyed by its
  store id and each version's fingerprint, never another store's of the same ``name@version``.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from typing import Protocol, TypeVar
from urllib.parse import urlsplit

import polars as pl

from pitstore.catalog.base import FeatureEntries, HistoryIndex, VersionRegistry
from pitstore.catalog.sqlite import now_us
from pitstore.errors import BackendUnavailableError
from pitstore.history.base import AsofRow, HistoryBackend, StoreScope
from pitstore.offline.entries import EntryReader
from pitstore.online.outage import warn_outage

__all__ = ["HistoryTier", "SyncCatalog", "catalog_scope", "open_history"]


class SyncCatalog(FeatureEntries, HistoryIndex, Protocol):
    """What the history tier reads and marks in a catalog: feature entries and their sync marks."""


class ScopeCatalog(VersionRegistry, FeatureEntries, HistoryIndex, Protocol):
    """What :func:`catalog_scope` reads: versions' fingerprints, entries, sync marks and the store id."""

    def store_id(self) -> str: ...

log = logging.getLogger("pitstore.history")
_T = TypeVar("_T")
_Span = tuple[str, int, int]  # (symbol, first_ts, last_ts) a write replaces


@dataclass(frozen=True)
class _Queued:
    """A write waiting for PostgreSQL; ``marks`` (entry id -> first ts) go to ``catalog`` once it is written."""

    table_id: str
    columns: tuple[str, ...]
    rows: pl.DataFrame
    recorded_at: int | None = None
    marks: dict[int, int] = field(default_factory=dict)
    replaces: tuple[_Span, ...] = ()
    catalog: SyncCatalog | None = None


_MAX_QUEUED_ROWS = 1_000_000  # rows kept for replay while PostgreSQL is down; beyond, writes raise
_BREAKER_SECONDS = 1.0  # after a failure, calls fail at once for this long (a silent host costs one timeout)
_IDS_PER_QUERY = 500  # entry ids per catalog look-up when checking a claim to an unscoped table


def catalog_scope(catalog: ScopeCatalog) -> StoreScope:
    """The history tables of the store of ``catalog``: its store id, the fingerprint of each version, and the
    unscoped tables (written before schema version 3) it adopts: those its catalog marks as synced, i.e. that
    this store wrote (a store that never synced one, e.g. a new store on a shared server, leaves it alone)."""

    def version(table_id: str) -> tuple[str, int] | None:
        name, _, number = table_id.rpartition("@")
        return (name, int(number)) if name and number.isdecimal() else None

    def fingerprint(table_id: str) -> str | None:
        parsed = version(table_id)
        if parsed is None:
            return None
        return next((v.fingerprint for v in catalog.versions(parsed[0]) if v.version == parsed[1]), None)

    def adopt(table_id: str) -> bool:
        parsed = version(table_id)
        ids = [] if parsed is None else [e.id for e in catalog.feature_entries(*parsed)]
        return any(catalog.history_synced(table_id, ids[i:i + _IDS_PER_QUERY])
                   for i in range(0, len(ids), _IDS_PER_QUERY))

    return StoreScope(catalog.store_id(), fingerprint, adopt)


def open_history(url: str, *, schema: str = "pitstore", scope: StoreScope | None = None) -> HistoryBackend:
    """The history backend ``url`` names: PostgreSQL (``postgresql://...``), or ``memory://[name]``, rows in this
    process's memory, shared by the stores of this process that name it, each seeing its own (``scope``), as
    stores sharing one server do."""
    if url.startswith("memory:"):
        from pitstore.history.memory import MemoryHistory

        parts = urlsplit(url)
        return MemoryHistory(f"{parts.netloc}{parts.path}", scope=scope)
    from pitstore.history import PostgresHistory  # psycopg: only when a history tier is configured

    return PostgresHistory(url, schema=schema, scope=scope)


class HistoryTier:
    """Recent feature rows per table (``feature_set@version``) of one store (``scope``) in a history backend:
    PostgreSQL, or ``backend`` when given (the one ``url`` names otherwise, see :func:`open_history`)."""

    def __init__(self, url: str, days: float, *, schema: str = "pitstore", scope: StoreScope | None = None,
                 backend: HistoryBackend | None = None) -> None:
        self.db = backend if backend is not None else open_history(url, schema=schema, scope=scope)
        self.window = timedelta(days=days)
        self._migrated = False
        self._lock = threading.Condition()  # the queue; notified when it grows or shrinks, and on close
        self._drain_lock = threading.Lock()  # one writer at a time: versions reach PostgreSQL in queue order
        self._queue: deque[_Queued] = deque()
        self._queued_rows = 0
        self._writer: threading.Thread | None = None
        self._closing = False
        self.dropped = 0  # rows a full queue refused: until a re-sync, some rows may be missing here
        self._retry_at = 0.0  # monotonic time before which calls fail at once
        self._last_error = ""

    def _ready(self) -> HistoryBackend:
        if time.monotonic() < self._retry_at:
            raise BackendUnavailableError(f"{self.db!r} unavailable (retrying in under {_BREAKER_SECONDS} s): "
                                          f"{self._last_error}")
        if not self._migrated:
            self._call(self.db.migrate)
            self._migrated = True
        return self.db

    def _call(self, fn: Callable[[], _T]) -> _T:
        """Run ``fn``; on unavailability open the breaker, so that callers don't each wait for a timeout."""
        try:
            return fn()
        except BackendUnavailableError as exc:
            self._last_error = str(exc)
            self._retry_at = time.monotonic() + _BREAKER_SECONDS
            raise

    # --- writes -------------------------------------------------------------------------------------------

    def write(self, table_id: str, columns: Sequence[str], rows: pl.DataFrame, *, recorded_at: int | None = None,
              catalog: SyncCatalog | None = None, marks: dict[int, int] | None = None,
              replaces: Sequence[_Span] = ()) -> int:
        """Store ``rows`` (symbol, ts, columns) as versions recorded at ``recorded_at`` (default: now), after
        what is queued before them; when PostgreSQL is unreachable they stay queued for the writer thread.
        ``replaces``: spans ``rows`` restate entirely (see :meth:`PostgresHistory.write`: rows stored there but
        absent from ``rows`` get a tombstone). ``marks`` (entry id -> first ts) are recorded in ``catalog`` as
        synced once written. Returns the versions written by this call."""
        self._enqueue(_Queued(table_id, tuple(columns), rows, recorded_at, dict(marks or {}), tuple(replaces),
                              catalog))
        return self._drain()

    def write_later(self, table_id: str, columns: Sequence[str], rows: pl.DataFrame) -> None:
        """Queue ``rows`` for the writer thread: the caller never waits for PostgreSQL. They are recorded at
        now, by this process's clock (the catalog's), not when the writer gets to them: an entry recomputed
        after this call (a restatement) is recorded later and so supersedes them, however far the writer lags.
        Raises BackendUnavailableError when the queue is full (the rows are dropped)."""
        self._enqueue(_Queued(table_id, tuple(columns), rows, recorded_at=now_us()))
        if self._writer is None:
            self._writer = threading.Thread(target=self._write_queued, name="pitstore-history-writer", daemon=True)
            self._writer.start()

    def _enqueue(self, item: _Queued) -> None:
        with self._lock:
            if self._closing:
                raise BackendUnavailableError(f"{self.db!r} is closed")
            if self._queue and self._queued_rows + item.rows.height > _MAX_QUEUED_ROWS:
                self.dropped += item.rows.height
                raise BackendUnavailableError(
                    f"{self.db!r}: the history write queue is full ({self._queued_rows} rows queued, at most"
                    f" {_MAX_QUEUED_ROWS}): {item.rows.height} rows of {item.table_id!r} not accepted"
                    f" ({self._last_error})")
            self._queue.append(item)
            self._queued_rows += item.rows.height
            self._lock.notify_all()

    def _drain(self) -> int:
        """Write the queue in order until it is empty or PostgreSQL is unreachable; returns versions written."""
        written = 0
        with self._drain_lock:
            while True:
                with self._lock:
                    if not self._queue:
                        return written
                    item = self._queue[0]
                try:
                    db = self._ready()
                    written += self._call(partial(db.write, item.table_id, item.columns, item.rows,
                                                  recorded_at=item.recorded_at, replaces=item.replaces))
                except BackendUnavailableError as exc:
                    warn_outage(log, "history:write", "history tier unavailable (%s): %d rows queued for retry", exc,
                                self._queued_rows)
                    return written
                except Exception:
                    self._pop(dropped=True)  # a write PostgreSQL refuses must not block every later one
                    raise
                self._pop()
                if item.marks and item.catalog is not None:
                    item.catalog.mark_history_synced(item.table_id, item.marks)

    def _pop(self, *, dropped: bool = False) -> None:
        with self._lock:
            item = self._queue.popleft()
            self._queued_rows -= item.rows.height
            if dropped:
                self.dropped += item.rows.height
            self._lock.notify_all()

    def _write_queued(self) -> None:
        """The writer thread: drain whenever the queue has rows, after the breaker closes."""
        while True:
            with self._lock:
                while not self._queue and not self._closing:
                    self._lock.wait()
                if self._closing:
                    return
                wait = self._retry_at - time.monotonic()
                if wait > 0:
                    self._lock.wait(wait)
                    continue
            try:
                self._drain()
            except Exception as exc:  # logged, the thread goes on: the next rows may well be written
                log.error("history write failed, rows dropped: %s", exc, exc_info=exc)

    def wait_written(self, timeout: float) -> bool:
        """Wait until the queue is empty (True), for at most ``timeout`` seconds; False at once while
        PostgreSQL is known to be unreachable."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while self._queue:
                left = deadline - time.monotonic()
                if left <= 0 or time.monotonic() < self._retry_at:
                    return False
                self._lock.wait(min(left, _BREAKER_SECONDS))
            return True

    def ping(self) -> None:
        """Reach PostgreSQL now (even while the breaker is open) and write what is queued; raises
        BackendUnavailableError when it cannot."""
        self._retry_at = 0.0
        self._call(self._ready().ping)
        self._drain()

    def pending(self) -> int:
        """Rows queued, not yet written."""
        return self._queued_rows

    def sync(self, table_id: str, columns: Sequence[str], catalog: SyncCatalog, reader: EntryReader,
             symbols: Sequence[str] | None) -> int:
        """Copy the rows inside the window of every offline entry not yet synced, each replacing its span
        there (rows the entry lacks get a tombstone); returns the versions written."""
        name, _, version = table_id.rpartition("@")
        entries = catalog.feature_entries(name, int(version), symbols)
        if not entries:
            return 0
        cutoff = max(e.last_ts for e in entries) - self.window // timedelta(microseconds=1)
        todo = [e for e in entries if e.last_ts >= cutoff]
        done = catalog.history_synced(table_id, [e.id for e in todo])
        written = 0
        for e in todo:
            if done.get(e.id, e.last_ts + 1) <= max(cutoff, e.first_ts):
                continue
            df = reader.read_of([e], ["symbol", "ts", *columns])
            if df is None:
                continue
            start = max(cutoff, e.first_ts)
            df = df.filter(pl.col("ts").dt.epoch("us") >= start)
            # Only the entry's own span: rows pushed live after it are in PostgreSQL before any entry has them.
            written += self.write(table_id, columns, df, recorded_at=e.recorded_at, catalog=catalog,
                                  marks={e.id: start}, replaces=[(e.symbol, start, e.last_ts)])
        return written

    # --- reads --------------------------------------------------------------------------------------------

    def asof(self, table_id: str, symbol: str, t: int, lag: int) -> AsofRow | None:
        db = self._ready()
        return self._call(lambda: db.asof(table_id, symbol, t, lag=lag))

    def latest(self, table_id: str, symbols: Sequence[str]) -> list[AsofRow | None]:
        db = self._ready()
        return self._call(lambda: db.latest(table_id, symbols))

    def close(self) -> None:
        """Write what is queued if PostgreSQL answers; rows still queued are logged as not written (the offline
        tier has them; a later materialize copies them)."""
        with self._lock:
            self._closing = True
            self._lock.notify_all()
        if self._writer is not None:
            self._writer.join()
        if self._queue:
            self._retry_at = 0.0
            self._drain()
        if self._queued_rows:
            log.warning("history tier closed with %d queued rows not written to %r", self._queued_rows, self.db)
        self.db.close()

"""The history tier as the store uses it: the last N days of feature rows in PostgreSQL, kept in step with the
offline tier, and never a reason for a request to fail.

* ``sync`` copies the rows of the offline entries inside the window, each entry with its catalog
  ``recorded_at`` as the version's ``recorded_at``: re-syncing is idempotent and a restated entry becomes a
  new version, as in the offline tier. An entry replaces its span: a row stored there that the entry lacks (a
  restatement removed its bar) gets a tombstone, in the same transaction. Entries synced are marked in the
  catalog, which is how a reader knows the history tier holds every row that could answer a look-up.
* Writes while PostgreSQL is unreachable are queued (bounded) and replayed, in order, by the next call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import timedelta
from functools import partial
from typing import TypeVar

import polars as pl

from pitstore.catalog.base import Catalog
from pitstore.errors import BackendUnavailableError
from pitstore.history.postgres import AsofRow, PostgresHistory
from pitstore.offline import EntryReader

__all__ = ["HistoryTier"]

log = logging.getLogger("pitstore.history")
_T = TypeVar("_T")
_Span = tuple[str, int, int]  # (symbol, first_ts, last_ts) a write replaces
# A write waiting for PostgreSQL: table_id, columns, rows, recorded_at, catalog marks, spans replaced.
_Queued = tuple[str, tuple[str, ...], pl.DataFrame, int | None, dict[int, int], tuple[_Span, ...]]

_MAX_QUEUED_ROWS = 1_000_000  # rows kept for replay while PostgreSQL is down; beyond, writes raise
_BREAKER_SECONDS = 1.0  # after a failure, calls fail at once for this long (a silent host costs one timeout)


class HistoryTier:
    """Recent feature rows per table (``feature_set@version``) in PostgreSQL."""

    def __init__(self, url: str, days: float, *, schema: str = "pitstore") -> None:
        self.db = PostgresHistory(url, schema=schema)
        self.window = timedelta(days=days)
        self._migrated = False
        self._lock = threading.Lock()
        self._queue: deque[_Queued] = deque()
        self._queued_rows = 0
        self.dropped = 0  # rows a full queue refused: until a re-sync, some rows may be missing here
        self._retry_at = 0.0  # monotonic time before which calls fail at once
        self._last_error = ""

    def _ready(self) -> PostgresHistory:
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
              catalog: Catalog | None = None, marks: dict[int, int] | None = None,
              replaces: Sequence[_Span] = ()) -> int:
        """Store ``rows`` (symbol, ts, columns) as versions recorded at ``recorded_at`` (default: now); when
        PostgreSQL is unreachable they are queued and written by a later call. ``replaces``: spans ``rows``
        restate entirely (see :meth:`PostgresHistory.write`: rows stored there but absent from ``rows`` get a
        tombstone). ``marks`` (entry id -> first ts) are recorded in ``catalog`` as synced once written.
        Returns the versions written now."""
        with self._lock:
            self._queue.append((table_id, tuple(columns), rows, recorded_at, dict(marks or {}), tuple(replaces)))
            self._queued_rows += rows.height
            return self._drain(catalog)

    def _drain(self, catalog: Catalog | None) -> int:
        written = 0
        try:
            db = self._ready()
            while self._queue:
                table_id, cols, rows, recorded_at, synced, replaces = self._queue[0]
                written += self._call(partial(db.write, table_id, cols, rows, recorded_at=recorded_at,
                                              replaces=replaces))
                self._queue.popleft()
                self._queued_rows -= rows.height
                if synced and catalog is not None:
                    catalog.mark_history_synced(table_id, synced)
        except BackendUnavailableError as exc:
            if self._queued_rows > _MAX_QUEUED_ROWS:
                dropped = self._queue.pop()
                self._queued_rows -= dropped[2].height
                self.dropped += dropped[2].height
                raise BackendUnavailableError(
                    f"{exc}; the history write queue is full ({_MAX_QUEUED_ROWS} rows): {dropped[2].height} rows"
                    " of the latest write were not accepted"
                ) from exc
            log.warning("history tier unavailable (%s): %d rows queued for retry", exc, self._queued_rows)
        return written

    def ping(self) -> None:
        """Reach PostgreSQL now (even while the breaker is open) and write what is queued; raises
        BackendUnavailableError when it cannot."""
        with self._lock:
            self._retry_at = 0.0
            self._call(self._ready().ping)
            self._drain(None)

    def pending(self) -> int:
        """Rows queued for a retry."""
        return self._queued_rows

    def sync(self, table_id: str, columns: Sequence[str], catalog: Catalog, reader: EntryReader,
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
            df = reader.read([e.path], ["symbol", "ts", *columns])
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
            if self._queue:
                self._retry_at = 0.0
                self._drain(None)
            if self._queued_rows:
                log.warning("history tier closed with %d queued rows not written to %r", self._queued_rows, self.db)
        self.db.close()

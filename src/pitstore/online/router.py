"""The tier router: which tier answers a read, and the answer, by the rules of :mod:`pitstore.rules`.

``get_online`` (the latest vector, judged at now): the online tier; an online miss is filled from the lower
tiers once across processes; when the online tier is unreachable the history tier, then the offline tier
answer with status ``fallback``. When the latest row is not available yet at now (an availability lag), the
answer is the as-of one at now, from the lower tiers: ``get_online`` at ``now`` says what ``get_features`` at
``as_of=now`` says (``fallback`` standing for ``ok`` when the online tier is down).

``get_features`` (one as-of look-up at ``t``): rows pushed here and not yet stored, the online tier when its
row is the newest available, the history tier inside its window, else the offline tier. A tier answers only
when it holds every row that could be the answer, so the answer is the same whichever tier gives it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import datetime, timedelta
from functools import partial
from typing import Any, NamedTuple, cast

import polars as pl

from pitstore.cache.lock import KeyLocks
from pitstore.catalog.base import Catalog, FeatureEntry
from pitstore.catalog.versions import ensure_live, reading
from pitstore.errors import BackendUnavailableError
from pitstore.history.recent import HistoryTier
from pitstore.live.pending import PendingRows
from pitstore.offline.entries import EntryReader
from pitstore.offline.prune import Window, window_spans
from pitstore.offline.reads import Selection, known_at_us, load
from pitstore.online import OnlineStore
from pitstore.online.base import OnlineRow
from pitstore.online.outage import warn_outage
from pitstore.rules import (
    DAMAGED,
    FALLBACK,
    FOREVER,
    NO_DATA_YET,
    OK,
    STALE,
    UNKNOWN_SYMBOL,
    asof_bound,
    fresh_until,
    from_us,
    is_available,
    is_stale,
    to_us,
)
from pitstore.status import Status

__all__ = ["FeatureVector", "Table", "TierRouter"]

log = logging.getLogger("pitstore.online.serving")

_FILL_LOCK_SECONDS = 30.0  # the longest one process may hold the lock that fills an online miss
_NO_FILL_SECONDS = 1.0  # a symbol no tier has is not looked up again for this long


class FeatureVector(NamedTuple):
    """One symbol's features and a status (:mod:`pitstore.status`): ``ok``, ``stale`` (older than the TTL: values
    null), ``no_data_yet``, ``unknown_symbol`` (no tier has a row of it) or ``damaged``; from ``get_online``
    also ``fallback`` (served by a lower tier because the online tier is unreachable)."""

    symbol: str
    ts: datetime | None
    status: Status
    values: dict[str, float | None]


@dataclass(frozen=True, slots=True)
class Table:
    """One feature-set version as the tiers serve it, its rules in integer µs (they run on every read)."""

    sel: Selection
    table_id: str
    ttl: timedelta  # the effective TTL (pitstore.rules.effective_ttl)
    columns: tuple[str, ...]  # all columns of the version, in order: what the online and history tiers store
    named: tuple[tuple[str, int], ...]  # (name, position in the stored row) of each selected column
    ttl_us: int
    lag_us: int

    def values(self, row: Sequence[float | None]) -> dict[str, float | None]:
        return {n: row[i] for n, i in self.named}

    def vector(self, symbol: str, ts: int, row: Sequence[float | None], t: int, status: Status = OK) -> FeatureVector:
        """The as-of row at ``ts`` served at ``t``: null and ``stale`` when too old."""
        if is_stale(ts, t, self.ttl_us):
            return FeatureVector(symbol, from_us(ts), STALE, dict.fromkeys(self.sel.names))
        return FeatureVector(symbol, from_us(ts), status, self.values(row))

    def empty(self, symbol: str, status: Status) -> FeatureVector:
        return FeatureVector(symbol, None, status, dict.fromkeys(self.sel.names))


class TierRouter:
    """Reads through the tiers of one store. ``put_online`` writes rows (symbol, ts, every column) online."""

    def __init__(self, online: OnlineStore, history: HistoryTier | None, catalog: Catalog, reader: EntryReader,
                 pending: PendingRows, locks: KeyLocks, put_online: Callable[[Table, pl.DataFrame], int]) -> None:
        self.online = online
        self.history = history
        self.catalog = catalog
        self.reader = reader
        self.pending = pending
        self._locks = locks
        self._put_online = put_online
        self.fills = 0  # online misses filled from a lower tier (by this process)
        self._synced: dict[tuple[str, int], int] = {}  # (table, entry id) -> first ts in the history tier
        self._no_fill: dict[tuple[str, str], float] = {}  # (table, symbol) -> monotonic time to retry a fill

    # --- get_online -------------------------------------------------------------------------------------------

    def latest(self, table: Table, symbols: Sequence[str], now: int) -> list[FeatureVector]:
        """The latest vector of each symbol at ``now`` (µs), in input order, in one round trip."""
        return self.latest_until(table, symbols, now)[0]

    def latest_until(self, table: Table, symbols: Sequence[str], now: int) -> tuple[list[FeatureVector], list[int]]:
        """:meth:`latest`, and per vector the instant (µs, exclusive) until which it stays the answer while the
        online tier is not written: an online row's vector holds until its TTL edge (``ok``) or for ever
        (``stale``: it only gets older). 0 for every other answer (a miss, a fallback, a row not available
        yet): the lower tiers decide those, and they change without an online write."""
        status: Status = OK
        try:
            rows = self.online.get_latest(table.table_id, symbols)
            if None in rows:
                rows = self._fill(table, symbols, rows)
        except BackendUnavailableError as exc:
            warn_outage(log, f"online:{table.table_id}", "online tier unavailable (%s): serving %s from lower"
                        " tiers", exc, table.table_id)
            rows, status = self._fallback(table, symbols), FALLBACK
        out, until = [], []
        for s, row in zip(symbols, rows, strict=True):
            if row is None:
                out.append(table.empty(s, UNKNOWN_SYMBOL))
                until.append(0)
            elif is_available(row.ts, now, table.lag_us):
                vec = table.vector(s, row.ts, row.values, now, status)
                out.append(vec)
                until.append(0 if status != OK else FOREVER if vec.status == STALE else fresh_until(row.ts,
                                                                                                     table.ttl_us))
            else:  # not knowable yet: the as-of answer at now, which an older row gives
                vec = self.asof(table, s, now, use_online=False)
                out.append(vec._replace(status=status) if vec.status == OK else vec)
                until.append(0)
        return out, until

    def _fill(self, table: Table, symbols: Sequence[str], rows: list[OnlineRow | None]) -> list[OnlineRow | None]:
        """Online misses: load the symbols' latest rows from the lower tiers into the online tier, once across
        processes (a Redis lock with Redis, a file lock otherwise); a symbol no tier has is retried after 1 s."""
        now = time.monotonic()
        wanted = [s for s, r in zip(symbols, rows, strict=True)
                  if r is None and self._no_fill.get((table.table_id, s), 0.0) <= now]
        if not wanted:
            return rows
        # One lock per table: the re-check under it narrows each fill to what is still missing, whatever
        # symbols other processes asked for.
        with self._lock(f"fill:{table.table_id}"):
            again = dict(zip(wanted, self.online.get_latest(table.table_id, wanted), strict=True))
            todo = [s for s, r in again.items() if r is None]
            if todo:
                latest = self.latest_offline(table, todo, all_columns=True)
                if not latest.is_empty():
                    self.fills += self._put_online(table, latest)
                    again.update(zip(todo, self.online.get_latest(table.table_id, todo), strict=True))
            for s in todo:
                if again[s] is None:
                    self._no_fill[(table.table_id, s)] = now + _NO_FILL_SECONDS
        return [again.get(s, r) if r is None else r for s, r in zip(symbols, rows, strict=True)]

    def _lock(self, name: str) -> AbstractContextManager[Any]:
        if self.catalog.mode != "rw":  # read-only: a process-local online tier needs no lock (and no lock file)
            return nullcontext()
        lock = getattr(self.online, "lock", None)
        if lock is not None:  # a server-side lock: every process sharing this Redis
            return cast(AbstractContextManager[Any], lock(name, timeout=_FILL_LOCK_SECONDS))
        return self._locks.hold(hashlib.sha256(name.encode()).hexdigest()[:32], timeout=_FILL_LOCK_SECONDS)

    def _fallback(self, table: Table, symbols: Sequence[str]) -> list[OnlineRow | None]:
        """The online tier is unreachable: the latest rows from the history tier, then the offline tier."""
        found: dict[str, OnlineRow] = {}
        if self.history is not None:
            try:
                for s, h in zip(symbols, self.history.latest(table.table_id, symbols), strict=True):
                    if h is not None:
                        found[s] = OnlineRow(h[0], h[1])
            except BackendUnavailableError as exc:
                warn_outage(log, f"history:{table.table_id}", "history tier unavailable too (%s): serving %s from"
                            " the offline tier", exc, table.table_id)
        if found:  # a history row older than the newest stored row is not the latest (a backfill since its sync)
            newest: dict[str, int] = {}
            for e in self.catalog.feature_entries(table.sel.feature_set, table.sel.version, list(found)):
                newest[e.symbol] = max(newest.get(e.symbol, e.last_ts), e.last_ts)
            found = {s: r for s, r in found.items() if r.ts >= newest.get(s, r.ts)}
        rest = [s for s in symbols if s not in found]
        if rest:
            latest = self.latest_offline(table, rest, all_columns=True)
            cols = list(table.columns)
            for r in latest.iter_rows(named=True) if not latest.is_empty() else []:
                found[r["symbol"]] = OnlineRow(to_us(r["ts"]), tuple(r[c] for c in cols))
        for s in symbols:
            last = self.pending.last(table.table_id, s)
            if last is not None and (s not in found or found[s].ts < last[0]):
                found[s] = OnlineRow(*last)
        return [found.get(s) for s in symbols]

    def latest_offline(self, table: Table, symbols: Sequence[str] | None, *,
                       all_columns: bool = False) -> pl.DataFrame:
        """The last stored row per symbol (symbol, ts, columns), from the newest entry of each symbol."""
        cols = table.columns if all_columns else table.sel.columns
        name, version = table.sel.feature_set, table.sel.version
        with reading(self.reader.root, self.catalog, name, version, check_live=False):  # see versions.py
            entries = self.catalog.feature_entries(name, version, symbols)
            if not entries:
                ensure_live(self.catalog, name, version)
            last: dict[str, FeatureEntry] = {}
            for e in entries:  # ordered by symbol, then time: the last one of a symbol holds its newest row
                last[e.symbol] = e
            df = self.reader.read_of(list(last.values()), ["symbol", "ts", *cols])
        if df is None:
            return pl.DataFrame()
        return df.group_by("symbol", maintain_order=True).last()

    # --- get_features -----------------------------------------------------------------------------------------

    def asof(self, table: Table, symbol: str, t: int, as_known_at: datetime | None = None, *,
             use_online: bool = True) -> FeatureVector:
        """The as-of answer at ``t`` (µs) from the first tier that holds it; ``as_known_at`` replays what the
        store knew then (the offline tier, which keeps every version)."""
        vec = None
        if as_known_at is None:
            # Rows pushed here and not yet stored are newer than every stored row: when one is available
            # it is the answer, whether or not the history tier has it yet.
            got = self.pending.asof(table.table_id, symbol, asof_bound(t, table.lag_us))
            if got is not None:
                return table.vector(symbol, got[0], got[1], t)
            entries = self.catalog.feature_entries(table.sel.feature_set, table.sel.version, [symbol])
            if use_online:
                vec = self.online_asof(table, symbol, t, entries)
            if vec is None:
                vec = self.history_asof(table, symbol, t, entries)
        return vec if vec is not None else self.offline_asof(table, symbol, t, as_known_at)

    def online_asof(self, table: Table, symbol: str, t: int,
                     entries: Sequence[FeatureEntry]) -> FeatureVector | None:
        """The online row when it is the answer: available at ``t`` and as new as anything stored offline."""
        bound = asof_bound(t, table.lag_us)
        if entries and entries[-1].last_ts > bound:
            return None  # a stored row is not available yet, so neither is the online row: skip the round trip
        try:
            row = self.online.get_latest(table.table_id, [symbol])[0]
        except BackendUnavailableError:
            return None
        if row is None or not is_available(row.ts, t, table.lag_us):
            return None
        if entries and entries[-1].last_ts > row.ts:
            return None  # the online row is older than stored rows: not the latest, ask the lower tiers
        return table.vector(symbol, row.ts, row.values, t)

    def history_asof(self, table: Table, symbol: str, t: int,
                      entries: Sequence[FeatureEntry]) -> FeatureVector | None:
        """The history tier's answer when it holds every row that could be it: nothing stored offline after
        the row it found and up to ``t`` (it may have missed a backfill that ran after its last sync)."""
        if self.history is None:
            return None
        try:
            row = self.history.asof(table.table_id, symbol, t, table.lag_us)
        except BackendUnavailableError as exc:
            warn_outage(log, f"history:{table.table_id}", "history tier unavailable (%s): serving %s from the"
                        " offline tier", exc, table.table_id)
            return None
        if row is None:
            return None
        if not self._history_complete(table.table_id, entries, row[0], asof_bound(t, table.lag_us)):
            return None
        return table.vector(symbol, row[0], row[1], t)

    def _history_complete(self, table_id: str, entries: Sequence[FeatureEntry], found: int, bound: int) -> bool:
        """Whether every stored row in (found, bound] is in the history tier: each offline entry with rows
        there was synced from a ts no later than its first row there."""
        # An entry ending at the found row counts: it may be a restatement of that very row.
        overlapping = [e for e in entries if e.last_ts >= found and e.first_ts <= bound]
        unknown = [e.id for e in overlapping if (table_id, e.id) not in self._synced]
        if unknown:
            for i, from_ts in self.catalog.history_synced(table_id, unknown).items():
                self._synced[(table_id, i)] = from_ts  # entries are immutable: a mark never goes stale
        return all(self._synced.get((table_id, e.id), e.last_ts + 1) <= max(found, e.first_ts)
                   for e in overlapping)

    def offline_asof(self, table: Table, symbol: str, t: int, as_known_at: datetime | None = None) -> FeatureVector:
        """The as-of rule over the symbol's stored rows: the statuses :func:`pitstore.offline.pit.asof_join` gives
        ``get_historical`` for the same look-up."""
        bound = asof_bound(t, table.lag_us)
        # No TTL cut (pitstore.offline.prune): a stale answer reports the ts of its row, which must then be read.
        needs = partial(window_spans, windows={symbol: Window(bound, bound, None)})
        loaded = load(self.reader, self.catalog, table.sel, [symbol], known_at_us(as_known_at), needs)
        if loaded.damaged:
            return table.empty(symbol, DAMAGED)
        if not loaded.present:
            return table.empty(symbol, UNKNOWN_SYMBOL)
        rows = loaded.rows.filter(pl.col("ts") <= from_us(bound))
        if rows.is_empty():
            return table.empty(symbol, NO_DATA_YET)
        last = rows.row(-1, named=True)
        ts = to_us(last["ts"])
        if is_stale(ts, t, table.ttl_us):
            return table.empty(symbol, STALE)._replace(ts=last["ts"])
        return FeatureVector(symbol, last["ts"], OK,
                             {n: last[c] for n, c in zip(table.sel.names, table.sel.columns, strict=True)})

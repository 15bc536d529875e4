"""Serving: the latest feature vector per symbol from the online tier, and single point-in-time look-ups.

The online tier holds, per feature-set version (``table_id`` = ``name@version``) and symbol, the latest row;
the optional history tier (PostgreSQL) the last N days of rows; the offline tier everything; rows pushed in
this process and not yet stored are :class:`pitstore.live.pending.PendingRows`. Which tier answers a read is the
:class:`pitstore.online.router.TierRouter`'s decision; the rules (as-of, lag, the effective TTL, statuses) are
:mod:`pitstore.rules`'s. This module resolves feature references to tables, writes the tiers, and is what the
live engine calls to serve pushed rows.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import polars as pl

from pitstore.cache.core import LOCK_DIR
from pitstore.cache.lock import KeyLocks
from pitstore.catalog.base import Catalog
from pitstore.config import Settings
from pitstore.errors import BackendUnavailableError
from pitstore.features.registry import Registry
from pitstore.history.recent import HistoryTier, catalog_scope
from pitstore.live.pending import PendingRows, PushedRow
from pitstore.offline.entries import EntryReader
from pitstore.offline.reads import read_range, select
from pitstore.online import MemoryOnlineStore, OnlineStore, open_online
from pitstore.online.router import FeatureVector, Table, TierRouter
from pitstore.rules import default_ttl, micros, now_us, to_us, worse

__all__ = ["FeatureVector", "Serving", "Table", "default_ttl"]

log = logging.getLogger("pitstore.online.serving")

_RESOLVE_SECONDS = 1.0  # how long "set" (= latest version) stays resolved in a process before a re-check
_MIN_EXPIRY = 7 * 86_400.0  # online keys expire (a memory bound only) no sooner than this, in seconds

PushRow = tuple[str, int, tuple[float | None, ...]]  # (symbol, ts µs, every column of the version)


class Serving:
    """The online and history tiers of one store, and the reads that go through them.

    ``clock`` (µs since the epoch) is the "now" ``get_online`` judges freshness against: the wall clock unless
    replaced (a replay, a test)."""

    def __init__(self, settings: Settings, catalog: Catalog, registry: Registry, reader: EntryReader) -> None:
        options = {}
        if settings.online_url.startswith("redis") and not settings.read_only:  # this store's keys only, unless told
            options["namespace"] = settings.online_namespace or f"pitstore-{catalog.store_id()}"
        # Read-only: the online file is under the root, so this process keeps its own tier, filled on demand from
        # the offline tier (the same rows materialize would write); other online URLs are shared state: not written.
        self.read_only = bool(settings.read_only)
        self.online: OnlineStore = (MemoryOnlineStore() if self.read_only
                                    else open_online(settings.online_url, root=settings.root, **options))
        self.history: HistoryTier | None = (
            HistoryTier(settings.postgres_url, settings.history_days, scope=catalog_scope(catalog))
            if settings.postgres_url else None
        )
        self.catalog = catalog
        self.registry = registry
        self.reader = reader
        self.clock: Callable[[], int] = now_us
        self.requests: Counter[str] = Counter()  # symbols asked for, for warm(top=N)
        self.pending = PendingRows()
        self.router = TierRouter(self.online, self.history, catalog, reader, self.pending,
                                 KeyLocks(settings.root / LOCK_DIR / "online"), self.put_online)
        self._resolved: dict[Any, tuple[float, list[Table]]] = {}

    @property
    def fills(self) -> int:
        """Online misses filled from a lower tier (by this process)."""
        return self.router.fills

    # --- resolution ----------------------------------------------------------------------------------

    def tables(self, features: str | Sequence[str]) -> list[Table]:
        """Feature references resolved to online tables (cached briefly: versions are write-once)."""
        key = features if isinstance(features, str) else tuple(features)
        hit = self._resolved.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        out = []
        for sel in select(self.registry, features):
            info = self.registry.get(sel.feature_set, sel.version)
            named = tuple((n, info.columns.index(c)) for n, c in zip(sel.names, sel.columns, strict=True))
            out.append(Table(sel, f"{sel.feature_set}@{sel.version}", sel.ttl, tuple(info.columns), named,
                             micros(sel.ttl), micros(sel.availability_lag)))
        self._resolved[key] = (now + _RESOLVE_SECONDS, out)
        return out

    # --- writes --------------------------------------------------------------------------------------

    def materialize(self, name: str, version: int, symbols: Sequence[str] | None) -> int:
        """Copy the latest stored row of each symbol of ``name@version`` into the online tier, and the
        last ``history_days`` of rows into the history tier when one is configured."""
        table = self.tables(f"{name}@{version}")[0]
        latest = self.latest_offline(table, symbols, all_columns=True)
        if latest.is_empty():
            return 0
        written = self.put_online(table, latest)
        if self.history is not None:
            self.history.sync(table.table_id, table.columns, self.catalog, self.reader, symbols)
        return written

    def refresh(self, name: str, version: int, symbols: Sequence[str]) -> None:
        """After ``symbols`` were recomputed (a restatement): rewrite their online rows, where there are some,
        with the recomputed ones, and bring the history tier up to date."""
        table = self.tables(f"{name}@{version}")[0]
        try:
            rows = self.online.get_latest(table.table_id, symbols)
            present = [s for s, r in zip(symbols, rows, strict=True) if r is not None]
            if present:
                self.put_online(table, self.latest_offline(table, present, all_columns=True))
        except BackendUnavailableError as exc:
            log.warning("online tier unavailable (%s): rows of %s restated in %s not rewritten", exc, symbols,
                        table.table_id)
        if self.history is not None:
            self.history.sync(table.table_id, table.columns, self.catalog, self.reader, symbols)

    def expiry(self, table: Table) -> float:
        """Online keys expire (a memory bound only) after 4 TTLs, and no sooner than a week."""
        return max(_MIN_EXPIRY, 4 * table.ttl.total_seconds())

    def put_online(self, table: Table, rows: pl.DataFrame) -> int:
        """Write rows (symbol, ts, every column of the version) to the online tier; the newest per symbol wins."""
        cols = list(table.columns)
        ts = rows["ts"].dt.epoch("us").to_list()
        values = rows.select(cols).rows()
        triples = list(zip(rows["symbol"].to_list(), ts, values, strict=True))
        return self.online.put_latest(table.table_id, cols, triples, expire_seconds=self.expiry(table))

    def latest_offline(self, table: Table, symbols: Sequence[str] | None, *,
                       all_columns: bool = False) -> pl.DataFrame:
        """The last stored row per symbol (symbol, ts, columns), from the newest entry of each symbol."""
        return self.router.latest_offline(table, symbols, all_columns=all_columns)

    # --- pushed rows (what the live engine calls) ----------------------------------------------------

    def columns(self, table_id: str) -> tuple[str, ...]:
        """Every column of ``table_id`` (``name@version``), in stored order."""
        return self.tables(table_id)[0].columns

    def put_pushed(self, table_id: str, rows: Sequence[PushRow]) -> None:
        """Write pushed rows to the online tier (raises what the tier raises: nothing else is done then)."""
        table = self.tables(table_id)[0]
        self.online.put_latest(table_id, list(table.columns), list(rows), expire_seconds=self.expiry(table))

    def keep_pushed(self, table_id: str, rows: Sequence[PushRow], frame: pl.DataFrame) -> None:
        """After :meth:`put_pushed`: keep the rows for reads until stored, and queue ``frame`` (the same rows)
        for the history tier. Does not raise: a refused history write is logged (a later sync copies it)."""
        self.pending.add(table_id, rows)
        if self.history is not None:
            try:
                self.history.write_later(table_id, self.columns(table_id), frame)
            except BackendUnavailableError as exc:
                log.warning("history write of %s refused: %s", table_id, exc)

    def take_back(self, table_id: str, symbols: Sequence[str]) -> None:
        """A push failed after its online write: put back each symbol's previous online row (its last pushed
        one, else none: a read fills the latest stored one)."""
        self.online.delete(table_id, list(symbols))
        last = [(s, *row) for s in symbols if (row := self.pending.last(table_id, s)) is not None]
        if last:
            self.put_pushed(table_id, last)

    def pushed_upto(self, table_id: str, upto: dict[str, int]) -> dict[str, list[PushedRow]]:
        """Per symbol, the rows pushed here at or before ``upto[symbol]`` (µs) and not yet dropped."""
        return self.pending.upto(table_id, upto)

    def pushed_stored(self, table_id: str, upto: dict[str, int]) -> None:
        """The rows :meth:`pushed_upto` gives are in the offline tier now: reads no longer need them here."""
        self.pending.drop_upto(table_id, upto)

    def history_written(self, timeout: float) -> bool:
        """Whether every row queued for the history tier was written (waiting up to ``timeout`` s), none
        dropped: False without a history tier."""
        return self.history is not None and self.history.wait_written(timeout) and self.history.dropped == 0

    def stored_rows(self, table_id: str, symbols: Sequence[str]) -> pl.DataFrame:
        """Every stored row of ``symbols`` in ``table_id``: symbol, ts and every column."""
        rows = read_range(self.reader, self.catalog, self.registry, table_id, symbols, None, None, None)
        return rows.select("symbol", "ts", *self.columns(table_id))

    # --- reads ---------------------------------------------------------------------------------------

    def get_online(self, symbols: Sequence[str], features: str | Sequence[str],
                   now_us: int | None = None) -> list[FeatureVector]:
        """The latest vector of each symbol at now (``now_us``, else :attr:`clock`), in input order, in one
        round trip per feature set (see :class:`pitstore.online.router.TierRouter`)."""
        return self.get_online_until(symbols, features, self.clock() if now_us is None else now_us)[0]

    def get_online_until(self, symbols: Sequence[str], features: str | Sequence[str],
                         now: int) -> tuple[list[FeatureVector], list[int]]:
        """:meth:`get_online` at ``now``, and per vector the instant (µs, exclusive) until which it stays the
        answer unless the online tier is written (:meth:`pitstore.online.router.TierRouter.latest_until`; the
        earliest over the feature sets; 0: not known to hold past ``now``)."""
        tables = self.tables(features)
        self.count_requests(symbols)
        merged: list[FeatureVector] | None = None
        until: list[int] = []
        for table in tables:
            got, holds = self.router.latest_until(table, symbols, now)
            if merged is None:
                merged, until = got, holds
            else:
                merged = [_merge(a, b) for a, b in zip(merged, got, strict=True)]
                until = [min(a, b) for a, b in zip(until, holds, strict=True)]
        assert merged is not None
        return merged, until

    def count_requests(self, symbols: Sequence[str]) -> None:
        """Count symbols asked for (``warm(top=N)`` warms the most asked)."""
        if len(symbols) == 1:
            self.requests[symbols[0]] += 1  # Counter.update costs microseconds more for one symbol
        else:
            self.requests.update(symbols)

    def note_reads(self, tables: Sequence[Table], symbols: Sequence[str]) -> None:
        """``symbols`` of ``tables`` were answered from a copy a caller kept (valid by the online tier's change
        token): count them as asked for and as read, for ``warm(top=N)`` and the online tier's LRU bound."""
        self.count_requests(symbols)
        for table in tables:
            self.online.touch(table.table_id, symbols)

    def frame(self, vectors: Sequence[FeatureVector], features: str | Sequence[str]) -> pl.DataFrame:
        """``vectors`` (of ``features``) as a frame: symbol, ts, the features, status. Every feature column is
        Float64, as stored, even when no value is known (all stale or missing): never polars' Null type."""
        names = [n for table in self.tables(features) for n in table.sel.names]
        schema: dict[str, pl.DataType] = {"symbol": pl.String(), "ts": pl.Datetime("us", "UTC"),
                                          **dict.fromkeys(names, pl.Float64()), "status": pl.String()}
        return pl.DataFrame([{"symbol": v.symbol, "ts": v.ts, **v.values, "status": v.status} for v in vectors],
                            schema=schema)

    def get_features(self, symbol: str, as_of: datetime, features: str | Sequence[str], *,
                     as_known_at: datetime | None = None) -> FeatureVector:
        """Features of ``symbol`` as of ``as_of`` (the as-of rule and effective TTL of :mod:`pitstore.rules`),
        from whichever tier holds the answer (:meth:`pitstore.online.router.TierRouter.asof`); ``as_known_at``
        replays what the store knew then."""
        t = to_us(as_of, "as_of")
        self.requests[symbol] += 1
        out: FeatureVector | None = None
        for table in self.tables(features):
            vec = self.router.asof(table, symbol, t, as_known_at)
            out = vec if out is None else _merge(out, vec)
        assert out is not None
        return out

    def close(self) -> None:
        try:
            self.online.close()
        finally:
            if self.history is not None:
                self.history.close()


def _merge(a: FeatureVector, b: FeatureVector) -> FeatureVector:
    """Two feature sets' vectors of one symbol: values side by side, the older ts, the worse status."""
    ts = a.ts if b.ts is None else b.ts if a.ts is None else min(a.ts, b.ts)
    return FeatureVector(a.symbol, ts, worse(a.status, b.status), {**a.values, **b.values})

"""Serving: the latest feature vector per symbol from the online tier, and single point-in-time look-ups.

The online tier holds, per feature-set version (``table_id`` = ``name@version``) and symbol, the latest row;
the optional history tier (PostgreSQL) the last N days of rows; the offline tier everything. Status and
staleness follow the rules of :mod:`pitstore.pit`; the online TTL is the feature set's TTL, by default from
its timeframe (:func:`default_ttl`: 2 bar spacings, plus 2 days for daily and longer bars). When the online
tier cannot be reached, reads are answered from the history tier, then the offline tier, with status
``fallback``; when the history tier cannot be reached, from the offline tier. A tier answers a look-up only
when it holds every row that could be the answer, so the answer is the same whichever tier gives it.
"""

from __future__ import annotations

import hashlib
import logging
import time
from bisect import bisect_right
from collections import Counter
from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from operator import itemgetter
from typing import Any, NamedTuple, cast

import polars as pl

from pitstore.cache.core import LOCK_DIR
from pitstore.cache.lock import KeyLocks
from pitstore.catalog.base import Catalog, FeatureEntry
from pitstore.config import Settings
from pitstore.errors import BackendUnavailableError, InvalidInputError
from pitstore.features.registry import Registry
from pitstore.history.recent import HistoryTier, catalog_scope
from pitstore.offline import EntryReader
from pitstore.online import MemoryOnlineStore, OnlineStore, open_online
from pitstore.online.base import OnlineRow
from pitstore.outage import warn_outage
from pitstore.pit import is_available, is_stale, micros
from pitstore.reads import Selection, known_at_us, load, select
from pitstore.status import DAMAGED, FALLBACK, MISSING, NO_DATA_YET, OK, STALE, UNKNOWN_SYMBOL, worse
from pitstore.timeutil import parse_timeframe
from pitstore.versions import ensure_live, reading

__all__ = ["FeatureVector", "Serving"]

log = logging.getLogger("pitstore.serving")

_RESOLVE_SECONDS = 1.0  # how long "set" (= latest version) stays resolved in a process before a re-check
_TTL_BARS = 2  # default online TTL: this many bar spacings (one late or missing bar is not yet stale) ...
_CLOSED_DAYS = timedelta(days=2)  # ... plus, for daily and longer bars, a weekend (or a holiday) between two
_MIN_EXPIRY = 7 * 86_400.0  # online keys expire (a memory bound only) no sooner than this, in seconds
_FILL_LOCK_SECONDS = 30.0  # the longest one process may hold the lock that fills an online miss
_NO_FILL_SECONDS = 1.0  # a symbol no tier has is not looked up again for this long


class FeatureVector(NamedTuple):
    """One symbol's features and a status (:mod:`pitstore.status`). From ``get_online``: ``ok``, ``stale`` (older
    than the TTL: values null), ``missing`` (nothing stored) or ``fallback`` (served by a lower tier because the
    online tier is unreachable). From ``get_features``: those of ``get_historical`` (``ok``, ``stale``,
    ``no_data_yet``, ``unknown_symbol``, ``damaged``)."""

    symbol: str
    ts: datetime | None
    status: str
    values: dict[str, float | None]


@dataclass(frozen=True, slots=True)
class _Table:
    sel: Selection
    table_id: str
    ttl: timedelta  # online TTL
    columns: tuple[str, ...]  # all columns of the version, in order: what the online and history tiers store
    named: tuple[tuple[str, int], ...]  # (name, position in the stored row) of each selected column
    online_ttl_us: int  # the rules in integer µs, computed once: they run on every read
    ttl_us: int | None  # the feature set's own TTL (as-of reads), if any
    lag_us: int

    def values(self, row: Sequence[float | None]) -> dict[str, float | None]:
        return {n: row[i] for n, i in self.named}


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _us(t: datetime) -> int:
    if t.tzinfo is None:
        raise InvalidInputError("time is timezone-naive; give a timezone-aware UTC datetime", value=t)
    return micros(t - _EPOCH)


def _dt(us: int) -> datetime:
    return _EPOCH + timedelta(0, 0, us)


def default_ttl(step: timedelta, availability_lag: timedelta = timedelta(0)) -> timedelta:
    """The online TTL of a feature set without one: ``availability_lag + 2 x bar spacing``, plus 2 days for
    daily and longer bars (1m: 2 min, 1h: 2 h, 1d: 4 days, 1w: 16 days).

    A row is the latest from ``ts + lag`` until the next bar's row arrives a spacing later; the second spacing
    lets one bar be late. Daily bars also skip weekends and holidays: Friday's close is fresh at Monday's (or,
    after a Monday holiday, Tuesday's) open. Intraday bars are not given the night: a 1m value from Friday
    16:00 is stale at Monday 09:31, as it should be (it is not the current price); give the feature set a
    ``ttl`` to serve it longer.
    """
    ttl = availability_lag + _TTL_BARS * step
    return ttl + _CLOSED_DAYS if step >= timedelta(days=1) else ttl


class Serving:
    """The online and history tiers of one store, and the reads that go through them."""

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
        self.requests: Counter[str] = Counter()  # symbols asked for, for warm(top=N)
        self.fills = 0  # online misses filled from a lower tier (by this process)
        self._resolved: dict[Any, tuple[float, list[_Table]]] = {}
        self._locks = KeyLocks(settings.root / LOCK_DIR / "online")
        self._synced: dict[tuple[str, int], int] = {}  # (table, entry id) -> first ts in the history tier
        self._no_fill: dict[tuple[str, str], float] = {}  # (table, symbol) -> monotonic time to retry a fill
        # Live rows pushed in this process and not yet in the offline tier: table_id -> symbol -> [(ts, row)].
        self.pending: dict[str, dict[str, list[tuple[int, tuple[float | None, ...]]]]] = {}

    # --- resolution ----------------------------------------------------------------------------------

    def tables(self, features: str | Sequence[str]) -> list[_Table]:
        """Feature references resolved to online tables (cached briefly: versions are write-once)."""
        key = features if isinstance(features, str) else tuple(features)
        hit = self._resolved.get(key)
        now = time.monotonic()
        if hit is not None and hit[0] > now:
            return hit[1]
        out = []
        for sel in select(self.registry, features):
            info = self.registry.get(sel.feature_set, sel.version)
            ttl = sel.ttl or default_ttl(parse_timeframe(info.definition["timeframe"]), sel.availability_lag)
            named = tuple((n, info.columns.index(c)) for n, c in zip(sel.names, sel.columns, strict=True))
            out.append(_Table(sel, f"{sel.feature_set}@{sel.version}", ttl, tuple(info.columns), named, micros(ttl),
                              None if sel.ttl is None else micros(sel.ttl), micros(sel.availability_lag)))
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

    def expiry(self, table: _Table) -> float:
        """Online keys expire (a memory bound only) after 4 TTLs, and no sooner than a week."""
        return max(_MIN_EXPIRY, 4 * table.ttl.total_seconds())

    def put_online(self, table: _Table, rows: pl.DataFrame) -> int:
        """Write rows (symbol, ts, every column of the version) to the online tier; the newest per symbol wins."""
        cols = list(table.columns)
        ts = rows["ts"].dt.epoch("us").to_list()
        values = rows.select(cols).rows()
        triples = list(zip(rows["symbol"].to_list(), ts, values, strict=True))
        return self.online.put_latest(table.table_id, cols, triples, expire_seconds=self.expiry(table))

    def latest_offline(self, table: _Table, symbols: Sequence[str] | None, *,
                       all_columns: bool = False) -> pl.DataFrame:
        """The last stored row per symbol (symbol, ts, columns), from the newest entry of each symbol."""
        cols = table.columns if all_columns else table.sel.columns
        name, version = table.sel.feature_set, table.sel.version
        with reading(self.reader.root, self.catalog, name, version, check_live=False):  # see versions.py
            entries = self.catalog.feature_entries(name, version, symbols)
            if not entries:
                ensure_live(self.catalog, name, version)
            last: dict[str, str] = {}
            for e in entries:  # ordered by symbol, then time: the last one of a symbol holds its newest row
                last[e.symbol] = e.path
            df = self.reader.read(list(last.values()), ["symbol", "ts", *cols])
        if df is None:
            return pl.DataFrame()
        return df.group_by("symbol", maintain_order=True).last()

    # --- reads ---------------------------------------------------------------------------------------

    def get_online(self, symbols: Sequence[str], features: str | Sequence[str],
                   now_us: int | None = None) -> list[FeatureVector]:
        """The latest vector of each symbol, in input order, in one round trip per feature set."""
        tables = self.tables(features)
        now = time.time_ns() // 1000 if now_us is None else now_us
        if len(symbols) == 1:
            self.requests[symbols[0]] += 1  # Counter.update costs microseconds more for one symbol
        else:
            self.requests.update(symbols)
        merged: list[FeatureVector] | None = None
        for table in tables:
            try:
                rows = self.online.get_latest(table.table_id, symbols)
                if None in rows:
                    rows = self._fill(table, symbols, rows)
                got = [self._online_vector(table, s, r, now) for s, r in zip(symbols, rows, strict=True)]
            except BackendUnavailableError as exc:
                warn_outage(log, f"online:{table.table_id}", "online tier unavailable (%s): serving %s from lower"
                            " tiers", exc, table.table_id)
                got = self._fallback(table, symbols, now)
            merged = got if merged is None else [_merge(a, b) for a, b in zip(merged, got, strict=True)]
        assert merged is not None
        return merged

    def frame(self, vectors: Sequence[FeatureVector], features: str | Sequence[str]) -> pl.DataFrame:
        """``vectors`` (of ``features``) as a frame: symbol, ts, the features, status. Every feature column is
        Float64, as stored, even when no value is known (all stale or missing): never polars' Null type."""
        names = [n for table in self.tables(features) for n in table.sel.names]
        schema: dict[str, pl.DataType] = {"symbol": pl.String(), "ts": pl.Datetime("us", "UTC"),
                                          **dict.fromkeys(names, pl.Float64()), "status": pl.String()}
        return pl.DataFrame([{"symbol": v.symbol, "ts": v.ts, **v.values, "status": v.status} for v in vectors],
                            schema=schema)

    def _online_vector(self, table: _Table, symbol: str, row: OnlineRow | None, now: int,
                       status: str = OK) -> FeatureVector:
        if row is None:
            return FeatureVector(symbol, None, MISSING, dict.fromkeys(table.sel.names))
        ts = row.ts
        if is_stale(ts, now, table.online_ttl_us) or not is_available(ts, now, table.lag_us):
            return FeatureVector(symbol, _dt(ts), STALE, dict.fromkeys(table.sel.names))
        return FeatureVector(symbol, _dt(ts), status, table.values(row.values))

    def _fill(self, table: _Table, symbols: Sequence[str], rows: list[OnlineRow | None]) -> list[OnlineRow | None]:
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
                    self.fills += self.put_online(table, latest)
                    again.update(zip(todo, self.online.get_latest(table.table_id, todo), strict=True))
            for s in todo:
                if again[s] is None:
                    self._no_fill[(table.table_id, s)] = now + _NO_FILL_SECONDS
        return [again.get(s, r) if r is None else r for s, r in zip(symbols, rows, strict=True)]

    def _lock(self, name: str) -> AbstractContextManager[Any]:
        if self.read_only:  # a process-local online tier needs no lock across processes (and no lock file)
            return nullcontext()
        lock = getattr(self.online, "lock", None)
        if lock is not None:  # a server-side lock: every process sharing this Redis
            return cast(AbstractContextManager[Any], lock(name, timeout=_FILL_LOCK_SECONDS))
        return self._locks.hold(hashlib.sha256(name.encode()).hexdigest()[:32], timeout=_FILL_LOCK_SECONDS)

    def _fallback(self, table: _Table, symbols: Sequence[str], now: int) -> list[FeatureVector]:
        """The online tier is unreachable: the history tier, then the offline tier, status ``fallback``."""
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
                found[r["symbol"]] = OnlineRow(_us(r["ts"]), tuple(r[c] for c in cols))
        for s in symbols:
            for ts, values in self.pending.get(table.table_id, {}).get(s, [])[-1:]:
                if s not in found or found[s].ts < ts:
                    found[s] = OnlineRow(ts, values)
        return [self._online_vector(table, s, found.get(s), now, FALLBACK) for s in symbols]

    def get_features(self, symbol: str, as_of: datetime, features: str | Sequence[str], *,
                     as_known_at: datetime | None = None) -> FeatureVector:
        """Features of ``symbol`` as of ``as_of`` (the as-of rule of DESIGN section 2, with the feature set's
        own TTL): from the online tier when ``as_of`` is at or after the newest stored row, from the history
        tier inside its window, else from the offline tier. ``as_known_at`` replays what the store knew then
        (the offline tier, which keeps every version)."""
        t = _us(as_of)
        self.requests[symbol] += 1
        vectors = []
        for table in self.tables(features):
            vec = None
            if as_known_at is None:
                # Rows pushed here and not yet stored are newer than every stored row: when one is available
                # it is the answer, whether or not the history tier has it yet.
                vec = self._pending_asof(table, symbol, t)
                if vec is None:
                    entries = self.catalog.feature_entries(table.sel.feature_set, table.sel.version, [symbol])
                    vec = self._online_asof(table, symbol, t, entries)
                    if vec is None:
                        vec = self._history_asof(table, symbol, t, entries)
            vectors.append(vec if vec is not None else self._offline_asof(table, symbol, as_of, as_known_at))
        out = vectors[0]
        for v in vectors[1:]:
            out = _merge(out, v)
        return out

    def _vector(self, table: _Table, symbol: str, ts: int, values: Sequence[float | None], t: int) -> FeatureVector:
        if is_stale(ts, t, table.ttl_us):
            return FeatureVector(symbol, _dt(ts), STALE, dict.fromkeys(table.sel.names))
        return FeatureVector(symbol, _dt(ts), OK, table.values(values))

    def _pending_asof(self, table: _Table, symbol: str, t: int) -> FeatureVector | None:
        """The newest row pushed by this process, not yet in the offline tier, available at ``t``."""
        rows = self.pending.get(table.table_id, {}).get(symbol)
        if not rows:
            return None
        i = bisect_right(rows, t - table.lag_us, key=itemgetter(0))  # rows are in ts order
        return self._vector(table, symbol, rows[i - 1][0], rows[i - 1][1], t) if i else None

    def _online_asof(self, table: _Table, symbol: str, t: int,
                     entries: Sequence[FeatureEntry]) -> FeatureVector | None:
        """The online row when it is the answer: available at ``t`` and as new as anything stored offline."""
        if entries and entries[-1].last_ts > t - table.lag_us:
            return None  # a stored row is not available yet, so neither is the online row: skip the round trip
        try:
            row = self.online.get_latest(table.table_id, [symbol])[0]
        except BackendUnavailableError:
            return None
        if row is None or not is_available(row.ts, t, table.lag_us):
            return None
        if entries and entries[-1].last_ts > row.ts:
            return None  # the online row is older than stored rows: not the latest, ask the lower tiers
        return self._vector(table, symbol, row.ts, row.values, t)

    def _history_asof(self, table: _Table, symbol: str, t: int,
                      entries: Sequence[FeatureEntry]) -> FeatureVector | None:
        """The history tier's answer when it holds every row that could be it: nothing stored offline after
        the row it found and up to ``t`` (it may have missed a backfill that ran after its last sync)."""
        if self.history is None:
            return None
        lag = table.lag_us
        try:
            row = self.history.asof(table.table_id, symbol, t, lag)
        except BackendUnavailableError as exc:
            warn_outage(log, f"history:{table.table_id}", "history tier unavailable (%s): serving %s from the"
                        " offline tier", exc, table.table_id)
            return None
        if row is None:
            return None
        if not self._history_complete(table.table_id, entries, row[0], t - lag):
            return None
        return self._vector(table, symbol, row[0], row[1], t)

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

    def _offline_asof(self, table: _Table, symbol: str, as_of: datetime,
                      as_known_at: datetime | None = None) -> FeatureVector:
        """The as-of rule over the symbol's stored rows (see :mod:`pitstore.pit`); rows pushed here and not yet
        stored are :meth:`_pending_asof`'s, asked first by :meth:`get_features`."""
        names = table.sel.names
        loaded = load(self.reader, self.catalog, table.sel, [symbol], known_at_us(as_known_at))
        # The statuses of get_historical for the same look-up (pitstore.pit.asof_join decides them there).
        if loaded.damaged:
            return FeatureVector(symbol, None, DAMAGED, dict.fromkeys(names))
        if not loaded.present:
            return FeatureVector(symbol, None, UNKNOWN_SYMBOL, dict.fromkeys(names))
        rows = loaded.rows.filter(pl.col("ts") <= as_of - table.sel.availability_lag)
        if rows.is_empty():
            return FeatureVector(symbol, None, NO_DATA_YET, dict.fromkeys(names))
        last = rows.row(-1, named=True)
        if is_stale(_us(last["ts"]), _us(as_of), table.ttl_us):
            return FeatureVector(symbol, last["ts"], STALE, dict.fromkeys(names))
        return FeatureVector(symbol, last["ts"], OK,
                             {n: last[c] for n, c in zip(names, table.sel.columns, strict=True)})

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

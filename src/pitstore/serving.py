"""Serving: the latest feature vector per symbol from the online tier, and single point-in-time look-ups.

The online tier holds, per feature-set version (``table_id`` = ``name@version``) and symbol, the latest row.
Status and staleness follow the rules of :mod:`pitstore.pit`; the online TTL is the feature set's TTL, by
default 5 minutes for intraday timeframes and 24 hours for daily and longer ones. When the online tier
cannot be reached, reads are answered from the offline tier with status ``fallback``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

import polars as pl

from pitstore.catalog.base import Catalog
from pitstore.config import Settings
from pitstore.errors import BackendUnavailableError, InvalidInputError
from pitstore.features.registry import Registry
from pitstore.offline import EntryReader
from pitstore.online import OnlineStore, open_online
from pitstore.pit import is_available, is_stale
from pitstore.reads import Selection, read_range, select
from pitstore.timeutil import parse_timeframe

__all__ = ["FeatureVector", "Serving"]

log = logging.getLogger("pitstore.serving")

_RESOLVE_SECONDS = 1.0  # how long "set" (= latest version) stays resolved in a process before a re-check
_INTRADAY_TTL = timedelta(minutes=5)
_DAILY_TTL = timedelta(hours=24)
_MIN_EXPIRY = 7 * 86_400.0  # online keys expire (a memory bound only) no sooner than this, in seconds


class FeatureVector(NamedTuple):
    """One symbol's features: ``status`` is ``ok``, ``stale`` (older than the TTL: values null), ``missing``
    (nothing stored) or ``fallback`` (served by a lower tier because the online tier is unreachable)."""

    symbol: str
    ts: datetime | None
    status: str
    values: dict[str, float | None]


@dataclass(frozen=True)
class _Table:
    sel: Selection
    table_id: str
    ttl: timedelta  # online TTL
    index: tuple[int, ...]  # positions of sel.columns in the stored row (all columns of the version, in order)


def _us(t: datetime) -> int:
    if t.tzinfo is None:
        raise InvalidInputError("time is timezone-naive; give a timezone-aware UTC datetime", value=t)
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


def _dt(us: int) -> datetime:
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=us)


class Serving:
    """The online tier of one store, and the reads that go through it."""

    def __init__(self, settings: Settings, catalog: Catalog, registry: Registry, reader: EntryReader) -> None:
        options = {"namespace": settings.online_namespace} if settings.online_url.startswith("redis") else {}
        self.online: OnlineStore = open_online(settings.online_url, root=settings.root, **options)
        self.catalog = catalog
        self.registry = registry
        self.reader = reader
        self.requests: Counter[str] = Counter()  # symbols asked for, for warm(top=N)
        self._resolved: dict[Any, tuple[float, list[_Table]]] = {}

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
            step = parse_timeframe(info.definition["timeframe"])
            ttl = sel.ttl or (_DAILY_TTL if step >= timedelta(days=1) else _INTRADAY_TTL)
            index = tuple(info.columns.index(c) for c in sel.columns)
            out.append(_Table(sel, f"{sel.feature_set}@{sel.version}", ttl, index))
        self._resolved[key] = (now + _RESOLVE_SECONDS, out)
        return out

    # --- writes --------------------------------------------------------------------------------------

    def materialize(self, name: str, version: int, symbols: Sequence[str] | None) -> int:
        """Copy the latest stored row of each symbol of ``name@version`` into the online tier."""
        table = self.tables(f"{name}@{version}")[0]
        latest = self.latest_offline(table, symbols)
        if latest.is_empty():
            return 0
        cols = list(self.registry.get(name, version).columns)  # the whole version, in order: see _Table.index
        ts = latest["ts"].dt.epoch("us").to_list()
        values = latest.select(cols).rows()
        rows = list(zip(latest["symbol"].to_list(), ts, values, strict=True))
        expire = max(_MIN_EXPIRY, 4 * table.ttl.total_seconds())
        return self.online.put_latest(table.table_id, cols, rows, expire_seconds=expire)

    def latest_offline(self, table: _Table, symbols: Sequence[str] | None) -> pl.DataFrame:
        """The last stored row per symbol (symbol, ts, columns), from the newest entry of each symbol."""
        entries = self.catalog.feature_entries(table.sel.feature_set, table.sel.version, symbols)
        last: dict[str, str] = {}
        for e in entries:  # ordered by symbol, then time: the last one of a symbol holds its newest row
            last[e.symbol] = e.path
        df = self.reader.read(list(last.values()), ["symbol", "ts", *table.sel.columns])
        if df is None:
            return pl.DataFrame()
        return df.group_by("symbol", maintain_order=True).last()

    # --- reads ---------------------------------------------------------------------------------------

    def get_online(self, symbols: Sequence[str], features: str | Sequence[str],
                   now_us: int | None = None) -> list[FeatureVector]:
        """The latest vector of each symbol, in input order, in one round trip per feature set."""
        tables = self.tables(features)
        now = time.time_ns() // 1000 if now_us is None else now_us
        self.requests.update(symbols)
        merged: list[FeatureVector] | None = None
        for table in tables:
            try:
                got = self._from_online(table, symbols, now)
            except BackendUnavailableError as exc:
                log.warning("online tier unavailable (%s): serving %s from the offline tier", exc, table.table_id)
                got = self._from_offline(table, symbols, now)
            merged = got if merged is None else [_merge(a, b) for a, b in zip(merged, got, strict=True)]
        assert merged is not None
        return merged

    def _from_online(self, table: _Table, symbols: Sequence[str], now: int) -> list[FeatureVector]:
        names = table.sel.names
        out = []
        for symbol, row in zip(symbols, self.online.get_latest(table.table_id, symbols), strict=True):
            if row is None:
                out.append(FeatureVector(symbol, None, "missing", dict.fromkeys(names)))
            elif is_stale(row.ts, now, table.ttl) or not is_available(row.ts, now, table.sel.availability_lag):
                out.append(FeatureVector(symbol, _dt(row.ts), "stale", dict.fromkeys(names)))
            else:
                out.append(FeatureVector(symbol, _dt(row.ts), "ok",
                                         {n: row.values[i] for n, i in zip(names, table.index, strict=True)}))
        return out

    def _from_offline(self, table: _Table, symbols: Sequence[str], now: int) -> list[FeatureVector]:
        """As of now from the offline tier, with the as-of rule and the online TTL."""
        latest = self.latest_offline(table, symbols)
        by_symbol = {r["symbol"]: r for r in latest.iter_rows(named=True)} if not latest.is_empty() else {}
        out = []
        for symbol in symbols:
            r = by_symbol.get(symbol)
            if r is None:
                out.append(FeatureVector(symbol, None, "missing", dict.fromkeys(table.sel.names)))
                continue
            ts = _us(r["ts"])
            if is_stale(ts, now, table.ttl):
                out.append(FeatureVector(symbol, r["ts"], "stale", dict.fromkeys(table.sel.names)))
            else:
                values = {n: r[c] for n, c in zip(table.sel.names, table.sel.columns, strict=True)}
                out.append(FeatureVector(symbol, r["ts"], "fallback", values))
        return out

    def get_features(self, symbol: str, as_of: datetime, features: str | Sequence[str]) -> FeatureVector:
        """Features of ``symbol`` as of ``as_of`` (the as-of rule of DESIGN section 2, with the feature set's
        own TTL): from the online tier when ``as_of`` is at or after the newest stored row, else offline."""
        t = _us(as_of)
        self.requests[symbol] += 1
        tables = self.tables(features)
        vectors = []
        for table in tables:
            vec = self._online_asof(table, symbol, t)
            vectors.append(vec if vec is not None else self._offline_asof(table, symbol, as_of))
        out = vectors[0]
        for v in vectors[1:]:
            out = _merge(out, v)
        return out

    def _online_asof(self, table: _Table, symbol: str, t: int) -> FeatureVector | None:
        """The online row when it is the answer: available at ``t`` and as new as anything stored offline."""
        try:
            row = self.online.get_latest(table.table_id, [symbol])[0]
        except BackendUnavailableError:
            return None
        if row is None or not is_available(row.ts, t, table.sel.availability_lag):
            return None
        entries = self.catalog.feature_entries(table.sel.feature_set, table.sel.version, [symbol])
        if entries and entries[-1].last_ts > row.ts:
            return None  # the online row is older than stored rows: not the latest, ask the offline tier
        names = table.sel.names
        if is_stale(row.ts, t, table.sel.ttl):
            return FeatureVector(symbol, _dt(row.ts), "stale", dict.fromkeys(names))
        return FeatureVector(symbol, _dt(row.ts), "ok",
                             {n: row.values[i] for n, i in zip(names, table.index, strict=True)})

    def _offline_asof(self, table: _Table, symbol: str, as_of: datetime) -> FeatureVector:
        """The as-of rule over the symbol's stored rows (see :mod:`pitstore.pit`)."""
        names = table.sel.names
        rows = read_range(self.reader, self.catalog, self.registry, table.table_id, [symbol], None,
                          as_of - table.sel.availability_lag, None)
        if rows.is_empty():
            return FeatureVector(symbol, None, "missing", dict.fromkeys(names))
        last = rows.row(-1, named=True)
        if is_stale(_us(last["ts"]), _us(as_of), table.sel.ttl):
            return FeatureVector(symbol, last["ts"], "stale", dict.fromkeys(names))
        return FeatureVector(symbol, last["ts"], "ok", {n: last[n] for n in names})

    def close(self) -> None:
        self.online.close()


_RANK = {"ok": 0, "fallback": 1, "stale": 2, "missing": 3}


def _merge(a: FeatureVector, b: FeatureVector) -> FeatureVector:
    """Two feature sets' vectors of one symbol: values side by side, the older ts, the worse status."""
    ts = a.ts if b.ts is None else b.ts if a.ts is None else min(a.ts, b.ts)
    status = a.status if _RANK[a.status] >= _RANK[b.status] else b.status
    return FeatureVector(a.symbol, ts, status, {**a.values, **b.values})

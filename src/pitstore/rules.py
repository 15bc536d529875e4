"""The time rules of every read, in one place (DESIGN section 2). Each read path decides with these, and only these.

* **Time**: integer microseconds since 1970-01-01 UTC. :func:`to_us` is the one conversion of a datetime
  (naive ones are refused); :func:`from_us` the way back; :func:`micros` a duration.
* **As-of**: a row at ``ts`` is available at ``t`` when ``ts + availability_lag <= t`` (equality counts):
  :func:`is_available`. A look-up at ``t`` gets the available row of greatest ``ts``, i.e. the greatest
  ``ts <= asof_bound(t, lag)``; the PostgreSQL history tier compares ``ts <= bound`` with that very bound.
* **TTL**: the effective TTL of a feature set is its own ``ttl``, else :func:`default_ttl` of its timeframe
  (:func:`effective_ttl`). The as-of row is stale at ``t`` when ``ts < t - ttl`` (:func:`is_stale`): values null.
  Every read applies the effective TTL: point-in-time reads against the time asked for, ``get_online``
  against now. (Until 2026-12, point-in-time reads applied only a set's own ``ttl`` while ``get_online``
  applied the default too, so one look-up was ``ok`` in one and ``stale`` in the other: "never serve a stale
  value" holds in every path or in none.)
* **Commit times**: every catalog commit (a bar snapshot, feature entries, a retirement, an archive) is stamped
  :func:`commit_time` of now and the last commit's time: strictly increasing in commit order, so no two commits
  share a time and ``as_known_at = t - 1`` sees exactly what was live before the commit at ``t``. The SQLite
  and PostgreSQL catalogs compute it in SQL on a one-row ``commit_clock`` table, under the lock that orders
  their commits.
* **Statuses** and their rank: :mod:`pitstore.status` (re-exported here). A symbol the store has no rows of is
  ``unknown_symbol`` in every read, ``get_online`` included (it said ``missing``: the same fact under a second
  name; ``missing`` stays in the vocabulary for answers of older servers, and no path of this one gives it).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

import polars as pl

from pitstore.errors import InvalidInputError
from pitstore.status import (
    DAMAGED,
    FALLBACK,
    MISSING,
    NO_DATA_YET,
    OK,
    STALE,
    STATUSES,
    UNKNOWN_SYMBOL,
    Status,
    worse,
)
from pitstore.timeutil import parse_timeframe

__all__ = ["DAMAGED", "EPOCH", "FALLBACK", "FOREVER", "MISSING", "NO_DATA_YET", "OK", "STALE", "STATUSES",
           "UNKNOWN_SYMBOL", "Status", "asof_bound", "default_ttl", "effective_ttl", "fresh_until", "from_us",
           "is_available", "is_stale", "micros", "now_us", "stale_expr", "to_us", "worse"]

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)
_TTL_BARS = 2  # default TTL: this many bar spacings (one late or missing bar is not yet stale) ...
_CLOSED_DAYS = timedelta(days=2)  # ... plus, for daily and longer bars, a weekend (or a holiday) between two


# --- time -----------------------------------------------------------------------------------------------------


def to_us(t: datetime, name: str = "time") -> int:
    """A timezone-aware datetime as integer µs since the epoch (exact: no float on the way); naive is an error.

    >>> to_us(datetime(1970, 1, 1, 0, 0, 0, 1, tzinfo=UTC))
    1
    """
    if t.tzinfo is None or t.utcoffset() is None:
        raise InvalidInputError(f"{name} is timezone-naive; give a timezone-aware UTC datetime", value=t)
    return (t - EPOCH) // _US


def from_us(us: int) -> datetime:
    """Integer µs since the epoch as a UTC datetime (the inverse of :func:`to_us`)."""
    return EPOCH + timedelta(microseconds=us)


def micros(d: timedelta) -> int:
    """A duration in integer microseconds."""
    return d // _US


def now_us() -> int:
    """The wall clock in µs: what ``get_online`` judges freshness against unless given a clock."""
    return time.time_ns() // 1000


# --- as-of ----------------------------------------------------------------------------------------------------


def commit_time(now: int, last: int) -> int:
    """A commit's time (µs): now, or 1 µs after the last commit when the clock has not moved on (or went back)."""
    return max(now, last + 1)


def is_available(row_ts_us: int, t_us: int, lag_us: int) -> bool:
    """The as-of rule: the row at ``row_ts_us`` may be served at ``t_us`` (``ts + lag <= t``, equality counts)."""
    return row_ts_us + lag_us <= t_us


def asof_bound(t_us: int, lag_us: int) -> int:
    """The greatest ``ts`` available at ``t_us``: ``t - lag`` (``ts <= t - lag`` is ``ts + lag <= t`` on integers)."""
    return t_us - lag_us


# --- TTL ------------------------------------------------------------------------------------------------------


def default_ttl(step: timedelta, availability_lag: timedelta = timedelta(0)) -> timedelta:
    """The TTL of a feature set without one: ``availability_lag + 2 x bar spacing``, plus 2 days for daily and
    longer bars (1m: 2 min, 1h: 2 h, 1d: 4 days, 1w: 16 days).

    A row is the latest from ``ts + lag`` until the next bar's row arrives a spacing later; the second spacing
    lets one bar be late. Daily bars also skip weekends and holidays: Friday's close is fresh at Monday's (or,
    after a Monday holiday, Tuesday's) open. Intraday bars are not given the night: a 1m value from Friday
    16:00 is stale at Monday 09:31, as it should be (it is not the current price); give the feature set a
    ``ttl`` to serve it longer.
    """
    ttl = availability_lag + _TTL_BARS * step
    return ttl + _CLOSED_DAYS if step >= timedelta(days=1) else ttl


def effective_ttl(ttl: timedelta | None, timeframe: str, availability_lag: timedelta = timedelta(0)) -> timedelta:
    """The TTL every read applies: the feature set's own ``ttl``, else :func:`default_ttl` of ``timeframe``."""
    return ttl if ttl is not None else default_ttl(parse_timeframe(timeframe), availability_lag)


def is_stale(row_ts_us: int, t_us: int, ttl_us: int | None) -> bool:
    """The TTL rule: the row at ``row_ts_us`` is too old to serve at ``t_us`` (``ts < t - ttl``; at equality it
    is still fresh). ``ttl_us=None``: no TTL (direct users of :func:`pitstore.offline.pit.asof_join`)."""
    return ttl_us is not None and row_ts_us < t_us - ttl_us


FOREVER = 2**63 - 1  # an instant (µs) no clock reaches: "until something is written"


def fresh_until(row_ts_us: int, ttl_us: int) -> int:
    """The first instant (µs) at which the row at ``row_ts_us`` is stale: :func:`is_stale` is false before it
    and true from it on (``ts < t - ttl`` first holds at ``t = ts + ttl + 1``)."""
    return row_ts_us + ttl_us + 1


def stale_expr(row_ts: pl.Expr, t: pl.Expr, ttl: timedelta | None) -> pl.Expr:
    """:func:`is_stale` over columns (datetimes), for the vectorised point-in-time join."""
    return row_ts < (t - ttl) if ttl is not None else pl.lit(False)

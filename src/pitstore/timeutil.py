"""Timeframes and UTC helpers."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta

from pitstore.errors import ConfigError, InvalidInputError

__all__ = ["TRADING_DAYS", "TRADING_SESSION", "parse_timeframe", "periods_per_year", "to_timedelta", "utc"]

_TIMEFRAME = re.compile(r"^(\d+)(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
TRADING_DAYS = 252  # sessions in a year of US equities: what a daily bar counts
TRADING_SESSION = timedelta(hours=6, minutes=30)  # one regular US equity session (09:30-16:00 ET)
_WEEKS = 52


def parse_timeframe(timeframe: str) -> timedelta:
    """Bar spacing of a timeframe name such as ``1m``, ``5m``, ``1h``, ``1d``.

    >>> parse_timeframe("5m")
    datetime.timedelta(seconds=300)
    """
    m = _TIMEFRAME.match(timeframe) if isinstance(timeframe, str) else None
    if m is None or int(m.group(1)) == 0:
        raise ConfigError(f"invalid timeframe {timeframe!r}: expected e.g. '1m', '5m', '1h', '1d', '1w'")
    return timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def periods_per_year(timeframe: str) -> float:
    """Bars of ``timeframe`` in one year, the factor volatility is annualised by (its square root).

    One rule, US equity sessions (pass your own ``periods_per_year`` for a market that trades around the clock,
    e.g. ``365 * 24`` for hourly crypto bars):

    ==========================  =================================  ===============================
    timeframe                   periods per year                   examples
    ==========================  =================================  ===============================
    ``Nd``                      252 / N (a day bar is a session)   ``1d``: 252, ``2d``: 126
    ``Nw``                      52 / N                             ``1w``: 52
    intraday (``s``, ``m``,     252 x 6.5 h / spacing (bars in     ``1h``: 1638, ``5m``: 19656,
    ``h``)                      the regular sessions of a year)    ``1m``: 98280, ``4h``: 409.5
    ==========================  =================================  ===============================

    >>> periods_per_year("1d"), periods_per_year("1h"), periods_per_year("1w")
    (252.0, 1638.0, 52.0)
    """
    step = parse_timeframe(timeframe)  # validates it
    unit, count = timeframe[-1], int(timeframe[:-1])
    if unit == "w":
        return _WEEKS / count
    if unit == "d":
        return TRADING_DAYS / count
    return TRADING_DAYS * (TRADING_SESSION / step)


def to_timedelta(value: timedelta | str | None) -> timedelta | None:
    """A duration given as a timedelta or a timeframe-like string (``"5m"``, ``"24h"``)."""
    if value is None or isinstance(value, timedelta):
        return value
    return parse_timeframe(value)


def utc(value: datetime | str, name: str) -> datetime:
    """A time argument at the API edge (Python or CLI) as a plain ``datetime`` in UTC, to the microsecond.

    Accepts a timezone-aware ``datetime`` (a pandas ``Timestamp`` too) in any timezone, or an ISO 8601
    string with an offset (``2024-01-02T09:30:00-05:00``, ``...Z``). Naive times are refused, never guessed
    (DESIGN section 2). ``name`` names the argument or option in the error.

    >>> from zoneinfo import ZoneInfo
    >>> utc(datetime(2024, 1, 2, 9, 30, tzinfo=ZoneInfo("America/New_York")), "as_of")
    datetime.datetime(2024, 1, 2, 14, 30, tzinfo=datetime.timezone.utc)
    """
    if isinstance(value, str):
        text = value
        try:
            value = datetime.fromisoformat(text.strip())
        except ValueError:
            raise InvalidInputError(
                f"{name} {text!r} is not an ISO 8601 timestamp; give one like 2020-01-01T00:00:00Z") from None
        if value.tzinfo is None:
            raise InvalidInputError(
                f"{name} {text!r} has no timezone; give a timezone-aware timestamp such as "
                "2020-01-01T00:00:00Z or 2020-01-01T09:30:00-05:00")
    if not isinstance(value, datetime):
        raise InvalidInputError(f"{name} must be a timezone-aware datetime, not {type(value).__name__}",
                                value=value)
    if value.tzinfo is None or value.utcoffset() is None:
        raise InvalidInputError(f"{name} is timezone-naive; give a timezone-aware datetime", value=value)
    try:
        t = value.astimezone(UTC)
    except OverflowError:
        raise InvalidInputError(f"{name} is out of the datetime range once converted to UTC", value=value) from None
    # A plain datetime (not a pandas Timestamp, whose nanoseconds pitstore does not store) with tzinfo=UTC:
    # polars compares it against the stored Datetime("us", "UTC") columns without a schema error.
    return datetime(t.year, t.month, t.day, t.hour, t.minute, t.second, t.microsecond, tzinfo=UTC)

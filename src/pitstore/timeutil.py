"""Timeframes and UTC helpers."""

from __future__ import annotations

import re
from datetime import timedelta

from pitstore.errors import ConfigError

__all__ = ["parse_timeframe", "to_timedelta"]

_TIMEFRAME = re.compile(r"^(\d+)(s|m|h|d|w)$")
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_timeframe(timeframe: str) -> timedelta:
    """Bar spacing of a timeframe name such as ``1m``, ``5m``, ``1h``, ``1d``.

    >>> parse_timeframe("5m")
    datetime.timedelta(seconds=300)
    """
    m = _TIMEFRAME.match(timeframe) if isinstance(timeframe, str) else None
    if m is None or int(m.group(1)) == 0:
        raise ConfigError(f"invalid timeframe {timeframe!r}: expected e.g. '1m', '5m', '1h', '1d', '1w'")
    return timedelta(seconds=int(m.group(1)) * _UNIT_SECONDS[m.group(2)])


def to_timedelta(value: timedelta | str | None) -> timedelta | None:
    """A duration given as a timedelta or a timeframe-like string (``"5m"``, ``"24h"``)."""
    if value is None or isinstance(value, timedelta):
        return value
    return parse_timeframe(value)

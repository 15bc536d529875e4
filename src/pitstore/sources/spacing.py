"""Bar spacing against a feature set's timeframe: bars of another timeframe must not merge silently into one series.

The rule: two consecutive bars of a symbol must be at least half the timeframe apart. Larger gaps are fine
(nights, weekends, holidays, halts, missing bars). Half, not the whole spacing, because real bars of one
timeframe come closer than it: a session's last hourly bar of a 09:30 open closes at 16:00, 30 minutes after
the one before; daily bars stamped at the close are 23 hours apart across a DST change and 21 hours before an
early close. Mixing timeframes at least twice apart (minute bars under an hourly set, an intraday bar inside a
daily series) is caught; a bar of another timeframe stamped at the ts of a stored bar replaces it in ingest
and cannot be told apart by spacing.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import polars as pl

from pitstore.errors import InvalidInputError
from pitstore.features.base import FeatureSet
from pitstore.rules import from_us
from pitstore.sources.bars import symbol_runs
from pitstore.timeutil import parse_timeframe

__all__ = ["check_spacing", "min_gap_us", "spacing_error"]


def min_gap_us(feature_set: FeatureSet) -> int:
    """The closest two consecutive bars of a symbol may be under ``feature_set``, in microseconds."""
    return parse_timeframe(feature_set.timeframe) // timedelta(microseconds=1) // 2


def spacing_error(feature_set: FeatureSet, symbol: str, before_us: int, after_us: int) -> InvalidInputError:
    """The error for two bars of ``symbol`` (ts in µs) closer together than ``feature_set``'s timeframe allows."""
    before, after = from_us(before_us), from_us(after_us)
    return InvalidInputError(
        f"bars {before.isoformat()} and {after.isoformat()} are {after - before} apart, closer than half the "
        f"{feature_set.timeframe} timeframe of feature set {feature_set.name!r} allows: bars of another timeframe "
        "mixed into this series?", column="ts", symbol=symbol)


def check_spacing(bars: pl.DataFrame, feature_set: FeatureSet) -> None:
    """Raise :func:`spacing_error` for the first two consecutive bars of a symbol closer together than half
    ``feature_set``'s timeframe; ``bars`` are sorted by (symbol, ts)."""
    if bars.height < 2:
        return
    ts = bars["ts"].dt.epoch("us").to_numpy()
    close = np.diff(ts) < min_gap_us(feature_set)
    _, _, ends = symbol_runs(bars["symbol"])
    close[ends[:-1] - 1] = False  # a symbol boundary is not a gap
    hit = np.flatnonzero(close)
    if hit.size:
        i = int(hit[0])
        raise spacing_error(feature_set, bars["symbol"][i], int(ts[i]), int(ts[i + 1]))

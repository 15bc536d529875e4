"""Bars of a coarser timeframe made from stored bars (``/v1/bars?timeframe=1h`` over minute bars).

Buckets are aligned on UTC (``5m``, ``1h``: multiples of the span since the epoch; ``1d``: UTC days; ``1w``:
weeks from Monday) and hold the bars whose close time lies in ``(start, end]``: a bar stamped 10:00 closes
the 09:00-10:00 hour. Each coarse bar is stamped with the close time of the last bar in it, the moment it was
knowable: a bucket still filling (the current hour) is served as far as it goes, stamped with its newest bar,
never with the bucket's future end. open = first, high = max, low = min, close = last, volume = sum; other
columns are not carried (they have no one rule).
"""

from __future__ import annotations

from datetime import timedelta

import polars as pl

from pitstore.errors import ConfigError, InvalidInputError
from pitstore.timeutil import parse_timeframe

__all__ = ["native_spacing", "resample_bars"]


def native_spacing(bars: pl.DataFrame) -> timedelta | None:
    """The typical spacing of one symbol's bars (the median gap), or None with fewer than two bars."""
    if bars.height < 2:
        return None
    gap = bars["ts"].diff().drop_nulls().median()
    assert isinstance(gap, timedelta)
    return gap


def resample_bars(bars: pl.DataFrame, timeframe: str) -> pl.DataFrame:
    """One symbol's ``bars`` (sorted by ts) as bars of ``timeframe``; the same bars when that is their own
    spacing. A timeframe finer than the stored bars is an :class:`InvalidInputError`: it cannot be made."""
    try:
        span = parse_timeframe(timeframe)
    except ConfigError as exc:  # a request argument here, not a setting
        raise InvalidInputError(str(exc), column="timeframe", value=timeframe) from None
    native = native_spacing(bars)
    if native is None or span <= native:
        if native is not None and span < native / 2:
            raise InvalidInputError(f"bars are stored about every {native}: a {timeframe} timeframe cannot be "
                                    "made from them", column="timeframe", value=timeframe,
                                    symbol=bars["symbol"][0])
        return bars
    # group_by_dynamic labels windows by their start; closed="right" puts a bar closing on a boundary into the
    # window it ends, as a close-time stamp means.
    every = f"{int(span.total_seconds())}s" if not timeframe.endswith(("d", "w")) else timeframe
    return (bars.sort("ts")
            .group_by_dynamic("ts", every=every, closed="right", label="left", start_by="window",
                              group_by="symbol")
            .agg(pl.col("ts").last().alias("_close_ts"), pl.col("open").first(), pl.col("high").max(),
                 pl.col("low").min(), pl.col("close").last(), pl.col("volume").sum())
            .drop("ts").rename({"_close_ts": "ts"})
            .select("symbol", "ts", "open", "high", "low", "close", "volume"))

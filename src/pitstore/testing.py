"""Seeded synthetic bars for tests, examples and benchmarks (never served as data by a store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from pitstore.timeutil import parse_timeframe

__all__ = ["synthetic_bars"]


def synthetic_bars(
    n_symbols: int = 10,
    n_bars: int = 500,
    *,
    timeframe: str = "1d",
    start: datetime = datetime(2015, 1, 2, tzinfo=UTC),
    seed: int = 0,
    gaps: float = 0.0,
    ragged: bool = False,
) -> pl.DataFrame:
    """A geometric random walk of OHLCV bars, sorted by (symbol, ts), reproducible from ``seed``.

    ``gaps`` drops that fraction of bars at random (missing bars); ``ragged`` gives each symbol a
    different length (between half and all of ``n_bars``).

    >>> synthetic_bars(2, 3).columns
    ['symbol', 'ts', 'open', 'high', 'low', 'close', 'volume']
    """
    rng = np.random.default_rng(seed)
    step = parse_timeframe(timeframe)
    lengths = (
        rng.integers(max(1, n_bars // 2), n_bars + 1, size=n_symbols) if ragged else np.full(n_symbols, n_bars)
    )
    total = int(lengths.sum())
    sigma = 0.02 * np.sqrt(step / timedelta(days=1))
    log_ret = rng.normal(0.0, sigma, total)
    offsets = np.repeat(np.cumsum(lengths) - lengths, lengths)
    csum = np.cumsum(log_ret)
    # Restart the walk for each symbol at its own price level.
    base = np.repeat(np.log(rng.uniform(10, 500, n_symbols)), lengths)
    ends = np.cumsum(lengths)
    walk = csum - np.repeat(np.r_[0.0, csum[ends[:-1] - 1]], lengths)
    close = np.exp(base + walk)
    open_ = close * np.exp(rng.normal(0.0, sigma / 4, total))
    spread = np.abs(rng.normal(0.0, sigma / 2, total))
    high = np.maximum(open_, close) * np.exp(spread)
    low = np.minimum(open_, close) * np.exp(-spread)
    volume = rng.integers(1_000, 1_000_000, total).astype(np.float64)
    idx = np.arange(total) - offsets
    step_us = int(step / timedelta(microseconds=1))
    ts_us = int(start.timestamp() * 1_000_000) + idx * step_us
    symbols = np.repeat(np.array([f"S{i:04d}" for i in range(n_symbols)]), lengths)
    df = pl.DataFrame(
        {
            "symbol": symbols,
            "ts": pl.Series(ts_us, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
        }
    )
    if gaps > 0:
        df = df.filter(pl.Series(rng.random(total) >= gaps))
    return df

"""Seeded synthetic bars for tests, examples and benchmarks (never served as data by a store)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl

from pitstore.timeutil import parse_timeframe

__all__ = ["synthetic_bars"]

# Each symbol draws from its own two generators, seeded from (seed, symbol index, stream) and filled bar by bar
# in order (a fixed number of draws per bar), so bar j of a symbol is a function of (seed, symbol, j) only:
# more bars extend a series instead of changing it.
_NORMALS, _UNIFORMS = 0, 1


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

    Prefix-stable: ``synthetic_bars(k, n + 1)`` is ``synthetic_bars(k, n)`` plus each symbol's next bar (same
    ``seed``, ``timeframe``, ``start`` and ``gaps``), so the next live bar can be simulated; a symbol's series
    does not depend on how many symbols are drawn either. ``gaps`` drops each bar with that probability
    (missing bars, decided per bar from the symbol's own draws); ``ragged`` gives each symbol a different
    length (between half and all of ``n_bars``, drawn from ``seed`` and ``n_bars``: lengths are not prefix-stable).

    >>> synthetic_bars(2, 3).columns
    ['symbol', 'ts', 'open', 'high', 'low', 'close', 'volume']
    >>> synthetic_bars(1, 4).head(3).equals(synthetic_bars(1, 3))
    True
    """
    step = parse_timeframe(timeframe)
    lengths = (
        np.random.default_rng(seed).integers(max(1, n_bars // 2), n_bars + 1, size=n_symbols) if ragged
        else np.full(n_symbols, n_bars)
    )
    sigma = 0.02 * np.sqrt(step / timedelta(days=1))
    closes, normals, uniforms = [np.empty(0)], [np.empty((0, 3))], [np.empty((0, 2))]
    for i, n in enumerate(lengths.tolist()):
        z = np.random.default_rng([seed, i, _NORMALS]).standard_normal((n, 3))  # log return, open, spread
        rng = np.random.default_rng([seed, i, _UNIFORMS])
        level = 10 + 490 * rng.random()
        # Each symbol's walk is summed on its own: its values never depend on the symbols before it.
        closes.append(level * np.exp(np.cumsum(z[:, 0] * sigma)))
        normals.append(z)
        uniforms.append(rng.random((n, 2)))  # volume, gap
    close, z, u = np.concatenate(closes), np.concatenate(normals), np.concatenate(uniforms)
    open_ = close * np.exp(z[:, 1] * sigma / 4)
    spread = np.abs(z[:, 2] * sigma / 2)
    high = np.maximum(open_, close) * np.exp(spread)
    low = np.minimum(open_, close) * np.exp(-spread)
    volume = np.floor(1_000 + u[:, 0] * 999_000)
    idx = np.concatenate([np.arange(n) for n in lengths.tolist()] or [np.empty(0, np.int64)])
    step_us = int(step / timedelta(microseconds=1))
    ts_us = int(start.timestamp() * 1_000_000) + idx * step_us
    symbols = np.repeat(np.array([f"S{i:04d}" for i in range(n_symbols)], dtype=object), lengths)
    df = pl.DataFrame(
        {
            "symbol": pl.Series(symbols, dtype=pl.String),
            "ts": pl.Series(ts_us, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
        }
    )
    if gaps > 0:
        df = df.filter(pl.Series(u[:, 1] >= gaps))
    return df

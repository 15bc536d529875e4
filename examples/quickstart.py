"""Quickstart: define features, compute them over many symbols, register a feature set."""

from __future__ import annotations

import tempfile
import time

import polars as pl

import pitstore


def main() -> None:
    bars = pitstore.testing.synthetic_bars(n_symbols=300, n_bars=756, seed=7)  # 3 years of daily bars
    print(f"bars: {bars.height:,} rows, {bars['symbol'].n_unique()} symbols")

    @pitstore.feature(lookback=1)
    def overnight_gap(b: pl.DataFrame) -> pl.Series:
        """Open over the previous close, minus one."""
        return b["open"] / b["close"].shift(1) - 1

    daily = pitstore.FeatureSet(
        "daily_core",
        [
            *pitstore.standard_features().features,
            pitstore.rsi(14),
            pitstore.macd(),
            pitstore.talib("ADX", timeperiod=14),
            pitstore.expr("hl_range", (pl.col("high") - pl.col("low")) / pl.col("close")),
            overnight_gap,
        ],
        timeframe="1d",
    )
    t0 = time.perf_counter()
    out = pitstore.compute(daily, bars)
    dt = time.perf_counter() - t0
    print(f"computed {len(daily.columns)} columns in {dt * 1000:.0f} ms ({bars.height / dt / 1e6:.1f} M bars/s)")
    print(out.filter(pl.col("symbol") == "S0000").tail(3))

    n = pitstore.check_lookahead(daily, bars.filter(pl.col("symbol").is_in(["S0000", "S0001"])), cuts=3)
    print(f"look-ahead check passed ({n:,} values compared)")

    with pitstore.Store.open(tempfile.mkdtemp()) as store:
        v = store.register(daily)
        print(f"registered daily_core as v{v}; again: v{store.register(daily)}")
        print("resolved:", store.resolve("daily_core:rsi_14"))


if __name__ == "__main__":
    main()

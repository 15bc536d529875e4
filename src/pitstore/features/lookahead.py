"""The look-ahead check: a feature's value at t must not change when bars after t are removed."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl

from pitstore.errors import LookaheadError
from pitstore.features.engine import FeatureLike, compute_frame, flatten_features
from pitstore.sources.bars import validate_bars

__all__ = ["check_lookahead"]


def check_lookahead(features: FeatureLike, bars: Any, *, cuts: int = 5, seed: int = 0) -> int:
    """Prove on ``bars`` that ``features`` use no future bars; returns the number of values compared.

    For ``cuts`` timestamps t drawn at random from the bars, the features are computed again on the bars
    with ``ts <= t`` and every value must equal, bit for bit, the value computed on all bars.
    Raises :class:`LookaheadError` naming the column, symbol and ts of the first difference.

    >>> import pitstore
    >>> bars = pitstore.testing.synthetic_bars(2, 80)
    >>> pitstore.check_lookahead([pitstore.ema(10)], bars, cuts=2) > 0
    True
    """
    feats = flatten_features(features)
    df = validate_bars(bars)
    full = compute_frame(feats, df)
    times = df["ts"].unique().sort()
    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(times.len(), size=min(cuts, times.len()), replace=False).tolist())
    columns = [c for f in feats for c in f.outputs]
    compared = 0
    for i in picks:
        t = times[i]
        truncated = compute_frame(feats, df.filter(pl.col("ts") <= t))
        expected = full.filter(pl.col("ts") <= t)
        for col in columns:
            a = truncated[col].to_numpy().astype(np.float64)
            b = expected[col].to_numpy().astype(np.float64)
            same = (a == b) | (np.isnan(a) & np.isnan(b))
            if not same.all():
                j = int(np.flatnonzero(~same)[0])
                raise LookaheadError(
                    f"feature column {col!r} looks ahead: at symbol {expected['symbol'][j]!r}, "
                    f"ts {expected['ts'][j]}, computing on bars up to {t} gives {a[j]!r} but on all bars "
                    f"{b[j]!r}"
                )
            compared += len(a)
    return compared

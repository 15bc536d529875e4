"""The look-ahead check passes for every shipped feature and catches features that use future bars."""

from __future__ import annotations

from typing import Any

import numpy as np
import polars as pl
import pytest
import talib

import pitstore
from pitstore import LookaheadError
from pitstore.features.library import BUILTINS
from pitstore.sources.bars import BAR_COLUMNS

CUTS = 3

# Non-default parameters for the built-ins (short, long, fast > slow for MACD, fractional k, ...).
NON_DEFAULT: list[tuple[str, dict[str, Any]]] = [
    ("ret", {"n": 10}),
    ("log_ret", {"n": 3}),
    ("vol", {"n": 5, "periods_per_year": 365}),
    ("mom", {"n": 3}),
    ("sma", {"n": 3}),
    ("ema", {"n": 50}),
    ("rsi", {"n": 2}),
    ("macd", {"fast": 5, "slow": 35, "signal": 5}),
    ("macd", {"fast": 26, "slow": 12, "signal": 9}),
    ("bollinger", {"n": 10, "k": 1.5}),
    ("atr", {"n": 5}),
    ("vwap", {"n": 5}),
    ("zscore", {"n": 60}),
]


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    """3 symbols of different lengths with missing bars, plus a 'periods' column for MAVP."""
    df = pitstore.testing.synthetic_bars(3, 300, gaps=0.1, ragged=True, seed=17)
    rng = np.random.default_rng(17)
    return df.with_columns(periods=pl.Series(rng.integers(2, 31, df.height).astype(np.float64)))


def _check(features: Any, bars: pl.DataFrame) -> None:
    compared = pitstore.check_lookahead(features, bars, cuts=CUTS, seed=3)
    assert compared > 0


@pytest.mark.parametrize("name", sorted(BUILTINS))
def test_builtin_default_has_no_lookahead(bars: pl.DataFrame, name: str) -> None:
    """Every built-in feature, built with its default parameters, passes the look-ahead check."""
    f = getattr(pitstore, name)()
    assert f.func == name
    assert dict(f.params) == BUILTINS[name].params
    _check(f, bars)


@pytest.mark.parametrize(("name", "params"), NON_DEFAULT, ids=lambda v: v if isinstance(v, str) else None)
def test_builtin_non_default_has_no_lookahead(bars: pl.DataFrame, name: str, params: dict[str, Any]) -> None:
    """Built-in features with non-default parameters pass the look-ahead check."""
    _check(getattr(pitstore, name)(**params), bars)


def test_standard_set_has_no_lookahead(bars: pl.DataFrame) -> None:
    """The standard feature set passes the look-ahead check."""
    _check(pitstore.standard_features(), bars)


@pytest.mark.parametrize("name", sorted(talib.get_functions()))
def test_talib_default_has_no_lookahead(bars: pl.DataFrame, name: str) -> None:
    """Every TA-Lib function with default parameters passes the look-ahead check (extra inputs supplied)."""
    f = pitstore.talib(name)
    extra = set(f.inputs) - set(BAR_COLUMNS)
    # Only inputs that are not bar columns come from the fixture's extra column (MAVP's periods).
    assert extra <= {"periods"}, f"{name} needs inputs {sorted(extra)}"
    _check(f, bars)


def test_all_features_together_have_no_lookahead(bars: pl.DataFrame) -> None:
    """All built-ins and all TA-Lib functions in one call pass the look-ahead check."""
    feats = [getattr(pitstore, n)() for n in sorted(BUILTINS)]
    feats += [pitstore.talib(n) for n in sorted(talib.get_functions())]
    _check(feats, bars)


# --- features that do look ahead must fail --------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_bars() -> pl.DataFrame:
    return pitstore.testing.synthetic_bars(3, 300, gaps=0.1, ragged=True, seed=5)


def test_next_bar_expr_fails(plain_bars: pl.DataFrame) -> None:
    """An expr using the next bar's close (shift(-1)) fails the check with LookaheadError."""
    f = pitstore.expr("next_ret", pl.col("close").shift(-1) / pl.col("close") - 1.0)
    with pytest.raises(LookaheadError, match="next_ret"):
        pitstore.check_lookahead(f, plain_bars, cuts=CUTS, seed=3)


def test_full_series_mean_expr_fails(plain_bars: pl.DataFrame) -> None:
    """An expr normalising by the mean of the whole series fails the check with LookaheadError."""
    f = pitstore.expr("norm", pl.col("close") / pl.col("close").mean())
    with pytest.raises(LookaheadError, match="norm"):
        pitstore.check_lookahead(f, plain_bars, cuts=CUTS, seed=3)


def test_last_close_python_feature_fails(plain_bars: pl.DataFrame) -> None:
    """A python feature dividing by the series' last close fails the check with LookaheadError."""

    @pitstore.feature
    def to_last(b: pl.DataFrame) -> pl.Series:
        return b["close"] / b["close"][-1]

    with pytest.raises(LookaheadError, match="to_last"):
        pitstore.check_lookahead(to_last, plain_bars, cuts=CUTS, seed=3)


def test_lookahead_among_clean_features_fails(plain_bars: pl.DataFrame) -> None:
    """One look-ahead feature among clean ones makes the whole check fail, naming that column."""
    bad = pitstore.expr("peek", pl.col("close").shift(-1), lookback=0)
    with pytest.raises(LookaheadError, match="peek"):
        pitstore.check_lookahead([pitstore.standard_features(), pitstore.rsi(14), bad], plain_bars, cuts=CUTS)

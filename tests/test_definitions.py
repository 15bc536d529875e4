"""Feature definitions: parameters are checked when a feature is built, with errors that say why."""

from __future__ import annotations

from collections.abc import Callable

import pytest

import pitstore


@pytest.mark.parametrize(
    ("build", "match"),
    [
        (lambda: pitstore.rsi(1), "n must be at least 2"),
        (lambda: pitstore.bollinger(1), "n must be at least 2"),
        (lambda: pitstore.bollinger(20, -1.0), "k must be at least 0"),
        (lambda: pitstore.vol(1), "n must be at least 2"),
        (lambda: pitstore.macd(1, 26, 9), "fast must be at least 2"),
        (lambda: pitstore.sma(0), "n must be at least 1"),
        (lambda: pitstore.sma(2.5), "n must be an integer"),  # type: ignore[arg-type]
        (lambda: pitstore.ema(True), "n must be an integer"),
        (lambda: pitstore.bollinger(20, float("nan")), "finite number"),
        (lambda: pitstore.talib("RSI", timeperiod=1), "out of TA-Lib's range"),
        (lambda: pitstore.talib("SMA", timeperiod=2.7), "must be an integer"),
        (lambda: pitstore.talib("SMA", timeperiod="5"), "must be a number"),
        (lambda: pitstore.talib("SMA", period=5), "unknown parameter"),
        (lambda: pitstore.talib("NOPE"), "unknown TA-Lib function"),
        (lambda: pitstore.talib("ATR", inputs={"bogus": "close"}), "unknown input"),
        (lambda: pitstore.expr("e", "close"), "expected a polars expression"),  # type: ignore[arg-type]
        (lambda: pitstore.sma(5).alias("bad name"), "invalid feature name"),
        (lambda: pitstore.FeatureSet("fs", []), "has no features"),
        (lambda: pitstore.FeatureSet("fs", [pitstore.sma(5), pitstore.sma(5)]), "duplicate output column"),
        (lambda: pitstore.FeatureSet("1fs", [pitstore.sma(5)]), "invalid feature set name"),
        (lambda: pitstore.FeatureSet("fs", [pitstore.sma(5)], ttl="-1h"), "invalid timeframe"),
        (lambda: pitstore.FeatureSet("fs", ["sma_5"]), "is not a Feature"),  # type: ignore[list-item]
    ],
)
def test_bad_definitions_raise_definition_errors(build: Callable[[], object], match: str) -> None:
    """Invalid parameters, names and sets fail when built, with a DefinitionError or ConfigError that says why."""
    with pytest.raises((pitstore.DefinitionError, pitstore.ConfigError), match=match):
        build()


def test_names_stay_identifiers() -> None:
    """Default output names are identifiers whatever the parameter values."""
    assert pitstore.bollinger(20, 1.5).outputs == ("bollinger_20_1p5_upper", "bollinger_20_1p5_middle",
                                                   "bollinger_20_1p5_lower")
    assert pitstore.bollinger(20, 1e-7).outputs[0] == "bollinger_20_0p0000001_upper"
    assert all(c.isidentifier() for m in pitstore.list_features() for c in m.outputs)


def test_lookahead_check_validates_definitions() -> None:
    """check_lookahead rejects duplicate outputs and missing inputs like compute does."""
    bars = pitstore.testing.synthetic_bars(2, 50)
    with pytest.raises(pitstore.DefinitionError, match="duplicate output column"):
        pitstore.check_lookahead([pitstore.sma(5), pitstore.sma(5)], bars)
    with pytest.raises(pitstore.DefinitionError, match="periods"):
        pitstore.check_lookahead(pitstore.talib("MAVP"), bars)

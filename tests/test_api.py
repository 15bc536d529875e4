"""The public surface: the root re-exports, the error tree and settings."""

from __future__ import annotations

import pytest

import pitstore
from pitstore import errors


def test_all_is_sorted_and_complete() -> None:
    """__all__ is sorted, every name in it exists, and every public feature factory is exported."""
    assert list(pitstore.__all__) == sorted(pitstore.__all__)
    for name in pitstore.__all__:
        assert hasattr(pitstore, name), name
    for name in ("ret", "vol", "mom", "sma", "ema", "rsi", "macd", "bollinger", "atr", "vwap", "log_ret", "zscore"):
        assert name in pitstore.__all__


@pytest.mark.parametrize(
    ("error", "builtin"),
    [
        (errors.ConfigError, ValueError),
        (errors.DefinitionError, ValueError),
        (errors.SchemaMismatchError, ValueError),
        (errors.NotFoundError, LookupError),
        (errors.FeatureSetNotFoundError, LookupError),
        (errors.VersionNotFoundError, LookupError),
        (errors.MissingDependencyError, ImportError),
        (errors.InvalidInputError, ValueError),
    ],
)
def test_errors_subclass_natural_builtins(error: type[Exception], builtin: type[Exception]) -> None:
    """Each error is a PitstoreError and also the builtin a caller would naturally catch."""
    assert issubclass(error, errors.PitstoreError)
    assert issubclass(error, builtin)


def test_every_error_is_in_the_tree() -> None:
    """Every exception class in errors.py derives from PitstoreError and is exported."""
    classes = [v for v in vars(errors).values() if isinstance(v, type) and issubclass(v, Exception)]
    assert {c.__name__ for c in classes} == set(errors.__all__)
    assert all(issubclass(c, errors.PitstoreError) for c in classes)


def test_settings_precedence(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Keyword arguments beat PITSTORE_* environment variables, which beat pitstore.toml."""
    toml = tmp_path / "pitstore.toml"
    toml.write_text('[pitstore]\nroot = "from-toml"\nlock_timeout = 5\n')
    monkeypatch.delenv("PITSTORE_ROOT", raising=False)
    monkeypatch.delenv("FEATURE_STORE_PATH", raising=False)
    assert str(pitstore.Settings.load(config_file=toml).root) == "from-toml"
    monkeypatch.setenv("FEATURE_STORE_PATH", "from-legacy-env")
    assert str(pitstore.Settings.load(config_file=toml).root) == "from-legacy-env"
    monkeypatch.setenv("PITSTORE_ROOT", "from-env")
    assert str(pitstore.Settings.load(config_file=toml).root) == "from-env"
    assert str(pitstore.Settings.load(config_file=toml, root="from-kwarg").root) == "from-kwarg"
    assert pitstore.Settings.load(config_file=toml).lock_timeout == 5.0


def test_settings_reject_bad_values(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Unknown settings and invalid values raise ConfigError naming them."""
    with pytest.raises(pitstore.ConfigError, match="nonsense"):
        pitstore.Settings.load(nonsense=1)
    with pytest.raises(pitstore.ConfigError, match="lock_timeout"):
        pitstore.Settings.load(lock_timeout=-1)
    bad = tmp_path / "bad.toml"
    bad.write_text("[pitstore]\ncolour = 'blue'\n")
    with pytest.raises(pitstore.ConfigError, match="colour"):
        pitstore.Settings.load(config_file=bad)


def test_settings_are_frozen() -> None:
    """Settings cannot be changed after they are resolved."""
    s = pitstore.Settings.load(root="/tmp/x")
    with pytest.raises(AttributeError):
        s.root = "/elsewhere"  # type: ignore[misc]


@pytest.mark.parametrize("timeframe", ["1x", "0m", "m", "", "1.5h"])
def test_invalid_timeframe(timeframe: str) -> None:
    """A feature set with an invalid timeframe is rejected with ConfigError."""
    with pytest.raises(pitstore.ConfigError, match="timeframe"):
        pitstore.FeatureSet("fs", [pitstore.sma(5)], timeframe=timeframe)


def test_catalogue_lists_builtins_and_every_talib_function() -> None:
    """list_features() covers every built-in and every TA-Lib function, with parameters and lookbacks."""
    import talib

    names = {m.name for m in pitstore.list_features()}
    for builtin in ("ret", "vol", "mom", "sma", "ema", "rsi", "macd", "bollinger", "atr", "vwap", "log_ret", "zscore"):
        assert builtin in names
    assert {f"talib.{f}" for f in talib.get_functions()} <= names
    meta = pitstore.feature_metadata("talib.MACD")
    assert meta.params == {"fastperiod": 12, "slowperiod": 26, "signalperiod": 9}
    assert meta.outputs == ("talib_macd_12_26_9_macd", "talib_macd_12_26_9_macdsignal", "talib_macd_12_26_9_macdhist")
    assert meta.lookback == 33
    rsi = pitstore.feature_metadata("rsi")
    assert (rsi.params, rsi.lookback, rsi.inputs, rsi.recursive) == ({"n": 14}, 14, ("close",), True)
    assert rsi.description
    with pytest.raises(pitstore.NotFoundError, match="no feature named"):
        pitstore.feature_metadata("nope")

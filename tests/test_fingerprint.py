"""Fingerprints: anything that can change a number changes them; formatting and comments do not."""

from __future__ import annotations

import importlib.util
import math
import subprocess
import sys
import textwrap
from datetime import UTC, datetime
from pathlib import Path
from types import ModuleType

import polars as pl
import pytest

import pitstore
from pitstore.fingerprint import canonical_json, code_fingerprint

MODULE = '''
import numpy as np

WINDOW = {window}


def helper(x):
    return x * {factor}


@{decorator}
def custom(bars):
    """A custom feature."""
    {comment}
    {body}
'''


def _load(tmp_path: Path, tag: str, *, window: int = 3, factor: int = 2, comment: str = "",
          body: str = 'return helper(bars["close"]).rolling_mean(WINDOW)',
          decorator: str = "__import__('pitstore').feature(lookback=2)") -> ModuleType:
    path = tmp_path / tag / "fpmod.py"
    path.parent.mkdir()
    path.write_text(MODULE.format(window=window, factor=factor, comment=comment, body=body, decorator=decorator))
    spec = importlib.util.spec_from_file_location("fpmod", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _fp(module: ModuleType) -> str:
    return pitstore.fingerprint(pitstore.FeatureSet("fs", [module.custom]))


def test_same_definition_same_fingerprint() -> None:
    """Two separately built but identical definitions have the same fingerprint."""
    a = pitstore.FeatureSet("fs", [pitstore.sma(5), pitstore.talib("RSI", timeperiod=14)])
    b = pitstore.FeatureSet("fs", [pitstore.sma(5), pitstore.talib("RSI", timeperiod=14)])
    assert pitstore.fingerprint(a) == pitstore.fingerprint(b)


@pytest.mark.parametrize(
    ("left", "right"),
    [
        (pitstore.sma(5), pitstore.sma(6)),
        (pitstore.macd(12, 26, 9), pitstore.macd(12, 26, 10)),
        (pitstore.bollinger(20, 2.0), pitstore.bollinger(20, 2.5)),
        (pitstore.talib("RSI", timeperiod=14), pitstore.talib("RSI", timeperiod=15)),
        (pitstore.sma(5), pitstore.sma(5).alias("fast")),
        (pitstore.sma(5), pitstore.sma(5).tagged("2")),
        (pitstore.expr("e", pl.col("close").shift(1)), pitstore.expr("e", pl.col("close").shift(2))),
    ],
    ids=["param", "macd-signal", "float-param", "talib-param", "rename", "feature-tag", "expr"],
)
def test_changes_change_the_fingerprint(left: pitstore.Feature, right: pitstore.Feature) -> None:
    """A changed parameter, name, tag or expression gives a new fingerprint."""
    assert pitstore.fingerprint(pitstore.FeatureSet("fs", [left])) != pitstore.fingerprint(
        pitstore.FeatureSet("fs", [right])
    )


def test_talib_defaults_are_resolved() -> None:
    """Spelling out a TA-Lib default parameter does not change the fingerprint."""
    a = pitstore.FeatureSet("fs", [pitstore.talib("MACD")])
    b = pitstore.FeatureSet("fs", [pitstore.talib("MACD", fastperiod=12, slowperiod=26, signalperiod=9)])
    assert pitstore.fingerprint(a) == pitstore.fingerprint(b)


def test_set_level_tag_and_rules_change_the_fingerprint() -> None:
    """The feature set's version tag, timeframe and availability lag are part of its fingerprint."""
    base = pitstore.FeatureSet("fs", [pitstore.sma(5)])
    fps = {
        pitstore.fingerprint(base),
        pitstore.fingerprint(pitstore.FeatureSet("fs", [pitstore.sma(5)], version="2")),
        pitstore.fingerprint(pitstore.FeatureSet("fs", [pitstore.sma(5)], timeframe="1h")),
        pitstore.fingerprint(pitstore.FeatureSet("fs", [pitstore.sma(5)], availability_lag="1h")),
    }
    assert len(fps) == 4


def test_helper_body_changes_the_fingerprint(tmp_path: Path) -> None:
    """Changing the body of a module-level helper the feature calls changes the fingerprint."""
    assert _fp(_load(tmp_path, "a", factor=2)) != _fp(_load(tmp_path, "b", factor=3))


def test_module_constant_changes_the_fingerprint(tmp_path: Path) -> None:
    """Changing a module-level constant the feature reads changes the fingerprint."""
    assert _fp(_load(tmp_path, "a", window=3)) != _fp(_load(tmp_path, "b", window=4))


def test_comments_and_formatting_do_not(tmp_path: Path) -> None:
    """Adding comments, blank lines and reformatting leaves the fingerprint unchanged."""
    plain = _load(tmp_path, "a")
    commented = _load(tmp_path, "b", comment="# a comment about the computation\n\n    # another one")
    reformatted = _load(tmp_path, "c", body='return helper( bars[ "close" ] ).rolling_mean(\n        WINDOW )')
    assert _fp(plain) == _fp(commented) == _fp(reformatted)
    assert _fp(plain) != _fp(_load(tmp_path, "d", body='return helper(bars["open"]).rolling_mean(WINDOW)'))


def test_same_fingerprint_in_a_new_process(tmp_path: Path) -> None:
    """The same definition fingerprints identically in a fresh interpreter."""
    module = _load(tmp_path, "a")
    script = textwrap.dedent(
        f"""
        import importlib.util, pitstore
        spec = importlib.util.spec_from_file_location("fpmod", {str(tmp_path / "a" / "fpmod.py")!r})
        m = importlib.util.module_from_spec(spec); spec.loader.exec_module(m)
        fs = pitstore.FeatureSet("fs", [m.custom, pitstore.standard_features().features[3], pitstore.talib("ADX")])
        print(pitstore.fingerprint(fs))
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.strip()
    here = pitstore.fingerprint(
        pitstore.FeatureSet("fs", [module.custom, pitstore.standard_features().features[3], pitstore.talib("ADX")])
    )
    assert out == here


def test_library_versions_are_in_the_definition() -> None:
    """The definition records the pitstore engine and the polars / numpy / TA-Lib versions in use."""
    from pitstore.features.registry import definition

    d = definition(pitstore.standard_features())
    assert set(d["libraries"]) == {"polars", "numpy", "talib"}
    assert d["engine_version"]


def test_code_fingerprint_sees_closures() -> None:
    """Closure values a function captures are part of its code fingerprint."""

    def make(k: int):  # type: ignore[no-untyped-def]
        def f(x: float) -> float:
            return x * k

        return f

    assert code_fingerprint(make(2)) != code_fingerprint(make(3))
    assert code_fingerprint(make(2)) == code_fingerprint(make(2))


def test_canonical_encoding() -> None:
    """Key order and int/float spelling do not matter; NaN and datetimes encode; naive datetimes are refused."""
    assert canonical_json({"a": 1, "b": 2.0}) == canonical_json({"b": 2, "a": 1.0})
    assert canonical_json({"x": math.nan}) == canonical_json({"x": float("nan")})
    assert canonical_json({"x": 0.1}) != canonical_json({"x": 0.1000001})
    t = datetime(2024, 1, 1, tzinfo=UTC)
    assert canonical_json({"t": t}) == canonical_json({"t": t.astimezone()})
    with pytest.raises(pitstore.DefinitionError, match="naive"):
        canonical_json({"t": datetime(2024, 1, 1)})

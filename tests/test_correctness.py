"""Correctness of the feature engine against independent references (pandas, TA-Lib called directly)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
import talib
from talib import abstract

import pitstore
from pitstore import DefinitionError

KEYS = ["symbol", "ts"]
STANDARD_COLUMNS = ["ret_5d", "ret_20d", "ret_60d", "vol_20d", "vol_60d", "mom_20d", "mom_60d"]
ALL_TALIB = sorted(talib.get_functions())


# --- helpers -------------------------------------------------------------------------------------------


def assert_close(actual: Any, expected: Any, rtol: float, label: str) -> None:
    """Null (NaN) masks equal, and max |actual - expected| / |expected| <= rtol on the rest."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{label}: shape {a.shape} != {e.shape}"
    na, ne = np.isnan(a), np.isnan(e)
    diff = np.flatnonzero(na != ne)
    assert diff.size == 0, (
        f"{label}: null masks differ at {diff.size} rows, first {diff[:10].tolist()}: "
        f"actual {a[diff[:5]].tolist()} expected {e[diff[:5]].tolist()}"
    )
    ok = ~na
    err = np.abs(a[ok] - e[ok]) / np.maximum(np.abs(e[ok]), np.finfo(np.float64).tiny)
    worst = float(err.max(initial=0.0))
    assert worst <= rtol, f"{label}: max relative error {worst:.3e} > {rtol:.0e}"


def values(out: pl.DataFrame, col: str) -> np.ndarray:
    """A pitstore output column as float64 with NaN for null; asserts missing values are nulls, not NaN."""
    s = out[col]
    assert s.dtype == pl.Float64, f"{col}: dtype {s.dtype}"
    assert int(s.is_nan().sum()) == 0, f"{col}: has NaN values; missing values must be null"
    return s.fill_null(np.nan).to_numpy()


def per_symbol(bars: pl.DataFrame) -> list[tuple[str, pl.DataFrame]]:
    """The bars of each symbol in time order, computed here independently of pitstore."""
    parts = bars.sort(KEYS).partition_by("symbol", maintain_order=True, as_dict=True)
    return sorted(((str(k[0]), v) for k, v in parts.items()), key=lambda kv: kv[0])


def reference_frame(bars: pl.DataFrame, fn: Callable[[pl.DataFrame], list[np.ndarray]],
                    names: list[str]) -> pl.DataFrame:
    """symbol, ts and the outputs of ``fn`` applied to each symbol's bars separately."""
    frames = []
    for _, part in per_symbol(bars):
        outs = fn(part)
        assert len(outs) == len(names)
        cols = {n: np.asarray(o, dtype=np.float64) for n, o in zip(names, outs, strict=True)}
        frames.append(part.select(KEYS).with_columns(**{n: pl.Series(n, v) for n, v in cols.items()}))
    return pl.concat(frames)


def in_group_index(out: pl.DataFrame) -> np.ndarray:
    """Position of each row within its symbol (0 for a symbol's first bar)."""
    sym = out["symbol"].to_numpy()
    assert (sym[1:] >= sym[:-1]).all(), "rows are not grouped by symbol"
    starts = np.flatnonzero(np.r_[True, sym[1:] != sym[:-1]])
    lengths = np.diff(np.r_[starts, len(sym)])
    return np.arange(len(sym)) - np.repeat(starts, lengths)


def ragged_bars(seed: int, n_symbols: int = 50, n_bars: int = 400) -> pl.DataFrame:
    return pitstore.testing.synthetic_bars(n_symbols, n_bars, gaps=0.1, ragged=True, seed=seed)


@pytest.fixture(scope="module")
def bars() -> pl.DataFrame:
    """50 ragged, gappy symbols plus one symbol shorter than most lookbacks."""
    base = ragged_bars(11)
    short = pitstore.testing.synthetic_bars(1, 12, seed=5).with_columns(symbol=pl.lit("SHORT"))
    return pl.concat([base, short])


@pytest.fixture(scope="module")
def small_bars() -> pl.DataFrame:
    return pitstore.testing.synthetic_bars(2, 300, gaps=0.05, seed=3)


# --- 1. the standard seven against pandas ----------------------------------------------------------------


def pandas_standard(bars: pd.DataFrame) -> pd.DataFrame:
    """The seven standard features straight from their definitions, with pandas groupby/shift/rolling."""
    df = bars.sort_values(KEYS).reset_index(drop=True)
    close = df["close"]
    by_symbol = close.groupby(df["symbol"])
    ref = df[KEYS].copy()
    for n in (5, 20, 60):
        ref[f"ret_{n}d"] = close / by_symbol.shift(n) - 1.0
    log_ret = np.log(close / by_symbol.shift(1))
    for n in (20, 60):
        std = log_ret.groupby(df["symbol"]).rolling(n).std(ddof=1).droplevel(0)
        ref[f"vol_{n}d"] = std * np.sqrt(252.0)
        ref[f"mom_{n}d"] = close / by_symbol.rolling(n).mean().droplevel(0) - 1.0
    return ref


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_standard_features_match_pandas_reference(seed: int) -> None:
    """The standard seven equal a plain pandas reference to 1e-12 relative, nulls in the same places."""
    bars = ragged_bars(seed)
    fs = pitstore.standard_features()
    assert list(fs.columns) == STANDARD_COLUMNS
    out = pitstore.compute(fs, bars)
    assert out.columns == [*KEYS, *STANDARD_COLUMNS]
    ref = pandas_standard(bars.to_pandas())
    assert out["symbol"].to_list() == ref["symbol"].tolist()
    assert out["ts"].to_list() == pl.from_pandas(ref["ts"]).to_list()
    for col in STANDARD_COLUMNS:
        actual, expected = values(out, col), ref[col].to_numpy(dtype=np.float64)
        if col.startswith(("ret", "mom")):
            # ret and mom are "ratio - 1". Near zero the subtraction cancels, and a relative error of the
            # difference is meaningless (it is ~1e-10 even between two correctly rounded float64 results).
            # The subtraction is exact (Sterbenz) so comparing value + 1 compares the ratio itself.
            actual, expected = actual + 1.0, expected + 1.0
        assert_close(actual, expected, 1e-12, col)


def test_standard_features_null_exactly_inside_lookback() -> None:
    """Standard features are null exactly on each symbol's first N (ret, vol) or N-1 (mom) rows."""
    bars = ragged_bars(4)
    out = pitstore.compute(pitstore.standard_features(), bars)
    idx = in_group_index(out)
    for col in STANDARD_COLUMNS:
        n = int(col.split("_")[1].rstrip("d"))
        lookback = n - 1 if col.startswith("mom") else n
        np.testing.assert_array_equal(out[col].is_null().to_numpy(), idx < lookback, err_msg=col)


# --- 2. built-ins against TA-Lib ---------------------------------------------------------------------------

# (pitstore factory, its params, TA-Lib name, TA-Lib params, TA-Lib inputs)
TA_CASES: list[tuple[Callable[..., pitstore.Feature], dict[str, Any], str, dict[str, Any], tuple[str, ...]]] = [
    (pitstore.sma, {"n": 5}, "SMA", {"timeperiod": 5}, ("close",)),
    (pitstore.sma, {"n": 50}, "SMA", {"timeperiod": 50}, ("close",)),
    (pitstore.ema, {"n": 10}, "EMA", {"timeperiod": 10}, ("close",)),
    (pitstore.ema, {"n": 30}, "EMA", {"timeperiod": 30}, ("close",)),
    (pitstore.rsi, {"n": 7}, "RSI", {"timeperiod": 7}, ("close",)),
    (pitstore.rsi, {"n": 14}, "RSI", {"timeperiod": 14}, ("close",)),
    (pitstore.macd, {"fast": 12, "slow": 26, "signal": 9}, "MACD",
     {"fastperiod": 12, "slowperiod": 26, "signalperiod": 9}, ("close",)),
    (pitstore.macd, {"fast": 5, "slow": 35, "signal": 5}, "MACD",
     {"fastperiod": 5, "slowperiod": 35, "signalperiod": 5}, ("close",)),
    (pitstore.bollinger, {"n": 20, "k": 2.0}, "BBANDS",
     {"timeperiod": 20, "nbdevup": 2.0, "nbdevdn": 2.0, "matype": 0}, ("close",)),
    (pitstore.bollinger, {"n": 10, "k": 1.5}, "BBANDS",
     {"timeperiod": 10, "nbdevup": 1.5, "nbdevdn": 1.5, "matype": 0}, ("close",)),
    (pitstore.atr, {"n": 14}, "ATR", {"timeperiod": 14}, ("high", "low", "close")),
    (pitstore.atr, {"n": 5}, "ATR", {"timeperiod": 5}, ("high", "low", "close")),
]


def _case_id(case: tuple[Any, ...]) -> str:
    return f"{case[0].__name__}-" + "-".join(str(v) for v in case[1].values())


@pytest.mark.parametrize("case", TA_CASES, ids=_case_id)
def test_builtin_matches_talib(bars: pl.DataFrame, case: tuple[Any, ...]) -> None:
    """Built-in sma/ema/rsi/macd/bollinger/atr equal TA-Lib per symbol to 1e-9 after the warm-up."""
    factory, params, ta_name, ta_params, ta_inputs = case
    f = factory(**params)
    ta_fn = getattr(talib, ta_name)
    n_out = len(abstract.Function(ta_name).info["output_names"])
    assert len(f.outputs) == n_out

    def direct(part: pl.DataFrame) -> list[np.ndarray]:
        res = ta_fn(*(part[c].to_numpy() for c in ta_inputs), **ta_params)
        return list(res) if isinstance(res, tuple | list) else [res]

    ref = reference_frame(bars, direct, list(f.outputs))
    out = pitstore.compute(f, bars)
    assert out.select(KEYS).equals(ref.select(KEYS))
    idx = in_group_index(out)
    after = idx >= f.lookback
    for col in f.outputs:
        got, exp = values(out, col), ref[col].to_numpy()
        assert not np.isnan(exp[after]).any(), f"{col}: TA-Lib has NaN after its lookback"
        assert np.isnan(got[~after]).all(), f"{col}: not null inside the lookback"
        assert_close(got[after], exp[after], 1e-9, col)


@pytest.mark.parametrize("case", TA_CASES, ids=_case_id)
def test_builtin_lookback_equals_talib_lookback(case: tuple[Any, ...]) -> None:
    """Feature.lookback of each built-in equals TA-Lib's lookback for the same parameters."""
    factory, params, ta_name, ta_params, _ = case
    assert factory(**params).lookback == abstract.Function(ta_name, **ta_params).lookback


# --- 3. generic TA-Lib features ----------------------------------------------------------------------------

# (TA-Lib name, params, inputs in TA-Lib's positional order)
GENERIC_CASES: list[tuple[str, dict[str, Any], tuple[str, ...]]] = [
    ("STOCH", {}, ("high", "low", "close")),
    ("STOCH", {"fastk_period": 14, "slowk_period": 5, "slowd_period": 4}, ("high", "low", "close")),
    ("AROON", {"timeperiod": 25}, ("high", "low")),
    ("ADX", {"timeperiod": 10}, ("high", "low", "close")),
    ("OBV", {}, ("close", "volume")),
    ("CDLDOJI", {}, ("open", "high", "low", "close")),
    ("STOCHRSI", {"timeperiod": 10}, ("close",)),
    ("BBANDS", {"timeperiod": 15, "nbdevup": 1.5, "nbdevdn": 2.5}, ("close",)),
    ("ADOSC", {"fastperiod": 4, "slowperiod": 12}, ("high", "low", "close", "volume")),
    ("SAR", {"acceleration": 0.03}, ("high", "low")),
]


@pytest.mark.parametrize("case", GENERIC_CASES, ids=lambda c: f"{c[0]}-{len(c[1])}")
def test_generic_talib_matches_direct_call(bars: pl.DataFrame, case: tuple[Any, ...]) -> None:
    """pitstore.talib(NAME, **params) equals the direct TA-Lib call per symbol, for every output."""
    name, params, inputs = case
    f = pitstore.talib(name, **params)
    info = abstract.Function(name).info
    assert len(f.outputs) == len(info["output_names"])
    if len(f.outputs) > 1:
        assert [c.rsplit("_", 1)[1] for c in f.outputs] == list(info["output_names"])
    assert f.lookback == abstract.Function(name, **params).lookback
    ta_fn = getattr(talib, name)

    def direct(part: pl.DataFrame) -> list[np.ndarray]:
        res = ta_fn(*(part[c].to_numpy() for c in inputs), **params)
        return list(res) if isinstance(res, tuple | list) else [res]

    ref = reference_frame(bars, direct, list(f.outputs))
    out = pitstore.compute(f, bars)
    assert out.select(KEYS).equals(ref.select(KEYS))
    after = in_group_index(out) >= f.lookback
    for col in f.outputs:
        got = values(out, col)
        assert np.isnan(got[~after]).all(), f"{col}: not null inside the lookback"
        assert_close(got[after], ref[col].to_numpy()[after], 1e-9, col)


@pytest.mark.parametrize("name", [n for n in ALL_TALIB if n != "MAVP"])
def test_every_talib_function_builds_and_computes_with_defaults(small_bars: pl.DataFrame, name: str) -> None:
    """Every TA-Lib function builds with defaults, computes, and equals TA-Lib's abstract API per symbol."""
    f = pitstore.talib(name)
    fn = abstract.Function(name)
    assert f.lookback == fn.lookback
    out = pitstore.compute(f, small_bars)
    assert out.columns == [*KEYS, *f.outputs]
    assert out.height == small_bars.height

    def via_abstract(part: pl.DataFrame) -> list[np.ndarray]:
        data = {c: part[c].to_numpy() for c in ("open", "high", "low", "close", "volume")}
        res = abstract.Function(name)(data)
        return list(res) if isinstance(res, tuple | list) else [res]

    ref = reference_frame(small_bars, via_abstract, list(f.outputs))
    after = in_group_index(out) >= f.lookback
    for col in f.outputs:
        got = values(out, col)
        assert np.isnan(got[~after]).all(), f"{col}: not null inside the lookback"
        assert_close(got[after], ref[col].to_numpy()[after], 1e-9, col)


def test_mavp_needs_periods_input_and_can_map_it(small_bars: pl.DataFrame) -> None:
    """MAVP without a periods column raises DefinitionError naming it; inputs= maps it to a bar column."""
    assert "MAVP" in ALL_TALIB
    with pytest.raises(DefinitionError, match="periods"):
        pitstore.compute(pitstore.talib("MAVP"), small_bars)
    rng = np.random.default_rng(0)
    bars = small_bars.with_columns(per=pl.Series(rng.integers(2, 31, small_bars.height).astype(np.float64)))
    f = pitstore.talib("MAVP", inputs={"periods": "per"}, maxperiod=20)
    out = pitstore.compute(f, bars)

    def direct(part: pl.DataFrame) -> list[np.ndarray]:
        return [talib.MAVP(part["close"].to_numpy(), part["per"].to_numpy(), minperiod=2, maxperiod=20)]

    ref = reference_frame(bars, direct, list(f.outputs))
    after = in_group_index(out) >= f.lookback
    col = f.outputs[0]
    got = values(out, col)
    assert np.isnan(got[~after]).all()
    assert_close(got[after], ref[col].to_numpy()[after], 1e-9, col)


# --- 4. frame types, column order and names -------------------------------------------------------------

def to_polars(frame: Any) -> pl.DataFrame:
    if isinstance(frame, pd.DataFrame):
        return pl.from_pandas(frame)
    if isinstance(frame, pa.Table):
        out = pl.from_arrow(frame)
        assert isinstance(out, pl.DataFrame)
        return out
    assert isinstance(frame, pl.DataFrame)
    return frame


FRAME_KINDS: dict[str, tuple[Callable[[pl.DataFrame], Any], type]] = {
    "polars": (lambda df: df, pl.DataFrame),
    "pandas": (lambda df: df.to_pandas(), pd.DataFrame),
    "arrow": (lambda df: df.to_arrow(), pa.Table),
}


@pytest.mark.parametrize("output", [None, "polars", "pandas", "arrow"])
@pytest.mark.parametrize("kind", list(FRAME_KINDS))
def test_output_frame_type_follows_input_or_override(small_bars: pl.DataFrame, kind: str,
                                                     output: str | None) -> None:
    """Output type follows the input type (polars, pandas, Arrow) unless output= overrides it."""
    convert, _ = FRAME_KINDS[kind]
    feats = [pitstore.rsi(14), pitstore.macd()]
    out = pitstore.compute(feats, convert(small_bars), output=output)  # type: ignore[arg-type]
    assert isinstance(out, FRAME_KINDS[output or kind][1])
    back = to_polars(out)
    expected = pitstore.compute(feats, small_bars)
    assert back.columns == expected.columns
    assert back.equals(expected)


def test_columns_are_keys_then_outputs_in_order(small_bars: pl.DataFrame) -> None:
    """Columns are symbol, ts, then each feature's outputs in definition order, with default names."""
    feats = [pitstore.rsi(14), pitstore.macd(12, 26, 9), pitstore.sma(50), pitstore.bollinger(20, 2.0)]
    out = pitstore.compute(feats, small_bars)
    assert out.columns == [
        "symbol", "ts", "rsi_14", "macd_12_26_9", "macd_12_26_9_signal", "macd_12_26_9_hist", "sma_50",
        "bollinger_20_2_upper", "bollinger_20_2_middle", "bollinger_20_2_lower",
    ]
    assert out.select(KEYS).equals(small_bars.select(KEYS).sort(KEYS))


def test_output_rows_sorted_whatever_the_input_order(small_bars: pl.DataFrame) -> None:
    """Shuffled input bars give the same result, sorted by (symbol, ts)."""
    feats = [pitstore.ema(10), pitstore.atr(5)]
    shuffled = small_bars.sample(fraction=1.0, shuffle=True, seed=1)
    assert not shuffled.equals(small_bars)
    assert pitstore.compute(feats, shuffled).equals(pitstore.compute(feats, small_bars))


def test_alias_renames_every_output(small_bars: pl.DataFrame) -> None:
    """.alias("x") renames a feature's outputs to x, or x_<suffix> for multi-output features."""
    assert pitstore.sma(50).alias("x").outputs == ("x",)
    assert pitstore.macd().alias("x").outputs == ("x", "x_signal", "x_hist")
    assert pitstore.bollinger().alias("bb").outputs == ("bb_upper", "bb_middle", "bb_lower")
    plain = pitstore.compute(pitstore.macd(), small_bars)
    renamed = pitstore.compute(pitstore.macd().alias("x"), small_bars)
    assert renamed.columns == ["symbol", "ts", "x", "x_signal", "x_hist"]
    assert renamed.rename({"x": "macd_12_26_9", "x_signal": "macd_12_26_9_signal",
                           "x_hist": "macd_12_26_9_hist"}).equals(plain)


def test_duplicate_output_names_raise(small_bars: pl.DataFrame) -> None:
    """Two features producing the same output column raise DefinitionError, in compute and FeatureSet."""
    with pytest.raises(DefinitionError, match="duplicate"):
        pitstore.compute([pitstore.sma(5), pitstore.sma(5)], small_bars)
    with pytest.raises(DefinitionError, match="duplicate"):
        pitstore.compute([pitstore.sma(5).alias("x"), pitstore.ema(5).alias("x")], small_bars)
    with pytest.raises(DefinitionError, match="x_signal"):
        pitstore.compute([pitstore.macd().alias("x"), pitstore.sma(3).alias("x_signal")], small_bars)
    with pytest.raises(DefinitionError, match="duplicate"):
        pitstore.FeatureSet("dups", [pitstore.rsi(14), pitstore.rsi(14)])


# --- 5. custom features ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("shift", "k"), [(1, 0), (3, 0), (3, 7)])
def test_expr_shift_does_not_leak_across_symbols(bars: pl.DataFrame, shift: int, k: int) -> None:
    """A shift-based expr is computed per symbol (no symbol sees another's bars); first k rows are null."""
    f = pitstore.expr("gap", pl.col("open") / pl.col("close").shift(shift) - 1.0, lookback=k)
    out = pitstore.compute(f, bars)

    def ref(part: pl.DataFrame) -> list[np.ndarray]:
        o, c = part["open"].to_numpy(), part["close"].to_numpy()
        v = np.r_[np.full(shift, np.nan), o[shift:] / c[:-shift] - 1.0][: len(o)]
        v[:k] = np.nan
        return [v]

    expected = reference_frame(bars, ref, ["gap"])
    assert out.select(KEYS).equals(expected.select(KEYS))
    assert_close(values(out, "gap"), expected["gap"].to_numpy(), 0.0, "gap")
    np.testing.assert_array_equal(out["gap"].is_null().to_numpy(), in_group_index(out) < max(shift, k))


@pytest.mark.parametrize("k", [0, 3, 25])
def test_expr_nulls_first_lookback_rows(bars: pl.DataFrame, k: int) -> None:
    """expr(..., lookback=k) nulls exactly the first k rows of each symbol and keeps the rest."""
    f = pitstore.expr("hl", (pl.col("high") - pl.col("low")) / pl.col("close"), lookback=k)
    out = pitstore.compute(f, bars)
    idx = in_group_index(out)
    np.testing.assert_array_equal(out["hl"].is_null().to_numpy(), idx < k)
    src = bars.sort(KEYS)
    hl = ((src["high"] - src["low"]) / src["close"]).to_numpy()
    expected = np.where(idx < k, np.nan, hl)
    assert_close(values(out, "hl"), expected, 0.0, "hl")


def test_expr_rolling_matches_pandas(bars: pl.DataFrame) -> None:
    """A rolling expr equals a pandas groupby-rolling reference, per symbol."""
    f = pitstore.expr("rm", pl.col("close").rolling_mean(10))
    out = pitstore.compute(f, bars)
    df = bars.sort(KEYS).to_pandas()
    ref = df["close"].groupby(df["symbol"]).rolling(10).mean().droplevel(0).sort_index()
    assert_close(values(out, "rm"), ref.to_numpy(), 1e-12, "rm")


def test_python_feature_gets_one_symbol_in_time_order(bars: pl.DataFrame) -> None:
    """@feature(lookback=k) gets each symbol's bars as a polars frame in time order; first k rows null."""
    seen: list[str] = []

    @pitstore.feature(lookback=4, window=4)
    def range_ratio(b: pl.DataFrame, window: int) -> pl.Series:
        """Close over the close `window` bars ago."""
        assert isinstance(b, pl.DataFrame)
        assert b["symbol"].n_unique() == 1
        assert b["ts"].is_sorted()
        seen.append(b["symbol"][0])
        return b["close"] / b["close"].shift(window)

    assert range_ratio.outputs == ("range_ratio",)
    assert range_ratio.lookback == 4
    out = pitstore.compute(range_ratio, bars)
    names = [s for s, _ in per_symbol(bars)]
    assert sorted(seen) == names

    def ref(part: pl.DataFrame) -> list[np.ndarray]:
        c = part["close"].to_numpy()
        return [np.r_[np.full(4, np.nan), c[4:] / c[:-4]][: len(c)]]

    expected = reference_frame(bars, ref, ["range_ratio"])
    assert_close(values(out, "range_ratio"), expected["range_ratio"].to_numpy(), 0.0, "range_ratio")


@pytest.mark.parametrize("kind", ["numpy", "list", "series"])
def test_python_feature_return_types(small_bars: pl.DataFrame, kind: str) -> None:
    """A python feature may return a numpy array, a list or a polars Series; lookback rows are nulled."""

    @pitstore.feature(lookback=2)
    def body(b: pl.DataFrame) -> Any:
        v = (b["close"] - b["open"]).to_numpy()
        return {"numpy": v, "list": v.tolist(), "series": pl.Series(v)}[kind]

    out = pitstore.compute(body, small_bars)
    src = small_bars.sort(KEYS)
    idx = in_group_index(out)
    expected = np.where(idx < 2, np.nan, (src["close"] - src["open"]).to_numpy())
    assert_close(values(out, "body"), expected, 0.0, "body")


def test_python_feature_multi_output(small_bars: pl.DataFrame) -> None:
    """A python feature with outputs=[...] returning a DataFrame gives one column per named output."""

    @pitstore.feature(lookback=1, outputs=["up", "down"])
    def moves(b: pl.DataFrame) -> pl.DataFrame:
        d = b["close"].diff()
        return pl.DataFrame({"down": (-d).clip(lower_bound=0.0), "up": d.clip(lower_bound=0.0)})

    assert moves.outputs == ("moves_up", "moves_down")
    out = pitstore.compute(moves, small_bars)
    assert out.columns == ["symbol", "ts", "moves_up", "moves_down"]

    def ref(part: pl.DataFrame) -> list[np.ndarray]:
        d = np.r_[np.nan, np.diff(part["close"].to_numpy())]
        return [np.maximum(d, 0.0), np.maximum(-d, 0.0)]

    expected = reference_frame(small_bars, ref, ["moves_up", "moves_down"])
    for col in ("moves_up", "moves_down"):
        assert_close(values(out, col), expected[col].to_numpy(), 0.0, col)


def test_python_feature_wrong_return_raises(small_bars: pl.DataFrame) -> None:
    """A python feature returning the wrong length, a scalar, or missing outputs raises DefinitionError."""

    @pitstore.feature
    def too_short(b: pl.DataFrame) -> pl.Series:
        return b["close"].head(b.height - 1)

    @pitstore.feature
    def mean_only(b: pl.DataFrame) -> float:
        return float(b["close"].mean())  # type: ignore[arg-type]

    @pitstore.feature(outputs=["a", "b"])
    def missing(b: pl.DataFrame) -> pl.DataFrame:
        return pl.DataFrame({"a": b["close"]})

    @pitstore.feature(outputs=["a", "b"])
    def not_a_frame(b: pl.DataFrame) -> pl.Series:
        return b["close"]

    with pytest.raises(DefinitionError, match=r"'too_short' returned \d+ values for \d+ bars"):
        pitstore.compute(too_short, small_bars)
    with pytest.raises(DefinitionError, match="'mean_only' returned a scalar"):
        pitstore.compute(mean_only, small_bars)
    with pytest.raises(DefinitionError, match=r"'missing' returned columns \['a'\], expected \['a', 'b'\]"):
        pitstore.compute(missing, small_bars)
    with pytest.raises(DefinitionError, match="'not_a_frame' has several outputs and must return a DataFrame"):
        pitstore.compute(not_a_frame, small_bars)


# --- 6. a symbol's values do not depend on the other symbols -------------------------------------------


def _bits(out: pl.DataFrame, col: str) -> tuple[np.ndarray, np.ndarray]:
    s = out[col]
    return s.is_null().to_numpy(), s.fill_null(0.0).to_numpy().view(np.uint64)


def test_symbol_alone_equals_symbol_among_others() -> None:
    """Each symbol's result is bitwise identical computed alone or together with other symbols."""
    bars = ragged_bars(21, n_symbols=8, n_bars=300)

    @pitstore.feature(lookback=5)
    def cum(b: pl.DataFrame) -> np.ndarray:
        return np.cumsum(np.log(b["close"].to_numpy()))

    feats = [
        *pitstore.standard_features().features,
        pitstore.sma(10), pitstore.ema(12), pitstore.rsi(14), pitstore.macd(), pitstore.bollinger(),
        pitstore.atr(14), pitstore.vwap(20), pitstore.zscore(20), pitstore.log_ret(3),
        pitstore.talib("ADX"), pitstore.talib("STOCH"), pitstore.talib("OBV"), pitstore.talib("HT_SINE"),
        pitstore.expr("rstd", pl.col("close").rolling_std(15), lookback=14),
        pitstore.expr("ewm", pl.col("close").ewm_mean(span=10)),
        pitstore.expr("lag", pl.col("close").shift(2), lookback=2),
        cum,
    ]
    together = pitstore.compute(feats, bars)
    cols = together.columns[2:]
    for symbol, part in per_symbol(bars):
        alone = pitstore.compute(feats, part)
        mine = together.filter(pl.col("symbol") == symbol)
        assert alone.select(KEYS).equals(mine.select(KEYS))
        for col in cols:
            null_a, bits_a = _bits(alone, col)
            null_m, bits_m = _bits(mine, col)
            np.testing.assert_array_equal(null_a, null_m, err_msg=f"{symbol} {col}")
            np.testing.assert_array_equal(bits_a, bits_m, err_msg=f"{symbol} {col}")

"""Live steppers equal the batch engine bit for bit, wherever the history is split.

The contract of :func:`pitstore.live.steppers.stepper_for`: prime a stepper with a symbol's bars[:k] and step
bars[k], bars[k+1], ... one at a time; every step returns exactly (same float64 bits; NaN where the batch
has null) the row that ``compute_frame([feature], bars)`` gives. It holds for k == 0 (nothing primed), for k
inside the lookback, right after it and near the end, for every built-in, TA-Lib, expr and python feature.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import pitstore
from pitstore.features.base import Feature
from pitstore.features.engine import compute_frame
from pitstore.features.library import is_window
from pitstore.features.talib_features import talib_functions
from pitstore.features.windows import window_moments, window_sum
from pitstore.live.steppers import WindowBlock, stepper_for
from pitstore.sources.bars import BAR_COLUMNS, validate_bars

START = datetime(2020, 1, 2, tzinfo=UTC)
N_BARS = 160  # > the largest lookback here (60) plus room to step past it
LONG_BARS = 700  # > 4x the largest window: bounded buffers wrap, nothing recursive may be truncated


# --- features ------------------------------------------------------------------------------------------


@pitstore.feature(lookback=4, window=4)
def close_ratio(b: pl.DataFrame, window: int) -> pl.Series:
    """Close over the close ``window`` bars ago."""
    return b["close"] / b["close"].shift(window)


@pitstore.feature(lookback=5)
def cum_log_close(b: pl.DataFrame) -> np.ndarray:
    """Running sum of log closes: every value depends on the whole history."""
    return np.cumsum(np.log(b["close"].to_numpy()))


@pitstore.feature(lookback=1, outputs=["up", "down"])
def moves(b: pl.DataFrame) -> pl.DataFrame:
    """Up and down moves of close (two outputs, returned in the other order)."""
    d = b["close"].diff()
    return pl.DataFrame({"down": (-d).clip(lower_bound=0.0), "up": d.clip(lower_bound=0.0)})


def _dedup(features: list[Feature]) -> list[Feature]:
    seen: dict[str, Feature] = {}
    for f in features:
        seen.setdefault(f.name, f)
    return list(seen.values())


BUILTIN_FEATURES: list[Feature] = _dedup([
    # defaults
    pitstore.ret(), pitstore.log_ret(), pitstore.vol(), pitstore.mom(), pitstore.sma(), pitstore.ema(),
    pitstore.rsi(), pitstore.macd(), pitstore.bollinger(), pitstore.atr(), pitstore.vwap(), pitstore.zscore(),
    # small and large periods, and the parameter minimums
    pitstore.ret(60), pitstore.log_ret(3), pitstore.log_ret(60),
    pitstore.vol(2), pitstore.vol(60), pitstore.vol(5, periods_per_year=365),
    pitstore.mom(1), pitstore.mom(2), pitstore.mom(60),
    pitstore.sma(1), pitstore.sma(2), pitstore.sma(30),
    pitstore.ema(1), pitstore.ema(2), pitstore.ema(50),
    pitstore.rsi(2), pitstore.rsi(30),
    pitstore.macd(3, 10, 4), pitstore.macd(12, 26, 9), pitstore.macd(3, 10, 1), pitstore.macd(10, 3, 4),
    pitstore.bollinger(2, 0.0), pitstore.bollinger(5, 1.0), pitstore.bollinger(20, 2.5),
    pitstore.atr(1), pitstore.atr(5), pitstore.atr(14),
    pitstore.vwap(1), pitstore.vwap(3), pitstore.vwap(20),
    pitstore.zscore(2), pitstore.zscore(20),
])
STANDARD_FEATURES: list[Feature] = list(pitstore.standard_features().features)
TALIB_FEATURES: list[Feature] = [
    pitstore.talib("RSI", timeperiod=9),
    pitstore.talib("ADX"),  # unstable: depends on the whole history
    pitstore.talib("OBV"),  # cumulative
    pitstore.talib("STOCH"),  # two outputs
    pitstore.talib("EMA", timeperiod=5, inputs={"price": "open"}),  # an input mapped to another column
]
EXPR_FEATURES: list[Feature] = [
    pitstore.expr("hl_range", (pl.col("high") - pl.col("low")) / pl.col("close")),
    pitstore.expr("rstd", pl.col("close").rolling_std(15), lookback=14),
    pitstore.expr("ewm", pl.col("close").ewm_mean(span=10)),  # depends on the whole history
    pitstore.expr("lag2", pl.col("close").shift(2), lookback=2),
]
PYTHON_FEATURES: list[Feature] = [close_ratio, cum_log_close, moves]
# Expression and python features run through polars on every step (milliseconds, not microseconds): they get
# the datasets that differ in shape (flat, zero volume, other symbols) rather than every numeric variant.
FRAME_FEATURES = {f.name for f in [*EXPR_FEATURES, *PYTHON_FEATURES]}
FRAME_DATASETS = ("walk0", "flat", "zero_volume", "multi")

ALL_FEATURES: list[Feature] = [
    *BUILTIN_FEATURES, *STANDARD_FEATURES, *TALIB_FEATURES, *EXPR_FEATURES, *PYTHON_FEATURES,
]
assert len({f.name for f in ALL_FEATURES}) == len(ALL_FEATURES)


def _fid(f: Feature) -> str:
    return f.name


# --- data ----------------------------------------------------------------------------------------------


def make_bars(close: np.ndarray, *, open_: np.ndarray | None = None, high: np.ndarray | None = None,
              low: np.ndarray | None = None, volume: np.ndarray | None = None,
              symbol: str = "X") -> pl.DataFrame:
    """Validated bars of one symbol from a close series (open, high, low default to close)."""
    close = np.asarray(close, dtype=np.float64)
    n = len(close)
    o = close.copy() if open_ is None else np.asarray(open_, dtype=np.float64)
    h = np.maximum(o, close) if high is None else np.maximum.reduce([np.asarray(high, np.float64), o, close])
    lo = np.minimum(o, close) if low is None else np.minimum.reduce([np.asarray(low, np.float64), o, close])
    v = np.full(n, 1000.0) if volume is None else np.asarray(volume, dtype=np.float64)
    frame = pl.DataFrame({
        "symbol": [symbol] * n,
        "ts": pl.Series([START + timedelta(days=i) for i in range(n)], dtype=pl.Datetime("us", "UTC")),
        "open": o, "high": h, "low": lo, "close": close, "volume": v,
    })
    return validate_bars(frame)


def _walk(rng: np.random.Generator, n: int, start: float, sigma: float = 0.02) -> np.ndarray:
    return start * np.exp(np.cumsum(rng.normal(0.0, sigma, n)))


def _ohlc_around(rng: np.random.Generator, close: np.ndarray, rel: float) -> dict[str, np.ndarray]:
    open_ = close * np.exp(rng.normal(0.0, rel, len(close)))
    spread = np.abs(rng.normal(0.0, rel, len(close)))
    return {"open_": open_, "high": np.maximum(open_, close) * np.exp(spread),
            "low": np.minimum(open_, close) * np.exp(-spread)}


def flat_bars() -> pl.DataFrame:
    """Constant prices at the start (zero seeds), after moves (Wilder averages decaying towards TA-Lib's
    zero thresholds) and at the end; in the middle flat stretch high/low first still move, then stop."""
    rng = np.random.default_rng(101)
    head = np.full(40, 100.0)
    moving = _walk(rng, 30, 100.0)
    flat = np.full(100, moving[-1])
    tail = _walk(rng, 20, flat[-1])
    close = np.r_[head, moving, flat, tail, np.full(10, tail[-1])]
    n = len(close)
    high, low = close.copy(), close.copy()
    seg = slice(70, 110)  # close flat, but a high-low range for the first 40 flat bars
    high[seg] *= 1.01
    low[seg] *= 0.99
    mv = slice(40, 70)
    high[mv] *= 1.005
    low[mv] *= 0.995
    volume = rng.integers(1, 10_000, n).astype(np.float64)
    return make_bars(close, high=high, low=low, volume=volume, symbol="FLAT")


def flat_then_tick_bars() -> pl.DataFrame:
    """Long flat stretch, one tiny move of one ulp, flat again (RSI/BBANDS exactly at the thresholds)."""
    close = np.full(N_BARS, 50.0)
    close[60] = np.nextafter(50.0, np.inf)
    close[100:] = np.nextafter(50.0, 0.0)
    close[130] = 50.0 + 1e-9
    return make_bars(close, symbol="TICK")


def inexact_flat_bars() -> pl.DataFrame:
    """Flat at 0.1 and at 1/3, whose window sums round: the window mean is not the constant price."""
    rng = np.random.default_rng(103)
    close = np.r_[np.full(60, 0.1), _walk(rng, 30, 0.1), np.full(70, 1.0 / 3.0)]
    return make_bars(close, volume=rng.uniform(0, 10, len(close)), symbol="INEXACT")


def large_level_bars(seed: int) -> pl.DataFrame:
    """close ~ 1e6 with moves of ~1e-3: cancellation in variances, sums and differences."""
    rng = np.random.default_rng(seed)
    close = 1e6 + np.cumsum(rng.normal(0.0, 1e-3, N_BARS))
    high = close + np.abs(rng.normal(0.0, 1e-3, N_BARS))
    low = close - np.abs(rng.normal(0.0, 1e-3, N_BARS))
    volume = rng.integers(1, 1_000_000, N_BARS).astype(np.float64)
    return make_bars(close, high=high, low=low, volume=volume, symbol="BIG")


def ulp_noise_bars() -> pl.DataFrame:
    """close = 1e6 + a few ulps (2**-33 at 1e6), stretches of exact repeats."""
    rng = np.random.default_rng(7)
    ticks = rng.integers(-3, 4, N_BARS).astype(np.float64)
    ticks[50:90] = 0.0
    close = 1e6 + ticks * 2.0**-33
    volume = rng.integers(1, 100, N_BARS).astype(np.float64)
    return make_bars(close, volume=volume, symbol="ULP")


def zero_volume_bars() -> pl.DataFrame:
    """Large volumes with zero-volume stretches longer than vwap windows (at the start too) and single zeros."""
    rng = np.random.default_rng(13)
    close = _walk(rng, N_BARS, 80.0)
    volume = rng.uniform(1e6, 1e9, N_BARS)
    volume[:25] = 0.0
    volume[60:95] = 0.0
    volume[[30, 33, 120, 121, 140]] = 0.0
    volume[150:] = 0.0
    return make_bars(close, **_ohlc_around(rng, close, 0.01), volume=volume, symbol="ZEROV")


def wild_volume_bars() -> pl.DataFrame:
    """Volumes spanning 1e-3 .. 1e12 mixed with zeros: rolling sums cannot cancel exactly."""
    rng = np.random.default_rng(17)
    close = _walk(rng, N_BARS, 3.0, sigma=0.05)
    volume = 10.0 ** rng.uniform(-3, 12, N_BARS)
    volume[rng.random(N_BARS) < 0.15] = 0.0
    return make_bars(close, **_ohlc_around(rng, close, 0.02), volume=volume, symbol="WILDV")


def jumps_bars() -> pl.DataFrame:
    """Small prices with occasional x10 / /10 jumps."""
    rng = np.random.default_rng(19)
    lr = rng.normal(0.0, 0.03, N_BARS)
    jumps = rng.random(N_BARS) < 0.05
    lr[jumps] = np.log(10.0) * rng.choice([-1.0, 1.0], int(jumps.sum()))
    close = 1e-3 * np.exp(np.cumsum(lr))
    return make_bars(close, **_ohlc_around(rng, close, 0.02), volume=rng.uniform(0, 1e4, N_BARS), symbol="JUMP")


def walk_bars(seed: int) -> pl.DataFrame:
    return validate_bars(pitstore.testing.synthetic_bars(n_symbols=1, n_bars=N_BARS, seed=seed))


MULTI = "S0002"


def multi_bars() -> pl.DataFrame:
    """Several ragged, gappy symbols; the batch runs on all of them, the stepper on one."""
    return validate_bars(pitstore.testing.synthetic_bars(n_symbols=4, n_bars=N_BARS, seed=23, gaps=0.1,
                                                         ragged=True))


DATASETS: dict[str, Callable[[], pl.DataFrame]] = {
    "walk0": lambda: walk_bars(0),
    "walk1": lambda: walk_bars(1),
    "walk2": lambda: walk_bars(2),
    "flat": flat_bars,
    "flat_tick": flat_then_tick_bars,
    "inexact_flat": inexact_flat_bars,
    "large_level": lambda: large_level_bars(29),
    "ulp_noise": ulp_noise_bars,
    "zero_volume": zero_volume_bars,
    "wild_volume": wild_volume_bars,
    "jumps": jumps_bars,
    "multi": multi_bars,
}


class Case:
    """One symbol's bars, its rows as step() inputs, and the batch values per feature (cached)."""

    def __init__(self, name: str, frame: pl.DataFrame, symbol: str | None = None) -> None:
        self.name = name
        self.frame = frame  # what the batch runs on (may hold other symbols)
        self.symbol = symbol if symbol is not None else frame["symbol"][0]
        self.bars = frame.filter(pl.col("symbol") == self.symbol)
        self.rows: list[dict[str, Any]] = list(self.bars.select(BAR_COLUMNS).iter_rows(named=True))
        self._batch: dict[str, np.ndarray] = {}

    def batch(self, f: Feature) -> np.ndarray:
        """compute_frame over the whole frame, this symbol's rows: (n_rows, n_outputs) float64, NaN for null."""
        if f.name not in self._batch:
            out = compute_frame([f], self.frame).filter(pl.col("symbol") == self.symbol)
            cols = []
            for c in f.outputs:
                s = out[c]
                assert s.dtype == pl.Float64
                assert int(s.is_nan().sum()) == 0, f"batch {c} has NaN (should be null)"
                cols.append(s.fill_null(np.nan).to_numpy())
            self._batch[f.name] = np.column_stack(cols)
        return self._batch[f.name]


@pytest.fixture(scope="module")
def cases() -> dict[str, Case]:
    out = {}
    for name, make in DATASETS.items():
        frame = make()
        out[name] = Case(name, frame, MULTI if name == "multi" else None)
    return out


# --- running and comparing -----------------------------------------------------------------------------


def step_all(f: Feature, case: Case, k: int, *, prime: bool = True) -> np.ndarray:
    """Prime a new stepper with bars[:k] (or skip prime() when not ``prime``), step the rest."""
    s = stepper_for(f)
    if prime:
        s.prime(case.bars.head(k))
    width = len(f.outputs)
    got = np.empty((len(case.rows) - k, width))
    for i, bar in enumerate(case.rows[k:]):
        out = s.step(dict(bar))
        assert isinstance(out, tuple), f"step returned {type(out).__name__}, expected a tuple"
        assert len(out) == width, f"step returned {len(out)} values for {width} outputs"
        got[i] = out
    return got


def assert_bitwise(got: np.ndarray, want: np.ndarray, *, f: Feature, label: str, first_row: int = 0) -> None:
    """NaN masks equal and the int64 bits of every non-NaN value equal (-0.0 != 0.0, last bits count)."""
    assert got.shape == want.shape, f"{label}: shape {got.shape} != {want.shape}"
    got_nan, want_nan = np.isnan(got), np.isnan(want)
    both = ~got_nan & ~want_nan
    bad = (got_nan != want_nan) | (both & (got.view(np.int64) != want.view(np.int64)))
    detail = ""
    if bad.any():
        r, c = (int(x) for x in np.argwhere(bad)[0])
        g, w = float(got[r, c]), float(want[r, c])
        detail = (
            f"{label}: {f.name} output {f.outputs[c]!r}: {int(bad.sum())} mismatching values; first at row "
            f"{first_row + r}: stepper {g.hex()} ({g!r}) != batch {w.hex()} ({w!r})"
        )
    np.testing.assert_array_equal(got_nan, want_nan, err_msg=detail)
    ok = ~want_nan
    np.testing.assert_array_equal(got[ok].view(np.int64), want[ok].view(np.int64), err_msg=detail)


def split_points(n: int, lookback: int) -> list[int]:
    """k = 0, 1, inside the lookback, at its end, right after it, near the end."""
    ks = {0, 1, lookback // 2, lookback - 1, lookback, lookback + 1, n - 2, n - 1}
    return sorted(k for k in ks if 0 <= k < n)


def check_splits(f: Feature, case: Case) -> None:
    want = case.batch(f)
    n = len(case.rows)
    assert want.shape == (n, len(f.outputs))
    for k in split_points(n, f.lookback):
        got = step_all(f, case, k)
        assert_bitwise(got, want[k:], f=f, label=f"{case.name} k={k}", first_row=k)


# --- tests ---------------------------------------------------------------------------------------------


def test_stepper_outputs_one_value_per_output() -> None:
    """stepper_for accepts every kind of feature; step() returns one float per output."""
    bars = walk_bars(0).head(3)
    row = next(bars.select(BAR_COLUMNS).iter_rows(named=True))
    for f in ALL_FEATURES:
        s = stepper_for(f)
        s.prime(bars.head(0))
        out = s.step(dict(row))
        assert isinstance(out, tuple)
        assert len(out) == len(f.outputs), f.name
        assert all(isinstance(v, float) for v in out), (f.name, [type(v) for v in out])


GRID = [
    pytest.param(f, dataset, id=f"{f.name}-{dataset}")
    for f in ALL_FEATURES
    for dataset in DATASETS
    if f.name not in FRAME_FEATURES or dataset in FRAME_DATASETS
]


@pytest.mark.parametrize(("f", "dataset"), GRID)
def test_stepper_equals_batch(cases: dict[str, Case], f: Feature, dataset: str) -> None:
    """Priming with bars[:k] and stepping the rest gives the batch values bit for bit, for every split k."""
    check_splits(f, cases[dataset])


@pytest.fixture(scope="module")
def long_case() -> Case:
    return Case("long", validate_bars(pitstore.testing.synthetic_bars(n_symbols=1, n_bars=LONG_BARS, seed=37)))


@pytest.mark.parametrize("f", ALL_FEATURES, ids=_fid)
def test_stepper_long_history(long_case: Case, f: Feature) -> None:
    """A history far longer than any window: nothing may be forgotten (recursive and cumulative features)."""
    n = len(long_case.rows)
    want = long_case.batch(f)
    ks = [n - 30] if f.name in FRAME_FEATURES else [0, f.lookback + 1, n // 2, n - 30]
    for k in ks:
        assert_bitwise(step_all(f, long_case, k), want[k:], f=f, label=f"long k={k}", first_row=k)


@pytest.mark.parametrize("f", ALL_FEATURES, ids=_fid)
def test_stepper_short_histories(f: Feature) -> None:
    """One bar, fewer bars than the lookback, exactly lookback bars, lookback + 1 bars: every split."""
    full = walk_bars(3)
    lengths = sorted({1, 2, max(f.lookback // 2, 1), max(f.lookback, 1), f.lookback + 1, f.lookback + 2})
    for n in lengths:
        check_splits(f, Case(f"walk3[:{n}]", full.head(n)))


@pytest.mark.parametrize("f", ALL_FEATURES, ids=_fid)
def test_stepper_without_prime(cases: dict[str, Case], f: Feature) -> None:
    """A stepper that is never primed behaves as one primed with no history."""
    for name in ("walk0", "flat"):
        case = cases[name]
        assert_bitwise(step_all(f, case, 0, prime=False), case.batch(f), f=f, label=f"{name} unprimed")


@pytest.mark.parametrize("f", ALL_FEATURES, ids=_fid)
def test_stepper_history_with_extra_columns(f: Feature) -> None:
    """validate_bars keeps extra columns, so a primed history may have them; the stepped bars do not."""
    frame = validate_bars(
        pitstore.testing.synthetic_bars(n_symbols=1, n_bars=80, seed=41)
        .with_columns(trades=pl.int_range(0, pl.len()), venue=pl.lit("XNYS"))
    )
    case = Case("extra_columns", frame)
    want = case.batch(f)
    for k in sorted({0, f.lookback + 1, len(case.rows) - 2}):
        assert_bitwise(step_all(f, case, k), want[k:], f=f, label=f"extra columns k={k}", first_row=k)


@pytest.mark.parametrize("f", ALL_FEATURES, ids=_fid)
def test_steppers_are_independent(f: Feature) -> None:
    """Two steppers of one feature (two symbols), stepped alternately, do not share state."""
    frame = validate_bars(pitstore.testing.synthetic_bars(n_symbols=2, n_bars=120, seed=31))
    a, b = Case("pair", frame, "S0000"), Case("pair", frame, "S0001")
    k = f.lookback // 2
    sa, sb = stepper_for(f), stepper_for(f)
    sa.prime(a.bars.head(k))
    sb.prime(b.bars.head(k + 1))
    got_a, got_b = [], []
    for i in range(k, len(a.rows)):
        got_a.append(sa.step(dict(a.rows[i])))
        if i + 1 < len(b.rows):
            got_b.append(sb.step(dict(b.rows[i + 1])))
    assert_bitwise(np.array(got_a, dtype=np.float64), a.batch(f)[k:], f=f, label="S0000 interleaved", first_row=k)
    assert_bitwise(np.array(got_b, dtype=np.float64), b.batch(f)[k + 1:], f=f, label="S0001 interleaved",
                   first_row=k + 1)


@pytest.mark.parametrize("f", ALL_FEATURES, ids=_fid)
def test_stepper_primed_in_parts(cases: dict[str, Case], f: Feature) -> None:
    """Priming with bars[:a] and then bars[a:b] equals priming with bars[:b], before and after the lookback."""
    case = cases["walk1"]
    want = case.batch(f)
    for a, b in [(1, f.lookback + 1), (f.lookback + 1, f.lookback + 30), (2, len(case.rows) - 5)]:
        s = stepper_for(f)
        s.prime(case.bars.head(a))
        s.prime(case.bars.slice(a, b - a))
        got = np.array([s.step(dict(bar)) for bar in case.rows[b:]], dtype=np.float64)
        assert_bitwise(got, want[b:], f=f, label=f"primed [:{a}] + [{a}:{b}]", first_row=b)


@pytest.mark.parametrize("n", [2, 3, 20, 60])
def test_few_windows_add_in_the_order_of_many(n: int) -> None:
    """window_sum and window_moments over a long series (n shifted passes) and over a matrix of short rows,
    each a window and one more value (one accumulate per window: a live update) give the same bits."""
    rng = np.random.default_rng(n)
    x = 1e4 * np.exp(np.cumsum(rng.normal(0.0, 0.01, 400)))
    rows = np.lib.stride_tricks.sliding_window_view(x, n + 1).copy()
    at = np.arange(len(rows))  # the absolute position of each row's first value
    want_sum, (want_mean, want_m2) = window_sum(x, n)[n:], (a[n:] for a in window_moments(x, n))
    got_sum, (got_mean, got_m2) = window_sum(rows, n, at)[:, -1], (a[:, -1] for a in window_moments(rows, n, at))
    for got, want in ((got_sum, want_sum), (got_mean, want_mean), (got_m2, want_m2)):
        np.testing.assert_array_equal(got.view(np.int64), want.view(np.int64))


WINDOW_FEATURES = [f for f in [*BUILTIN_FEATURES, *STANDARD_FEATURES] if is_window(f)]


@pytest.mark.parametrize("forget", [False, True])
def test_window_block_steps_many_symbols_at_once(forget: bool) -> None:
    """One block, every window feature, six ragged gappy symbols primed with different numbers of bars (none,
    inside the lookback, past it), then stepped together, each round holding the symbols with bars left:
    every row equals the batch bit for bit. With ``forget``, each symbol first gets junk bars that forget()
    throws away (what a restatement does before priming again)."""
    frame = validate_bars(pitstore.testing.synthetic_bars(n_symbols=6, n_bars=N_BARS, seed=43, gaps=0.1,
                                                          ragged=True))
    cases = [Case("block", frame, s) for s in sorted(frame["symbol"].unique())]
    block = WindowBlock(WINDOW_FEATURES)
    splits = [min(k, len(c.rows) - 1) for c, k in zip(cases, [0, 1, 7, 30, 61, 90], strict=True)]
    if forget:
        junk = walk_bars(5).head(80)
        for case in cases:
            block.prime(case.symbol, junk)
        block.step([c.symbol for c in cases], {c: np.full(len(cases), 3.0) for c in block.inputs})
        for case in cases:
            block.forget(case.symbol)
    for case, k in zip(cases, splits, strict=True):
        block.prime(case.symbol, case.bars.head(k))
    got: dict[str, list[np.ndarray]] = {c.symbol: [] for c in cases}
    for r in range(max(len(c.rows) - k for c, k in zip(cases, splits, strict=True))):
        live = [(c, k + r) for c, k in zip(cases, splits, strict=True) if k + r < len(c.rows)]
        out = block.step([c.symbol for c, _ in live],
                         {col: np.array([c.rows[i][col] for c, i in live]) for col in block.inputs})
        assert out.shape == (len(live), block.width)
        for (c, _), row in zip(live, out, strict=True):
            got[c.symbol].append(row)
    for case, k in zip(cases, splits, strict=True):
        want = np.column_stack([case.batch(f) for f in WINDOW_FEATURES])
        for j, f in enumerate(WINDOW_FEATURES):
            lo = sum(len(g.outputs) for g in WINDOW_FEATURES[:j])
            cols = slice(lo, lo + len(f.outputs))
            assert_bitwise(np.array(got[case.symbol])[:, cols], want[k:, cols], f=f,
                           label=f"{case.symbol} primed with {k}", first_row=k)


def _every_talib_function() -> list[Feature]:
    out = []
    for name in talib_functions():
        f = pitstore.talib(name)
        if set(f.inputs) <= set(BAR_COLUMNS):  # MAVP needs a 'periods' column
            out.append(f)
    return out


@pytest.mark.parametrize("f", _every_talib_function(), ids=_fid)
def test_every_talib_function_steps_exactly(cases: dict[str, Case], f: Feature) -> None:
    """Every TA-Lib function with its default parameters, stepped through TA-Lib's streaming handle (opened
    as soon as the bars suffice), equals the batch bit for bit at every split."""
    for name in ("walk2", "jumps"):
        check_splits(f, cases[name])


# --- property test: random series, random feature, random split ------------------------------------------

_MOVE = st.one_of(st.just(0.0), st.floats(-0.1, 0.1, allow_subnormal=False),
                  st.sampled_from([1e-12, -1e-12, 0.5, -0.5]))
_SPREAD = st.one_of(st.just(0.0), st.floats(0.0, 0.05, allow_subnormal=False))
_VOLUME = st.one_of(st.sampled_from([0.0, -0.0]), st.floats(0.0, 1e9, allow_subnormal=False),
                    st.integers(0, 10**12).map(float))


@st.composite
def series(draw: st.DrawFn) -> pl.DataFrame:
    """One symbol's bars: moves (often exactly zero), high/low spreads, volumes (often zero), a price level."""
    level = draw(st.sampled_from([1e-4, 0.1, 1.0 / 3.0, 100.0, 1e6, 1e9]))
    n = draw(st.integers(1, 120))
    rows = draw(st.lists(st.tuples(_MOVE, _SPREAD, _VOLUME), min_size=n, max_size=n))
    lr = np.array([r[0] for r in rows])
    spread = np.array([r[1] for r in rows])
    close = level * np.exp(np.cumsum(lr))
    open_ = np.r_[close[0], close[:-1]]
    high = np.maximum(open_, close) * (1.0 + spread)
    low = np.minimum(open_, close) / (1.0 + spread)
    assert np.isfinite(close).all() and (close > 0).all() and math.isfinite(high.max())
    return make_bars(close, open_=open_, high=high, low=low, volume=np.array([r[2] for r in rows]),
                     symbol="HYP")


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), bars=series(), f=st.sampled_from(ALL_FEATURES))
def test_stepper_equals_batch_random(data: st.DataObject, bars: pl.DataFrame, f: Feature) -> None:
    """Any feature, any generated series, any split point: stepping equals the batch bit for bit."""
    case = Case("hypothesis", bars)
    n = len(case.rows)
    k = data.draw(st.one_of(st.integers(0, n - 1), st.sampled_from(split_points(n, f.lookback))), label="k")
    assert_bitwise(step_all(f, case, k), case.batch(f)[k:], f=f, label=f"hypothesis n={n} k={k}", first_row=k)

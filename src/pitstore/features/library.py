"""The built-in feature library: parameterised, vectorised per-symbol kernels.

Conventions (TA-Lib's, so that numbers match TA-Lib where TA-Lib has the function):

* ``sma(n)``: simple mean of the last n closes; first value at bar n-1.
* ``ema(n)``: smoothing 2/(n+1), seeded with the SMA of the first n closes (TA-Lib's default seeding,
  not pandas' ``ewm(adjust=False)`` which seeds with the first close); first value at bar n-1.
* ``rsi(n)``: Wilder's smoothing (1/n), seeded with the simple averages of the first n gains and
  losses; first value at bar n.
* ``macd(fast, slow, signal)``: EMA(fast) - EMA(slow), both aligned to start at bar slow-1 as TA-Lib
  does (the fast EMA is seeded over the fast closes that end at bar slow-1), signal = EMA(signal) of
  the MACD line; first value at bar slow+signal-2.
* ``bollinger(n, k)``: SMA ± k population (ddof=0) standard deviations, as TA-Lib's BBANDS.
* ``atr(n)``: Wilder-smoothed true range, seeded with the SMA of the first n true ranges (the first
  true range needs a previous close); first value at bar n.

pitstore follows TA-Lib's definitions everywhere it has the function; the definitions it adds (ret,
log_ret, vol, mom, vwap, zscore) are written in each docstring.

Exactness: the recursive features (ema, rsi, macd, atr) are TA-Lib's own code, bit for bit. The window
features (sma, vol, mom, bollinger, vwap, zscore) build each window's sums from blocks anchored at absolute bar
positions (:mod:`pitstore.features.windows`), where TA-Lib keeps a running total from the first bar: they equal
TA-Lib to about 1e-12 relative, and a value depends only on its window and its position, never on where the
computation started, which is what lets a live update (:mod:`pitstore.live`) equal a batch backfill bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any, Protocol

import numpy as np

from pitstore import timeutil
from pitstore.errors import DefinitionError
from pitstore.features.base import Feature, FeatureSet, Kernel, TalibCall, make_feature, param_suffix
from pitstore.features.talib_features import talib_kernel
from pitstore.features.windows import Position, scratch, window_moments, window_stat2, window_sum

__all__ = [
    "BUILTINS",
    "WindowKernel",
    "atr",
    "bollinger",
    "ema",
    "is_window",
    "log_ret",
    "macd",
    "mom",
    "ret",
    "rsi",
    "sma",
    "standard_features",
    "vol",
    "vwap",
    "zscore",
]

Arrays = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class Builtin:
    """Metadata and kernel of one built-in feature: its own kernel, or the TA-Lib call it is."""

    func: str
    params: dict[str, Any]
    inputs: tuple[str, ...]
    suffixes: tuple[str, ...]
    lookback: Callable[..., int]
    kernel: Callable[..., Sequence[np.ndarray]] | None
    talib: Callable[..., TalibCall] | None
    recursive: bool
    description: str
    minimums: dict[str, float]


BUILTINS: dict[str, Builtin] = {}


def _register(
    func: str,
    *,
    params: dict[str, Any],
    inputs: tuple[str, ...] = ("close",),
    suffixes: tuple[str, ...] = ("",),
    lookback: Callable[..., int],
    recursive: bool = False,
    description: str,
    minimums: dict[str, float] | None = None,
) -> Callable[[Callable[..., Sequence[np.ndarray]]], Callable[..., Sequence[np.ndarray]]]:
    """Register a kernel; ``minimums`` are the smallest valid parameter values (default: 1 for integers)."""

    def deco(kernel: Callable[..., Sequence[np.ndarray]]) -> Callable[..., Sequence[np.ndarray]]:
        BUILTINS[func] = Builtin(
            func, params, inputs, suffixes, lookback, kernel, None, recursive, description, minimums or {}
        )
        return kernel

    return deco


def _register_talib(
    func: str,
    talib: Callable[..., TalibCall],
    *,
    params: dict[str, Any],
    inputs: tuple[str, ...] = ("close",),
    suffixes: tuple[str, ...] = ("",),
    lookback: Callable[..., int],
    description: str,
    minimums: dict[str, float] | None = None,
) -> None:
    """Register a built-in that is a (recursive) TA-Lib function; ``talib`` maps its parameters to the call."""
    BUILTINS[func] = Builtin(
        func, params, inputs, suffixes, lookback, None, talib, True, description, minimums or {}
    )


def is_window(feature: Feature) -> bool:
    """A built-in with a kernel of its own: its value at a bar depends only on the last lookback + 1 bars."""
    return feature.kind == "builtin" and feature.talib is None and feature.kernel is not None


def _build(func: str, **params: Any) -> Feature:
    spec = BUILTINS[func]
    for key, value in params.items():
        default = spec.params[key]
        if isinstance(default, int):
            if isinstance(value, bool) or not isinstance(value, int | np.integer):
                raise DefinitionError(f"{func}: {key} must be an integer, got {value!r}")
            params[key] = int(value)
        elif isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise DefinitionError(f"{func}: {key} must be a finite number, got {value!r}")
        else:
            params[key] = float(value)
        low = spec.minimums.get(key, 1 if isinstance(default, int) else -math.inf)
        if params[key] < low:
            raise DefinitionError(f"{func}: {key} must be at least {low:g}, got {value!r}")
    call = spec.talib(**params) if spec.talib is not None else None
    kernel: Kernel
    if call is not None:
        kernel = talib_kernel(call, spec.inputs)
    else:
        assert spec.kernel is not None
        kernel = partial(spec.kernel, **params)
    return make_feature(
        name=f"{func}_{param_suffix(params.values())}",
        kind="builtin",
        func=func,
        params=params,
        output_suffixes=spec.suffixes,
        inputs=spec.inputs,
        lookback=spec.lookback(**params),
        recursive=spec.recursive,
        description=spec.description,
        kernel=kernel,
        talib=call,
    )


def _dest(out: Sequence[np.ndarray] | None, like: np.ndarray, i: int = 0) -> np.ndarray:
    """The array a kernel writes its output ``i`` into: the engine's column slice, else a new array."""
    return np.empty(like.shape) if out is None else out[i]


def _shift_ratio(c: np.ndarray, n: int, out: np.ndarray) -> np.ndarray:
    out[..., :n] = np.nan
    np.divide(c[..., n:], c[..., :-n], out=out[..., n:])
    return out


# --- window kernels: one symbol's float64 columns in time order -> output arrays of the same length. ---
# Every built-in with a kernel of its own is a window feature: its value at a bar depends only on the last
# lookback + 1 bars. The kernels work along the last axis, so a live update runs them on a matrix whose rows
# are many symbols' last bars (pitstore.live.steppers.WindowBlock): the same code, the same bits. ``start`` is
# the absolute position of the first value (bars counted from the symbol's first stored bar; one per row).
# The batch engine passes two keywords more (see WindowKernel): ``out``, the slices of its output columns to
# write into (no copy, no fresh memory), and ``shared``, a dict that lives for one symbol's slice and holds
# intermediates several features of a set use (the one-bar log returns of every vol): computed once, the same
# operations on the same values as computing them again, so the same bits.


class WindowKernel(Protocol):
    """How the batch engine calls a window kernel (``functools.partial`` of one, parameters bound)."""

    def __call__(self, a: Arrays, start: Position, *, out: Sequence[np.ndarray] | None = ...,
                 shared: dict[str, np.ndarray] | None = ...) -> Sequence[np.ndarray]: ...


def _log_returns(c: np.ndarray, shared: dict[str, np.ndarray] | None) -> np.ndarray:
    """``ln(c[t] / c[t-1])`` along the last axis (one value fewer than ``c``): kept in ``shared`` (a per-thread
    scratch buffer, valid while the engine works on this slice) for the next feature that needs them."""
    if shared is None:
        r: np.ndarray = np.divide(c[..., 1:], c[..., :-1])
        np.log(r, out=r)
        return r
    lr = shared.get("log_ret_1")
    if lr is None:
        lr = np.divide(c[..., 1:], c[..., :-1], out=scratch(_SLOT_LOG_RET, *c.shape[:-1], c.shape[-1] - 1))
        lr = shared["log_ret_1"] = np.log(lr, out=lr)
    return lr


_SLOT_LOG_RET = 10  # scratch slots of this module (pitstore.features.windows uses 0-5)
_SLOT_VOL = 11


@_register("ret", params={"n": 1}, lookback=lambda n: n,
           description="simple return over n bars: close_t / close_{t-n} - 1")
def _ret(a: Arrays, start: Position, *, n: int, out: Sequence[np.ndarray] | None = None,
         shared: dict[str, np.ndarray] | None = None) -> Sequence[np.ndarray]:
    c = a["close"]
    r = _shift_ratio(c, n, _dest(out, c))
    return [np.subtract(r, 1.0, out=r)]


@_register("log_ret", params={"n": 1}, lookback=lambda n: n,
           description="log return over n bars: ln(close_t / close_{t-n})")
def _log_ret(a: Arrays, start: Position, *, n: int, out: Sequence[np.ndarray] | None = None,
             shared: dict[str, np.ndarray] | None = None) -> Sequence[np.ndarray]:
    c = a["close"]
    r = _shift_ratio(c, n, _dest(out, c))
    return [np.log(r, out=r)]


# periods_per_year is a real number (4h bars: 409.5 a year); 252.0 names and fingerprints as 252 did.
@_register("vol", params={"n": 20, "periods_per_year": 252.0}, lookback=lambda n, periods_per_year: n,
           minimums={"n": 2, "periods_per_year": 1.0},
           description="annualised volatility: sample std (ddof=1) of the last n one-bar log returns "
                       "* sqrt(periods_per_year)")
def _vol(a: Arrays, start: Position, *, n: int, periods_per_year: float, out: Sequence[np.ndarray] | None = None,
         shared: dict[str, np.ndarray] | None = None) -> Sequence[np.ndarray]:
    c = a["close"]
    dst = _dest(out, c)
    if c.shape[-1] <= n:
        dst.fill(np.nan)
        return [dst]
    scale = periods_per_year / (n - 1)

    def finish(s1: np.ndarray, s2: np.ndarray) -> np.ndarray:  # elementwise, in place: the same in any layout
        u = np.divide(s1, n, out=scratch(_SLOT_VOL, *s1.shape))
        np.multiply(s1, u, out=s1)
        np.subtract(s2, s1, out=s2)
        np.maximum(s2, 0.0, out=s2)
        s2 *= scale
        np.sqrt(s2, out=s2)
        return s2

    # One-bar log returns are centred (their mean is small against their spread): the unshifted sums do not
    # cancel, and skip the shift's passes.
    window_stat2(_log_returns(c, shared), n, start + 1, finish, out=dst[..., 1:])
    dst[..., 0] = np.nan
    return [dst]


@_register("mom", params={"n": 20}, lookback=lambda n: n - 1,
           description="momentum: close_t / mean(close over the last n bars) - 1")
def _mom(a: Arrays, start: Position, *, n: int, out: Sequence[np.ndarray] | None = None,
         shared: dict[str, np.ndarray] | None = None) -> Sequence[np.ndarray]:
    c = a["close"]
    s = window_sum(c, n, start, out=_dest(out, c))
    s /= n
    np.divide(c, s, out=s)
    return [np.subtract(s, 1.0, out=s)]


@_register("sma", params={"n": 20}, lookback=lambda n: n - 1,
           description="simple moving average of close over n bars (TA-Lib SMA's definition)")
def _sma(a: Arrays, start: Position, *, n: int, out: Sequence[np.ndarray] | None = None,
         shared: dict[str, np.ndarray] | None = None) -> Sequence[np.ndarray]:
    c = a["close"]
    s = window_sum(c, n, start, out=_dest(out, c))
    s /= n
    return [s]


_register_talib("ema", lambda n: ("EMA", {"timeperiod": n}), params={"n": 20}, lookback=lambda n: n - 1,
                description="exponential moving average of close, alpha 2/(n+1), SMA-seeded (TA-Lib EMA)")
_register_talib("rsi", lambda n: ("RSI", {"timeperiod": n}), params={"n": 14}, lookback=lambda n: n,
                minimums={"n": 2}, description="relative strength index, Wilder smoothing (TA-Lib RSI)")
_register_talib("macd",
                lambda fast, slow, signal: ("MACD", {"fastperiod": fast, "slowperiod": slow, "signalperiod": signal}),
                params={"fast": 12, "slow": 26, "signal": 9}, suffixes=("", "signal", "hist"),
                lookback=lambda fast, slow, signal: max(fast, slow) + signal - 2, minimums={"fast": 2, "slow": 2},
                description="MACD line, signal line and histogram (TA-Lib MACD)")


@_register("bollinger", params={"n": 20, "k": 2.0}, suffixes=("upper", "middle", "lower"),
           lookback=lambda n, k: n - 1, minimums={"n": 2, "k": 0.0},
           description="Bollinger bands: SMA(n) ± k population std of close (TA-Lib BBANDS' definition)")
def _bollinger(a: Arrays, start: Position, *, n: int, k: float, out: Sequence[np.ndarray] | None = None,
               shared: dict[str, np.ndarray] | None = None) -> Sequence[np.ndarray]:
    middle, m2 = window_moments(a["close"], n, start)
    dev = np.sqrt(m2 / n) * k
    return _into(out, [middle + dev, middle, middle - dev])


_register_talib("atr", lambda n: ("ATR", {"timeperiod": n}), params={"n": 14}, inputs=("high", "low", "close"),
                lookback=lambda n: n, description="average true range, Wilder smoothing (TA-Lib ATR)")


@_register("vwap", params={"n": 20}, inputs=("high", "low", "close", "volume"), lookback=lambda n: n - 1,
           description="rolling VWAP over n bars of the typical price (high+low+close)/3; "
                       "null while the window has no volume")
def _vwap(a: Arrays, start: Position, *, n: int, out: Sequence[np.ndarray] | None = None,
          shared: dict[str, np.ndarray] | None = None) -> Sequence[np.ndarray]:
    typical = (a["high"] + a["low"] + a["close"]) / 3.0
    with np.errstate(divide="ignore", invalid="ignore"):
        res = window_sum(typical * a["volume"], n, start) / window_sum(a["volume"], n, start)
    res[~np.isfinite(res)] = np.nan
    return _into(out, [res])


@_register("zscore", params={"n": 20}, lookback=lambda n: n - 1, minimums={"n": 2},
           description="z-score of close against its last n bars: (close - mean) / std (ddof=1)")
def _zscore(a: Arrays, start: Position, *, n: int, out: Sequence[np.ndarray] | None = None,
            shared: dict[str, np.ndarray] | None = None) -> Sequence[np.ndarray]:
    mean, m2 = window_moments(a["close"], n, start)
    with np.errstate(divide="ignore", invalid="ignore"):
        res = (a["close"] - mean) / np.sqrt(m2 / (n - 1))
    res[~np.isfinite(res)] = np.nan
    return _into(out, [res])


def _into(out: Sequence[np.ndarray] | None, results: Sequence[np.ndarray]) -> Sequence[np.ndarray]:
    """Results computed in arrays of their own, copied into ``out`` when the engine gives it."""
    if out is None:
        return results
    for o, r in zip(out, results, strict=True):
        o[...] = r
    return out


# --- factories: the public, typed constructors ------------------------------------------------------


def ret(n: int = 1) -> Feature:
    """Simple return over ``n`` bars. ``ret(5)`` -> column ``ret_5``."""
    return _build("ret", n=n)


def log_ret(n: int = 1) -> Feature:
    """Log return over ``n`` bars. ``log_ret(1)`` -> column ``log_ret_1``."""
    return _build("log_ret", n=n)


def vol(n: int = 20, periods_per_year: float = 252) -> Feature:
    """Annualised volatility of one-bar log returns over ``n`` bars (ddof=1), times ``sqrt(periods_per_year)``
    (252: daily bars; :func:`pitstore.timeutil.periods_per_year` gives it for any timeframe)."""
    return _build("vol", n=n, periods_per_year=periods_per_year)


def mom(n: int = 20) -> Feature:
    """Close over its ``n``-bar mean, minus one."""
    return _build("mom", n=n)


def sma(n: int = 20) -> Feature:
    """Simple moving average of close. ``sma(50)`` -> column ``sma_50``."""
    return _build("sma", n=n)


def ema(n: int = 20) -> Feature:
    """Exponential moving average of close, SMA-seeded as TA-Lib."""
    return _build("ema", n=n)


def rsi(n: int = 14) -> Feature:
    """Wilder's RSI. ``rsi(14)`` -> column ``rsi_14``."""
    return _build("rsi", n=n)


def macd(fast: int = 12, slow: int = 26, signal: int = 9) -> Feature:
    """MACD: columns ``macd_12_26_9``, ``macd_12_26_9_signal``, ``macd_12_26_9_hist``."""
    return _build("macd", fast=fast, slow=slow, signal=signal)


def bollinger(n: int = 20, k: float = 2.0) -> Feature:
    """Bollinger bands: columns ``bollinger_20_2_upper``, ``_middle``, ``_lower``."""
    return _build("bollinger", n=n, k=k)


def atr(n: int = 14) -> Feature:
    """Average true range (Wilder)."""
    return _build("atr", n=n)


def vwap(n: int = 20) -> Feature:
    """Rolling volume-weighted average of the typical price over ``n`` bars."""
    return _build("vwap", n=n)


def zscore(n: int = 20) -> Feature:
    """Z-score of close against its last ``n`` bars."""
    return _build("zscore", n=n)


def standard_features(name: str = "daily_core", *, timeframe: str = "1d",
                      periods_per_year: float | None = None) -> FeatureSet:
    """The seven standard features: ``ret_5d, ret_20d, ret_60d, vol_20d, vol_60d, mom_20d, mom_60d``.

    ``ret_N = close_t/close_{t-N} - 1``; ``vol_N = std(log returns, last N bars, ddof=1) * sqrt(periods per
    year)``; ``mom_N = close_t / mean(close, last N bars) - 1``; N counted in bars. The names end in ``d`` (days)
    on ``1d`` bars only; on any other timeframe they count bars: ``ret_5, ..., vol_20, ..., mom_60``.
    ``periods_per_year`` defaults to :func:`pitstore.timeutil.periods_per_year` of the timeframe (1d: 252,
    1h: 1638 = 252 sessions of 6.5 hours); give your own for a market that trades around the clock.

    >>> standard_features(timeframe="1h").columns[:4]
    ('ret_5', 'ret_20', 'ret_60', 'vol_20')
    """
    per_year = timeutil.periods_per_year(timeframe) if periods_per_year is None else periods_per_year
    unit = "d" if timeframe == "1d" else ""  # the daily names stay as they were: stored sets keep fingerprints
    return FeatureSet(
        name,
        [
            ret(5).alias(f"ret_5{unit}"),
            ret(20).alias(f"ret_20{unit}"),
            ret(60).alias(f"ret_60{unit}"),
            vol(20, per_year).alias(f"vol_20{unit}"),
            vol(60, per_year).alias(f"vol_60{unit}"),
            mom(20).alias(f"mom_20{unit}"),
            mom(60).alias(f"mom_60{unit}"),
        ],
        timeframe=timeframe,
        description="the seven standard return, volatility and momentum features",
    )

"""Incremental ("live") feature computation: one new bar in, the feature's outputs at that bar out.

The contract: priming a stepper with a symbol's stored bars and then stepping new bars one at a time gives
exactly (bit for bit) the values :func:`pitstore.features.engine.compute_frame` computes over the whole
history. Two ways keep it:

* window features (ret, log_ret, vol, mom, sma, bollinger, vwap, zscore) depend only on their last bars,
  computed in the fixed order of :mod:`pitstore.features.windows`: the stepper keeps that many bars and
  applies the same operations, O(window) per bar;
* TA-Lib features (the recursive built-ins ema, rsi, macd, atr, and every ``talib(...)`` feature) step TA-Lib's
  streaming handle of the same function (:mod:`talib.stream`), which TA-Lib makes bit-identical to its
  function API: O(1) per bar, a couple of microseconds. Until the symbol has the bars a handle needs to
  open, the batch kernel runs over the few bars there are;
* everything else (expressions, Python functions) is recomputed by the batch engine over the symbol's whole
  history, kept in memory: exact by construction, O(history) per bar.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import numpy as np
import polars as pl
import talib
from talib import stream as talib_stream

from pitstore.bars import BAR_COLUMNS
from pitstore.features.base import Feature
from pitstore.features.engine import compute_frame
from pitstore.features.windows import moments, window_total

__all__ = ["Stepper", "stepper_for"]

NAN = math.nan
# What a TA-Lib streaming handle raises when the bars are too few to open it (untyped in TA-Lib's stubs).
_INSUFFICIENT: type[Exception] = talib.InsufficientHistory  # type: ignore[attr-defined]


class Stepper(Protocol):
    """The live state of one feature for one symbol."""

    def prime(self, history: pl.DataFrame) -> None:
        """Consume the symbol's stored bars (validated, oldest first), before any :meth:`step`."""
        ...

    def step(self, bar: Mapping[str, Any]) -> tuple[float, ...]:
        """Consume one new bar; the feature's outputs at it, NaN where the batch engine gives null."""
        ...


def stepper_for(feature: Feature) -> Stepper:
    """A fresh stepper for ``feature``."""
    if feature.kind == "builtin" and feature.func in _WINDOW_KERNELS:
        return _WindowStepper(feature, _WINDOW_KERNELS[feature.func](**feature.params))
    if feature.talib is not None:
        return _TalibStepper(feature)
    return _FrameRecompute(feature)


class _Series:
    """A growable float64 array: amortised O(1) append, the last values as a contiguous view."""

    __slots__ = ("buf", "size")

    def __init__(self, capacity: int = 64) -> None:
        self.buf = np.empty(max(capacity, 16))
        self.size = 0

    def extend(self, values: np.ndarray) -> None:
        need = self.size + len(values)
        if need > len(self.buf):
            grown = np.empty(max(need, 2 * len(self.buf)))
            grown[: self.size] = self.buf[: self.size]
            self.buf = grown
        self.buf[self.size : need] = values
        self.size = need

    def append(self, value: float) -> None:
        if self.size == len(self.buf):
            self.extend(np.array([value]))
            return
        self.buf[self.size] = value
        self.size += 1

    def all(self) -> np.ndarray:
        return self.buf[: self.size]

    def last(self, n: int) -> np.ndarray:
        return self.buf[self.size - n : self.size]


class _Window:
    """The last values of one input, for window kernels (bounded: old values are dropped)."""

    __slots__ = ("keep", "s")

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.s = _Series(4 * keep)

    def push(self, x: float) -> None:
        s = self.s
        if s.size == len(s.buf):  # full: keep only the last ``keep`` values, at the front
            s.buf[: self.keep] = s.buf[s.size - self.keep : s.size]
            s.size = self.keep
        s.append(x)

    def has(self, n: int) -> bool:
        return self.s.size >= n

    def last(self, n: int) -> np.ndarray:
        return self.s.last(n)


# --- window features: the operations of the batch kernels in pitstore.features.library, for one bar -----

Bar = Mapping[str, float]
Kernel = Callable[[Bar], tuple[float, ...]]


def _log(x: float) -> float:
    # numpy's log as the batch kernel calls it, not math.log: the two may differ in the last bit.
    return float(np.log(np.array([x]))[0])


def _finite(x: float) -> float:
    return x if math.isfinite(x) else NAN


def _ratio(num: float, den: float) -> float:
    """``num / den`` as numpy gives it, non-finite results (division by zero) as NaN."""
    return _finite(num / den) if den != 0.0 else NAN


def _ret(n: int) -> Kernel:
    w: deque[float] = deque(maxlen=n + 1)

    def k(bar: Bar) -> tuple[float, ...]:
        w.append(bar["close"])
        return (w[-1] / w[0] - 1.0,) if len(w) > n else (NAN,)

    return k


def _log_ret(n: int) -> Kernel:
    w: deque[float] = deque(maxlen=n + 1)

    def k(bar: Bar) -> tuple[float, ...]:
        w.append(bar["close"])
        return (_log(w[-1] / w[0]),) if len(w) > n else (NAN,)

    return k


def _vol(n: int, periods_per_year: int) -> Kernel:
    returns = _Window(n)
    scale = math.sqrt(periods_per_year)
    prev = [NAN]

    def k(bar: Bar) -> tuple[float, ...]:
        c, p = bar["close"], prev[0]
        prev[0] = c
        if p != p:  # NaN: the first bar has no return
            return (NAN,)
        returns.push(_log(c / p))
        if not returns.has(n):
            return (NAN,)
        _, m2 = moments(returns.last(n))
        return (math.sqrt(m2 / (n - 1)) * scale,)

    return k


def _mom(n: int) -> Kernel:
    w = _Window(n)

    def k(bar: Bar) -> tuple[float, ...]:
        c = bar["close"]
        w.push(c)
        return (c / (window_total(w.last(n)) / n) - 1.0,) if w.has(n) else (NAN,)

    return k


def _sma(n: int) -> Kernel:
    w = _Window(n)

    def k(bar: Bar) -> tuple[float, ...]:
        w.push(bar["close"])
        return (window_total(w.last(n)) / n,) if w.has(n) else (NAN,)

    return k


def _bollinger(n: int, k: float) -> Kernel:
    w = _Window(n)

    def kern(bar: Bar) -> tuple[float, ...]:
        w.push(bar["close"])
        if not w.has(n):
            return (NAN, NAN, NAN)
        middle, m2 = moments(w.last(n))
        dev = math.sqrt(m2 / n) * k
        return (middle + dev, middle, middle - dev)

    return kern


def _vwap(n: int) -> Kernel:
    pv, vol = _Window(n), _Window(n)

    def k(bar: Bar) -> tuple[float, ...]:
        typical = (bar["high"] + bar["low"] + bar["close"]) / 3.0
        pv.push(typical * bar["volume"])
        vol.push(bar["volume"])
        if not pv.has(n):
            return (NAN,)
        return (_ratio(window_total(pv.last(n)), window_total(vol.last(n))),)

    return k


def _zscore(n: int) -> Kernel:
    w = _Window(n)

    def k(bar: Bar) -> tuple[float, ...]:
        c = bar["close"]
        w.push(c)
        if not w.has(n):
            return (NAN,)
        mean, m2 = moments(w.last(n))
        return (_ratio(c - mean, math.sqrt(m2 / (n - 1))),)

    return k


_WINDOW_KERNELS: dict[str, Callable[..., Kernel]] = {
    "ret": _ret, "log_ret": _log_ret, "vol": _vol, "mom": _mom, "sma": _sma, "bollinger": _bollinger,
    "vwap": _vwap, "zscore": _zscore,
}


class _WindowStepper:
    """A window kernel plus the batch engine's rules: null inside the lookback, NaN is null."""

    def __init__(self, feature: Feature, kernel: Kernel) -> None:
        self.kernel = kernel
        self.lookback = feature.lookback
        self.inputs = feature.inputs
        self.count = 0
        self.blank = (NAN,) * len(feature.outputs)

    def prime(self, history: pl.DataFrame) -> None:
        # A window kernel's state is its last bars: lookback + 1 of them cover every window kernel.
        tail = history.tail(self.lookback + 1)
        cols = [tail[c].cast(pl.Float64).to_list() for c in self.inputs]
        for values in zip(*cols, strict=True):
            self.kernel(dict(zip(self.inputs, values, strict=True)))
        self.count += history.height

    def step(self, bar: Mapping[str, Any]) -> tuple[float, ...]:
        out = self.kernel(bar)
        i = self.count
        self.count += 1
        return self.blank if i < self.lookback else out


class _TalibStepper:
    """A TA-Lib feature: its streaming handle once the bars suffice to open one, the batch kernel before."""

    def __init__(self, feature: Feature) -> None:
        assert feature.talib is not None and feature.kernel is not None
        name, params = feature.talib
        self.open = getattr(talib_stream, name)
        self.params = params
        self.kernel = feature.kernel
        self.lookback = feature.lookback
        self.inputs = feature.inputs  # positional, as the function takes them (a column may repeat)
        self.blank = (NAN,) * len(feature.outputs)
        self.count = 0
        self.handle: Any = None
        self.series: dict[str, _Series] | None = {c: _Series() for c in feature.inputs}  # until it opens

    def prime(self, history: pl.DataFrame) -> None:
        if self.series is None:  # already open: carry it over the bars
            columns = [history[c].cast(pl.Float64).to_list() for c in self.inputs]
            for values in zip(*columns, strict=True):
                self.handle.update(*values)
        else:
            for c, s in self.series.items():
                s.extend(history[c].cast(pl.Float64).to_numpy())
            self._try_open()
        self.count += history.height

    def step(self, bar: Mapping[str, Any]) -> tuple[float, ...]:
        i = self.count
        self.count += 1
        if self.series is None:
            out = self.handle.update(*(float(bar[c]) for c in self.inputs))
        else:
            for c, s in self.series.items():
                s.append(float(bar[c]))
            if self._try_open():
                out = self.handle.value
            else:  # too few bars for a handle: the batch kernel over them (cheap: they are few)
                outs = self.kernel({c: s.all() for c, s in self.series.items()})
                out = tuple(float(o[-1]) for o in outs)
        if i < self.lookback:
            return self.blank
        return tuple(float(v) for v in out) if isinstance(out, tuple) else (float(out),)

    def _try_open(self) -> bool:
        assert self.series is not None
        if next(iter(self.series.values())).size == 0:
            return False
        try:
            self.handle = self.open(*(self.series[c].all() for c in self.inputs), **self.params)
        except _INSUFFICIENT:
            return False
        self.series = None  # the handle carries all the state: the bars are no longer needed
        return True


class _FrameRecompute:
    """Any other feature (expression, Python function): the batch engine over the whole history."""

    def __init__(self, feature: Feature) -> None:
        self.feature = feature
        self.bars: pl.DataFrame | None = None

    def prime(self, history: pl.DataFrame) -> None:
        history = history.select(BAR_COLUMNS)  # what a pushed bar has: extra stored columns can't be stepped
        self.bars = history if self.bars is None else pl.concat([self.bars, history])

    def step(self, bar: Mapping[str, Any]) -> tuple[float, ...]:
        row = pl.DataFrame([dict(bar)])
        if self.bars is not None and self.bars.height:
            self.bars = pl.concat([self.bars, row.select(self.bars.columns).cast(self.bars.schema)])
        else:
            self.bars = row
        out = compute_frame([self.feature], self.bars).row(-1)[2:]
        return tuple(NAN if v is None else float(v) for v in out)

"""Incremental ("live") feature computation: new bars in, the features' outputs at those bars out.

The contract: priming with a symbol's stored bars and then stepping new bars one at a time gives exactly (bit
for bit) the values :func:`pitstore.features.engine.compute_frame` computes over the whole history. Three ways
keep it:

* window features (every built-in with a kernel of its own: ret, log_ret, vol, mom, sma, bollinger, vwap,
  zscore) depend only on their last lookback + 1 bars and on their absolute position (the blocks of
  :mod:`pitstore.features.windows` are anchored at multiples of the window, counted from the symbol's first
  stored bar). A :class:`WindowBlock` keeps those bars for many symbols, one row each, with the count of bars
  each has seen (its position), and runs the batch kernels themselves on the rows: one numpy call per feature
  for all the symbols a push updates, the same code as a backfill;
* TA-Lib features (the recursive built-ins ema, rsi, macd, atr, and every ``talib(...)`` feature) step TA-Lib's
  streaming handle of the same function (:mod:`talib.stream`), which TA-Lib makes bit-identical to its
  function API: O(1) per bar, a couple of microseconds. Until the symbol has the bars a handle needs to
  open, the batch kernel runs over the few bars there are;
* everything else (expressions, Python functions) is recomputed by the batch engine over the symbol's whole
  history, kept in memory: exact by construction, O(history) per bar.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import numpy as np
import polars as pl
import talib
from talib import stream as talib_stream

from pitstore.features.base import Feature
from pitstore.features.engine import compute_frame
from pitstore.features.library import is_window
from pitstore.sources.bars import BAR_COLUMNS, TS_DTYPE

__all__ = ["Stepper", "WindowBlock", "stepper_for"]

NAN = math.nan
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# What validate_bars gives (and the stored bars have, ts as µs here): a pushed bar joins them with their types.
_BAR_SCHEMA: dict[str, pl.DataType] = {"symbol": pl.String(), "ts": pl.Int64(),
                                       **{c: pl.Float64() for c in BAR_COLUMNS[2:]}}
# What a TA-Lib streaming handle raises when the bars are too few to open it (untyped in TA-Lib's stubs).
_INSUFFICIENT: type[Exception] = talib.InsufficientHistory  # type: ignore[attr-defined]


class Stepper(Protocol):
    """The live state of one feature for one symbol."""

    def prime(self, history: pl.DataFrame) -> None:
        """Consume the symbol's stored bars (validated, oldest first), before any :meth:`step`."""
        ...

    def step(self, bar: Mapping[str, Any]) -> tuple[float, ...]:
        """Consume one new bar (its values, ``symbol`` and ``ts`` in µs); the feature's outputs at it, NaN where
        the batch engine gives null. It may raise (a Python feature's error): the engine primes again then."""
        ...


def stepper_for(feature: Feature) -> Stepper:
    """A fresh stepper for ``feature``, for one symbol."""
    if is_window(feature):
        return _WindowStepper(feature)
    if feature.talib is not None:
        return _TalibStepper(feature)
    return _FrameRecompute(feature)


class WindowBlock:
    """Window features of many symbols: each symbol's last bars as a row, the batch kernels run on the rows.

    ``step`` takes one bar for each of a set of distinct symbols and returns their outputs, one row per
    symbol and one column per output of the features (in order), NaN where the batch engine gives null.
    """

    def __init__(self, features: Sequence[Feature]) -> None:
        assert all(is_window(f) for f in features)
        self.features = list(features)
        self.inputs = sorted({c for f in features for c in f.inputs})
        self.width = sum(len(f.outputs) for f in features)
        self.keep = max((f.lookback for f in features), default=0) + 1  # bars every kernel's last value needs
        self.rows: dict[str, int] = {}
        self.tails = {c: np.full((16, self.keep), NAN) for c in self.inputs}  # oldest bar first
        self.count = np.zeros(16, np.int64)  # bars each row has seen, primed ones included

    def forget(self, symbol: str) -> None:
        """Start ``symbol`` over, as if it had no bars (it is primed again after a restatement)."""
        row = self.rows.get(symbol)
        if row is not None:
            # Its old bars may stay in the row: a value is blanked until the row has seen lookback + 1 new ones.
            self.count[row] = 0

    def prime(self, symbol: str, history: pl.DataFrame) -> None:
        """Consume ``symbol``'s stored bars (oldest first, from its first stored bar on: the count of bars seen
        is the absolute position the window blocks are anchored to); only the last ``keep`` are kept."""
        row = self._row(symbol)
        m = min(history.height, self.keep)
        if m:
            for c, t in self.tails.items():
                t[row, : self.keep - m] = t[row, m:]
                t[row, self.keep - m :] = history[c].tail(m).cast(pl.Float64).to_numpy()
        self.count[row] += history.height

    def step(self, symbols: Sequence[str], bars: Mapping[str, np.ndarray]) -> np.ndarray:
        rows = np.fromiter((self._row(s) for s in symbols), np.int64, len(symbols))
        windows = {}
        for c, t in self.tails.items():
            w = t[rows]
            w[:, :-1] = w[:, 1:]
            w[:, -1] = bars[c]
            t[rows] = w
            windows[c] = w
        self.count[rows] += 1
        index = self.count[rows] - 1  # of the stepped bar in its symbol's history
        out = np.empty((len(symbols), self.width))
        col = 0
        with np.errstate(all="ignore"):  # rows inside their lookback hold NaN or forgotten bars: blanked below
            for f in self.features:
                k = f.lookback + 1
                assert f.kernel is not None
                results = f.kernel({c: windows[c][:, self.keep - k :] for c in f.inputs}, index - (k - 1))
                for r in results:
                    out[:, col] = r[:, -1]
                    out[index < f.lookback, col] = NAN
                    col += 1
        return out

    def _row(self, symbol: str) -> int:
        row = self.rows.get(symbol)
        if row is None:
            row = self.rows[symbol] = len(self.rows)
            if row == len(self.count):  # full: twice the rows
                self.count = np.concatenate([self.count, np.zeros(row, np.int64)])
                for c, t in self.tails.items():
                    self.tails[c] = np.concatenate([t, np.full(t.shape, NAN)])
        return row


class _WindowStepper:
    """One window feature of one symbol: a block of one row."""

    def __init__(self, feature: Feature) -> None:
        self.block = WindowBlock([feature])

    def prime(self, history: pl.DataFrame) -> None:
        self.block.prime("", history)

    def step(self, bar: Mapping[str, Any]) -> tuple[float, ...]:
        out = self.block.step([""], {c: np.array([float(bar[c])]) for c in self.block.inputs})
        return tuple(out[0].tolist())


class _Series:
    """A growable float64 array: amortised O(1) append."""

    __slots__ = ("buf", "size")

    def __init__(self) -> None:
        self.buf = np.empty(64)
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
        self.extend(np.array([value]))

    def all(self) -> np.ndarray:
        return self.buf[: self.size]


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
                outs = self.kernel({c: s.all() for c, s in self.series.items()}, 0)
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
        """``bar`` holds ``symbol`` and ``ts`` (µs) too: the batch engine computes per symbol, in time order."""
        ts = bar["ts"]
        if isinstance(ts, datetime):  # a bar dict built from a frame row, rather than the engine's µs
            ts = (ts - _EPOCH) // timedelta(microseconds=1) if ts.tzinfo else None
        row = pl.DataFrame({**{c: [bar[c]] for c in BAR_COLUMNS}, "ts": [ts]}, schema=_BAR_SCHEMA).with_columns(
            pl.col("ts").cast(TS_DTYPE))
        bars = row if self.bars is None or self.bars.height == 0 else pl.concat([self.bars, row], rechunk=True)
        out = compute_frame([self.feature], bars).row(-1)[2:]
        self.bars = bars  # only once computed: a failed step leaves the history as it was
        return tuple(NAN if v is None else float(v) for v in out)

"""The fast path of validate_bars: numpy checks decide, polars' row-by-row checks only report.

``_values_ok`` must say "valid" exactly when no check of ``_check_values`` (or of the nulls) fails, for any
subset of the price columns; ``symbol_runs`` (neighbouring Arrow string views) must find the runs polars' own
comparison finds, for short, long (not inline) and non-ASCII symbols, whichever buffers they sit in.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pitstore.errors import InvalidInputError
from pitstore.sources.bars import (
    _ROW,
    BAR_COLUMNS,
    MAX_TS,
    MIN_TS,
    _check_nulls,
    _check_values,
    _values_ok,
    checked_bars,
    symbol_runs,
    validate_bars,
)
from pitstore.testing import synthetic_bars

# Values that break a check (or sit on its edge, valid): NaN, infinities, zeros of both signs, negatives.
SPECIAL = [float("nan"), float("inf"), float("-inf"), 0.0, -0.0, -1.0, 1e-300, 1e300]


def _slow_ok(df: pl.DataFrame, columns: tuple[str, ...], max_future: timedelta | None) -> bool:
    indexed = df.with_row_index(_ROW)
    try:
        _check_nulls(indexed, columns)
        _check_values(indexed, columns, max_future)
    except InvalidInputError:
        return False
    return True


def _frame(rows: int, seed: int) -> pl.DataFrame:
    return synthetic_bars(2, rows, timeframe="1m", seed=seed)


@settings(max_examples=400, deadline=None)
@given(seed=st.integers(0, 2**16), rows=st.integers(1, 40), data=st.data(),
       subset=st.sampled_from([BAR_COLUMNS, ("symbol", "ts", "close"), ("symbol", "ts", "high", "low"),
                               ("symbol", "ts", "high", "low", "close"), ("symbol", "ts", "open", "close"),
                               ("symbol", "ts", "close", "volume")]))
def test_fast_value_checks_agree_with_the_row_checks(seed: int, rows: int, data: st.DataObject,
                                                     subset: tuple[str, ...]) -> None:
    df = _frame(rows, seed)
    for _ in range(data.draw(st.integers(0, 3), label="edits")):
        column = data.draw(st.sampled_from(["open", "high", "low", "close", "volume", "ts"]), label="column")
        row = data.draw(st.integers(0, df.height - 1), label="row")
        if column == "ts":
            value: object = data.draw(st.sampled_from([MIN_TS - timedelta(microseconds=1), MIN_TS,
                                                       MAX_TS - timedelta(microseconds=1), MAX_TS]))
        else:
            value = data.draw(st.sampled_from([*SPECIAL, "swap"]), label="value")
            if value == "swap":  # a price outside [low, high], or a band upside down
                value = float(df[column][row]) * data.draw(st.sampled_from([0.5, 2.0]))
        values = df[column].to_list()
        values[row] = value
        df = df.with_columns(pl.Series(column, values, dtype=df.schema[column]))
    if data.draw(st.booleans(), label="null"):
        column = data.draw(st.sampled_from(subset[1:]), label="null column")
        df = df.with_columns(pl.when(pl.int_range(pl.len()) == 0).then(None).otherwise(pl.col(column))
                             .alias(column))
    assert _values_ok(df, subset, None) == _slow_ok(df, subset, None)


def test_fast_checks_refuse_a_future_bar_as_the_row_checks_do() -> None:
    now = datetime.now(UTC)
    df = _frame(5, 1).with_columns(pl.lit(now + timedelta(days=3)).cast(pl.Datetime("us", "UTC")).alias("ts"))
    assert not _values_ok(df, BAR_COLUMNS, timedelta(days=1))
    assert not _slow_ok(df, BAR_COLUMNS, timedelta(days=1))
    assert _values_ok(df, BAR_COLUMNS, timedelta(days=5))


def _rle_runs(s: pl.Series) -> tuple[list[str], list[int], list[int]]:
    change = (s != s.shift(1)).fill_null(True).to_numpy()
    starts = np.flatnonzero(change)
    ends = np.append(starts[1:], len(s))
    return s.gather(starts).to_list(), starts.tolist(), ends.tolist()


NAMES = st.sampled_from(["A", "AAPL", "B", "BRK.B", "ABCDEFGHIJKL", "ABCDEFGHIJKLM", "ABCDEFGHIJKLMN",
                         "a-very-long-symbol-name-1", "a-very-long-symbol-name-2", "Ünïcödé", "Ünïcödé-long-name",
                         "x" * 64])


@settings(max_examples=300, deadline=None)
@given(parts=st.lists(st.tuples(NAMES, st.integers(1, 30)), min_size=1, max_size=12), split=st.booleans())
def test_symbol_runs_equal_polars_runs(parts: list[tuple[str, int]], split: bool) -> None:
    """Runs of any strings: equal long strings in separate buffers (concatenated frames) are one run."""
    pieces = [pl.Series("symbol", [name] * k) for name, k in parts]
    if split:  # one chunk per piece, each with its own data buffer, then rechunked by symbol_runs
        s = pl.concat(pieces, rechunk=False)
    else:
        s = pl.Series("symbol", [name for name, k in parts for _ in range(k)])
    names, starts, ends = symbol_runs(s)
    assert (names, starts.tolist(), ends.tolist()) == _rle_runs(s)


def test_symbol_runs_of_a_sliced_column() -> None:
    s = pl.Series("symbol", ["AAA"] * 3 + ["a-very-long-symbol-name"] * 4 + ["BBB"] * 2).slice(2, 6)
    names, starts, ends = symbol_runs(s)
    assert (names, starts.tolist(), ends.tolist()) == _rle_runs(s)


@pytest.mark.parametrize("symbols", [["AAA", "BBB"], ["a-very-long-symbol-name", "a-very-long-symbol-name-2"]])
def test_sorted_input_comes_back_as_given_with_its_runs(symbols: list[str]) -> None:
    df = _frame(50, 3).with_columns(pl.col("symbol").replace({"S0000": symbols[0], "S0001": symbols[1]}))
    out, (names, starts, ends) = checked_bars(df)
    assert out.equals(df)
    assert names == symbols and starts.tolist() == [0, 50] and ends.tolist() == [50, 100]


def test_unsorted_input_is_sorted_with_its_runs() -> None:
    df = _frame(30, 4)
    out, (names, starts, ends) = checked_bars(df.reverse())
    assert out.equals(validate_bars(df))
    assert names == ["S0000", "S0001"] and starts.tolist() == [0, 30] and ends.tolist() == [30, 60]

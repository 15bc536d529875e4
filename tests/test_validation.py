"""validate_bars: malformed OHLCV bars get a clear InvalidInputError; valid bars come out normalised.

Every malformed case names the column, the symbol and the first offending row, where the row is the
0-based position of that row in the *input* frame (not in the sorted output).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

from pitstore import FeatureSet, Store, sma
from pitstore.config import Settings
from pitstore.errors import ConfigError, DefinitionError, InvalidInputError
from pitstore.frames import to_polars
from pitstore.sources.bars import BAR_COLUMNS, MAX_TS, MIN_TS, validate_bars
from pitstore.testing import synthetic_bars

T0 = datetime(2024, 1, 2, tzinfo=UTC)
DAY = timedelta(days=1)
US = timedelta(microseconds=1)
UNCHECKED: Any = object()  # sentinel: this attribute is not asserted for this case
PRICES = ("open", "high", "low", "close")


def bars() -> pl.DataFrame:
    """A small valid frame, sorted by (symbol, ts): rows 0-2 are AAA, rows 3-4 are BBB."""
    return pl.DataFrame(
        {
            "symbol": ["AAA", "AAA", "AAA", "BBB", "BBB"],
            "ts": [T0, T0 + DAY, T0 + 2 * DAY, T0, T0 + DAY],
            "open": [10.0, 10.5, 11.0, 50.0, 51.0],
            "high": [11.0, 11.5, 12.0, 52.0, 53.0],
            "low": [9.0, 9.5, 10.0, 49.0, 50.0],
            "close": [10.5, 11.0, 11.5, 51.0, 52.0],
            "volume": [100.0, 200.0, 300.0, 400.0, 500.0],
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def with_value(df: pl.DataFrame, column: str, row: int, value: Any) -> pl.DataFrame:
    """``df`` with one cell replaced, keeping the column's dtype."""
    values = df[column].to_list()
    values[row] = value
    return df.with_columns(pl.Series(column, values, dtype=df.schema[column]))


def frame(**columns: list[Any]) -> pl.DataFrame:
    """A valid frame built from explicit symbol and day-offset lists (prices all valid)."""
    symbols: list[Any] = columns["symbol"]
    days: list[int] = columns["day"]
    n = len(symbols)
    return pl.DataFrame(
        {
            "symbol": symbols,
            "ts": [T0 + d * DAY for d in days],
            "open": [10.0] * n,
            "high": [11.0] * n,
            "low": [9.0] * n,
            "close": [10.5] * n,
            "volume": [100.0] * n,
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def as_pandas(df: pl.DataFrame) -> pd.DataFrame:
    """The same bars as a pandas frame."""
    return df.to_pandas()


def check(
    data: Any,
    column: str | None,
    *,
    symbol: Any = UNCHECKED,
    row: Any = UNCHECKED,
    problem: str | None = None,
) -> InvalidInputError:
    """Assert validate_bars rejects ``data`` naming ``column`` (and ``symbol``/``row`` when given)."""
    with pytest.raises(InvalidInputError) as info:
        validate_bars(data)
    err = info.value
    assert err.column == column, str(err)
    if column is not None:
        assert repr(column) in str(err), str(err)
    if symbol is not UNCHECKED:
        assert err.symbol == symbol, str(err)
        if symbol is not None:
            assert repr(symbol) in str(err), str(err)
    if row is not UNCHECKED:
        assert err.row == row, str(err)
        if row is not None:
            assert f"row {row}" in str(err), str(err)
    if problem is not None:
        assert problem in err.problem, str(err)
    return err


# --------------------------------------------------------------------------------------------------
# Malformed inputs
# --------------------------------------------------------------------------------------------------

Builder = Callable[[], Any]

MALFORMED: list[Any] = [
    # Timestamps. Naive / wrong dtype is a property of the whole column, so its first row is row 0.
    pytest.param(
        lambda: bars().with_columns(pl.col("ts").dt.replace_time_zone(None)),
        "ts", "AAA", 0, "naive", id="ts-naive-polars",
    ),
    pytest.param(
        lambda: as_pandas(bars()).assign(ts=lambda f: f["ts"].dt.tz_localize(None)),
        "ts", "AAA", 0, "naive", id="ts-naive-pandas",
    ),
    pytest.param(
        lambda: bars().with_columns(pl.col("ts").dt.replace_time_zone(None)).to_arrow(),
        "ts", "AAA", 0, "naive", id="ts-naive-arrow",
    ),
    pytest.param(
        lambda: bars().with_columns(pl.col("ts").dt.strftime("%Y-%m-%dT%H:%M:%S%z")),
        "ts", UNCHECKED, 0, "ts must be a timezone-aware datetime column", id="ts-strings",
    ),
    pytest.param(
        lambda: bars().with_columns(pl.col("ts").dt.epoch("us")),
        "ts", UNCHECKED, 0, "ts must be a timezone-aware datetime column", id="ts-ints",
    ),
    pytest.param(
        lambda: bars().with_columns(pl.col("ts").dt.date()),
        "ts", UNCHECKED, 0, "ts must be a timezone-aware datetime column", id="ts-date-dtype",
    ),
    pytest.param(
        lambda: bars().with_columns(
            pl.col("ts").cast(pl.Datetime("ns", "UTC"))
            + pl.Series([0, 0, 1, 0, 0]).cast(pl.Duration("ns"))
        ),
        "ts", "AAA", 2, "sub-microsecond", id="ts-sub-microsecond",
    ),
    pytest.param(lambda: with_value(bars(), "ts", 1, None), "ts", "AAA", 1, "null", id="ts-null"),
    # Duplicates.
    pytest.param(
        lambda: with_value(bars(), "ts", 2, T0 + DAY), "ts", "AAA", 2, "duplicate", id="dup-adjacent",
    ),
    pytest.param(
        # Unsorted: row 4 repeats (AAA, day 2) from row 0, three rows apart.
        lambda: frame(symbol=["AAA", "BBB", "AAA", "BBB", "AAA"], day=[2, 0, 0, 1, 2]),
        "ts", "AAA", 4, "duplicate", id="dup-nonadjacent-unsorted",
    ),
    pytest.param(
        # Grouped by symbol but unsorted in time: row 2 repeats (BBB, day 1) from row 0.
        lambda: frame(symbol=["BBB", "BBB", "BBB", "CCC"], day=[1, 0, 1, 0]),
        "ts", "BBB", 2, "duplicate", id="dup-grouped-unsorted-in-time",
    ),
    # Outside the ts range every tier can hold (int64 ns, +-2**53 µs online).
    pytest.param(lambda: with_value(bars(), "ts", 3, datetime(2300, 1, 1, tzinfo=UTC)), "ts", "BBB", 3,
                 "on or after 2200-01-01", id="ts-year-2300"),
    pytest.param(lambda: with_value(bars(), "ts", 1, datetime(1600, 1, 1, tzinfo=UTC)), "ts", "AAA", 1,
                 "before 1700-01-01", id="ts-year-1600"),
    pytest.param(lambda: with_value(bars(), "ts", 4, MAX_TS), "ts", "BBB", 4, "on or after", id="ts-at-max"),
    pytest.param(lambda: with_value(bars(), "ts", 0, MIN_TS - US), "ts", "AAA", 0, "before", id="ts-below-min"),
    # Other value checks.
    pytest.param(
        lambda: with_value(with_value(bars(), "high", 3, 48.0), "low", 3, 49.5),
        "high", "BBB", 3, "high is below low", id="high-below-low",
    ),
    pytest.param(lambda: with_value(bars(), "open", 1, 11.6), "open", "AAA", 1, "open is outside [low, high]",
                 id="open-above-high"),
    pytest.param(lambda: with_value(bars(), "open", 4, 49.9), "open", "BBB", 4, "open is outside [low, high]",
                 id="open-below-low"),
    pytest.param(lambda: with_value(bars(), "close", 2, 12.5), "close", "AAA", 2, "close is outside [low, high]",
                 id="close-above-high"),
    pytest.param(lambda: with_value(bars(), "close", 3, 48.0), "close", "BBB", 3, "close is outside [low, high]",
                 id="close-below-low"),
    pytest.param(lambda: with_value(bars(), "volume", 2, -1.0), "volume", "AAA", 2, "negative",
                 id="volume-negative"),
    pytest.param(lambda: with_value(bars(), "volume", 1, float("nan")), "volume", "AAA", 1, "finite",
                 id="volume-nan"),
    pytest.param(lambda: with_value(bars(), "volume", 4, float("inf")), "volume", "BBB", 4, "finite",
                 id="volume-inf"),
    pytest.param(lambda: with_value(bars(), "close", 3, None), "close", "BBB", 3, "null", id="close-null"),
    pytest.param(lambda: with_value(bars(), "volume", 1, None), "volume", "AAA", 1, "null",
                 id="volume-null"),
    pytest.param(
        # pandas NaN becomes a polars null on conversion, so it is reported as a null value.
        lambda: as_pandas(bars()).assign(close=[10.5, 11.0, np.nan, 51.0, 52.0]),
        "close", "AAA", 2, "null", id="close-nan-pandas",
    ),
    pytest.param(
        lambda: with_value(bars(), "volume", 3, -5.0).to_arrow(),
        "volume", "BBB", 3, "negative", id="volume-negative-arrow",
    ),
    # Missing columns: no row or symbol to name.
    pytest.param(lambda: bars().drop("volume"), "volume", None, None, "missing", id="missing-one"),
    pytest.param(lambda: bars().drop("close", "high"), "high", None, None, "missing", id="missing-several"),
    # Non-numeric prices (a column-level dtype problem: row 0 is the first offending row).
    pytest.param(
        lambda: bars().with_columns(pl.Series("open", ["10.0", "abc", "11", "50", "51"])),
        "open", "AAA", 0, "must be numeric", id="open-strings",
    ),
    pytest.param(
        lambda: bars().with_columns(pl.col("close").cast(pl.String)),
        "close", "AAA", 0, "must be numeric", id="close-castable-strings",
    ),
    pytest.param(
        lambda: bars().with_columns(pl.Series("high", [True, True, False, True, True])),
        "high", "AAA", 0, "must be numeric", id="high-bool",
    ),
    pytest.param(
        lambda: bars().with_columns(pl.Series("volume", [True, True, False, True, True])),
        "volume", "AAA", 0, "must be numeric", id="volume-bool",
    ),
    # Symbols.
    pytest.param(lambda: with_value(bars(), "symbol", 2, None), "symbol", None, 2, "null",
                 id="symbol-null"),
    pytest.param(lambda: with_value(bars(), "symbol", 2, ""), "symbol", None, 2, "empty", id="symbol-empty"),
    pytest.param(lambda: with_value(bars(), "symbol", 2, "A" * 65), "symbol", None, 2, "longer than 64",
                 id="symbol-65-chars"),
    pytest.param(lambda: with_value(bars(), "symbol", 2, "AA\nB"), "symbol", None, 2, "control",
                 id="symbol-newline"),
    pytest.param(lambda: with_value(bars(), "symbol", 2, "AA\x00B"), "symbol", None, 2, "control",
                 id="symbol-nul"),
    pytest.param(lambda: with_value(bars(), "symbol", 2, "AA\x7fB"), "symbol", None, 2, "control",
                 id="symbol-del"),
    pytest.param(lambda: with_value(bars(), "symbol", 2, "AA\x85B"), "symbol", None, 2, "control",
                 id="symbol-c1-control"),
    pytest.param(lambda: with_value(bars(), "symbol", 2, "AA\tB"), "symbol", None, 2, "control",
                 id="symbol-tab"),
    pytest.param(
        lambda: bars().with_columns(pl.Series("symbol", [1, 1, 1, 2, 2])),
        "symbol", None, 0, "string", id="symbol-ints-polars",
    ),
    pytest.param(
        lambda: as_pandas(bars()).assign(symbol=[1, 1, 1, 2, 2]),
        "symbol", None, 0, "string", id="symbol-ints-pandas",
    ),
    pytest.param(
        lambda: bars().with_columns(pl.lit(None).alias("symbol")),
        "symbol", None, 0, "string", id="symbol-all-null-dtype",
    ),
]


@pytest.mark.parametrize(("build", "column", "symbol", "row", "problem"), MALFORMED)
def test_malformed_bars_name_column_symbol_and_row(
    build: Builder, column: str, symbol: Any, row: Any, problem: str
) -> None:
    """Each malformed input raises InvalidInputError naming its column, symbol and first bad input row."""
    check(build(), column, symbol=symbol, row=row, problem=problem)


@pytest.mark.parametrize("column", PRICES)
@pytest.mark.parametrize(
    ("value", "problem"),
    [
        pytest.param(float("nan"), "finite", id="nan"),
        pytest.param(float("inf"), "finite", id="+inf"),
        pytest.param(float("-inf"), "finite", id="-inf"),
        pytest.param(0.0, "positive", id="zero"),
        pytest.param(-0.0, "positive", id="negative-zero"),
        pytest.param(-1.5, "positive", id="negative"),
    ],
)
@pytest.mark.parametrize(("row", "symbol"), [(1, "AAA"), (3, "BBB")], ids=["row1", "row3"])
def test_bad_price_names_column_symbol_and_row(
    column: str, value: float, problem: str, row: int, symbol: str
) -> None:
    """A non-finite or non-positive price in any of open/high/low/close is reported at its row."""
    check(with_value(bars(), column, row, value), column, symbol=symbol, row=row, problem=problem)


def test_missing_several_columns_message_names_each() -> None:
    """The missing-columns message lists every missing column, not only the first."""
    err = check(bars().drop("close", "high", "ts"), "ts", symbol=None, row=None)
    for name in ("ts", "high", "close"):
        assert name in str(err)


def test_wrong_dtype_price_message_names_dtype() -> None:
    """A non-numeric price column's message names the column and the dtype found."""
    err = check(bars().with_columns(pl.col("low").cast(pl.String)), "low")
    assert "String" in str(err)


def test_symbol_error_carries_offending_value() -> None:
    """An invalid symbol is reported with the offending name as the error's value."""
    bad = "X" * 65
    err = check(with_value(bars(), "symbol", 3, bad), "symbol", row=3)
    assert err.value == bad


def test_not_a_frame_is_rejected() -> None:
    """Something that is not a pandas, polars or Arrow frame is an InvalidInputError."""
    with pytest.raises(InvalidInputError, match="expected a pandas, polars or Arrow frame"):
        validate_bars({"symbol": ["A"]})


def test_invalid_input_error_is_a_value_error() -> None:
    """InvalidInputError can be caught as a ValueError."""
    with pytest.raises(ValueError, match="volume"):
        validate_bars(bars().drop("volume"))


# --------------------------------------------------------------------------------------------------
# "First offending row" means first in input order, whatever order the validator works in.
# --------------------------------------------------------------------------------------------------


def test_invalid_symbol_row_is_first_input_occurrence_not_earliest_ts() -> None:
    """An invalid symbol is reported at its first row in the input, not its earliest-ts row."""
    # Not grouped by symbol, so it must be sorted; the bad symbol's earliest ts is at input row 3.
    df = frame(symbol=["AAA", "BB\nB", "AAA", "BB\nB"], day=[0, 5, 1, 3])
    check(df, "symbol", row=1)


def test_first_invalid_symbol_in_input_order_is_reported() -> None:
    """With two invalid symbols, the one whose row comes first in the input is reported."""
    df = frame(symbol=["CCC", "BB\nB", "AA\x00A"], day=[0, 0, 0])
    err = check(df, "symbol", row=1)
    assert err.value == "BB\nB"


def test_duplicate_row_is_first_in_input_order_when_grouped() -> None:
    """In grouped input unsorted in time, the first input row repeating an earlier (symbol, ts) is named."""
    # Row 2 repeats row 0's (AAA, day 1); row 4 repeats row 3's (AAA, day 3). Row 2 comes first.
    df = frame(symbol=["AAA"] * 5, day=[1, 2, 1, 3, 3])
    check(df, "ts", symbol="AAA", row=2)


def test_duplicate_row_is_first_in_input_order_across_symbols() -> None:
    """With duplicates in two symbols, the one first in the input is named, not the first in sort order."""
    # Row 1 repeats row 0 (BBB); row 3 repeats row 2 (AAA). Row 1 comes first.
    df = frame(symbol=["BBB", "BBB", "AAA", "AAA"], day=[0, 0, 0, 0])
    check(df, "ts", symbol="BBB", row=1)


def test_first_bad_row_of_a_column_is_reported_whatever_the_problem() -> None:
    """Within one column the first offending row is named, even if a later row fails a different check."""
    # close: row 1 negative, row 3 NaN. Row 1 is the first offending row of column close.
    df = with_value(with_value(bars(), "close", 1, -1.0), "close", 3, float("nan"))
    check(df, "close", symbol="AAA", row=1)


# --------------------------------------------------------------------------------------------------
# pandas object columns: conversion problems must still surface as InvalidInputError.
# --------------------------------------------------------------------------------------------------


def test_pandas_object_prices_with_uncastable_string_are_invalid_input() -> None:
    """A pandas object price column holding a non-numeric string raises InvalidInputError naming it."""
    pdf = as_pandas(bars())
    pdf["open"] = pd.Series([10.0, 10.5, "abc", 50.0, 51.0], dtype=object)
    check(pdf, "open")


def test_pandas_object_symbols_with_an_int_are_invalid_input() -> None:
    """A pandas object symbol column holding an int raises InvalidInputError naming symbol."""
    pdf = as_pandas(bars())
    pdf["symbol"] = pd.Series(["AAA", "AAA", 7, "BBB", "BBB"], dtype=object)
    check(pdf, "symbol")


def test_pandas_object_ts_with_one_naive_datetime_is_rejected() -> None:
    """A naive datetime among aware ones in a pandas object ts column is rejected, not assumed UTC."""
    pdf = as_pandas(bars())
    pdf["ts"] = pd.Series([T0, T0 + DAY, datetime(2024, 1, 4), T0, T0 + DAY], dtype=object)
    check(pdf, "ts", symbol="AAA", row=2)


# --------------------------------------------------------------------------------------------------
# Valid inputs
# --------------------------------------------------------------------------------------------------

OUT_SCHEMA = pl.Schema(
    {
        "symbol": pl.String(),
        "ts": pl.Datetime("us", "UTC"),
        "open": pl.Float64(),
        "high": pl.Float64(),
        "low": pl.Float64(),
        "close": pl.Float64(),
        "volume": pl.Float64(),
    }
)


def shuffled(df: pl.DataFrame, seed: int = 1) -> pl.DataFrame:
    """``df`` with its rows in a seeded random order."""
    order = np.random.default_rng(seed).permutation(df.height)
    out: pl.DataFrame = df[order.tolist()]
    return out


def test_valid_bars_pass_unchanged() -> None:
    """Valid sorted bars come back equal, with the canonical schema."""
    base = synthetic_bars(3, 20)
    out = validate_bars(base)
    assert out.schema == OUT_SCHEMA
    assert_frame_equal(out, base)


def test_unsorted_input_is_sorted_not_rejected() -> None:
    """Unsorted input is accepted and returned sorted by (symbol, ts)."""
    base = synthetic_bars(4, 25)
    messy = shuffled(base)
    assert not messy.equals(base)
    out = validate_bars(messy)
    assert_frame_equal(out, base)
    assert_frame_equal(out, out.sort(["symbol", "ts"]))


def test_reverse_sorted_input_is_sorted() -> None:
    """Input in reverse (symbol, ts) order comes back in ascending order."""
    base = synthetic_bars(3, 10)
    assert_frame_equal(validate_bars(base.reverse()), base)


def test_grouped_but_time_unsorted_input_is_sorted() -> None:
    """Input grouped by symbol but unsorted in time is sorted within each symbol."""
    df = frame(symbol=["AAA", "AAA", "AAA", "BBB", "BBB"], day=[2, 0, 1, 1, 0])
    out = validate_bars(df)
    assert out["ts"].to_list() == [T0, T0 + DAY, T0 + 2 * DAY, T0, T0 + DAY]
    assert out["symbol"].to_list() == ["AAA", "AAA", "AAA", "BBB", "BBB"]


def test_no_helper_column_leaks_into_output() -> None:
    """The output has exactly the input's columns, no internal row-index column."""
    out = validate_bars(shuffled(bars()))
    assert out.columns == list(BAR_COLUMNS)


@pytest.mark.parametrize("tz", ["America/New_York", "Asia/Tokyo", "Europe/London"])
@pytest.mark.parametrize("unit", ["ms", "us", "ns"])
def test_non_utc_timestamps_are_converted_to_utc(tz: str, unit: Literal["ms", "us", "ns"]) -> None:
    """Timezone-aware non-UTC timestamps of any unit become the same instants in UTC (us)."""
    base = bars()
    local = base.with_columns(pl.col("ts").dt.convert_time_zone(tz).dt.cast_time_unit(unit))
    out = validate_bars(local)
    assert out.schema["ts"] == pl.Datetime("us", "UTC")
    assert out["ts"].to_list() == base["ts"].to_list()


def test_non_utc_pandas_timestamps_are_converted_to_utc() -> None:
    """A pandas tz-aware non-UTC ts column becomes UTC instants."""
    base = bars()
    pdf = as_pandas(base)
    pdf["ts"] = pdf["ts"].dt.tz_convert("Asia/Kolkata")
    out = validate_bars(pdf)
    assert out.schema == OUT_SCHEMA
    assert out["ts"].to_list() == base["ts"].to_list()


def test_int_prices_and_volume_are_cast_to_float64() -> None:
    """Integer (and float32) prices and volume are accepted and cast to Float64 with the same values."""
    df = bars().with_columns(
        pl.Series("open", [10, 10, 11, 50, 51], dtype=pl.Int64),
        pl.Series("high", [11, 12, 12, 52, 53], dtype=pl.Int32),
        pl.Series("low", [9, 9, 10, 49, 50], dtype=pl.UInt16),
        pl.col("close").cast(pl.Float32),
        pl.Series("volume", [0, 200, 300, 400, 500], dtype=pl.UInt64),
    )
    out = validate_bars(df)
    assert out.schema == OUT_SCHEMA
    assert out["open"].to_list() == [10.0, 10.0, 11.0, 50.0, 51.0]
    assert out["high"].to_list() == [11.0, 12.0, 12.0, 52.0, 53.0]
    assert out["low"].to_list() == [9.0, 9.0, 10.0, 49.0, 50.0]
    assert out["volume"].to_list() == [0.0, 200.0, 300.0, 400.0, 500.0]


def test_zero_volume_and_high_equal_low_are_valid() -> None:
    """Zero volume and high == low (a flat bar: open and close equal them too) are edge values that pass."""
    df = with_value(bars(), "volume", 2, 0.0)
    for col in PRICES:
        df = with_value(df, col, 2, 10.0)
    out = validate_bars(df)
    assert out["volume"][2] == 0.0
    assert out["high"][2] == out["low"][2]


@pytest.mark.parametrize(
    "symbol",
    ["A" * 64, "EUR/USD", "ES=F", "../x", "BRK.B", "^GSPC", "has space", "caf\u00e9", "X"],
    ids=["64-chars", "slash", "equals", "dotdot", "dot", "caret", "space", "non-ascii", "one-char"],
)
def test_unusual_but_valid_symbols_are_accepted(symbol: str) -> None:
    """Symbols up to 64 printable characters, including / = . and .., are accepted unchanged."""
    df = with_value(with_value(bars(), "symbol", 3, symbol), "symbol", 4, symbol)
    out = validate_bars(df)
    assert symbol in out["symbol"].to_list()
    assert out.filter(pl.col("symbol") == symbol).height == 2


def test_categorical_symbols_are_accepted_as_strings() -> None:
    """A categorical symbol column is accepted and returned as String."""
    out = validate_bars(bars().with_columns(pl.col("symbol").cast(pl.Categorical)))
    assert out.schema == OUT_SCHEMA
    assert_frame_equal(out, bars())


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda df: df.to_pandas(), id="pandas"),
        pytest.param(lambda df: df.to_pandas().set_index(["symbol", "ts"]), id="pandas-indexed"),
        pytest.param(lambda df: df.to_arrow(), id="arrow-table"),
        pytest.param(lambda df: df.to_arrow().to_batches()[0], id="arrow-batch"),
        pytest.param(lambda df: df.lazy(), id="polars-lazy"),
    ],
)
def test_pandas_arrow_and_lazy_inputs_validate_like_polars(convert: Callable[[pl.DataFrame], Any]) -> None:
    """pandas, Arrow and lazy polars inputs give the same validated frame as eager polars."""
    base = synthetic_bars(3, 8)
    messy = shuffled(base)
    out = validate_bars(convert(messy))
    assert isinstance(out, pl.DataFrame)
    assert_frame_equal(out, base)


@pytest.mark.parametrize(
    "convert",
    [
        pytest.param(lambda df: df, id="polars"),
        pytest.param(lambda df: df.to_pandas(), id="pandas"),
        pytest.param(lambda df: df.to_arrow(), id="arrow"),
    ],
)
def test_malformed_input_is_rejected_for_every_frame_type(convert: Callable[[pl.DataFrame], Any]) -> None:
    """The same bad row is reported identically for polars, pandas and Arrow inputs."""
    df = with_value(bars(), "high", 4, float("-inf"))
    check(convert(df), "high", symbol="BBB", row=4, problem="finite")


def test_extra_columns_are_kept_and_follow_their_rows() -> None:
    """Columns beyond the bar columns are kept, in order, and move with their rows when sorting."""
    base = bars().with_columns(
        pl.Series("tag", ["a", "b", "c", "d", "e"]),
        pl.Series("n", [0, 1, 2, 3, 4], dtype=pl.Int32),
    )
    out = validate_bars(base.reverse())
    assert out.columns == [*BAR_COLUMNS, "tag", "n"]
    assert out.schema["n"] == pl.Int32
    assert out["tag"].to_list() == ["a", "b", "c", "d", "e"]
    assert out["n"].to_list() == [0, 1, 2, 3, 4]


def test_polars_input_is_not_mutated() -> None:
    """Validating a polars frame (unsorted, int prices, non-UTC ts) leaves the input as it was."""
    df = shuffled(bars()).with_columns(
        pl.col("open").cast(pl.Int64), pl.col("ts").dt.convert_time_zone("Asia/Tokyo")
    )
    snapshot = df.clone()
    validate_bars(df)
    assert_frame_equal(df, snapshot)
    assert df.schema == snapshot.schema


def test_pandas_input_is_not_mutated() -> None:
    """Validating a pandas frame (unsorted, indexed, non-UTC ts) leaves data, dtypes and index unchanged."""
    pdf = shuffled(bars()).to_pandas()
    pdf["ts"] = pdf["ts"].dt.tz_convert("America/Chicago")
    pdf["volume"] = pdf["volume"].astype("int64")
    pdf.index = pd.Index([10, 30, 20, 50, 40], name="id")
    snapshot = pdf.copy(deep=True)
    validate_bars(pdf)
    pd.testing.assert_frame_equal(pdf, snapshot)


def test_arrow_input_is_not_mutated() -> None:
    """Validating an Arrow table leaves the table equal to what it was."""
    table = shuffled(bars()).to_arrow()
    snapshot = pa.table(table.to_pydict(), schema=table.schema)
    validate_bars(table)
    assert table.equals(snapshot)


def test_rejected_input_is_not_mutated() -> None:
    """A frame that fails validation is also left unchanged."""
    df = shuffled(with_value(bars(), "close", 2, float("nan")))
    snapshot = df.clone()
    with pytest.raises(InvalidInputError):
        validate_bars(df)
    assert_frame_equal(df, snapshot)


def test_validation_is_idempotent() -> None:
    """Validating already-validated bars returns an equal frame."""
    once = validate_bars(shuffled(synthetic_bars(3, 15, ragged=True, gaps=0.2)))
    assert_frame_equal(validate_bars(once), once)


# --------------------------------------------------------------------------------------------------
# The ts range, and open / close inside [low, high]
# --------------------------------------------------------------------------------------------------


def test_ts_range_edges_are_valid() -> None:
    """The first and last microsecond of the ts range pass."""
    out = validate_bars(with_value(with_value(bars(), "ts", 0, MIN_TS), "ts", 4, MAX_TS - US))
    assert out["ts"].to_list()[0] == MIN_TS and out["ts"].to_list()[-1] == MAX_TS - US


def test_open_and_close_at_the_extremes_are_valid() -> None:
    """open at low and close at high (and the other way round) are bars, not errors."""
    df = with_value(with_value(bars(), "open", 0, 9.0), "close", 0, 11.0)
    df = with_value(with_value(df, "open", 1, 11.5), "close", 1, 9.5)
    assert validate_bars(df)["open"].to_list()[:2] == [9.0, 11.5]


@pytest.mark.parametrize("generator", [
    pytest.param(lambda: synthetic_bars(20, 500, seed=3, gaps=0.1), id="synthetic-daily"),
    pytest.param(lambda: synthetic_bars(5, 2000, timeframe="1m", seed=11, ragged=True), id="synthetic-minutes"),
])
def test_synthetic_bars_keep_open_and_close_inside_low_high(generator: Callable[[], pl.DataFrame]) -> None:
    """The bar generator every test and benchmark uses produces bars the validator accepts."""
    df = generator()
    assert validate_bars(df).height == df.height


def test_store_refuses_bars_beyond_the_ts_range(tmp_path: Any) -> None:
    """A bar dated in 2300 is refused by ingest (it used to be stored, then break materialize / get_online);
    nothing is stored."""
    good = bars()
    with Store.open(tmp_path / "store") as store:
        with pytest.raises(InvalidInputError, match="2200-01-01") as info:
            store.ingest(with_value(good, "ts", 2, datetime(2300, 1, 1, tzinfo=UTC)))
        assert (info.value.symbol, info.value.row, info.value.column) == ("AAA", 2, "ts")
        assert store.catalog.live_bars(["AAA", "BBB"]) == []


# --------------------------------------------------------------------------------------------------
# Damaged files
# --------------------------------------------------------------------------------------------------


def _valid_parquet(path: Any) -> bytes:
    bars().write_parquet(path)
    data: bytes = path.read_bytes()
    return data


DAMAGED: list[Any] = [
    pytest.param("garbage.parquet", lambda tmp: b"this is not parquet\x00\xff" * 40, "not a readable Parquet file",
                 id="garbage-parquet"),
    pytest.param("garbage.csv", lambda tmp: bytes(range(256)) * 8, "not a readable CSV file", id="garbage-csv"),
    pytest.param("text.csv", lambda tmp: b"hello world\nnothing here\n", "missing column", id="text-csv"),
    pytest.param("empty.parquet", lambda tmp: b"", "the file is empty", id="empty-parquet"),
    pytest.param("empty.csv", lambda tmp: b"", "the file is empty", id="empty-csv"),
    pytest.param("truncated.parquet", lambda tmp: _valid_parquet(tmp / "whole.parquet")[:-100],
                 "not a readable Parquet file", id="truncated-parquet"),
    pytest.param("header.parquet", lambda tmp: _valid_parquet(tmp / "whole.parquet")[:200],
                 "not a readable Parquet file", id="truncated-parquet-head"),
]


@pytest.mark.parametrize(("name", "content", "problem"), DAMAGED)
def test_damaged_file_is_invalid_input_naming_the_file(tmp_path: Any, name: str,
                                                       content: Callable[[Any], bytes], problem: str) -> None:
    """Store.ingest of a garbage, empty or truncated file raises InvalidInputError naming the file and the
    problem (not a polars or Arrow error), and stores nothing."""
    path = tmp_path / name
    path.write_bytes(content(tmp_path))
    with Store.open(tmp_path / "store") as store:
        with pytest.raises(InvalidInputError) as info:
            store.ingest(path)
        assert str(path) in str(info.value) and problem in str(info.value), str(info.value)
        store.ingest(bars())  # the store is fine: nothing half-written from the bad file
        assert store.catalog.live_bars(["AAA"])[0].n_rows == 3


@pytest.mark.parametrize(("name", "content", "problem"), DAMAGED)
def test_cli_ingest_of_a_damaged_file_is_one_clean_line(tmp_path: Any, name: str,
                                                        content: Callable[[Any], bytes], problem: str) -> None:
    """`pitstore ingest` of a damaged file exits 1 with one line naming the file and the problem."""
    from clirun import runner

    from pitstore.cli import app

    path = tmp_path / name
    path.write_bytes(content(tmp_path))
    result = runner.invoke(app, ["ingest", str(path), "--root", str(tmp_path / "store")])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)  # a clean exit, no escaped error
    assert "Traceback" not in result.output
    line = " ".join(result.output.split())
    assert line.startswith("error: ") and problem in line and path.name in line, line


# --------------------------------------------------------------------------------------------------
# Duplicate column names
# --------------------------------------------------------------------------------------------------


DUPLICATED: list[Any] = [
    pytest.param(lambda: pd.concat([as_pandas(bars()), as_pandas(bars())[["close"]]], axis=1), id="pandas"),
    pytest.param(lambda: as_pandas(bars()).set_index("ts").assign(ts=1.0), id="pandas-index-and-column"),
    pytest.param(lambda: bars().to_arrow().append_column("close", pa.array([1.0] * 5)), id="arrow-table"),
    pytest.param(lambda: bars().to_arrow().append_column("close", pa.array([1.0] * 5)).to_batches()[0],
                 id="arrow-batch"),
]


@pytest.mark.parametrize("build", DUPLICATED)
def test_duplicate_column_names_are_refused(build: Builder) -> None:
    """A frame with two columns of one name is refused naming the column, by to_polars and validate_bars."""
    data = build()
    with pytest.raises(InvalidInputError, match="duplicate column name") as info:
        to_polars(data)
    assert info.value.column in ("close", "ts") and repr(info.value.column) in str(info.value)
    with pytest.raises(InvalidInputError, match="duplicate column name"):
        validate_bars(data)


def test_every_duplicated_column_is_named() -> None:
    """Several duplicated names are all listed, in column order."""
    table = bars().to_arrow().append_column("close", pa.array([1.0] * 5)).append_column("open", pa.array([1.0] * 5))
    with pytest.raises(InvalidInputError, match=re.escape("name(s) 'open', 'close':")):
        to_polars(table)


# --------------------------------------------------------------------------------------------------
# Feature sets whose lag reaches the TTL
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("lag", "ttl"), [("2h", "1h"), ("1h", "1h"), (timedelta(days=1), timedelta(hours=23))])
def test_feature_set_with_lag_at_or_beyond_ttl_is_refused(lag: Any, ttl: Any) -> None:
    """Every row would be stale on arrival: the definition is refused, naming both."""
    with pytest.raises(DefinitionError, match=r"availability_lag \(.+\) must be less than ttl"):
        FeatureSet("stale_on_arrival", [sma(3)], ttl=ttl, availability_lag=lag)


def test_feature_set_with_lag_below_ttl_is_accepted() -> None:
    fs = FeatureSet("fresh", [sma(3)], ttl="1h", availability_lag=timedelta(minutes=59, seconds=59))
    assert fs.availability_lag < fs.ttl  # type: ignore[operator]


# --------------------------------------------------------------------------------------------------
# Future-dated bars (the max_future_days setting)
# --------------------------------------------------------------------------------------------------


def _bar(symbol: str, ts: datetime, close: float) -> pl.DataFrame:
    return pl.DataFrame({"symbol": [symbol], "ts": [ts], "open": [close], "high": [close + 1], "low": [close - 1],
                         "close": [close], "volume": [100.0]}, schema_overrides={"ts": pl.Datetime("us", "UTC")})


def _recent(symbol: str, n: int, end: datetime) -> pl.DataFrame:
    """``n`` hourly bars of ``symbol`` ending at ``end``."""
    return pl.concat([_bar(symbol, end - (n - 1 - k) * timedelta(hours=1), 100.0 + k) for k in range(n)])


def _hour() -> datetime:
    return datetime.now(UTC).replace(minute=0, second=0, microsecond=0)


def test_push_refuses_a_future_dated_bar_and_the_symbol_keeps_updating(tmp_path: Any) -> None:
    """A bar dated 2 days ahead is refused by push, naming symbol and ts; the next real bar is then a new bar
    served online (it used to be taken as a restatement of the future bar, freezing the online row)."""
    hour = _hour()
    fs = FeatureSet("fut", [sma(2)], timeframe="1h", ttl="12h")
    with Store.open(tmp_path / "store", online_url="memory://") as store:
        store.ingest(_recent("AAA", 5, hour - timedelta(hours=1)))
        store.backfill(fs)
        future = hour + 2 * DAY
        with pytest.raises(InvalidInputError, match="future-dated") as info:
            store.push(_bar("AAA", future, 110.0), fs)
        assert (info.value.symbol, info.value.column, info.value.value) == ("AAA", "ts", future)
        report = store.push(_bar("AAA", hour, 105.0), fs)
        assert (report.bars, report.restated) == (1, {})
        [vector] = store.get_online("AAA", "fut")
        assert (vector.ts, vector.status, vector.values["sma_2"]) == (hour, "ok", (104.0 + 105.0) / 2)


def test_ingest_refuses_a_future_dated_bar(tmp_path: Any) -> None:
    """Ingest refuses a bar dated beyond the horizon (the whole batch: nothing stored); one within it passes."""
    hour = _hour()
    with Store.open(tmp_path / "store") as store:
        batch = pl.concat([_recent("AAA", 3, hour), _bar("BBB", hour + 2 * DAY, 50.0)])
        with pytest.raises(InvalidInputError, match="more than 1 day") as info:
            store.ingest(batch)
        assert (info.value.symbol, info.value.row) == ("BBB", 3)
        assert store.catalog.live_bars(["AAA", "BBB"]) == []
        # Half a day ahead (a date labelled in a time zone ahead of UTC, a bar stamped at its close) is fine.
        assert store.ingest(_bar("CCC", hour + DAY / 2, 10.0)).rows == 1


def test_max_future_days_setting_moves_the_horizon(tmp_path: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """max_future_days (keyword or PITSTORE_MAX_FUTURE_DAYS) sets the horizon for ingest and push; 0 refuses
    any bar after now."""
    ahead = _hour() + 2 * DAY
    fs = FeatureSet("fut3", [sma(2)], timeframe="1h", ttl="3d")
    with Store.open(tmp_path / "a", max_future_days=3, online_url="memory://") as store:
        store.ingest(_recent("AAA", 3, ahead - timedelta(hours=1)))
        assert store.push(_bar("AAA", ahead, 110.0), fs).bars == 1
    monkeypatch.setenv("PITSTORE_MAX_FUTURE_DAYS", "0")
    with Store.open(tmp_path / "b") as store:
        assert store.settings.max_future == timedelta(0)
        with pytest.raises(InvalidInputError, match="future-dated"):
            store.ingest(_bar("AAA", datetime.now(UTC) + timedelta(minutes=5), 10.0))


@pytest.mark.parametrize("value", [-1, "soon", float("nan"), float("inf")])
def test_max_future_days_must_be_a_non_negative_number(value: Any) -> None:
    with pytest.raises(ConfigError, match="max_future_days"):
        Settings.load(max_future_days=value)

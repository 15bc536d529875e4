"""Validation of OHLCV bars: the one gate every bar passes before it is computed on or stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl

from pitstore.errors import InvalidInputError
from pitstore.frames import to_polars

__all__ = ["BAR_COLUMNS", "PRICE_COLUMNS", "symbol_runs", "validate_bars", "validate_symbol"]

BAR_COLUMNS = ("symbol", "ts", "open", "high", "low", "close", "volume")
PRICE_COLUMNS = ("open", "high", "low", "close")
MAX_SYMBOL_LEN = 64
TS_DTYPE = pl.Datetime("us", "UTC")
# The ts range a bar may have: pandas and numpy datetime64[ns] hold 1677-09-21 .. 2262-04-11 and the online
# tier +-2**53 µs (1684-07-28 .. 2255-06-05); a bar outside is stored but then breaks backfill, materialize
# and get_online. The bounds sit well inside both, leaving room for a lag or TTL added to a ts.
MIN_TS = datetime(1700, 1, 1, tzinfo=UTC)
MAX_TS = datetime(2200, 1, 1, tzinfo=UTC)  # exclusive
_ROW = "__pitstore_row"


def validate_symbol(symbol: Any, *, row: int | None = None) -> str:
    """Return ``symbol`` if it is a valid symbol name, else raise :class:`InvalidInputError`."""
    if not isinstance(symbol, str):
        raise InvalidInputError("symbol must be a string", column="symbol", row=row, value=symbol)
    if not symbol:
        raise InvalidInputError("symbol is empty", column="symbol", row=row, value=symbol)
    if len(symbol) > MAX_SYMBOL_LEN:
        raise InvalidInputError(
            f"symbol is longer than {MAX_SYMBOL_LEN} characters", column="symbol", row=row, value=symbol
        )
    if not symbol.isprintable():
        raise InvalidInputError(
            "symbol contains control or invisible characters", column="symbol", row=row, value=symbol
        )
    return symbol


def symbol_runs(symbols: pl.Series) -> tuple[list[str], np.ndarray, np.ndarray]:
    """Names, start offsets and end offsets of the runs of equal symbols in a sorted column."""
    runs = symbols.rle()
    lengths = runs.struct.field("len").to_numpy().astype(np.int64)
    ends = np.cumsum(lengths)
    return runs.struct.field("value").to_list(), ends - lengths, ends


def validate_bars(data: Any, *, columns: tuple[str, ...] = BAR_COLUMNS,
                  max_future: timedelta | None = None) -> pl.DataFrame:
    """Check bars and return them as a polars frame sorted by (symbol, ts), UTC, prices as Float64.

    Raises :class:`InvalidInputError` naming the column, the symbol and the first offending row
    (its position in the input) for: missing columns, wrong dtypes that cannot be cast safely, null
    values, naive timestamps, ts outside [``MIN_TS``, ``MAX_TS``) or (with ``max_future``) more than
    ``max_future`` after now, duplicate (symbol, ts), non-finite or non-positive prices, high < low,
    open or close outside [low, high], negative or non-finite volume, and invalid symbol names.
    Unsorted input is sorted, not rejected. Extra columns are kept.
    """
    df = to_polars(data)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InvalidInputError(
            f"missing column(s) {', '.join(missing)}; bars need {', '.join(columns)}", column=missing[0]
        )
    df = df.with_row_index(_ROW)
    df = _cast_symbol(df)
    df = _cast_ts(df)
    df = _cast_numeric(df, [c for c in ("open", "high", "low", "close", "volume") if c in columns])
    _check_nulls(df, columns)
    _check_values(df, columns, max_future)
    df = _sorted(df)
    return df.drop(_ROW)


def _first(df: pl.DataFrame, mask: pl.Expr) -> dict[str, Any] | None:
    hit = df.filter(mask).head(1)
    if hit.height == 0:
        return None
    return hit.row(0, named=True)


def _fail(df: pl.DataFrame, mask: pl.Expr, problem: str, column: str) -> None:
    row = _first(df, mask)
    if row is not None:
        raise InvalidInputError(
            problem,
            column=column,
            symbol=row.get("symbol") if isinstance(row.get("symbol"), str) else None,
            row=int(row[_ROW]),
            value=row.get(column),
        )


def _cast_symbol(df: pl.DataFrame) -> pl.DataFrame:
    dtype = df.schema["symbol"]
    if dtype in (pl.Categorical, pl.Enum) or isinstance(dtype, pl.Categorical | pl.Enum):
        return df.with_columns(pl.col("symbol").cast(pl.String))
    if dtype != pl.String:
        row = df.row(0, named=True) if df.height else {}
        raise InvalidInputError(
            f"symbol must be a string column, got dtype {dtype}", column="symbol", row=0,
            value=row.get("symbol"),
        )
    return df


def _cast_ts(df: pl.DataFrame) -> pl.DataFrame:
    dtype = df.schema["ts"]
    if not isinstance(dtype, pl.Datetime):
        raise InvalidInputError(
            f"ts must be a timezone-aware datetime column, got dtype {dtype}", column="ts", row=0,
            value=df["ts"][0] if df.height else None,
        )
    if dtype.time_zone is None:
        first = df.row(0, named=True) if df.height else None
        raise InvalidInputError(
            "ts is timezone-naive; pitstore needs timezone-aware UTC timestamps "
            "(e.g. pandas .dt.tz_localize('UTC'), polars .dt.replace_time_zone('UTC'))",
            column="ts",
            symbol=first["symbol"] if first else None,
            row=0 if first else None,
            value=first["ts"] if first else None,
        )
    ts = pl.col("ts")
    if dtype.time_unit == "ns":
        _fail(df, ts.dt.nanosecond() % 1000 != 0, "ts has sub-microsecond precision, which would be lost",
              "ts")
    return df.with_columns(ts.dt.convert_time_zone("UTC").cast(TS_DTYPE))


def _cast_numeric(df: pl.DataFrame, cols: list[str]) -> pl.DataFrame:
    casts = []
    for col in cols:
        dtype = df.schema[col]
        if dtype == pl.Float64:
            continue
        if dtype.is_numeric():
            casts.append(pl.col(col).cast(pl.Float64))
            continue
        if dtype == pl.Null:
            casts.append(pl.col(col).cast(pl.Float64))
            continue
        row = df.row(0, named=True) if df.height else {}
        raise InvalidInputError(
            f"{col} must be numeric, got dtype {dtype} which cannot be cast safely",
            column=col,
            symbol=row.get("symbol"),
            row=0 if row else None,
            value=row.get(col),
        )
    return df.with_columns(casts) if casts else df


def _check_nulls(df: pl.DataFrame, columns: tuple[str, ...]) -> None:
    nulls = df.select(pl.col(list(columns)).null_count()).row(0, named=True)
    for col in columns:
        if nulls[col]:
            _fail(df, pl.col(col).is_null(), f"{col} has null values", col)


def _ts_checks(max_future: timedelta | None) -> list[tuple[str, pl.Expr]]:
    ts = pl.col("ts")
    checks = [(f"ts is before {MIN_TS:%Y-%m-%d}, the earliest a bar may have", ts < MIN_TS),
              (f"ts is on or after {MAX_TS:%Y-%m-%d}, past the latest a bar may have", ts >= MAX_TS)]
    if max_future is not None:
        now = datetime.now(UTC)
        if max_future < MAX_TS - now:  # else the bound above is the tighter one
            days = max_future / timedelta(days=1)
            checks.append((f"ts is more than {days:g} day(s) after now ({now:%Y-%m-%d %H:%M:%S} UTC): a future-dated"
                           " bar (raise the max_future_days setting to accept it)", ts > now + max_future))
    return checks


def _check_values(df: pl.DataFrame, columns: tuple[str, ...], max_future: timedelta | None) -> None:
    # (column, [(problem, mask)]) in the order they are reported; per column, the earliest bad row wins.
    checks: list[tuple[str, list[tuple[str, pl.Expr]]]] = [("ts", _ts_checks(max_future))]
    for col in (c for c in PRICE_COLUMNS if c in columns):
        c = pl.col(col)
        checks.append((col, [(f"{col} must be finite", ~c.is_finite()), (f"{col} must be positive", c <= 0)]))
    if "high" in columns and "low" in columns:
        checks.append(("high", [("high is below low", pl.col("high") < pl.col("low"))]))
        for col in (c for c in ("open", "close") if c in columns):
            outside = (pl.col(col) < pl.col("low")) | (pl.col(col) > pl.col("high"))
            checks.append((col, [(f"{col} is outside [low, high]", outside)]))
    if "volume" in columns:
        v = pl.col("volume")
        checks.append(("volume", [("volume must be finite", ~v.is_finite()), ("volume must not be negative", v < 0)]))
    # One pass computes a flag per check group; finding the first offending row runs only on failure.
    anys = [pl.any_horizontal([e for _, e in cs]) for _, cs in checks]
    flags = df.select([e.any().alias(str(i)) for i, e in enumerate(anys)]).row(0)
    for flag, mask, (col, cs) in zip(flags, anys, checks, strict=True):
        if flag:
            row = _first(df, mask)
            assert row is not None
            hits = df.filter(pl.col(_ROW) == row[_ROW]).select([e.alias(str(i)) for i, (_, e) in enumerate(cs)]).row(0)
            problem = next(p for (p, _), hit in zip(cs, hits, strict=True) if hit)
            raise InvalidInputError(problem, column=col, symbol=row["symbol"], row=int(row[_ROW]), value=row[col])


def _sorted(df: pl.DataFrame, *, resorted: bool = False) -> pl.DataFrame:
    names, _, ends = symbol_runs(df["symbol"])
    if not resorted and not (len(names) == len(set(names)) and names == sorted(names)):
        # Stable sort: among equal (symbol, ts) the first in the input stays first.
        return _sorted(df.sort(["symbol", "ts"], maintain_order=True), resorted=True)
    bad_names = [n for n in names if not isinstance(n, str) or not n or len(n) > MAX_SYMBOL_LEN
                 or not n.isprintable()]
    if bad_names:
        first = df.filter(pl.col("symbol").is_in(bad_names)).sort(_ROW).row(0, named=True)
        validate_symbol(first["symbol"], row=int(first[_ROW]))
    step = np.diff(df["ts"].to_physical().to_numpy())
    inner = np.ones(len(step), dtype=bool)
    inner[ends[:-1] - 1] = False  # a symbol boundary is not a step in time
    if not np.any(inner & (step <= 0)):
        return df
    if not resorted:
        return _sorted(df.sort(["symbol", "ts"], maintain_order=True), resorted=True)
    # Sorted now, so a zero step marks a later occurrence of a (symbol, ts): report the earliest in the input.
    dups = np.flatnonzero(inner & (step == 0)) + 1
    rows = df[_ROW].to_numpy()[dups]
    row = df.row(int(dups[int(np.argmin(rows))]), named=True)
    raise InvalidInputError(
        "duplicate (symbol, ts)", column="ts", symbol=row["symbol"], row=int(row[_ROW]), value=row["ts"]
    )

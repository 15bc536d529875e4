"""Validation of OHLCV bars: the one gate every bar passes before it is computed on or stored."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from pitstore.errors import InvalidInputError
from pitstore.frames import to_polars

__all__ = ["BAR_COLUMNS", "PRICE_COLUMNS", "Runs", "checked_bars", "symbol_runs", "validate_bars", "validate_symbol"]

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


Runs = tuple[list[str], np.ndarray, np.ndarray]  # names, start offsets, end offsets of a column's runs


def symbol_runs(symbols: pl.Series) -> Runs:
    """Names, start offsets and end offsets of the runs of equal symbols in a sorted column."""
    starts = _run_starts(symbols)
    return symbols.gather(starts).to_list(), starts, _ends(starts, len(symbols))


def _ends(starts: np.ndarray, size: int) -> np.ndarray:
    return np.append(starts[1:], size).astype(np.int64) if len(starts) else starts


def _run_starts(symbols: pl.Series) -> np.ndarray:
    """Where each run of equal values of a string column (without nulls) starts, as int64 offsets.

    One comparison of neighbouring Arrow string views (16 bytes each, zero-copy): identical views are equal
    strings, so the runs start among the positions where the views differ. Strings of up to 12 bytes sit in
    their view whole, and then a differing view is a differing string; longer ones keep a prefix and a pointer,
    so those positions are confirmed by comparing the strings themselves (polars' own comparison is the
    fallback when that would be most of the column)."""
    size = len(symbols)
    if size == 0:
        return np.zeros(0, np.int64)
    arr = symbols.rechunk().to_arrow(compat_level=pl.CompatLevel.newest())
    if isinstance(arr, pa.StringViewArray) and arr.null_count == 0:
        words = np.frombuffer(arr.buffers()[1], np.uint64)[2 * arr.offset : 2 * (arr.offset + size)]
        changed = np.not_equal(words[2:], words[:-2])  # two words a row
        if np.count_nonzero(changed) <= size // 8:
            rows = np.flatnonzero(changed) >> 1  # sorted, a row twice when both its words differ
            candidates = rows[np.append(True, rows[1:] != rows[:-1])] + 1 if len(rows) else rows + 1
            long = (words[2 * candidates] & 0xFFFFFFFF) > 12  # a view's first 4 bytes: the string's length
            if long.any():  # an equal string may sit in another view: compare the strings
                check = candidates[long]
                same = (symbols.gather(check) == symbols.gather(check - 1)).to_numpy()
                candidates = np.setdiff1d(candidates, check[same], assume_unique=True)
            return np.concatenate([np.zeros(1, np.int64), candidates.astype(np.int64)])
    diff = (symbols != symbols.shift(1)).fill_null(True).to_numpy()
    return np.flatnonzero(diff).astype(np.int64)


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
    return checked_bars(data, columns=columns, max_future=max_future)[0]


def checked_bars(data: Any, *, columns: tuple[str, ...] = BAR_COLUMNS,
                 max_future: timedelta | None = None) -> tuple[pl.DataFrame, Runs]:
    """:func:`validate_bars`, and the :func:`symbol_runs` of the frame it returns (found on the way).

    Valid input costs a few numpy passes over the columns (least and greatest values, comparisons in
    cache-sized chunks) and one comparison of neighbouring symbols and timestamps, with no sort when the bars
    are already sorted; the checks in polars that name the first offending row run only when one fails."""
    df = to_polars(data)
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise InvalidInputError(
            f"missing column(s) {', '.join(missing)}; bars need {', '.join(columns)}", column=missing[0]
        )
    df = _cast_symbol(df)
    df = _cast_ts(df)
    df = _cast_numeric(df, [c for c in ("open", "high", "low", "close", "volume") if c in columns])
    if df.n_chunks("all") != [1] * df.width:  # one copy now, then every numpy view below is zero-copy
        df = df.rechunk()
    if not _values_ok(df, columns, max_future):
        # Some check fails: find the first offending row and its problem (raises; in the rare case of a near
        # miss, such as a ts just at the future bound while the clock moved on, nothing is raised).
        indexed = df.with_row_index(_ROW)
        _check_nulls(indexed, columns)
        _check_values(indexed, columns, max_future)
    runs = _sorted_runs(df)
    if runs is not None:
        _check_symbol_names(runs[0], runs[1])
        return df, runs
    return _resorted(df.with_row_index(_ROW))


_CHUNK = 1 << 15  # rows per step of the value checks: the columns' chunks stay in cache


def _values_ok(df: pl.DataFrame, columns: tuple[str, ...], max_future: timedelta | None) -> bool:
    """Whether no null and no check of :func:`_check_values` fails, in numpy (NaN fails every comparison and
    is the least or greatest value of any array holding one).

    With high and low present, ``low <= open <= high``, ``low <= close <= high`` (or ``low <= high``), a
    positive least low and a finite greatest high imply that every price is finite and positive and that high
    >= low: four comparisons and two reductions check the prices."""
    if df.height == 0:
        return True
    nulls = df.select(pl.col(list(columns)).null_count()).row(0)
    if any(nulls):
        return False
    if "ts" in columns:
        ts = df["ts"].to_physical().to_numpy()
        high_us = _MAX_US if max_future is None else min(_MAX_US, _us(datetime.now(UTC) + max_future) + 1)
        if not (ts.min() >= _MIN_US and ts.max() < high_us):
            return False
    cols = {c: df[c].to_numpy() for c in (*PRICE_COLUMNS, "volume") if c in columns}
    bands = "high" in cols and "low" in cols
    alone = [] if bands else [c for c in PRICE_COLUMNS if c in cols]  # checked on their own
    inside: list[str] = ([c for c in ("open", "close") if c in cols] or ["high"]) if bands else []  # low <= x <= high
    size = df.height
    flags, more = np.empty(min(size, _CHUNK), bool), np.empty(min(size, _CHUNK), bool)
    for a in range(0, size, _CHUNK):  # in chunks: each column is read from memory once, the flags stay in cache
        b = min(a + _CHUNK, size)
        part = {c: v[a:b] for c, v in cols.items()}
        if bands and not (part["low"].min() > 0.0 and part["high"].max() < np.inf):
            return False
        for c in alone:
            if not (part[c].min() > 0.0 and part[c].max() < np.inf):
                return False
        if "volume" in part and not (part["volume"].min() >= 0.0 and part["volume"].max() < np.inf):
            return False
        if bands:
            f, g = flags[: b - a], more[: b - a]
            low, high = part["low"], part["high"]
            for i, c in enumerate(inside):
                np.less_equal(low, part[c], out=g if i else f)
                if i:
                    f &= g
                np.less_equal(part[c], high, out=g)
                f &= g
            if not f.all():
                return False
    return True


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)


_MIN_US = _us(MIN_TS)
_MAX_US = _us(MAX_TS)


def _sorted_runs(df: pl.DataFrame) -> Runs | None:
    """The symbol runs when ``df`` is sorted by (symbol, ts) with no repeated (symbol, ts), else None."""
    starts = _run_starts(df["symbol"])
    heads = df["symbol"].gather(starts)
    if len(heads) > 1 and not (heads.slice(1) > heads.slice(0, len(heads) - 1)).all():
        return None  # a symbol's bars are not together, or the symbols are not in order
    ts = df["ts"].to_physical().to_numpy()
    if len(ts) > 1:
        stalled = ts[1:] <= ts[:-1]
        stalled[starts[1:] - 1] = False  # a symbol boundary is not a step in time
        if stalled.any():
            return None
    return heads.to_list(), starts, _ends(starts, df.height)


def _check_symbol_names(names: list[str], starts: np.ndarray) -> None:
    """Each run's name is a valid symbol; the first invalid one (sorted input: the earliest) is reported at
    its first row."""
    for name, start in zip(names, starts.tolist(), strict=True):
        if not isinstance(name, str) or not name or len(name) > MAX_SYMBOL_LEN or not name.isprintable():
            validate_symbol(name, row=start)


def _first(df: pl.DataFrame, mask: pl.Expr) -> dict[str, Any] | None:
    if _ROW not in df.columns:  # the input's row numbers, for the error
        df = df.with_row_index(_ROW)
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


def _resorted(df: pl.DataFrame) -> tuple[pl.DataFrame, Runs]:
    """``df`` (with the input's row numbers in ``_ROW``), not sorted or with a repeated (symbol, ts), sorted by
    (symbol, ts) without ``_ROW``, and its runs; invalid symbols and repeats reported at their first input row."""
    df = df.sort(["symbol", "ts"], maintain_order=True)  # stable: among equal keys the first in the input first
    names, starts, ends = symbol_runs(df["symbol"])
    bad_names = [n for n in names if not isinstance(n, str) or not n or len(n) > MAX_SYMBOL_LEN
                 or not n.isprintable()]
    if bad_names:
        first = df.filter(pl.col("symbol").is_in(bad_names)).sort(_ROW).row(0, named=True)
        validate_symbol(first["symbol"], row=int(first[_ROW]))
    step = np.diff(df["ts"].to_physical().to_numpy())
    inner = np.ones(len(step), dtype=bool)
    inner[ends[:-1] - 1] = False  # a symbol boundary is not a step in time
    # Sorted now, so a zero step marks a later occurrence of a (symbol, ts): report the earliest in the input.
    dups = np.flatnonzero(inner & (step == 0)) + 1
    if len(dups):
        rows = df[_ROW].to_numpy()[dups]
        row = df.row(int(dups[int(np.argmin(rows))]), named=True)
        raise InvalidInputError(
            "duplicate (symbol, ts)", column="ts", symbol=row["symbol"], row=int(row[_ROW]), value=row["ts"]
        )
    return df.drop(_ROW), (names, starts, ends)

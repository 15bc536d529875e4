"""Arrow rows in and out of the history tier: validation, the COPY payload, decoding scans, and the argument
checks every backend shares (so the in-memory one refuses exactly what PostgreSQL's does)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pcsv

from pitstore.errors import DefinitionError, InvalidInputError
from pitstore.rules import asof_bound
from pitstore.sources.bars import validate_symbol

__all__ = ["INT8_MAX", "INT8_MIN", "KEY_COLUMNS", "TS_TYPE", "bound", "check_columns", "check_table_id",
           "checked_rows", "decode_scan", "encode_rows", "known", "micros", "spans", "symbol_list", "version_keys"]

INT8_MIN, INT8_MAX = -(2**63), 2**63 - 1
KEY_COLUMNS = ("symbol", "ts", "recorded_at")
TS_TYPE = pa.timestamp("us", tz="UTC")


def micros(value: Any, name: str) -> int:
    """``value`` as integer microseconds since the epoch (UTC), checked to fit PostgreSQL's bigint."""
    if isinstance(value, bool) or not hasattr(value, "__index__"):
        raise InvalidInputError(f"{name} must be integer microseconds (times: since 1970-01-01 UTC)", value=value)
    out = int(value)
    if not INT8_MIN <= out <= INT8_MAX:
        raise InvalidInputError(f"{name} is outside the 64-bit microsecond range", value=value)
    return out


def check_columns(columns: Sequence[str]) -> tuple[str, ...]:
    """A table's feature column list: non-empty, unique strings that do not shadow the key columns."""
    if isinstance(columns, str):
        raise DefinitionError(f"columns must be a sequence of names, not the string {columns!r}")
    out = tuple(columns)
    if not out:
        raise DefinitionError("a history table needs at least one feature column")
    for name in out:
        if not isinstance(name, str) or not name:
            raise DefinitionError(f"feature column names must be non-empty strings, got {name!r}")
        if name in KEY_COLUMNS:
            raise DefinitionError(f"feature column {name!r} clashes with a key column {KEY_COLUMNS}")
    if len(set(out)) != len(out):
        raise DefinitionError(f"duplicate feature column names in {list(out)}")
    return out


def encode_rows(rows: Any, columns: tuple[str, ...]) -> tuple[bytes, int]:
    """Validate ``rows`` and render them as CSV ``symbol,ts,vals`` for COPY; returns (payload, row count).

    ``vals`` is a float8[] literal, so one staging layout serves every column list. Floats are written in
    their shortest round-trip form (polars), null as ``NULL`` and NaN as ``NaN``: PostgreSQL parses them
    back to the identical doubles.
    """
    df = _frame(rows, columns)
    vals = pl.concat_str(
        pl.lit("{"),
        pl.concat_str([pl.col(c).cast(pl.String).fill_null("NULL") for c in columns], separator=","),
        pl.lit("}"),
    )
    # One lazy pipeline: each eager polars step costs a fixed ~0.2 ms, which dominates small live writes.
    out = (
        df.lazy()
        .select(_symbol(df), _ts(df), *(_feature(df, c) for c in columns))
        .with_row_index("row")
        .select("symbol", "ts", vals.alias("vals"), pl.struct("symbol", "ts").is_duplicated().alias("dup"), "row")
        .sort("symbol", "ts")  # concurrent writers then insert overlapping keys in the same order: no deadlock
        .collect()
    )
    _check_keys(out)
    buf = io.BytesIO()
    out.select("symbol", "ts", "vals").write_csv(buf, include_header=False)
    return buf.getvalue(), out.height


def checked_rows(rows: Any, columns: tuple[str, ...]) -> pl.DataFrame:
    """``rows`` validated as :func:`encode_rows` validates them, as a frame ``symbol`` (string), ``ts`` (int64
    µs) and ``columns`` (float64), sorted by symbol then ts: what an in-process backend stores."""
    df = _frame(rows, columns)
    out = (
        df.lazy()
        .select(_symbol(df), _ts(df), *(_feature(df, c) for c in columns))
        .with_row_index("row")
        .with_columns(pl.struct("symbol", "ts").is_duplicated().alias("dup"))
        .sort("symbol", "ts")
        .collect()
    )
    _check_keys(out)
    return out.drop("row", "dup")


def _frame(rows: Any, columns: tuple[str, ...]) -> pl.DataFrame:
    if isinstance(rows, pa.RecordBatch):
        rows = pa.Table.from_batches([rows])
    if isinstance(rows, pa.Table):
        # Not pitstore.frames.to_polars for pandas: its NaN -> null conversion would merge NaN and null.
        df = pl.from_arrow(rows)
    elif isinstance(rows, pl.DataFrame):
        df = rows
    else:
        raise InvalidInputError(f"rows must be a pyarrow Table or a polars DataFrame, got {type(rows).__name__}")
    assert isinstance(df, pl.DataFrame)
    missing = [c for c in ("symbol", "ts", *columns) if c not in df.columns]
    if missing:
        raise InvalidInputError(f"missing column(s) {', '.join(missing)}", column=missing[0])
    return df


def _check_keys(out: pl.DataFrame) -> None:
    """No null key, valid symbols, no (symbol, ts) twice: ``out`` has columns symbol, ts, dup and row."""
    for col in ("symbol", "ts"):
        if out[col].null_count():
            raise InvalidInputError("null value", column=col, row=out["row"].filter(out[col].is_null())[0])
    for symbol in out["symbol"].unique().to_list():
        validate_symbol(symbol)
    if out["dup"].any():
        first = out.filter(pl.col("dup")).sort("row").row(0, named=True)
        raise InvalidInputError("duplicate (symbol, ts) in one write", column="ts", symbol=first["symbol"],
                                row=first["row"], value=first["ts"])


def _symbol(df: pl.DataFrame) -> pl.Expr:
    dtype = df.schema["symbol"]
    if isinstance(dtype, pl.Categorical | pl.Enum) or dtype == pl.String:
        return pl.col("symbol").cast(pl.String)
    raise InvalidInputError(f"symbol must be a string column, got dtype {dtype}", column="symbol")


def _ts(df: pl.DataFrame) -> pl.Expr:
    dtype = df.schema["ts"]
    ts = pl.col("ts")
    if isinstance(dtype, pl.Datetime):
        if dtype.time_zone is None:
            raise InvalidInputError("ts is timezone-naive; give timezone-aware UTC timestamps or int64 µs",
                                    column="ts")
        if dtype.time_unit == "ns" and (df["ts"].dt.nanosecond() % 1000 != 0).any():
            raise InvalidInputError("ts has sub-microsecond precision, which would be lost", column="ts")
        return ts.dt.epoch("us")
    if dtype.is_integer():
        return ts.cast(pl.Int64)
    raise InvalidInputError(f"ts must be timestamp[us, tz=UTC] or int64 µs, got dtype {dtype}", column="ts")


def _feature(df: pl.DataFrame, col: str) -> pl.Expr:
    dtype = df.schema[col]
    if dtype.is_numeric() or dtype == pl.Null:
        return pl.col(col).cast(pl.Float64)
    raise InvalidInputError(f"feature columns must be numeric, got dtype {dtype}", column=col)


def decode_scan(data: bytes, columns: tuple[str, ...], *, latest_only: bool = True) -> pa.Table:
    """Parse COPY ... (FORMAT csv) output of ``symbol, ts, recorded_at, vals[1..n]``, ordered by symbol, ts
    and recorded_at, into the scan table: the last version of each (symbol, ts) only, unless not
    ``latest_only``."""
    # Positional names: feature names are arbitrary strings, the output is renamed at the end.
    names = ["symbol", "ts", "recorded_at", *(f"c{i}" for i in range(len(columns)))]
    types = {"symbol": pa.string(), "ts": pa.int64(), "recorded_at": pa.int64()}
    types.update({n: pa.float64() for n in names[3:]})
    if data:
        table = pcsv.read_csv(
            io.BytesIO(data),
            read_options=pcsv.ReadOptions(column_names=names),
            # Only an unquoted empty field is NULL: pyarrow's defaults would also read "NaN" as null.
            convert_options=pcsv.ConvertOptions(column_types=types, null_values=[""], strings_can_be_null=False,
                                                quoted_strings_can_be_null=False),
        )
    else:
        table = pa.table({n: pa.array([], type=types[n]) for n in names})
    if latest_only and table.num_rows > 1:
        symbol, ts = table["symbol"], table["ts"]
        last = pc.or_(pc.not_equal(symbol[:-1], symbol[1:]), pc.not_equal(ts[:-1], ts[1:]))
        table = table.filter(pa.chunked_array([*last.chunks, pa.array([True])]))
    return pa.table(
        [table["symbol"], table["ts"].cast(TS_TYPE), table["recorded_at"].cast(TS_TYPE), *table.columns[3:]],
        names=[*KEY_COLUMNS, *columns],
    )


def check_table_id(table_id: str) -> None:
    if not isinstance(table_id, str) or not table_id or not table_id.isprintable() or len(table_id) > 200:
        raise InvalidInputError("table_id must be a printable string of 1 to 200 characters", value=table_id)


def symbol_list(symbols: Sequence[str]) -> list[str]:
    if isinstance(symbols, str):
        raise InvalidInputError("symbols must be a sequence of symbols, not one string", value=symbols)
    return [validate_symbol(s) for s in symbols]


def spans(replaces: Sequence[tuple[str, int, int]]) -> dict[str, list[Any]]:
    """``replaces`` checked, as the parallel lists ``symbols``, ``lo`` and ``hi`` (PostgreSQL's array
    parameters)."""
    if isinstance(replaces, str | bytes):
        raise InvalidInputError("replaces must be a sequence of (symbol, first_ts, last_ts)", value=replaces)
    out: dict[str, list[Any]] = {"symbols": [], "lo": [], "hi": []}
    for symbol, first, last in replaces:
        lo, hi = micros(first, "first_ts"), micros(last, "last_ts")
        if lo > hi:
            raise InvalidInputError(f"an empty span: first_ts {lo} > last_ts {hi}", symbol=symbol, value=first)
        out["symbols"].append(validate_symbol(symbol))
        out["lo"].append(lo)
        out["hi"].append(hi)
    return out


def version_keys(keys: pa.Table) -> tuple[list[str], list[int], list[int]]:
    """``symbol``, ``ts`` and ``recorded_at`` of ``keys`` as lists (times as integer µs)."""
    missing = [c for c in ("symbol", "ts", "recorded_at") if c not in keys.column_names]
    if missing:
        raise InvalidInputError(f"missing column(s) {', '.join(missing)}", column=missing[0])
    ints = [keys[c].cast(pa.int64()).to_pylist() for c in ("ts", "recorded_at")]
    # Not validated one by one: a symbol that is not stored matches no row, and this may be millions of keys.
    return keys["symbol"].cast(pa.string()).to_pylist(), ints[0], ints[1]


def bound(t: int, lag: int) -> int:
    """:func:`pitstore.rules.asof_bound` clamped into bigint: the backends compare ``ts <= bound``, which is
    the as-of rule ``ts + lag <= t`` (tests/test_rules_paths.py checks the answers against the rule)."""
    at, by = micros(t, "t"), micros(lag, "lag")
    if by < 0:
        raise InvalidInputError("lag must be >= 0: a negative lag would serve rows before they exist", value=lag)
    return max(asof_bound(at, by), INT8_MIN)


def known(as_known_at: int | None) -> int:
    return INT8_MAX if as_known_at is None else micros(as_known_at, "as_known_at")

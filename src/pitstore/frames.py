"""DataFrame interchange: pandas, polars and Arrow in, the same (or the asked-for) type out."""

from __future__ import annotations

from collections import Counter
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal, TypeAlias, overload

import polars as pl
import pyarrow as pa

from pitstore.errors import InvalidInputError, MissingDependencyError

if TYPE_CHECKING:  # pandas is an optional extra: its types only, never imported at run time here
    import pandas as pd

_NUMERIC = frozenset({"open", "high", "low", "close", "volume"})

__all__ = ["Frame", "FrameKind", "frame_kind", "from_polars", "to_polars"]

FrameKind = Literal["polars", "pandas", "arrow"]
# Any frame pitstore returns. pyarrow ships no type information (mypy sees ``pa.Table`` as Any), so an Arrow
# result types as Any until it does; polars and pandas (pandas-stubs) results are exact.
Frame: TypeAlias = "pl.DataFrame | pd.DataFrame | pa.Table"


def frame_kind(data: Any) -> FrameKind:
    """Which family of frame ``data`` is."""
    if isinstance(data, pl.DataFrame | pl.LazyFrame):
        return "polars"
    if isinstance(data, pa.Table | pa.RecordBatch):
        return "arrow"
    if type(data).__module__.startswith("pandas"):
        return "pandas"
    raise InvalidInputError(
        f"expected a pandas, polars or Arrow frame, got {type(data).__name__}", value=None
    )


def to_polars(data: Any) -> pl.DataFrame:
    """Convert any supported frame to a polars DataFrame (zero-copy where the libraries allow)."""
    kind = frame_kind(data)
    if kind == "polars":
        return data.collect() if isinstance(data, pl.LazyFrame) else data
    if kind == "arrow":
        table = pa.Table.from_batches([data]) if isinstance(data, pa.RecordBatch) else data
        _check_unique_columns(table.column_names)
        out = pl.from_arrow(table)
        assert isinstance(out, pl.DataFrame)
        return out
    # pandas: keys kept in the index (ts, or symbol + ts) become columns.
    index_names = [n for n in getattr(data.index, "names", []) if n is not None]
    _check_unique_columns([*index_names, *data.columns])
    if index_names:
        data = data.reset_index()
    for col in data.columns:
        if data[col].dtype == object:
            symbols = data["symbol"].tolist() if "symbol" in data.columns else None
            _check_object_column(col, data[col].tolist(), symbols)
    try:
        out = pl.from_pandas(data)
    except (pa.ArrowException, TypeError, ValueError) as exc:
        raise InvalidInputError(f"cannot convert the pandas frame: {exc}") from exc
    assert isinstance(out, pl.DataFrame)
    return out


def _check_unique_columns(names: list[Any]) -> None:
    """Refuse a frame with two columns of one name (pandas and Arrow allow it): which one is the bars'?"""
    dups = [n for n, k in Counter(names).items() if k > 1]
    if dups:
        listed = ", ".join(repr(n) for n in dups)
        raise InvalidInputError(f"duplicate column name(s) {listed}: each column must have a unique name",
                                column=str(dups[0]))


def _check_object_column(col: str, values: list[Any], symbols: list[Any] | None) -> None:
    """pandas object columns hide mixed types that Arrow would reject or silently coerce: name the first."""
    if not values:
        return
    if any(isinstance(v, datetime) for v in values):
        aware = [v is not None and isinstance(v, datetime) and v.tzinfo is not None for v in values]
        if any(aware) and not all(aware):
            row = aware.index(False)
            raise InvalidInputError(
                "mixed timezone-aware and naive (or non-datetime) values", column=col, row=row, value=values[row],
                symbol=symbols[row] if symbols and isinstance(symbols[row], str) else None,
            )
        return
    if all(isinstance(v, str) for v in values):
        return
    if any(isinstance(v, str) for v in values):
        row = next(i for i, v in enumerate(values) if not isinstance(v, str))
        if col in _NUMERIC:
            row = next(i for i, v in enumerate(values) if isinstance(v, str))
        raise InvalidInputError(
            "mixed strings and other values in an object column", column=col, row=row, value=values[row],
            symbol=symbols[row] if symbols and isinstance(symbols[row], str) else None,
        )


@overload
def from_polars(df: pl.DataFrame, kind: Literal["polars"]) -> pl.DataFrame: ...
@overload
def from_polars(df: pl.DataFrame, kind: Literal["pandas"]) -> pd.DataFrame: ...
@overload
def from_polars(df: pl.DataFrame, kind: Literal["arrow"]) -> pa.Table: ...
@overload
def from_polars(df: pl.DataFrame, kind: FrameKind) -> Frame: ...
def from_polars(df: pl.DataFrame, kind: FrameKind) -> Frame:
    """Convert a polars result back to the caller's frame type."""
    if kind == "polars":
        return df
    if kind == "arrow":
        return df.to_arrow()
    if kind == "pandas":
        try:
            import pandas  # noqa: F401
        except ImportError as exc:  # pragma: no cover - pandas is an optional extra
            raise MissingDependencyError("pandas output needs: pip install 'pitstore[pandas]'") from exc
        return df.to_pandas()
    raise InvalidInputError(f"unknown output type {kind!r}: expected 'polars', 'pandas' or 'arrow'")

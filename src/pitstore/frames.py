"""DataFrame interchange: pandas, polars and Arrow in, the same (or the asked-for) type out."""

from __future__ import annotations

from typing import Any, Literal

import polars as pl
import pyarrow as pa

from pitstore.errors import InvalidInputError, MissingDependencyError

__all__ = ["FrameKind", "frame_kind", "from_polars", "to_polars"]

FrameKind = Literal["polars", "pandas", "arrow"]


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
        out = pl.from_arrow(table)
        assert isinstance(out, pl.DataFrame)
        return out
    # pandas: keys kept in the index (ts, or symbol + ts) become columns.
    index_names = [n for n in getattr(data.index, "names", []) if n is not None]
    if index_names:
        data = data.reset_index()
    out = pl.from_pandas(data)
    assert isinstance(out, pl.DataFrame)
    return out


def from_polars(df: pl.DataFrame, kind: FrameKind) -> Any:
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

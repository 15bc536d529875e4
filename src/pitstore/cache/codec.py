"""Results of ``get_or_compute`` as Parquet bytes and back, keeping the frame family the compute returned."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pitstore.errors import InvalidInputError
from pitstore.frames import FrameKind, frame_kind

__all__ = ["decode", "encode", "to_arrow"]

_ROW_GROUP = 262_144  # rows per row group: enough groups for parallel decoding of large results (measured)


def to_arrow(frame: Any, what: str) -> tuple[pa.Table, FrameKind]:
    """``frame`` as an Arrow table (pandas keeps its index in the schema metadata) and its family."""
    try:
        kind = frame_kind(frame)
        if kind == "pandas" and not hasattr(frame, "columns"):  # a Series is not a frame
            raise InvalidInputError("not a DataFrame")
    except InvalidInputError:
        raise InvalidInputError(f"{what} must be a pandas, polars or Arrow frame, got {type(frame).__name__}") from None
    try:
        if kind == "polars":
            df = frame.collect() if isinstance(frame, pl.LazyFrame) else frame
            return df.to_arrow(), kind
        if kind == "arrow":
            return (pa.Table.from_batches([frame]) if isinstance(frame, pa.RecordBatch) else frame), kind
        return pa.Table.from_pandas(frame), kind
    except (pa.ArrowException, pl.exceptions.PolarsError, TypeError, ValueError) as exc:
        raise InvalidInputError(f"{what} cannot be stored as Arrow: {exc}") from exc


def encode(table: pa.Table) -> bytes:
    """zstd Parquet bytes of ``table``."""
    sink = io.BytesIO()
    # No dictionaries: float features never profit, and building them per row group tripled the write time.
    pq.write_table(table, sink, compression="zstd", compression_level=1, row_group_size=_ROW_GROUP,
                   use_dictionary=False)
    return sink.getvalue()


def decode(data: bytes | pa.Buffer, kind: str, path: Path | None = None) -> Any:
    """The frame stored in ``data`` (the bytes of ``path`` when given), as the family ``kind``."""
    if kind == "polars" and path is not None:
        return pl.read_parquet(path)  # polars' own reader decodes row groups in parallel: faster than Arrow's
    table = pq.read_table(pa.BufferReader(data) if isinstance(data, bytes) else data)
    if kind == "polars":
        return pl.from_arrow(table)
    if kind == "pandas":
        return table.to_pandas()
    return table

"""Cache keys: THE definition of what makes two ``get_or_compute`` calls the same computation."""

from __future__ import annotations

import functools
import hashlib
from typing import Any, NamedTuple

import pyarrow as pa

from pitstore.datahash import DataHash, table_hash
from pitstore.errors import DefinitionError, InvalidInputError
from pitstore.fingerprint import canonical_json, code_fingerprint, library_versions
from pitstore.sources.bars import validate_symbol

__all__ = ["KEY_FORMAT", "CacheKey", "cache_key", "raw_table"]

KEY_FORMAT = 1  # bump when the key recipe or the entry encoding changes: old entries then simply miss


class CacheKey(NamedTuple):
    key: str  # sha256 hex
    symbol: str
    first_ts: int | None  # first and last timestamp of raw, µs UTC
    last_ts: int | None
    data: DataHash  # content hash of raw


def raw_table(raw: Any) -> pa.Table:
    """``raw`` as an Arrow table without copying where possible (pandas keeps its index as columns)."""
    import polars as pl

    if isinstance(raw, pa.Table):
        return raw
    if isinstance(raw, pa.RecordBatch):
        return pa.Table.from_batches([raw])
    if isinstance(raw, pl.LazyFrame):
        raw = raw.collect()
    if isinstance(raw, pl.DataFrame):
        return raw.to_arrow()
    if type(raw).__module__.startswith("pandas") and hasattr(raw, "columns"):
        try:
            return pa.Table.from_pandas(raw, preserve_index=True)
        except (pa.ArrowException, TypeError, ValueError) as exc:
            raise InvalidInputError(f"raw data cannot be read as Arrow: {exc}") from exc
    raise InvalidInputError(f"raw must be a pandas, polars or Arrow frame, got {type(raw).__name__}")


def _time_bounds(table: pa.Table) -> tuple[int | None, int | None]:
    """First and last value of the ``ts`` column (else of the first timestamp column), in µs UTC."""
    names = ["ts"] if "ts" in table.column_names else []
    names += [f.name for f in table.schema if pa.types.is_timestamp(f.type) and f.name != "ts"]
    for name in names:
        col = table.column(name)
        if not pa.types.is_timestamp(col.type) or len(col) == 0:
            continue
        per_us = {"s": 1e-6, "ms": 1e-3, "us": 1, "ns": 1000}[col.type.unit]
        ends = (col[0].value, col[len(col) - 1].value)  # two scalars: no cast or take of the whole column
        first, last = (None if v is None else int(v // per_us) for v in ends)
        return first, last
    return None, None


def cache_key(symbol: str, raw: Any, config: Any, compute: Any) -> CacheKey:
    """The key of ``compute(raw, config)`` for ``symbol``: sha256 over the symbol, raw's first and last
    timestamps, raw's full content hash, the canonical config, the compute's code fingerprint (with the
    helpers it calls) and the versions of the libraries that can change numbers."""
    validate_symbol(symbol)
    if not callable(compute):
        raise InvalidInputError(f"compute must be callable, got {type(compute).__name__}")
    table = raw_table(raw)
    try:
        config_text = canonical_json(config)
    except DefinitionError as exc:
        raise InvalidInputError(f"config: {exc}") from exc
    try:
        code = code_fingerprint(compute, strict=True)
    except DefinitionError as exc:
        raise InvalidInputError(f"compute: {exc}") from exc
    first, last = _time_bounds(table)
    data = table_hash(table)
    recipe = "\x1f".join([
        f"pitstore-cache-{KEY_FORMAT}", symbol, str(first), str(last), data.hex, config_text,
        code, _versions_text(),
    ])
    return CacheKey(hashlib.sha256(recipe.encode()).hexdigest(), symbol, first, last, data)


@functools.cache
def _versions_text() -> str:
    """The library versions of the key, once per process (they cannot change while it runs)."""
    return canonical_json(library_versions())

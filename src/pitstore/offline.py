"""The offline tier's files: immutable zstd Parquet entries, written atomically, always listed via the catalog."""

from __future__ import annotations

import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from urllib.parse import quote

import polars as pl

from pitstore.atomic import publish
from pitstore.datahash import table_hash

__all__ = ["EntryReader", "content_hash", "encode_symbol", "read_entries", "write_entry"]

_COMPRESSION_LEVEL = 1  # zstd level: float features barely compress, level 1 writes fastest (measured)
_CACHE_ENTRIES = 8  # decoded reads an EntryReader keeps (entries are immutable, so a hit is never stale)


def encode_symbol(symbol: str) -> str:
    """A file-name-safe, reversible encoding of a symbol: '/', '.', '..' and the like become harmless."""
    return "s_" + quote(symbol, safe="").replace(".", "%2E").replace("%", "~")


def content_hash(df: pl.DataFrame) -> str:
    """xxh3-128 over the content of every column of ``df`` (all bytes, no sampling), as hex."""
    return table_hash(df.to_arrow()).hex


def write_entry(root: Path, relative_dir: str, df: pl.DataFrame) -> str:
    """Write ``df`` as a new Parquet entry under ``root/relative_dir``; returns its path relative to root.

    Published atomically (see :mod:`pitstore.atomic`); an orphan (published but never committed to the
    catalog) is never listed, since reads go through the catalog.
    """
    name = f"{uuid.uuid4().hex}.parquet"
    publish(root / relative_dir, name, lambda tmp: df.write_parquet(
        tmp, compression="zstd", compression_level=_COMPRESSION_LEVEL, statistics=True))
    return f"{relative_dir}/{name}"


def read_entries(root: Path, paths: Sequence[str], columns: Sequence[str] | None = None) -> pl.DataFrame | None:
    """Read and concatenate entries (in the given order); None when there are none."""
    if not paths:
        return None
    lf = pl.scan_parquet([str(root / p) for p in paths])
    if columns is not None:
        lf = lf.select(columns)
    # One chunk per column: sorts and gathers over 500 small chunks are twice as slow.
    return lf.collect().rechunk()


class EntryReader:
    """Reads entries through a small LRU of decoded results.

    Safe because an entry file never changes once published and the caller asks the catalog which entries
    are visible before every read: a new entry is a new path, so a cached result can never be stale.
    """

    def __init__(self, root: Path, max_items: int = _CACHE_ENTRIES) -> None:
        self.root = root
        self._max = max_items
        self._cache: OrderedDict[tuple[tuple[str, ...], tuple[str, ...] | None], pl.DataFrame] = OrderedDict()
        self._lock = threading.Lock()

    def read(self, paths: Sequence[str], columns: Sequence[str] | None = None) -> pl.DataFrame | None:
        key = (tuple(paths), tuple(columns) if columns is not None else None)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        df = read_entries(self.root, paths, columns)
        if df is not None:
            with self._lock:
                self._cache[key] = df
                while len(self._cache) > self._max:
                    self._cache.popitem(last=False)
        return df

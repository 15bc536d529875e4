"""The offline tier's files: immutable zstd Parquet entries, written atomically, always listed via the catalog."""

from __future__ import annotations

import io
import logging
import os
import threading
import uuid
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path

import polars as pl

from pitstore.catalog.base import FeatureEntry
from pitstore.datahash import file_hash, table_hash
from pitstore.errors import CacheCorruptionError
from pitstore.filenames import safe_name
from pitstore.storage import Storage, as_storage

__all__ = ["CheckedRead", "EntryReader", "check_file", "content_hash", "encode_symbol", "file_facts", "put_entry",
           "read_entries", "write_entry"]

log = logging.getLogger("pitstore.offline")
_UNREADABLE = (OSError, pl.exceptions.PolarsError)

_COMPRESSION_LEVEL = 1  # zstd level: float features barely compress, level 1 writes fastest (measured)
_RAM_FRACTION = 8  # by default an EntryReader keeps decoded reads up to 1/8 of the machine's memory


def encode_symbol(symbol: str) -> str:
    """The directory component of a symbol's entries (see :func:`pitstore.filenames.safe_name`)."""
    return safe_name(symbol, prefix="s_")


def content_hash(df: pl.DataFrame) -> str:
    """xxh3-128 over the content of every column of ``df`` (all bytes, no sampling), as hex."""
    return table_hash(df.to_arrow()).hex


def write_entry(data: Storage | Path, relative_dir: str, df: pl.DataFrame) -> str:
    """Write ``df`` as a new Parquet entry under ``relative_dir``; returns its relative path."""
    return put_entry(data, relative_dir, df)[0]


def put_entry(data: Storage | Path, relative_dir: str, df: pl.DataFrame) -> tuple[str, int, str]:
    """Write ``df`` as a new Parquet entry under ``relative_dir`` (a fresh name); its path, size and xxh3-128.

    Published atomically and checked by the backend (see :mod:`pitstore.storage`); an orphan (published but
    never committed to the catalog) is never listed, since reads go through the catalog. The size and hash
    are of the bytes encoded here, so nothing is read back to record them.
    """
    sink = io.BytesIO()
    df.write_parquet(sink, compression="zstd", compression_level=_COMPRESSION_LEVEL, statistics=True)
    body = sink.getbuffer()
    path = f"{relative_dir}/{uuid.uuid4().hex}.parquet"
    as_storage(data).put(path, body)
    return path, len(body), file_hash(body)


def file_facts(data: Storage | Path, path: str) -> tuple[int, str]:
    """Size and xxh3-128 of the bytes of the stored file ``path``, as feature entries record them."""
    body = as_storage(data).read(path)
    return len(body), file_hash(body)


def check_file(data: Storage | Path, path: str, size: int | None, expected_hash: str | None) -> str | None:
    """What is wrong with the stored file ``path`` (None: it exists and, where given, has ``size`` bytes hashing
    to ``expected_hash``)."""
    storage = as_storage(data)
    try:
        if size is None and expected_hash is None:
            return None if storage.size(path) is not None else "file is missing"
        body = storage.read(path)
    except FileNotFoundError:
        return "file is missing"
    except OSError as exc:
        return f"unreadable: {exc}"
    if size is not None and len(body) != size:
        return f"{len(body)} bytes, the catalog says {size}"
    if expected_hash is not None and file_hash(body) != expected_hash:
        return "content does not match its hash"
    return None


def _scan(storage: Storage, paths: Sequence[str], columns: Sequence[str] | None) -> pl.DataFrame:
    local = [storage.local_path(p) for p in paths]
    if all(p is not None for p in local):
        lf = pl.scan_parquet([str(p) for p in local])
        if columns is not None:
            lf = lf.select(columns)
        # One chunk per column: sorts and gathers over 500 small chunks are twice as slow.
        return lf.collect().rechunk()
    # Remote: fetch every object at once (concurrently), then decode from memory.
    cols = list(columns) if columns is not None else None
    frames = [pl.read_parquet(io.BytesIO(b), columns=cols) for b in storage.read_many(paths)]
    return pl.concat(frames, how="vertical").rechunk()


def read_entries(data: Storage | Path, paths: Sequence[str], columns: Sequence[str] | None = None
                 ) -> pl.DataFrame | None:
    """Read and concatenate entries (in the given order); None when there are none.

    Raises CacheCorruptionError naming the first file that is missing or cannot be decoded.
    """
    if not paths:
        return None
    storage = as_storage(data)
    try:
        return _scan(storage, paths, columns)
    except _UNREADABLE as exc:
        for p in paths:  # which one: the scan's message does not always say
            try:
                _scan(storage, [p], columns)
            except _UNREADABLE as one:
                raise CacheCorruptionError(f"stored entry {p} is damaged ({one}); run `pitstore verify --repair`"
                                           ) from one
        raise CacheCorruptionError(f"stored entries cannot be read together: {exc}") from exc


CheckedRead = tuple[pl.DataFrame | None, dict[str, str]]  # rows of the intact entries; damaged path -> problem


def default_cache_bytes() -> int:
    """1/8 of this machine's physical memory (what ``entry_cache_bytes`` defaults to)."""
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // _RAM_FRACTION
    except (ValueError, OSError, AttributeError):  # pragma: no cover - not POSIX
        return 1 << 30


class EntryReader:
    """Reads entries through an LRU of decoded results bounded in bytes (``max_bytes``; None: 1/8 of RAM,
    0: nothing kept). A result larger than the bound is returned, not kept.

    Safe because an entry file never changes once published and the caller asks the catalog which entries
    are visible before every read: a new entry is a new path, so a cached result can never be stale.
    """

    def __init__(self, root: Path, max_bytes: int | None = None, storage: Storage | None = None) -> None:
        self.root = root  # local state (version leases) stays under the root wherever the data is
        self.storage = storage if storage is not None else as_storage(root)
        self.max_bytes = default_cache_bytes() if max_bytes is None else max_bytes
        self._cache: OrderedDict[tuple[tuple[str, ...], tuple[str, ...] | None], pl.DataFrame] = OrderedDict()
        self._sizes: dict[tuple[tuple[str, ...], tuple[str, ...] | None], int] = {}
        self.cached_bytes = 0
        self._lock = threading.Lock()

    def _keep(self, key: tuple[tuple[str, ...], tuple[str, ...] | None], df: pl.DataFrame) -> None:
        """Under the lock: remember ``df``, evicting the least recently used until the bound holds."""
        size = int(df.estimated_size())
        if size > self.max_bytes or key in self._cache:
            return
        self._cache[key], self._sizes[key] = df, size
        self.cached_bytes += size
        while self.cached_bytes > self.max_bytes:
            old, _ = self._cache.popitem(last=False)
            self.cached_bytes -= self._sizes.pop(old)

    def read(self, paths: Sequence[str], columns: Sequence[str] | None = None) -> pl.DataFrame | None:
        key = (tuple(paths), tuple(columns) if columns is not None else None)
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        df = read_entries(self.storage, paths, columns)
        if df is not None:
            with self._lock:
                self._keep(key, df)
        return df

    def read_checked(self, entries: Sequence[FeatureEntry], columns: Sequence[str]) -> CheckedRead:
        """The rows of the intact ``entries`` and the problem of each damaged one (missing, truncated, not
        matching its recorded size or hash, undecodable), each logged as a warning: one damaged file must not
        fail a read of every symbol. Hashing reads every byte once per decode; cached results skip it."""
        key = (("\0checked", *(e.path for e in entries)), tuple(columns))
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:  # only intact reads are cached: damage is re-checked and re-logged every time
                self._cache.move_to_end(key)
                return hit, {}
        damaged = {e.path: what for e in entries
                   if (what := check_file(self.storage, e.path, e.size, e.file_hash)) is not None}
        good = [e.path for e in entries if e.path not in damaged]
        rows = None
        if good:
            try:
                rows = _scan(self.storage, good, columns)
            except _UNREADABLE:
                parts = []
                for p in good:  # find the undecodable ones (entries recorded without a hash)
                    try:
                        parts.append(_scan(self.storage, [p], columns))
                    except _UNREADABLE as exc:
                        damaged[p] = f"undecodable: {exc}"
                rows = pl.concat(parts).rechunk() if parts else None
        if not damaged and rows is not None:
            with self._lock:
                self._keep(key, rows)
        for p, what in damaged.items():
            log.warning("damaged entry %s: %s; its symbol reads as 'damaged' (run `pitstore verify --repair`)",
                        p, what)
        return rows, damaged

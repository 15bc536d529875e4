"""The offline tier's files: immutable zstd Parquet entries, written atomically, always listed via the catalog."""

from __future__ import annotations

import io
import logging
import mmap
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import polars as pl

from pitstore.catalog.base import FeatureEntry
from pitstore.datahash import file_hash, table_hash
from pitstore.errors import CacheCorruptionError
from pitstore.filenames import safe_name
from pitstore.memo import BytesLRU
from pitstore.rules import from_us
from pitstore.storage import Storage, as_storage

__all__ = ["CheckedRead", "EntryReader", "check_file", "content_hash", "encode_symbol", "file_facts", "put_entry",
           "read_entries", "write_entry"]

log = logging.getLogger("pitstore.offline")
_UNREADABLE = (OSError, pl.exceptions.PolarsError)

_COMPRESSION_LEVEL = 1  # zstd level: float features barely compress, level 1 writes fastest (measured)
# Rows per Parquet row group: a read of a short span decodes only the groups whose ts statistics overlap it
# (pitstore.prune); polars' default (262,144) makes a 98k-bar file one group, decoded whole for one look-up.
ROW_GROUP_ROWS = 16_384
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
    df.write_parquet(sink, compression="zstd", compression_level=_COMPRESSION_LEVEL, statistics=True,
                     row_group_size=ROW_GROUP_ROWS)
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
    local = storage.local_path(path)
    try:
        if size is None and expected_hash is None:
            return None if storage.size(path) is not None else "file is missing"
        if local is not None:
            return _check_local(local, size, expected_hash)
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


def _check_local(path: Path, size: int | None, expected_hash: str | None) -> str | None:
    with path.open("rb") as f:
        n = os.fstat(f.fileno()).st_size
        if size is not None and n != size:
            return f"{n} bytes, the catalog says {size}"
        if expected_hash is None:
            return None
        if n == 0:
            digest = file_hash(b"")
        else:  # mapped, not read: no copy of the file in memory (a third faster, measured)
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                digest = file_hash(mapped)
    return None if digest == expected_hash else "content does not match its hash"


Span = tuple[int | None, int | None]  # ts bounds in µs, inclusive, None: open (see pitstore.prune)


def _between(span: Span) -> pl.Expr:
    lo, hi = span
    ts = pl.col("ts")
    # Datetime literals (not epoch integers) so the bounds reach the row-group statistics of the scan.
    lower = ts >= pl.lit(from_us(lo), dtype=pl.Datetime("us", "UTC")) if lo is not None else pl.lit(True)
    upper = ts <= pl.lit(from_us(hi), dtype=pl.Datetime("us", "UTC")) if hi is not None else pl.lit(True)
    return lower & upper


def _groups(entries: Sequence[FeatureEntry], spans: Sequence[Span]) -> list[tuple[list[str], Span]]:
    """How to scan ``entries`` cut to ``spans``: all in one scan under the hull of the spans when that decodes
    at most about twice the rows (one scan of many files is twice as fast as one scan per file, measured),
    else one scan per file. More rows than a span are harmless: each is a real stored row, and every row of
    the spans is read (see pitstore.prune)."""
    exact = [(e.first_ts if lo is None else lo, e.last_ts if hi is None else hi)
             for e, (lo, hi) in zip(entries, spans, strict=True)]
    lo, hi = min(a for a, _ in exact), max(b for _, b in exact)
    own = sum(b - a + 1 for a, b in exact)
    hull = sum(min(hi, e.last_ts) - max(lo, e.first_ts) + 1 for e in entries)
    if hull <= 2 * own:
        return [([e.path for e in entries], (lo, hi))]
    return [([e.path], s) for e, s in zip(entries, spans, strict=True)]


def _scan(storage: Storage, paths: Sequence[str], columns: Sequence[str] | None,
          groups: Sequence[tuple[Sequence[str], Span]] | None = None) -> pl.DataFrame:
    if groups is None:
        groups = [(paths, (None, None))]
    local = {p: storage.local_path(p) for ps, _ in groups for p in ps}
    cols = list(columns) if columns is not None else None
    if all(p is not None for p in local.values()):
        # polars runs the scans together; row-group statistics skip what lies outside each span
        lf = pl.concat([pl.scan_parquet([str(local[p]) for p in ps]).filter(_between(span)) for ps, span in groups])
        if cols is not None:
            lf = lf.select(cols)
        # One chunk per column: sorts and gathers over 500 small chunks are twice as slow.
        return lf.collect().rechunk()
    # Remote: fetch every object at once (concurrently), then decode from memory, each cut to its span.
    wanted = list(dict.fromkeys(p for ps, _ in groups for p in ps))
    bodies = dict(zip(wanted, storage.read_many(wanted), strict=True))
    frames = []
    for ps, span in groups:
        cut = span != (None, None)
        read_cols = cols if cols is None or not cut or "ts" in cols else [*cols, "ts"]  # ts to cut the span
        for p in ps:
            df = pl.read_parquet(io.BytesIO(bodies[p]), columns=read_cols)
            if cut:
                df = df.filter(_between(span))
            frames.append(df if cols is None else df.select(cols))
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
        self._memo = BytesLRU(default_cache_bytes() if max_bytes is None else max_bytes)
        self._intact: set[tuple[str, int, int, int]] = set()  # files found intact: (path, size, mtime_ns, inode)
        self._lock = threading.Lock()

    @property
    def max_bytes(self) -> int:
        return self._memo.max_bytes

    @property
    def cached_bytes(self) -> int:
        return self._memo.cached_bytes

    def read(self, paths: Sequence[str], columns: Sequence[str] | None = None) -> pl.DataFrame | None:
        key = (tuple(paths), tuple(columns) if columns is not None else None)
        hit = self._memo.get(key)
        if hit is not None:
            return cast(pl.DataFrame, hit)
        df = read_entries(self.storage, paths, columns)
        if df is not None:
            self._memo.put(key, df)
        return df

    def read_checked(self, entries: Sequence[FeatureEntry], columns: Sequence[str],
                     spans: Mapping[str, Span] | None = None) -> CheckedRead:
        """The rows of the intact ``entries`` and the problem of each damaged one (missing, truncated, not
        matching its recorded size or hash, undecodable), each logged as a warning: one damaged file must not
        fail a read of every symbol. Hashing reads every byte once per decode; cached results skip it.

        ``spans`` (path -> ts bounds, see :mod:`pitstore.prune`): only those entries are decoded, each only
        within its span; every entry is still checked, so a damaged one marks its symbol whether it is read or
        not (the statuses of a pruned read are those of a full one).
        """
        wanted = [e for e in entries if spans is None or e.path in spans]
        bounds = None if spans is None else [spans[e.path] for e in wanted]
        key = (("\0checked", *(e.path for e in entries)), (*columns, "\0spans", *map(str, bounds or ())))
        hit = self._memo.get(key)
        if hit is not None:  # only intact reads are cached: damage is re-checked and re-logged every time
            return cast(pl.DataFrame, hit), {}
        damaged = {e.path: what for e in entries if (what := self._check(e)) is not None}
        good = [(e, b) for e, b in zip(wanted, bounds or [(None, None)] * len(wanted), strict=True)
                if e.path not in damaged]
        rows = None
        if good:
            try:
                rows = _scan(self.storage, [e.path for e, _ in good], columns,
                             None if spans is None else _groups([e for e, _ in good], [b for _, b in good]))
            except _UNREADABLE:
                parts = []
                for e, b in good:  # find the undecodable ones (entries recorded without a hash)
                    try:
                        parts.append(_scan(self.storage, [e.path], columns,
                                           None if spans is None else [([e.path], b)]))
                    except _UNREADABLE as exc:
                        damaged[e.path] = f"undecodable: {exc}"
                rows = pl.concat(parts).rechunk() if parts else None
        if not damaged and rows is not None:
            self._memo.put(key, rows)
        for p, what in damaged.items():
            log.warning("damaged entry %s: %s; its symbol reads as 'damaged' (run `pitstore verify --repair`)",
                        p, what)
        return rows, damaged

    def _check(self, e: FeatureEntry) -> str | None:
        """:func:`check_file`, once per file version: a file found intact is not hashed again while its size,
        mtime and inode stay the same (entries never change once published; a damaged one is rewritten or
        replaced, which changes them). A pruned read of one day of a long history must not cost a hash of all
        of it on every call."""
        path = self.storage.local_path(e.path)
        stamp = None
        if path is not None:  # remote objects have no inode: checked on every read
            try:
                st = path.stat()
                stamp = (e.path, st.st_size, st.st_mtime_ns, st.st_ino)
            except OSError:
                stamp = None
        if stamp is not None and stamp in self._intact:
            return None
        what = check_file(self.storage, e.path, e.size, e.file_hash)
        if what is None and stamp is not None:
            with self._lock:
                self._intact.add(stamp)
        return what

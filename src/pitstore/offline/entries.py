"""The offline tier's files: immutable zstd Parquet entries, written atomically, always listed via the catalog."""

from __future__ import annotations

import io
import json
import logging
import mmap
import os
import threading
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import cast

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from pitstore.catalog.base import FeatureEntry
from pitstore.datahash import file_hash, table_hash
from pitstore.errors import CacheCorruptionError
from pitstore.filenames import safe_name
from pitstore.memo import BytesLRU
from pitstore.rules import from_us
from pitstore.storage import Storage, as_storage

__all__ = ["COMPACTED_DIR", "GROUPS_KEY", "RUNS_KEY", "CheckedRead", "EntryReader", "by_symbol_ts", "check_file",
           "content_hash", "encode_symbol", "file_facts", "is_compacted", "put_entry", "read_compacted",
           "read_entries", "write_entry"]

log = logging.getLogger("pitstore.offline.entries")
# A damaged file can make polars' decoder panic (PanicException, a BaseException) rather than raise an error.
_UNREADABLE = (OSError, pl.exceptions.PolarsError, pl.exceptions.PanicException)

_COMPRESSION_LEVEL = 1  # zstd level: float features barely compress, level 1 writes fastest (measured)
# Rows per Parquet row group: a read of a short span decodes only the groups whose ts statistics overlap it
# (pitstore.offline.prune); polars' default (262,144) makes a 98k-bar file one group, decoded whole for one look-up.
ROW_GROUP_ROWS = 16_384
_RAM_FRACTION = 8  # by default an EntryReader keeps decoded reads up to 1/8 of the machine's memory


# Compacted files (pitstore.offline.compact) live in this directory of a version's entries; symbol directories all start
# with "s_", so no symbol can name it. An entry whose path is in it shares the file with other entries: its rows
# are those of its symbol with first_ts <= ts <= last_ts (entries of one symbol in a file never overlap).
COMPACTED_DIR = "compacted"
# Key of the compacted file's Parquet metadata listing its row groups: [symbol, rows, first ts, last ts] each.
GROUPS_KEY = b"pitstore.groups"
# Key listing how many of those [symbol, ...] runs each row group holds, when a group holds several (the one file
# of an incremental backfill: a row group per symbol cost 3 ms each to write for one new row); absent: one each.
RUNS_KEY = b"pitstore.group_runs"


def is_compacted(path: str) -> bool:
    """Whether ``path`` is a compacted file holding the rows of many entries (see :mod:`pitstore.offline.compact`)."""
    return f"/{COMPACTED_DIR}/" in path


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


Span = tuple[int | None, int | None]  # ts bounds in µs, inclusive, None: open (see pitstore.offline.prune)


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
    the spans is read (see pitstore.offline.prune)."""
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


def by_symbol_ts(rows: pl.DataFrame) -> pl.DataFrame:
    """``rows`` sorted by symbol, then ts (stable): as given when they already are, which two cheap passes tell
    (a sort of millions of rows by a string key costs seconds; stored rows mostly come in that order)."""
    if rows["ts"].null_count() == 0 and rows["symbol"].is_sorted():
        same = pl.col("symbol") == pl.col("symbol").shift()
        if rows.select((~same | (pl.col("ts").diff() >= pl.duration(microseconds=0))).all()).item():
            return rows
    return rows.sort("symbol", "ts", maintain_order=True, nulls_last=True)


Groups = list[tuple[str, int, int, int]]  # per run of a compacted file: symbol, rows, first ts, last ts


def _open_compacted(storage: Storage, path: str) -> tuple[pq.ParquetFile, Groups, list[int]]:
    """The file, its runs (one symbol's rows each, in file order) and how many runs each row group holds."""
    local = storage.local_path(path)
    source: str | pa.BufferReader = str(local) if local is not None else pa.BufferReader(storage.read(path))
    pf = pq.ParquetFile(source, memory_map=local is not None)
    meta = pf.metadata.metadata or {}
    raw = meta.get(GROUPS_KEY)
    if raw is None:
        raise pl.exceptions.ComputeError(f"{path} has no {GROUPS_KEY.decode()} metadata")
    groups = [(str(g[0]), int(g[1]), int(g[2]), int(g[3])) for g in json.loads(raw)]
    per_group = [int(n) for n in json.loads(meta[RUNS_KEY])] if RUNS_KEY in meta else [1] * len(groups)
    if len(per_group) != pf.metadata.num_row_groups or sum(per_group) != len(groups):
        raise pl.exceptions.ComputeError(f"{path}: {len(groups)} runs in {len(per_group)} groups listed, "
                                         f"{pf.metadata.num_row_groups} groups stored")
    return pf, groups, per_group


def _row_groups(pf: pq.ParquetFile, local: Path | None, chosen: Sequence[int],
                columns: list[str] | None) -> pl.DataFrame:
    """Row groups ``chosen`` (ascending) of a compacted file, in file order. A local file is read by polars, one
    row slice per run of consecutive groups (a batch of symbols is one run; polars decodes only the groups of a
    slice, three times as fast as pyarrow's read_row_groups, measured)."""
    if local is None or not chosen:
        return pl.from_arrow(pf.read_row_groups(chosen, columns=columns))  # type: ignore[return-value]
    # Rows per row group from the footer: a group may hold the runs of several small symbols (RUNS_KEY).
    meta = pf.metadata
    starts = np.concatenate(([0], np.cumsum([meta.row_group(i).num_rows for i in range(meta.num_row_groups)])))
    runs: list[tuple[int, int]] = []  # (first group, group after the last) of each run
    for i in chosen:
        if runs and runs[-1][1] == i:
            runs[-1] = (runs[-1][0], i + 1)
        else:
            runs.append((i, i + 1))
    scan = pl.scan_parquet(local)
    if columns is not None:
        scan = scan.select(columns)
    parts = [scan.slice(int(starts[a]), int(starts[b] - starts[a])) for a, b in runs]
    return pl.concat(parts).collect().rechunk() if len(parts) > 1 else parts[0].collect()


def read_compacted(storage: Storage, path: str, wanted: Sequence[tuple[FeatureEntry, Span]],
                   columns: Sequence[str] | None) -> pl.DataFrame:
    """The rows of ``wanted`` entries of the compacted file ``path``, each cut to its span, in file order (by
    symbol, then ts). Only the row groups holding them are decoded; when they are the whole file it is read as
    one polars read (what a bare read of one Parquet file costs)."""
    whole = sum(e.n_rows for e, span in wanted if span == (None, None))
    local = storage.local_path(path)
    cols = list(columns) if columns is not None else None
    pf, groups, per_group = _open_compacted(storage, path)
    if whole == sum(g[1] for g in groups):  # every row of the file is wanted: no group to skip, no row to cut
        if local is not None:
            return pl.read_parquet(local, columns=cols)
        return pl.from_arrow(pf.read(columns=cols))  # type: ignore[return-value]
    keep: dict[str, list[tuple[int, int]]] = {}
    for e, (lo, hi) in wanted:
        keep.setdefault(e.symbol, []).append((e.first_ts if lo is None else max(lo, e.first_ts),
                                              e.last_ts if hi is None else min(hi, e.last_ts)))
    bounds = np.concatenate(([0], np.cumsum(per_group))).tolist()  # runs of group g: bounds[g] .. bounds[g + 1]
    chosen = [g for g in range(len(per_group)) if any(
        any(a <= last and b >= first for a, b in keep.get(sym, ())) for sym, _, first, last in
        groups[bounds[g]:bounds[g + 1]])]
    read_cols = cols if cols is None or "ts" in cols else [*cols, "ts"]
    df = _row_groups(pf, local, chosen, read_cols)
    if not chosen:
        return df if cols is None else df.select(cols)
    ts = df["ts"].dt.epoch("us").to_numpy()
    starts, ends = [], []
    offset = 0
    for g in chosen:  # each run is one symbol's rows sorted by ts: its wanted rows are searchsorted ranges
        for sym, n, _, _ in groups[bounds[g]:bounds[g + 1]]:
            if sym in keep:
                spans = np.asarray(keep[sym], dtype=np.int64)
                part = ts[offset:offset + n]
                starts.append(offset + np.searchsorted(part, spans[:, 0], "left"))
                ends.append(offset + np.searchsorted(part, spans[:, 1], "right"))
            offset += n
    a, b = np.concatenate(starts), np.concatenate(ends)
    order = np.argsort(a, kind="stable")
    a, b = a[order], b[order]
    nonempty = b > a
    a, b = a[nonempty], b[nonempty]
    if (b - a).sum() != df.height:  # the ranges are disjoint: as many rows as the groups hold is all of them
        lengths = b - a
        index = np.repeat(a - np.concatenate(([0], np.cumsum(lengths)[:-1])), lengths) + np.arange(lengths.sum())
        df = df[index]
    return df if cols is None else df.select(cols)


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

    def read_of(self, entries: Sequence[FeatureEntry], columns: Sequence[str]) -> pl.DataFrame | None:
        """The rows of ``entries`` (whole), as :meth:`read` reads files: compacted ones cut to their entries.
        Not hash-checked (as :meth:`read`)."""
        key = (("\0of", *(f"{e.id}:{e.path}" for e in entries)), tuple(columns))
        hit = self._memo.get(key)
        if hit is not None:
            return cast(pl.DataFrame, hit)
        df = self._rows([(e, (None, None)) for e in entries], columns, None)
        if df is not None:
            self._memo.put(key, df)
        return df

    def read_checked(self, entries: Sequence[FeatureEntry], columns: Sequence[str],
                     spans: Mapping[int, Span] | None = None, *, keep: bool = True) -> CheckedRead:
        """The rows of the intact ``entries`` and the problem of each damaged file (missing, truncated, not
        matching its recorded size or hash, undecodable), each logged as a warning: one damaged file must not
        fail a read of every symbol. Hashing reads every byte once per decode; cached results skip it.

        ``spans`` (entry id -> ts bounds, see :mod:`pitstore.offline.prune`): only those entries are decoded, each only
        within its span; every entry is still checked, so a damaged one marks its symbol whether it is read or
        not (the statuses of a pruned read are those of a full one). Returns damaged files by path: a compacted
        file damages every entry in it. ``keep=False``: the rows are not kept (one batch of a read larger than a
        batch: kept, it would only evict what repeated small reads reuse).
        """
        wanted = [(e, (None, None) if spans is None else spans[e.id]) for e in entries
                  if spans is None or e.id in spans]
        key = (("\0checked", *(f"{e.id}:{e.path}" for e in entries)),
               (*columns, "\0spans", *("" if spans is None else f"{e.id}:{b}" for e, b in wanted)))
        hit = self._memo.get(key)
        if hit is not None:  # only intact reads are cached: damage is re-checked and re-logged every time
            return cast(pl.DataFrame, hit), {}
        damaged: dict[str, str] = {}
        for e in {e.path: e for e in entries}.values():  # once per file: compacted entries share one
            what = self._check(e)
            if what is not None:
                damaged[e.path] = what
        good = [(e, b) for e, b in wanted if e.path not in damaged]
        rows = self._rows(good, columns, damaged) if good else None
        if keep and not damaged and rows is not None:
            self._memo.put(key, rows)
        for p, what in damaged.items():
            log.warning("damaged entry %s: %s; its symbol reads as 'damaged' (run `pitstore verify --repair`)",
                        p, what)
        return rows, damaged

    def _rows(self, wanted: Sequence[tuple[FeatureEntry, Span]], columns: Sequence[str],
              damaged: dict[str, str] | None) -> pl.DataFrame | None:
        """Decode ``wanted`` (entry, span), plain files together and each compacted file in one read; files that
        cannot be decoded go to ``damaged`` (None: raise CacheCorruptionError)."""
        plain = [(e, b) for e, b in wanted if not is_compacted(e.path)]
        packed: dict[str, list[tuple[FeatureEntry, Span]]] = {}
        for e, b in wanted:
            if is_compacted(e.path):
                packed.setdefault(e.path, []).append((e, b))
        pieces: list[tuple[pl.DataFrame, set[str]]] = []
        if plain:
            cut = any(b != (None, None) for _, b in plain)
            groups = _groups([e for e, _ in plain], [b for _, b in plain]) if cut else None
            try:
                pieces.append((_scan(self.storage, [e.path for e, _ in plain], columns, groups),
                               {e.symbol for e, _ in plain}))
            except _UNREADABLE as exc:
                if damaged is None:
                    raise CacheCorruptionError(f"stored entries cannot be read: {exc}") from exc
                for e, b in plain:  # find the undecodable ones (entries recorded without a hash)
                    try:
                        pieces.append((_scan(self.storage, [e.path], columns, [([e.path], b)] if cut else None),
                                       {e.symbol}))
                    except _UNREADABLE as one:
                        damaged[e.path] = f"undecodable: {one}"
        for path, own in packed.items():
            try:
                pieces.append((read_compacted(self.storage, path, own, columns), {e.symbol for e, _ in own}))
            except _UNREADABLE as exc:
                if damaged is None:
                    raise CacheCorruptionError(f"stored entry {path} is damaged ({exc}); run `pitstore verify"
                                               " --repair`") from exc
                damaged[path] = f"undecodable: {exc}"
        if not pieces:
            return None
        if len(pieces) == 1:
            return pieces[0][0]
        rows = pl.concat([p for p, _ in pieces], how="vertical").rechunk()
        seen: set[str] = set()
        shared = False
        for _, syms in pieces:
            shared = shared or not seen.isdisjoint(syms)
            seen |= syms
        # A symbol in several files (new entries since its compaction): back to time order within the symbol.
        return by_symbol_ts(rows) if shared else rows

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

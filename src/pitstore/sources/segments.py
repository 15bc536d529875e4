"""Bar snapshots as a base file plus appended segments, so an append of new bars writes only the new bars.

A :class:`~pitstore.catalog.base.BarEntry` without ``parts`` is one Parquet file (``path``) holding the symbol's
whole history. With ``parts`` it is the concatenation, in order, of the parts it lists: the first is the base (a
whole file, ``row_group`` -1), each later one a row group of a segment file. One segment file holds the appended
bars of every symbol of one ingest, one row group per symbol, so an append to 500 symbols writes one file and
commits one transaction. A snapshot stays a catalog row like any other: it supersedes its predecessor, and the
snapshot visible at ``as_known_at=t`` is the base plus the segments committed by ``t``.

A part records its rows and content hash, so a damaged part is found (verify) and named. The snapshot's
``content_hash`` is then :func:`chained_hash` over its parts' hashes (equal to the base's hash when there are no
segments): it identifies the content as stored, but is not :func:`pitstore.offline.entries.content_hash` of the whole
frame, so nothing compares the two.
"""

from __future__ import annotations

import bisect
import io
import json
import uuid
from collections.abc import Sequence
from typing import cast

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from pitstore.catalog.base import BarEntry, FeatureEntry
from pitstore.memo import BytesLRU
from pitstore.offline.entries import read_entries
from pitstore.storage import Storage

__all__ = ["Part", "PartReader", "chained_hash", "encode_parts", "entry_paths", "kept_bytes", "part_paths", "parts_of",
           "read_bars", "read_part", "read_tail", "read_tails", "write_base", "write_segment"]

WHOLE_FILE = -1
SEGMENT_DIR = "bars/_segments"
_ROW_GROUP_ROWS = 16_384  # as pitstore.offline.entries's entries: a part of a large append decodes only its groups


class Part:
    """One stored piece of a bar snapshot: a whole file, or ``n_rows`` rows from row ``offset`` of a segment."""

    __slots__ = ("content_hash", "n_rows", "offset", "path")

    def __init__(self, path: str, offset: int, n_rows: int, content_hash: str) -> None:
        self.path = path
        self.offset = offset  # WHOLE_FILE, or the first row of this part in its segment file
        self.n_rows = n_rows
        self.content_hash = content_hash

    def as_list(self) -> list[object]:
        return [self.path, self.offset, self.n_rows, self.content_hash]

    def __repr__(self) -> str:
        return f"Part({self.path!r}, {self.offset}, {self.n_rows}, {self.content_hash!r})"


def parts_of(entry: BarEntry) -> list[Part]:
    """The stored pieces of ``entry``, oldest bars first (one whole file for a snapshot without segments)."""
    if entry.parts is None:
        return [Part(entry.path, WHOLE_FILE, entry.n_rows, entry.content_hash)]
    return [Part(str(p), int(o), int(n), str(h)) for p, o, n, h in json.loads(entry.parts)]


def encode_parts(parts: Sequence[Part]) -> str:
    return json.dumps([p.as_list() for p in parts], separators=(",", ":"))


def part_paths(parts: str | None) -> list[str]:
    """The files an encoded ``parts`` column refers to (what gc must keep while the row exists)."""
    return [] if parts is None else [str(p[0]) for p in json.loads(parts)]


def chained_hash(parts: Sequence[Part]) -> str:
    """The snapshot hash of ``parts``: the one part's own hash, else xxh3-128 over their hashes in order."""
    if len(parts) == 1:
        return parts[0].content_hash
    return xxhash.xxh3_128(("chain:" + ",".join(p.content_hash for p in parts)).encode()).hexdigest()


def write_segment(storage: Storage, frames: Sequence[pl.DataFrame]) -> tuple[str, list[int]]:
    """Write ``frames`` (each one symbol's new bars) one after the other as one segment file; its path and the
    first row of each frame in it. Published atomically like every entry (:meth:`Storage.put`)."""
    sink = io.BytesIO()
    whole = pl.concat(frames, how="vertical", rechunk=True)
    whole.write_parquet(sink, compression="zstd", compression_level=1, statistics=True,
                        row_group_size=_ROW_GROUP_ROWS)
    path = f"{SEGMENT_DIR}/{uuid.uuid4().hex}.parquet"
    storage.put(path, sink.getbuffer())
    offsets = [0]
    for f in frames[:-1]:
        offsets.append(offsets[-1] + f.height)
    return path, offsets


TAIL_ROWS = 1_024  # a base's last row group: what an incremental backfill decodes of it (lookbacks are shorter)


def write_base(storage: Storage, relative_dir: str, df: pl.DataFrame) -> str:
    """Write ``df`` (one symbol's whole bars) as a base file under ``relative_dir``; its path. Row groups of
    16,384 rows as every entry, except that the last ``TAIL_ROWS`` bars are a group of their own: the tail an
    incremental backfill needs decodes little, however long the history."""
    sink = io.BytesIO()
    table = df.to_arrow()
    head = max(table.num_rows - TAIL_ROWS, 0)
    # Only the symbol is dictionary-encoded (pyarrow's default: every column): a dictionary of prices was half
    # the cost of writing a snapshot of 2,520 daily bars, and the file larger (synthetic bars, measured).
    with pq.ParquetWriter(sink, table.schema, compression="zstd", compression_level=1,
                          use_dictionary=["symbol"]) as w:
        if head:
            w.write_table(table.slice(0, head), row_group_size=_ROW_GROUP_ROWS)
        w.write_table(table.slice(head), row_group_size=TAIL_ROWS)
    path = f"{relative_dir}/{uuid.uuid4().hex}.parquet"
    storage.put(path, sink.getbuffer())
    return path


class PartReader:
    """Reads parts, each file's footer parsed once and each row group decoded once (many symbols' parts share
    one segment file, and their tails one base's last groups). ``keep``: where decoded row groups outlive this
    reader (files are immutable and uniquely named, so a group decoded by an earlier backfill of this process
    is still the group: a base's tail is decoded once per base, not once per append). Values in ``keep`` are
    (value, bytes) pairs: make it with ``sizeof=kept_bytes``."""

    def __init__(self, storage: Storage, columns: Sequence[str] | None = None, keep: BytesLRU | None = None) -> None:
        self.storage = storage
        self.columns = list(columns) if columns is not None else None
        self.keep = keep
        self._files: dict[str, tuple[pq.ParquetFile, list[int]]] = {}  # path -> file, first row of each group
        self._groups: dict[tuple[str, int], tuple[pl.DataFrame, np.ndarray]] = {}  # frame, ts in µs

    def _file(self, path: str) -> tuple[pq.ParquetFile, list[int]]:
        got = self._files.get(path)
        if got is None:
            f = pq.ParquetFile(pa.BufferReader(self.storage.read_buffer(path)))
            starts = [0]
            for g in range(f.metadata.num_row_groups):
                starts.append(starts[-1] + f.metadata.row_group(g).num_rows)
            got = self._files[path] = (f, starts)
        return got

    def groups(self, path: str) -> list[int]:
        """First row of each row group of ``path``, and its row count last."""
        key = ("starts", path)
        kept = self.keep.get(key) if self.keep is not None else None
        if kept is not None:
            return cast(list[int], kept[0])
        starts = self._file(path)[1]
        if self.keep is not None:
            self.keep.put(key, (starts, 8 * len(starts)))
        return starts

    def group(self, path: str, g: int) -> pl.DataFrame:
        return self._group(path, g)[0]

    def _group(self, path: str, g: int) -> tuple[pl.DataFrame, np.ndarray]:
        got = self._groups.get((path, g))
        if got is not None:
            return got
        key = ("group", path, g, None if self.columns is None else tuple(self.columns))
        kept = self.keep.get(key) if self.keep is not None else None
        if kept is not None:
            got = self._groups[(path, g)] = cast(tuple[pl.DataFrame, np.ndarray], kept[0])
            return got
        df = pl.from_arrow(self._file(path)[0].read_row_group(g, columns=self.columns))
        assert isinstance(df, pl.DataFrame)
        got = self._groups[(path, g)] = (df, df["ts"].dt.epoch("us").to_numpy())
        if self.keep is not None:
            self.keep.put(key, (got, int(df.estimated_size()) + got[1].nbytes))
        return got

    def rows(self, path: str, first: int, n: int) -> pl.DataFrame:
        """Rows ``first`` to ``first + n`` of ``path``, decoding only the row groups they lie in."""
        return self._rows(path, first, n)[0]

    def _rows(self, path: str, first: int, n: int) -> tuple[pl.DataFrame, np.ndarray]:
        starts = self.groups(path)
        lo = max(bisect.bisect_right(starts, first) - 1, 0)
        frames, epochs = [], []
        g = lo
        while g < len(starts) - 1 and starts[g] < first + n:
            df, ep = self._group(path, g)
            frames.append(df)
            epochs.append(ep)
            g += 1
        if len(frames) == 1:
            df, ep = frames[0], epochs[0]
        else:
            df, ep = pl.concat(frames, how="vertical_relaxed"), np.concatenate(epochs)
        at = first - starts[lo]
        return df.slice(at, n), ep[at:at + n]

    def part(self, part: Part) -> pl.DataFrame:
        if part.offset == WHOLE_FILE:
            df = read_entries(self.storage, [part.path], self.columns)
            assert df is not None
            return df
        return self.rows(part.path, part.offset, part.n_rows)


def kept_bytes(value: tuple[object, int]) -> int:
    """The size of a value :class:`PartReader` keeps (stored next to it)."""
    return value[1]


def read_part(storage: Storage, part: Part, columns: Sequence[str] | None = None) -> pl.DataFrame:
    """The bars of one part."""
    return PartReader(storage, columns).part(part)


def read_bars(storage: Storage, entries: Sequence[BarEntry], columns: Sequence[str] | None = None
              ) -> pl.DataFrame | None:
    """The bars of ``entries``, concatenated in order (each entry's base then its segments); None when empty."""
    if not entries:
        return None
    bases = read_entries(storage, [e.path for e in entries], columns)  # one scan of every base, as before
    assert bases is not None
    if all(e.parts is None for e in entries):
        return bases
    reader = PartReader(storage, columns)
    frames: list[pl.DataFrame] = []
    at = 0
    for e in entries:
        parts = parts_of(e)
        frames.append(bases.slice(at, parts[0].n_rows))
        at += parts[0].n_rows
        frames.extend(reader.part(p) for p in parts[1:])
    return pl.concat(frames, how="vertical_relaxed").rechunk()


def read_tail(reader: PartReader, entry: BarEntry, after_us: int, keep: int) -> tuple[pl.DataFrame, int]:
    """The bars of ``entry`` from the ``keep``-th last bar dated at or before ``after_us`` on (all of them when
    there are fewer), read from the newest parts back, a base file only from its last row groups; and the
    absolute position (bars before it in the snapshot) of the first bar returned."""
    df, (position,) = read_tails(reader, [(entry, after_us)], keep)
    return df, position


def read_tails(reader: PartReader, tails: Sequence[tuple[BarEntry, int]], keep: int
               ) -> tuple[pl.DataFrame, list[int]]:
    """:func:`read_tail` of many snapshots (each with its ``after_us``), concatenated in order, and the position
    of each one's first bar: per snapshot only slices and counts (one concatenation at the end), since an append
    to 500 symbols reads 500 tails of a few bars each."""
    pieces: list[pl.DataFrame] = []
    positions: list[int] = []
    for entry, after_us in tails:
        mine: list[tuple[pl.DataFrame, np.ndarray]] = []
        older = 0  # bars read dated at or before after_us
        for part in reversed(parts_of(entry)):
            # A base's groups newest first, each decoded only when the bars after it do not suffice.
            got = iter([reader._rows(part.path, part.offset, part.n_rows)]) if part.offset != WHOLE_FILE else (
                reader._group(part.path, g) for g in range(len(reader.groups(part.path)) - 2, -1, -1))
            for df, ep in got:
                mine.append((df, ep))
                older += int(np.count_nonzero(ep <= after_us))
                if older >= keep:
                    break
            if older >= keep:
                break
        mine.reverse()
        extra = max(older - keep, 0)  # the oldest bars read that no window reaches
        positions.append(entry.n_rows - sum(df.height for df, _ in mine) + extra)
        for df, _ in mine:
            if extra >= df.height:
                extra -= df.height
                continue
            pieces.append(df.slice(extra) if extra else df)
            extra = 0
    return pl.concat(pieces, how="vertical_relaxed").rechunk(), positions


def entry_paths(entry: BarEntry | FeatureEntry) -> list[str]:
    """Every file a catalog row refers to: a feature entry's one file, a bar snapshot's base and segments."""
    if isinstance(entry, BarEntry) and entry.parts is not None:
        return list(dict.fromkeys([entry.path, *part_paths(entry.parts)]))
    return [entry.path]

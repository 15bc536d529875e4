"""Bar snapshots as a base file plus appended segments, so an append of new bars writes only the new bars.

A :class:`~pitstore.catalog.base.BarEntry` without ``parts`` is one Parquet file (``path``) holding the symbol's
whole history. With ``parts`` it is the concatenation, in order, of the parts it lists: the first is the base (a
whole file, ``row_group`` -1), each later one a row group of a segment file. One segment file holds the appended
bars of every symbol of one ingest, one row group per symbol, so an append to 500 symbols writes one file and
commits one transaction. A snapshot stays a catalog row like any other: it supersedes its predecessor, and the
snapshot visible at ``as_known_at=t`` is the base plus the segments committed by ``t``.

A part records its rows and content hash, so a damaged part is found (verify) and named. The snapshot's
``content_hash`` is then :func:`chained_hash` over its parts' hashes (equal to the base's hash when there are no
segments): it identifies the content as stored, but is not :func:`pitstore.offline.content_hash` of the whole
frame, so nothing compares the two.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Sequence

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash

from pitstore.catalog.base import BarEntry, FeatureEntry
from pitstore.offline import read_entries
from pitstore.storage import Storage

__all__ = ["Part", "chained_hash", "encode_parts", "entry_paths", "part_paths", "parts_of", "read_bars", "read_part",
           "read_tail", "write_segment"]

WHOLE_FILE = -1
SEGMENT_DIR = "bars/_segments"


class Part:
    """One stored piece of a bar snapshot."""

    __slots__ = ("content_hash", "n_rows", "path", "row_group")

    def __init__(self, path: str, row_group: int, n_rows: int, content_hash: str) -> None:
        self.path = path
        self.row_group = row_group  # WHOLE_FILE, or the row group of a segment file
        self.n_rows = n_rows
        self.content_hash = content_hash

    def as_list(self) -> list[object]:
        return [self.path, self.row_group, self.n_rows, self.content_hash]

    def __repr__(self) -> str:
        return f"Part({self.path!r}, {self.row_group}, {self.n_rows}, {self.content_hash!r})"


def parts_of(entry: BarEntry) -> list[Part]:
    """The stored pieces of ``entry``, oldest bars first (one whole file for a snapshot without segments)."""
    if entry.parts is None:
        return [Part(entry.path, WHOLE_FILE, entry.n_rows, entry.content_hash)]
    return [Part(str(p), int(g), int(n), str(h)) for p, g, n, h in json.loads(entry.parts)]


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
    """Write ``frames`` (each one symbol's new bars) as one segment file, a row group each; its path and the
    row group of each frame. Published atomically like every entry (:meth:`Storage.put`)."""
    sink = io.BytesIO()
    tables = [f.to_arrow() for f in frames]
    schema = tables[0].schema
    with pq.ParquetWriter(sink, schema, compression="zstd", compression_level=1, write_statistics=True) as w:
        for t in tables:
            w.write_table(t.cast(schema), row_group_size=max(t.num_rows, 1))
    path = f"{SEGMENT_DIR}/{uuid.uuid4().hex}.parquet"
    storage.put(path, sink.getbuffer())
    return path, list(range(len(tables)))


def read_part(storage: Storage, part: Part, columns: Sequence[str] | None = None,
              row_groups: Sequence[int] | None = None) -> pl.DataFrame:
    """The bars of one part (``row_groups``: only those of a whole file)."""
    if part.row_group == WHOLE_FILE and row_groups is None:
        df = read_entries(storage, [part.path], columns)
        assert df is not None
        return df
    f = pq.ParquetFile(pa.BufferReader(storage.read_buffer(part.path)))
    groups = [part.row_group] if part.row_group != WHOLE_FILE else list(row_groups or [])
    table = f.read_row_groups(groups, columns=list(columns) if columns is not None else None)
    return pl.from_arrow(table)  # type: ignore[return-value]


def read_bars(storage: Storage, entries: Sequence[BarEntry], columns: Sequence[str] | None = None
              ) -> pl.DataFrame | None:
    """The bars of ``entries``, concatenated in order (each entry's base then its segments); None when empty."""
    if not entries:
        return None
    if all(e.parts is None for e in entries):  # one scan of whole files, as before segments
        return read_entries(storage, [e.path for e in entries], columns)
    frames = [read_part(storage, p, columns) for e in entries for p in parts_of(e)]
    return pl.concat(frames, how="vertical_relaxed").rechunk()


def read_tail(storage: Storage, entry: BarEntry, after_us: int, keep: int, columns: Sequence[str] | None = None
              ) -> tuple[pl.DataFrame, int]:
    """The bars of ``entry`` from the ``keep``-th last bar dated at or before ``after_us`` on (all of them when
    there are fewer), read from the newest parts back, a base file only from its last row groups; and the
    absolute position (bars before it in the snapshot) of the first bar returned."""
    frames: list[pl.DataFrame] = []
    older = 0  # bars read dated at or before after_us
    position = entry.n_rows

    def take(df: pl.DataFrame) -> bool:
        nonlocal older, position
        frames.append(df)
        position -= df.height
        older += int((df["ts"].dt.epoch("us") <= after_us).sum())
        return older >= keep

    done = False
    for part in reversed(parts_of(entry)):
        if part.row_group != WHOLE_FILE:
            done = take(read_part(storage, part, columns))
        else:
            groups = pq.ParquetFile(pa.BufferReader(storage.read_buffer(part.path))).metadata.num_row_groups
            for g in range(groups - 1, -1, -1):
                if take(read_part(storage, part, columns, [g])):
                    done = True
                    break
        if done:
            break
    frames.reverse()
    df = pl.concat(frames, how="vertical_relaxed").rechunk()
    return df, position


def entry_paths(entry: BarEntry | FeatureEntry) -> list[str]:
    """Every file a catalog row refers to: a feature entry's one file, a bar snapshot's base and segments."""
    if isinstance(entry, BarEntry) and entry.parts is not None:
        return list(dict.fromkeys([entry.path, *part_paths(entry.parts)]))
    return [entry.path]

"""Content hashes of data: xxh3-128 over every byte of the Arrow buffers, at memory speed.

Used for bar snapshots and compute-cache keys. Every value of every column is hashed (no sampling, no
footer hashing): two frames that differ in one cell anywhere have different hashes. The hash depends on
the values, types and names only, not on chunking or slicing, so equal data always hashes equally.
"""

from __future__ import annotations

import time
from typing import NamedTuple

import pyarrow as pa
import xxhash

__all__ = ["HASH_METHOD", "DataHash", "file_hash", "table_hash"]

HASH_METHOD = "xxh3-128"


class DataHash(NamedTuple):
    hex: str
    nbytes: int  # bytes fed to the hash
    seconds: float


def _fixed_width(t: pa.DataType) -> int | None:
    """Bytes per value for types stored as one contiguous value buffer (numbers, times), else None."""
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_temporal(t):
        width: int = t.bit_width
        return width // 8 if width % 8 == 0 else None
    return None


def _offset_width(t: pa.DataType) -> int | None:
    if pa.types.is_string(t) or pa.types.is_binary(t):
        return 4
    if pa.types.is_large_string(t) or pa.types.is_large_binary(t):
        return 8
    return None


def _hash_column(h: xxhash.xxh3_128, col: pa.ChunkedArray) -> int:
    width = _fixed_width(col.type)
    if width is not None and col.null_count == 0:
        # Zero-copy fast path: the value bytes of each chunk, in order (equal to the concatenated column).
        n = 0
        for chunk in col.chunks:
            view = memoryview(chunk.buffers()[1])[chunk.offset * width:(chunk.offset + len(chunk)) * width]
            h.update(view)
            n += len(view)
        return n
    ow = _offset_width(col.type)
    if ow is not None and col.null_count == 0 and col.num_chunks == 1 and col.chunks[0].offset == 0:
        # Zero-copy for one unsliced string chunk whose offsets start at 0 (the usual case).
        _, offsets, data = col.chunks[0].buffers()
        offs = memoryview(offsets).cast("B")[: (len(col) + 1) * ow].cast("q" if ow == 8 else "i")
        if offs[0] == 0:
            h.update(offs)
            h.update(memoryview(data)[: offs[-1]] if data is not None else b"")
            return offs.nbytes + offs[-1]
    array = col.combine_chunks()
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    array = pa.concat_arrays([array])  # compacted: offset 0, offsets rebased, no bytes of neighbouring rows
    n = 0
    for buf in array.buffers():
        if buf is not None:
            h.update(memoryview(buf))
            n += buf.size
    return n


def table_hash(table: pa.Table) -> DataHash:
    """xxh3-128 of ``table``'s names, types and every value (see the module docstring)."""
    t0 = time.perf_counter()
    h = xxhash.xxh3_128()
    n = 0
    for name, col in zip(table.column_names, table.columns, strict=True):
        h.update(f"{name}\x00{col.type}\x00{len(col)}\x00{col.null_count};".encode())
        n += _hash_column(h, col)
    return DataHash(h.hexdigest(), n, time.perf_counter() - t0)


def file_hash(data: bytes | memoryview | pa.Buffer) -> str:
    """xxh3-128 of a file's bytes (entries record it to detect corruption and truncation)."""
    return xxhash.xxh3_128_hexdigest(memoryview(data))

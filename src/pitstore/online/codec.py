"""The binary encoding of one online row, shared by the SQLite and Redis backends.

Layout, little-endian: ``u8`` format version (1), ``i64`` ts, a null bitmap of ceil(n/8) bytes (bit i set:
value i is null), then n ``f64`` values (0.0 in null slots). Null and NaN stay distinct, NaN round-trips as
NaN. The number of values follows from the length, so a row carries no column count.

>>> decode(encode(1_700_000_000_000_000, [1.5, None, float("inf")]))
OnlineRow(ts=1700000000000000, values=(1.5, None, inf))
"""

from __future__ import annotations

import json
import struct
from collections.abc import Sequence

from pitstore.errors import BackendError, InvalidInputError
from pitstore.online.base import OnlineRow

__all__ = ["TS_OFFSET", "decode", "decode_columns", "encode", "encode_columns"]

_VERSION = 1
TS_OFFSET = 1
"""Byte offset of the i64 ts (Redis' Lua script reads it there)."""

# Per value count: the Struct, the all-valid bitmap. Filled lazily, a few entries per process.
_layouts: dict[int, tuple[struct.Struct, bytes]] = {}
_by_length: dict[int, tuple[struct.Struct, bytes]] = {}
_new_row = tuple.__new__  # builds an OnlineRow without NamedTuple's Python-level __new__ (decode is the hot path)


def _layout(n: int) -> tuple[struct.Struct, bytes]:
    layout = _layouts.get(n)
    if layout is None:
        nb = (n + 7) // 8
        layout = _layouts[n] = (struct.Struct(f"<Bq{nb}s{n}d"), bytes(nb))
        _by_length[layout[0].size] = layout
    return layout


def _layout_of_length(length: int) -> tuple[struct.Struct, bytes]:
    # size(n) = 9 + ceil(n/8) + 8n grows strictly with n, so at most one n fits a length.
    n = max(0, (length - 9) * 8 // 65)
    while 9 + (n + 7) // 8 + 8 * n < length:
        n += 1
    layout = _layout(n)
    if layout[0].size != length:
        raise BackendError(f"corrupt online row: {length} bytes is not a valid row length")
    return layout


def encode(ts: int, values: Sequence[float | None], symbol: str | None = None) -> bytes:
    """Encode one row; values may be any real numbers (ints, numpy floats) or None. ``symbol`` only names
    the row in an error."""
    st, valid = _layout(len(values))
    try:
        if None not in values:
            return st.pack(_VERSION, ts, valid, *values)
        bits = 0
        floats: list[float] = []
        for i, v in enumerate(values):  # a plain loop: measured faster than comprehensions here
            if v is None:
                bits |= 1 << i
                floats.append(0.0)
            else:
                floats.append(v)
        return st.pack(_VERSION, ts, bits.to_bytes(len(valid), "little"), *floats)
    except struct.error as exc:
        raise InvalidInputError(f"values must be real numbers or None ({exc})", symbol=symbol, value=values) from exc


def decode(data: bytes) -> OnlineRow:
    """Decode one row written by :func:`encode`."""
    st, valid = _by_length.get(len(data)) or _layout_of_length(len(data))
    fields = st.unpack(data)
    if fields[0] != _VERSION:
        raise BackendError(f"online row has unknown format version {fields[0]}")
    if fields[2] == valid:
        return _new_row(OnlineRow, (fields[1], fields[3:]))
    values: list[float | None] = list(fields[3:])
    bits = int.from_bytes(fields[2], "little")
    while bits:  # one pass per null, not per value
        low = bits & -bits
        values[low.bit_length() - 1] = None
        bits ^= low
    return _new_row(OnlineRow, (fields[1], tuple(values)))


def encode_columns(columns: Sequence[str]) -> str:
    """The stored form of a column list (compact JSON, compared as text)."""
    return json.dumps(list(columns), separators=(",", ":"), ensure_ascii=False)


def decode_columns(text: str | bytes) -> tuple[str, ...]:
    return tuple(json.loads(text))

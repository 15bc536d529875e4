"""The online tier's interface: the latest feature vector per (table, symbol), and the input checks every
backend shares."""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from typing import Any, NamedTuple, Protocol

from pitstore.errors import InvalidInputError, SchemaMismatchError
from pitstore.sources.bars import validate_symbol

__all__ = [
    "MAX_TS",
    "InputRow",
    "OnlineRow",
    "OnlineStore",
    "check_put",
    "latest_per_symbol",
    "schema_mismatch",
    "validate_columns",
    "validate_expire",
    "validate_table_id",
]

# Redis compares timestamps inside Lua, whose numbers are doubles: integers are exact up to 2**53
# microseconds (the year 2255), so every backend accepts that range and no more.
MAX_TS = 2**53

InputRow = tuple[str, int, Sequence[float | None]]
"""One row to write: symbol, ts (integer microseconds since the epoch, UTC), values in column order."""


class OnlineRow(NamedTuple):
    """The stored latest row of one symbol."""

    ts: int
    """Bar close time, integer microseconds since the epoch, UTC."""
    values: tuple[float | None, ...]
    """In the table's column order; None is null, distinct from NaN."""


class OnlineStore(Protocol):
    """Latest row per (table_id, symbol). table_id names a feature set version, e.g. ``"daily_core@3"``."""

    def put_latest(
        self,
        table_id: str,
        columns: Sequence[str],
        rows: Sequence[InputRow],
        *,
        expire_seconds: float | None = None,
    ) -> int:
        """Store per symbol the row with the greatest ts; an older row never overwrites a newer one (an equal
        ts does). Returns how many rows were written. ``columns`` are fixed once written for a table_id (a
        different list raises SchemaMismatchError). ``expire_seconds`` only bounds memory."""
        ...

    def get_latest(self, table_id: str, symbols: Sequence[str]) -> list[OnlineRow | None]:
        """The latest row of each symbol, in input order; None when missing, expired or evicted."""
        ...

    def columns(self, table_id: str) -> tuple[str, ...] | None:
        """The column names of ``table_id``, None when nothing was written to it."""
        ...

    def delete(self, table_id: str, symbols: Sequence[str] | None = None) -> int:
        """Delete rows of ``symbols`` (all rows and the column list when None); returns rows deleted."""
        ...

    def ping(self) -> None:
        """Raise BackendUnavailableError when the backend cannot be reached."""
        ...

    def change_token(self) -> object | None:
        """A value that differs after any write to the store, by any process, was committed (equal values: no
        write in between), cheap enough to ask on every request; None when the backend has no such token (a
        caller then cannot keep answers and must read)."""
        ...

    def touch(self, table_id: str, symbols: Sequence[str]) -> None:
        """Record that ``symbols`` were read (answered from a copy the caller kept): the LRU bound sees them."""
        ...

    def close(self) -> None:
        """Release connections; the store is unusable afterwards."""
        ...


def validate_table_id(table_id: object) -> str:
    """Return ``table_id`` if it can name a table: printable, no whitespace, no ``:`` (a key separator)."""
    if not isinstance(table_id, str) or not table_id or len(table_id) > 200:
        raise InvalidInputError("table_id must be a non-empty string of at most 200 characters", value=table_id)
    if ":" in table_id or not table_id.isprintable() or any(c.isspace() for c in table_id):
        raise InvalidInputError("table_id must be printable, without whitespace or ':'", value=table_id)
    return table_id


def validate_columns(columns: Sequence[str]) -> tuple[str, ...]:
    """Return ``columns`` as a tuple of at least one distinct non-empty string."""
    cols = tuple(columns)
    if not cols or not all(isinstance(c, str) and c for c in cols):
        raise InvalidInputError("columns must be one or more non-empty strings", value=cols)
    if len(set(cols)) != len(cols):
        raise InvalidInputError("column names must be distinct", value=cols)
    return cols


def validate_expire(expire_seconds: float | None) -> float | None:
    """Return ``expire_seconds`` if it is None or a positive finite number of seconds."""
    if expire_seconds is not None and not (isinstance(expire_seconds, int | float) and 0 < expire_seconds < math.inf):
        raise InvalidInputError("expire_seconds must be a positive number of seconds", value=expire_seconds)
    return expire_seconds


def check_put(
    table_id: str, columns: Sequence[str], rows: Sequence[InputRow], expire_seconds: float | None
) -> tuple[tuple[str, ...], list[tuple[str, int, Sequence[float | None]]]]:
    """Check the arguments of ``put_latest``; returns the columns and the row to write per symbol."""
    validate_table_id(table_id)
    validate_expire(expire_seconds)
    cols = validate_columns(columns)
    return cols, list(latest_per_symbol(rows, len(cols)).values())


def schema_mismatch(table_id: str, stored: Sequence[str], given: Sequence[str]) -> SchemaMismatchError:
    return SchemaMismatchError(
        f"online table {table_id!r} has columns {list(stored)}, a write gave {list(given)}; "
        "delete the table or write a new version"
    )


def latest_per_symbol(rows: Sequence[InputRow], n_columns: int) -> dict[str, InputRow]:
    """Check ``rows`` and keep the one with the greatest ts per symbol (the last one on equal ts, as a
    later write of the same bar replaces an earlier one)."""
    best: dict[str, InputRow] = {}
    for i, row in enumerate(rows):
        try:
            symbol, raw_ts, values = row
        except (TypeError, ValueError) as exc:
            raise InvalidInputError("a row must be (symbol, ts, values)", row=i, value=row) from exc
        validate_symbol(symbol, row=i)
        ts = _as_ts(raw_ts)
        if ts is None:
            raise InvalidInputError(
                "ts must be integer microseconds since the epoch within +-2**53", column="ts", symbol=symbol, row=i,
                value=raw_ts,
            )
        if isinstance(values, str | bytes) or len(values) != n_columns:
            raise InvalidInputError(f"a row must have {n_columns} values, one per column", symbol=symbol, row=i,
                                    value=values)
        kept = best.get(symbol)
        if kept is None or ts >= kept[1]:
            best[symbol] = (symbol, ts, values)
    return best


def _as_ts(value: Any) -> int | None:
    """``value`` as an int timestamp (numpy ints too; never floats or bools), None when it is not one."""
    if isinstance(value, bool):
        return None
    try:
        ts = operator.index(value)
    except TypeError:
        return None
    return ts if -MAX_TS <= ts <= MAX_TS else None

"""In-process online store: a dict with true LRU eviction, for one process (tests, notebooks, a single server)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

from pitstore.errors import ConfigError, InvalidInputError
from pitstore.online.base import InputRow, OnlineRow, check_put, schema_mismatch, validate_table_id

__all__ = ["MemoryOnlineStore"]


class MemoryOnlineStore:
    """Thread-safe; holds at most ``max_items`` rows across tables and evicts the least recently read or
    written first. ``expire_seconds`` is accepted and ignored: the bound already limits memory."""

    def __init__(self, *, max_items: int = 1_000_000) -> None:
        if isinstance(max_items, bool) or not isinstance(max_items, int) or max_items < 1:
            raise ConfigError(f"max_items must be a positive integer, got {max_items!r}")
        self._max_items = max_items
        self._rows: OrderedDict[tuple[str, str], OnlineRow] = OrderedDict()
        self._columns: dict[str, tuple[str, ...]] = {}
        self._lock = threading.Lock()
        self._generation = 0  # bumped by every write, eviction and delete: the change token

    def put_latest(
        self,
        table_id: str,
        columns: Sequence[str],
        rows: Sequence[InputRow],
        *,
        expire_seconds: float | None = None,
    ) -> int:
        cols, latest = check_put(table_id, columns, rows, expire_seconds)
        new = [(symbol, OnlineRow(ts, _floats(values, symbol))) for symbol, ts, values in latest]
        written = 0
        with self._lock:
            stored = self._columns.setdefault(table_id, cols)
            if stored != cols:
                raise schema_mismatch(table_id, stored, cols)
            self._generation += 1
            for symbol, row in new:
                key = (table_id, symbol)
                old = self._rows.get(key)
                if old is None or row.ts >= old.ts:
                    self._rows[key] = row
                    self._rows.move_to_end(key)
                    written += 1
            while len(self._rows) > self._max_items:
                self._rows.popitem(last=False)
        return written

    def get_latest(self, table_id: str, symbols: Sequence[str]) -> list[OnlineRow | None]:
        rows = self._rows
        out: list[OnlineRow | None] = []
        with self._lock:
            for symbol in symbols:
                key = (table_id, symbol)
                row = rows.get(key)
                if row is not None:
                    rows.move_to_end(key)
                out.append(row)
        return out

    def columns(self, table_id: str) -> tuple[str, ...] | None:
        return self._columns.get(table_id)

    def delete(self, table_id: str, symbols: Sequence[str] | None = None) -> int:
        validate_table_id(table_id)
        with self._lock:
            if symbols is None:
                self._columns.pop(table_id, None)
                keys = [k for k in self._rows if k[0] == table_id]
            else:
                keys = [k for k in ((table_id, s) for s in set(symbols)) if k in self._rows]
            for key in keys:
                del self._rows[key]
            self._generation += 1
        return len(keys)

    def change_token(self) -> int:
        """The write generation: only this process writes this tier."""
        return self._generation

    def touch(self, table_id: str, symbols: Sequence[str]) -> None:
        rows = self._rows
        with self._lock:
            for symbol in symbols:
                key = (table_id, symbol)
                if key in rows:
                    rows.move_to_end(key)

    def ping(self) -> None:
        """Always reachable."""

    def close(self) -> None:
        with self._lock:
            self._rows.clear()
            self._columns.clear()
            self._generation += 1


def _floats(values: Sequence[float | None], symbol: str) -> tuple[float | None, ...]:
    """``values`` as floats, as the binary codec of the other backends would store them."""
    try:
        # Floats, what a push and a materialize write, pass as they are: this runs once per value written.
        return tuple([v if type(v) is float else _float(v) for v in values])
    except (TypeError, ValueError) as exc:
        raise InvalidInputError(f"values must be real numbers or None ({exc})", symbol=symbol, value=values) from exc


def _float(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str | bytes):
        raise TypeError("a string is not a number")
    return float(v)

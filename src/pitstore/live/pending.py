"""Rows pushed in this process and not yet in the offline tier: the live engine adds them, reads answer from them.

They are newer than every stored row of their symbol, so a read that finds one available needs no other tier.
One lock guards them: the engine's push thread adds, its flush thread drops, readers of any thread look up.
"""

from __future__ import annotations

import threading
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from operator import itemgetter

__all__ = ["PendingRows", "PushedRow"]

PushedRow = tuple[int, tuple[float | None, ...]]  # (ts µs, every column of the version)


class PendingRows:
    """Per table (``name@version``) and symbol, the pushed rows in ts order."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rows: dict[str, dict[str, list[PushedRow]]] = {}

    def add(self, table_id: str, rows: Iterable[tuple[str, int, tuple[float | None, ...]]]) -> None:
        """Append ``(symbol, ts, values)`` rows; each symbol's rows are newer than its rows already here."""
        with self._lock:
            table = self._rows.setdefault(table_id, {})
            for symbol, ts, values in rows:
                table.setdefault(symbol, []).append((ts, values))

    def last(self, table_id: str, symbol: str) -> PushedRow | None:
        """The newest row of ``symbol``, if any."""
        with self._lock:
            rows = self._rows.get(table_id, {}).get(symbol)
            return rows[-1] if rows else None

    def asof(self, table_id: str, symbol: str, bound: int) -> PushedRow | None:
        """The row of ``symbol`` with the greatest ts ``<= bound`` (:func:`pitstore.rules.asof_bound`), if any."""
        with self._lock:
            rows = self._rows.get(table_id, {}).get(symbol)
            if not rows:
                return None
            i = bisect_right(rows, bound, key=itemgetter(0))
            return rows[i - 1] if i else None

    def upto(self, table_id: str, upto: Mapping[str, int]) -> dict[str, list[PushedRow]]:
        """Per symbol of ``upto``, its rows with ts at or before ``upto[symbol]`` (those a flush stores)."""
        with self._lock:
            table = self._rows.get(table_id, {})
            return {s: [r for r in table.get(s, []) if r[0] <= t] for s, t in upto.items()}

    def drop_upto(self, table_id: str, upto: Mapping[str, int]) -> None:
        """Forget the rows :meth:`upto` gives, once stored; rows pushed since stay."""
        with self._lock:
            table = self._rows.get(table_id)
            if table is None:
                return
            for s, t in upto.items():
                rest = [r for r in table.get(s, []) if r[0] > t]
                if rest:
                    table[s] = rest
                else:
                    table.pop(s, None)

    def newest(self) -> dict[str, int]:
        """Per table with rows here, the ts of its newest one."""
        with self._lock:
            return {t: max(rows[-1][0] for rows in table.values()) for t, table in self._rows.items() if table}

    def snapshot(self, table_ids: Sequence[str] | None = None) -> dict[str, dict[str, list[PushedRow]]]:
        """A copy of the rows (of ``table_ids``, all when None), tables without rows left out."""
        with self._lock:
            return {t: {s: list(r) for s, r in table.items()} for t, table in self._rows.items()
                    if table and (table_ids is None or t in table_ids)}

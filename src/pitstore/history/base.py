"""What the history tier's callers share without its driver: the backend protocol, the row shape, the scope of a
store's tables and the tombstone column (``pitstore.history.postgres`` needs psycopg; importing this does not)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, Protocol

__all__ = ["TOMBSTONE", "AsofRow", "HistoryBackend", "StoreScope"]

AsofRow = tuple[int, tuple[float | None, ...]]
"""``(ts, values)`` of one stored row, values in the table's column order."""

TOMBSTONE = "tombstone"
"""The boolean column that marks tombstones in ``scan(all_versions=True)`` (and in tiering's archives)."""


class StoreScope(NamedTuple):
    """The tables a ``PostgresHistory`` sees: one store's, each of one definition."""

    store_id: str
    """The store's identity (non-empty), kept in its catalog."""
    fingerprint: Callable[[str], str | None]
    """The fingerprint of a table_id's definition in this store; None when the store has no such version."""
    adopt: Callable[[str], bool]
    """Whether an unscoped table of this table_id (written before schema version 3) holds this store's rows."""


class HistoryBackend(Protocol):
    """Bitemporal feature rows of many tables ("feature_set@version"): what the history tier
    (:class:`pitstore.history.recent.HistoryTier`) and tiering need of a backend. :class:`PostgresHistory` is the
    real one; :class:`pitstore.history.memory.MemoryHistory` answers the same in this process, so the logic
    above it (which entries are synced, when the tier may answer) is tested without a server too. The semantics
    are :class:`PostgresHistory`'s docstrings'; :mod:`pitstore.testing.history` checks each backend against
    them. Times are integer µs since the epoch, UTC."""

    def migrate(self) -> None:
        """Create or upgrade what the backend needs; idempotent. Other calls before it raise BackendError."""
        ...

    def tables(self) -> list[str]:
        """Every table_id of the scope ever written, sorted."""
        ...

    def columns(self, table_id: str) -> tuple[str, ...] | None:
        """The fixed feature column list of ``table_id``; None when it was never written."""
        ...

    def write(self, table_id: str, columns: Sequence[str], rows: Any, *, recorded_at: int | None = None,
              replaces: Sequence[tuple[str, int, int]] = ()) -> int:
        """Store ``rows`` (symbol, ts, columns) as versions recorded at ``recorded_at`` (default: now), rows
        absent from a replaced span tombstoned, all or nothing; returns the versions newly stored."""
        ...

    def delete_before(self, table_id: str, ts: int) -> int:
        """Delete every version of the rows with ``ts`` before ``ts``; returns the count."""
        ...

    def delete_versions(self, table_id: str, keys: Any) -> int:
        """Delete exactly the versions ``keys`` (symbol, ts, recorded_at) names; returns the count."""
        ...

    def asof(self, table_id: str, symbol: str, t: int, *, lag: int = 0,
             as_known_at: int | None = None) -> AsofRow | None:
        """The row with the greatest ``ts`` such that ``ts + lag <= t``, as known at ``as_known_at``."""
        ...

    def asof_many(self, table_id: str, symbols: Sequence[str], ts: Sequence[int], *, lag: int = 0,
                  as_known_at: int | None = None) -> list[AsofRow | None]:
        """:meth:`asof` for each ``(symbols[i], ts[i])``, in input order."""
        ...

    def latest(self, table_id: str, symbols: Sequence[str]) -> list[AsofRow | None]:
        """The latest row of each symbol, in input order."""
        ...

    def scan(self, table_id: str, *, symbols: Sequence[str] | None = None, start: int | None = None,
             end: int | None = None, as_known_at: int | None = None, all_versions: bool = False) -> Any:
        """Rows with ``start <= ts <= end`` as a pyarrow Table (see :meth:`PostgresHistory.scan`)."""
        ...

    def window_start(self, table_id: str) -> int | None:
        """The smallest ts of a row held (tombstoned rows not counted); None when empty."""
        ...

    def ping(self) -> None:
        """Raise BackendUnavailableError when the backend cannot be reached."""
        ...

    def close(self) -> None:
        """Release what it holds; later calls raise BackendError. Idempotent."""
        ...

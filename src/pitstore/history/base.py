"""What the history tier's callers share without its driver: the row shape, the scope of a store's tables and
the tombstone column (``pitstore.history.postgres`` needs psycopg; importing this does not)."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

__all__ = ["TOMBSTONE", "AsofRow", "StoreScope"]

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

"""The history tier: recent feature rows in PostgreSQL, bitemporal, indexed for one-seek as-of lookups.

``PostgresHistory`` needs psycopg (``pip install 'pitstore[postgres]'``): it is imported when first used."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pitstore.history.base import AsofRow

if TYPE_CHECKING:
    from pitstore.history.postgres import SCHEMA_VERSION, PostgresHistory

__all__ = ["SCHEMA_VERSION", "AsofRow", "PostgresHistory"]


def __getattr__(name: str) -> Any:
    if name in ("PostgresHistory", "SCHEMA_VERSION"):
        from pitstore.deps import need

        return getattr(need("pitstore.history.postgres", "postgres", "the history tier"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

"""The history tier: recent feature rows in PostgreSQL, bitemporal, indexed for one-seek as-of lookups."""

from __future__ import annotations

from pitstore.history.postgres import SCHEMA_VERSION, AsofRow, PostgresHistory

__all__ = ["SCHEMA_VERSION", "AsofRow", "PostgresHistory"]

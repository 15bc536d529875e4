"""Catalogs: the relational manifest of a store (registry of feature sets and versions, entries)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from pitstore.catalog.base import Catalog, VersionRow
from pitstore.catalog.memory import MemoryCatalog, memory_state_name
from pitstore.catalog.sqlite import SqliteCatalog
from pitstore.deps import missing

if TYPE_CHECKING:
    from pitstore.cache.lock import ProcessLocks
    from pitstore.config import Settings

__all__ = ["Catalog", "MemoryCatalog", "SqliteCatalog", "VersionRow", "open_catalog", "shared_locks"]


def open_catalog(settings: Settings, *, read_only: bool) -> Catalog:
    """The catalog the settings name: PostgreSQL when ``catalog_url`` is a postgresql:// URL (team mode), this
    process's memory for ``memory://[name]``, else the SQLite file under the root."""
    if settings.catalog_url and settings.catalog_url.startswith("memory:"):
        return MemoryCatalog(memory_state_name(settings.catalog_url, settings.root), read_only=read_only)
    if settings.catalog_url:
        try:  # psycopg only when a team store is opened
            from pitstore.catalog.postgres import PostgresCatalog
        except ImportError as exc:
            raise missing("postgres", "a catalog in PostgreSQL (catalog_url)", exc) from exc
        return PostgresCatalog(settings.catalog_url, schema=settings.catalog_schema, read_only=read_only)
    return SqliteCatalog(settings.catalog_path, timeout=settings.lock_timeout, read_only=read_only)


def shared_locks(catalog: Catalog, name: str) -> ProcessLocks | None:
    """Single-flight locks of ``name`` keys that every machine using ``catalog`` sees (PostgreSQL advisory locks);
    None for an embedded catalog, whose processes share file locks under the root instead."""
    key_locks = getattr(catalog, "key_locks", None)  # only a PostgreSQL catalog has them (no driver import here)
    return key_locks(name) if callable(key_locks) else None

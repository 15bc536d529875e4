"""Catalogs: the relational manifest of a store (registry of feature sets and versions, entries)."""

from pitstore.catalog.base import Catalog, VersionRow
from pitstore.catalog.sqlite import SqliteCatalog

__all__ = ["Catalog", "SqliteCatalog", "VersionRow"]

"""The catalog as one call of a distributed read saw it, shipped to Dask workers (which never open the catalog).

It answers the few catalog queries a point-in-time join asks (:func:`pitstore.offline.reads.get_historical` through
:class:`pitstore.features.registry.Registry`), so workers run the local engine's join code unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from pitstore.catalog.base import Catalog, FeatureEntry, VersionRow

__all__ = ["CatalogSnapshot"]


@dataclass
class CatalogSnapshot:
    """Versions of some feature sets and their feature entries visible at one knowledge time."""

    versions_by_name: dict[str, list[VersionRow]] = field(default_factory=dict)
    entries: dict[tuple[str, int], list[FeatureEntry]] = field(default_factory=dict)
    # Read-only: :func:`pitstore.catalog.versions.reading` then creates no lease file on a worker (the client
    # holds one).
    mode: str = "ro"

    def versions(self, name: str) -> list[VersionRow]:
        return list(self.versions_by_name.get(name, []))

    def names(self) -> list[str]:
        return sorted(self.versions_by_name)

    def feature_entries(self, feature_set: str, version: int, symbols: Sequence[str] | None = None,
                        as_known_at: int | None = None) -> list[FeatureEntry]:
        """The snapshot's entries (listed at the call's ``as_known_at`` already), of ``symbols`` when given."""
        rows = self.entries.get((feature_set, version), [])
        if symbols is None:
            return list(rows)
        wanted = set(symbols)
        return [e for e in rows if e.symbol in wanted]

    def as_catalog(self) -> Catalog:
        """Typed as the Catalog protocol for the read path, which asks only what this class answers."""
        return cast(Catalog, self)

"""The Store facade: the one object users call. Thin: it resolves settings and delegates."""

from __future__ import annotations

import os
from pathlib import Path
from types import TracebackType
from typing import Any

from pitstore.catalog.sqlite import SqliteCatalog
from pitstore.config import Settings
from pitstore.features.base import FeatureSet
from pitstore.features.registry import FeatureRef, Registry, VersionInfo

__all__ = ["Store"]


class Store:
    """A pitstore store: catalog, registry and (in later tiers) data.

    >>> import tempfile
    >>> from pitstore import Store, standard_features
    >>> with Store.open(tempfile.mkdtemp()) as store:
    ...     store.register(standard_features())
    1
    """

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.catalog = SqliteCatalog(settings.catalog_path, timeout=settings.lock_timeout)
        self.registry = Registry(self.catalog)

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, **settings: Any) -> Store:
        """Open (creating if needed) the embedded store at ``path``, ``PITSTORE_ROOT`` or ``./pitstore-data``."""
        if path is not None:
            settings["root"] = Path(path)
        return cls(Settings.load(**settings))

    @property
    def root(self) -> Path:
        return self.settings.root

    def register(self, feature_set: FeatureSet) -> int:
        """Register a feature set; returns its version (unchanged when the definition is already known)."""
        return self.registry.register(feature_set)

    def versions(self, name: str) -> list[VersionInfo]:
        """Every registered version of a feature set, oldest first."""
        return self.registry.versions(name)

    def resolve(self, ref: str) -> FeatureRef:
        """Resolve a reference such as ``"daily_core@2:rsi_14"`` (no ``@`` means the latest version)."""
        return self.registry.resolve(ref)

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

"""The catalog interface that every catalog backend implements."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

__all__ = ["Catalog", "VersionRow"]


@dataclass(frozen=True)
class VersionRow:
    """One registered version of a feature set, as stored."""

    name: str
    version: int
    fingerprint: str
    definition: str  # canonical JSON of the definition
    created_at: str  # ISO-8601 UTC


class Catalog(Protocol):
    """Transactions over feature sets and versions."""

    def register_version(self, name: str, fingerprint: str, definition: str) -> VersionRow:
        """Return the version with this fingerprint, creating the next integer version if new (atomic)."""
        ...

    def versions(self, name: str) -> list[VersionRow]:
        """All versions of ``name``, oldest first (empty when unknown)."""
        ...

    def names(self) -> list[str]:
        """Names of every registered feature set."""
        ...

    def close(self) -> None: ...

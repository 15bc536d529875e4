"""The catalog interface that every catalog backend implements."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple, Protocol

__all__ = ["BarEntry", "Catalog", "FeatureEntry", "VersionRow"]


class BarEntry(NamedTuple):
    """The full bar history of one symbol as one immutable Parquet file (a snapshot)."""

    id: int
    symbol: str
    path: str  # relative to the store root
    n_rows: int
    first_ts: int  # microseconds since the epoch, UTC
    last_ts: int
    content_hash: str
    appended_only: bool  # the previous snapshot's bars are unchanged in this one
    restated_rows: int  # bars of the previous snapshot that changed or disappeared
    recorded_at: int
    superseded_at: int | None


class FeatureEntry(NamedTuple):
    """One immutable segment of computed feature rows of one symbol, for one feature-set version."""

    id: int
    feature_set: str
    version: int
    symbol: str
    path: str
    n_rows: int
    first_ts: int
    last_ts: int
    bars_entry_id: int  # the bar snapshot it was computed from
    recorded_at: int
    superseded_at: int | None


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

    def live_bars(self, symbols: Sequence[str] | None = None, as_known_at: int | None = None) -> list[BarEntry]:
        """The bar snapshot of each symbol visible at ``as_known_at`` (now when None)."""
        ...

    def bar_history(self, symbol: str, after_id: int) -> list[BarEntry]:
        """Bar snapshots of ``symbol`` newer than ``after_id``, oldest first."""
        ...

    def commit_bars(self, entry: BarEntry, expected_live_id: int | None) -> BarEntry:
        """Publish a bar snapshot, superseding the live one (ConflictError if it is not ``expected_live_id``)."""
        ...

    def feature_entries(
        self, feature_set: str, version: int, symbols: Sequence[str] | None = None, as_known_at: int | None = None
    ) -> list[FeatureEntry]:
        """Feature entries visible at ``as_known_at`` (now when None), by symbol then time."""
        ...

    def commit_features(self, entry: FeatureEntry, *, supersede: Sequence[int], expected_live: Sequence[int]) -> bool:
        """Publish a feature entry unless the symbol's live entries changed meanwhile (then False)."""
        ...

    def close(self) -> None: ...

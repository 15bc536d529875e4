"""The Store facade: the one object users call. Thin: it resolves settings and delegates."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any

from pitstore import backfill as _backfill
from pitstore import ingest as _ingest
from pitstore import reads
from pitstore.catalog.sqlite import SqliteCatalog
from pitstore.config import Settings
from pitstore.errors import InvalidInputError
from pitstore.features.base import FeatureSet
from pitstore.features.registry import FeatureRef, Registry, VersionInfo
from pitstore.frames import FrameKind, frame_kind, from_polars
from pitstore.offline import EntryReader

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
        self.reader = EntryReader(settings.root)

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

    def ingest(self, bars: Any) -> _ingest.IngestReport:
        """Validate and store bars (a pandas / polars / Arrow frame, or a Parquet or CSV path).

        Nothing is stored when any bar is invalid. Bars overlapping stored ones replace them for that symbol
        and range; changed values are recorded as a restatement (see ``IngestReport.restated``).
        """
        return _ingest.ingest(self.root, self.catalog, bars)

    def backfill(
        self,
        feature_set: FeatureSet,
        symbols: Sequence[str] | str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        progress: Callable[[int], None] | None = None,
    ) -> _backfill.BackfillReport:
        """Compute and store ``feature_set`` for every (or the given) symbol; only what changed is computed.

        ``end`` limits the bars used (as if later ones were not known yet); ``start`` the rows written
        (values are still computed from the full history). ``progress`` is called with 1 per symbol done.
        """
        version = self.register(feature_set)
        return _backfill.backfill(
            self.root, self.catalog, feature_set, version, symbols=_symbols(symbols),
            start=_aware(start, "start"), end=_aware(end, "end"), progress=progress,
        )

    def get_historical(
        self,
        entities: Any,
        features: str | Sequence[str],
        *,
        as_known_at: datetime | None = None,
        output: FrameKind | None = None,
    ) -> Any:
        """Features as of each (symbol, ts) of ``entities``: one row per input row, in input order.

        Extra entity columns pass through; ``status`` says ``ok``, ``stale``, ``no_data_yet`` or
        ``unknown_symbol``. ``as_known_at`` replays what the store knew then (before later restatements).
        """
        out = reads.get_historical(self.reader, self.catalog, self.registry, entities, features, as_known_at)
        return from_polars(out, output or frame_kind(entities))

    def read(
        self,
        features: str | Sequence[str],
        symbols: Sequence[str] | str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        as_known_at: datetime | None = None,
        output: FrameKind = "polars",
    ) -> Any:
        """The stored feature rows in ``[start, end]``; identical whatever ``start`` is (no warm-up effects)."""
        out = reads.read_range(self.reader, self.catalog, self.registry, features, _symbols(symbols),
                               _aware(start, "start"), _aware(end, "end"), as_known_at)
        return from_polars(out, output)

    def symbols(self) -> list[str]:
        """Symbols with stored bars."""
        return [e.symbol for e in self.catalog.live_bars()]

    def stats(self) -> dict[str, Any]:
        """Counts of symbols, bars, entries and bytes on disk."""
        counts = self.catalog.counts()
        size = sum(p.stat().st_size for p in self.root.rglob("*.parquet"))
        return {"root": str(self.root), "feature_sets": self.registry.names(), **counts, "bytes_on_disk": size}

    def close(self) -> None:
        self.catalog.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _symbols(symbols: Sequence[str] | str | None) -> list[str] | None:
    return [symbols] if isinstance(symbols, str) else (list(symbols) if symbols is not None else None)


def _aware(t: datetime | None, name: str) -> datetime | None:
    if t is not None and t.tzinfo is None:
        raise InvalidInputError(f"{name} is timezone-naive; give a timezone-aware UTC datetime", value=t)
    return t

"""The Store facade: the one object users call. Thin: it resolves settings and delegates."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import replace
from datetime import datetime, time
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import polars as pl

from pitstore import scale
from pitstore.cache import CachedCompute, ComputeCache, WarmReport
from pitstore.catalog import open_catalog, retention, shared_locks
from pitstore.catalog import versions as _versions
from pitstore.catalog.versions import VersionSummary
from pitstore.config import Settings
from pitstore.errors import ConfigError, InvalidInputError, NotFoundError, ReadOnlyStoreError
from pitstore.features.base import Feature, FeatureSet
from pitstore.features.catalogue import build_feature, parse_indicator
from pitstore.features.library import standard_features
from pitstore.features.ondemand import indicator_rows
from pitstore.features.registry import FeatureRef, Registry
from pitstore.frames import Frame, FrameKind, frame_kind, from_polars
from pitstore.history import tiering
from pitstore.live.engine import LiveEngine, PushReport
from pitstore.live.marker import reconcile as reconcile_dead_pushers
from pitstore.offline import backfill as _backfill
from pitstore.offline import compact as _compact
from pitstore.offline import reads
from pitstore.offline.carry import Carry
from pitstore.offline.entries import EntryReader
from pitstore.online.serving import FeatureVector, Serving
from pitstore.ops import housekeeping
from pitstore.scale.results import HistoricalDataset
from pitstore.sources import ingest as _ingest
from pitstore.sources.layout import BarLayout
from pitstore.sources.resample import resample_bars
from pitstore.sources.segments import read_bars
from pitstore.storage import open_storage
from pitstore.timeutil import utc

if TYPE_CHECKING:  # optional extras: their types only (pandas-stubs; pitstore[dask], pitstore[hdf5])
    import pandas as pd
    import pyarrow as pa

    from pitstore.sources.legacy.hdf5 import ImportReport

__all__ = ["Store"]

R = TypeVar("R")  # raw data of a cached compute
C = TypeVar("C")  # its config
T = TypeVar("T")  # its result

# Frame-returning methods are overloaded so that a typed caller sees the frame family it gets: the one passed in,
# or the one named by ``output=``. pyarrow ships no type information, so ``pa.Table`` is Any to mypy (Arrow in or
# out types as Any until it does); polars and pandas are exact.


class Store:
    """A pitstore store: catalog, registry and (in later tiers) data.

    >>> import tempfile
    >>> from pitstore import Store, standard_features
    >>> with Store.open(tempfile.mkdtemp()) as store:
    ...     store.register(standard_features())
    1
    """

    def __init__(self, settings: Settings) -> None:
        # settings.read_only is decided here (None: from the root's permissions), so every component sees a bool.
        self.settings = settings = replace(settings, read_only=settings.refuses_writes)
        self.catalog = open_catalog(settings, read_only=self.read_only)
        self.registry = Registry(self.catalog)
        self.storage = open_storage(settings.data_url, settings.root, settings.storage_options)  # the data files
        self.reader = EntryReader(settings.root, settings.entry_cache_bytes, self.storage)
        # TA-Lib features' state between this process's backfills: appends resume instead of recomputing.
        self.carry = Carry()
        self.cache = ComputeCache(settings.root, self.catalog, cost_per_compute_second=settings.cost_per_compute_second,
                                  cost_per_data_call=settings.cost_per_data_call, read_only=self.read_only,
                                  locks=shared_locks(self.catalog, "cache"), memory_bytes=settings.entry_cache_bytes,
                                  storage=self.storage)
        self._serving: Serving | None = None
        self._live: LiveEngine | None = None
        self._defined: dict[str, tuple[FeatureSet, int]] = {}  # feature sets registered by this process

    @classmethod
    def open(cls, path: str | os.PathLike[str] | None = None, **settings: Any) -> Store:
        """Open (creating if needed) the store at ``path``, ``PITSTORE_ROOT`` or ``./pitstore-data``.

        ``catalog_url="postgresql://host/db?schema=name"`` (or ``PITSTORE_CATALOG_URL``) puts the catalog in
        PostgreSQL (team mode: every process on every machine that opens the same catalog shares the store);
        ``data_url="s3://bucket/prefix"`` (or ``PITSTORE_DATA_URL``; any fsspec URL, or a local directory) puts
        the data files there, ``data_options`` configures its filesystem. Without ``data_url`` the data files
        are under ``path``; with it, ``path`` keeps only this machine's local state (locks, the online file)."""
        if path is not None:
            settings["root"] = os.fspath(path)  # not Path(): it would fold "s3://b" into "s3:/b" (see root_path)
        return cls(Settings.load(**settings))

    @property
    def root(self) -> Path:
        return self.settings.root

    @property
    def read_only(self) -> bool:
        """Whether this store refuses writes (ReadOnlyStoreError) and writes nothing under its root, reads included:
        the ``read_only`` setting, by default True exactly when the root or its catalog is not writable here."""
        return bool(self.settings.read_only)

    def _writes(self, operation: str) -> None:
        """Called first by every operation that writes: nothing stored is touched when the store is read-only."""
        if self.read_only:
            raise ReadOnlyStoreError(self.root, operation)

    def register(self, feature_set: FeatureSet) -> int:
        """Register a feature set; returns its version (unchanged when the definition is already known)."""
        self._writes(f"register feature set {getattr(feature_set, 'name', feature_set)!r}")
        version = self.registry.register(feature_set)
        self._defined[feature_set.name] = (feature_set, version)
        return version

    def versions(self, name: str) -> list[VersionSummary]:
        """Every readable version of a feature set, oldest first, with what the store holds of each: entries,
        rows, bytes, symbols, whether online or history-tier rows use it (see :mod:`pitstore.catalog.versions`)."""
        return _versions.summaries(self.storage, self.catalog, self.registry.versions(name), lambda: self.serving)

    def cleanup_versions(self, name: str, *, max_versions: int, dry_run: bool = False) -> _versions.CleanupReport:
        """Retire the versions of ``name`` beyond the newest ``max_versions`` with stored entries, with their
        files; a version a reader holds right now (its lease) is left alone and reported ``busy``."""
        self.registry.versions(name)  # FeatureSetNotFoundError for an unknown name
        return _versions.cleanup(self.root, self.catalog, max_versions=max_versions, names=[name], dry_run=dry_run,
                                 storage=self.storage)

    def hold_version(self, ref: str) -> AbstractContextManager[None]:
        """``with store.hold_version("daily_core@2"):`` no cleanup or gc deletes that version inside the block
        (a long job reading it many times); VersionNotFoundError when it is retired already."""
        r = self.resolve(ref)
        return _versions.reading(self.root, self.catalog, r.feature_set, r.version)

    def resolve(self, ref: str) -> FeatureRef:
        """Resolve a reference such as ``"daily_core@2:rsi_14"`` (no ``@`` means the latest version)."""
        return self.registry.resolve(ref)

    def ingest(self, bars: Any, *, replace_range: bool = False, columns: Mapping[str, str] | None = None,
               tz: str | None = None, close_time: time | str | None = None,
               symbol: str | None = None) -> _ingest.IngestReport:
        """Validate and store bars (a pandas / polars / Arrow frame, or a Parquet or CSV path), all or nothing.

        Nothing is stored when any bar is invalid or any symbol fails to be written or committed. A bar with
        the same (symbol, ts) as a stored one replaces it; other stored bars are kept. Changed values are
        recorded as a restatement (``IngestReport.restated``); the old snapshots stay readable with
        ``as_known_at``. With ``replace_range=True`` each symbol's bars replace all its stored bars between
        their first and last ts; ``IngestReport.removed`` counts the stored bars that are gone. Bars dated more
        than the ``max_future_days`` setting after now are refused.

        Vendor layouts: ``columns`` maps source names to bar columns (``{"Date": "ts", "Adj Close": "close"}``;
        ``Open``, ``HIGH``, ``Volume``, ``Symbol``, a single ``Date``/``Timestamp``/``Datetime`` match in any case
        without it), ``tz`` is the zone of naive timestamps, ``close_time`` (in ``tz``) the time a date-only ts
        stands for (required for date-only ts: a date at midnight would leak the day's close into that day),
        ``symbol`` the symbol of a one-symbol source without a symbol column.
        See :class:`pitstore.sources.layout.BarLayout`.
        """
        self._writes("ingest bars")
        layout = BarLayout(dict(columns or {}), tz, close_time, symbol)
        return _ingest.ingest(self.root, self.catalog, bars, replace_range=replace_range,
                              max_future=self.settings.max_future, layout=layout, storage=self.storage,
                              max_segments=self.settings.bar_segments)

    def backfill(
        self,
        feature_set: FeatureSet,
        symbols: Sequence[str] | str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        progress: Callable[[int], None] | None = None,
        engine: str = "local",
        scheduler: Any = None,
        partition_rows: int | None = None,
    ) -> _backfill.BackfillReport:
        """Compute and store ``feature_set`` for every (or the given) symbol; only what changed is computed.

        ``end`` limits the bars used (as if later ones were not known yet); ``start`` the rows written
        (values are still computed from the full history). ``progress`` is called with 1 per symbol done.
        ``engine="dask"`` computes and writes on a Dask cluster (``scheduler``: None for the current Client or a
        local cluster, an address, or a Client; tasks of whole symbols, about ``partition_rows`` bars each) and
        commits here; the same entries as the local engine (:mod:`pitstore.scale`, ``pitstore[dask]``).
        """
        self._writes(f"backfill feature set {feature_set.name!r}")
        _engine(engine, scheduler, partition_rows)
        version = self.register(feature_set)
        args = (self.storage, self.catalog, feature_set, version)
        kwargs: dict[str, Any] = {"symbols": _symbols(symbols), "start": _aware(start, "start"),
                                  "end": _aware(end, "end"), "progress": progress}
        if engine == "dask":
            report: _backfill.BackfillReport = scale.backfill(*args, **kwargs, scheduler=scheduler,
                                                              **_partition(partition_rows))
        else:
            # A backfill that would leave more loose entries than compaction allows writes compacted files itself.
            report = _backfill.backfill(*args, **kwargs, pack_above=_compact.AUTO_ENTRIES,
                                         carry=self.carry)
        if report.full or report.incremental:
            # Many small entries make every cold read open many files: fold them into few (pitstore.offline.compact).
            _compact.compact(self.root, self.storage, self.catalog, feature_set=feature_set.name, version=version,
                             min_entries=_compact.AUTO_ENTRIES + 1)
        if report.full:
            # Recomputed symbols (restatements): the serving tiers must not keep serving the old values.
            self.serving.refresh(feature_set.name, version, report.full)
        return report

    def _known_at(self, as_known_at: datetime | None) -> datetime | None:
        """``as_known_at`` checked: timezone-aware, and not before what the retained entries replay exactly
        (RetentionError naming ``retention_days`` otherwise: pitstore.catalog.retention)."""
        known = _aware(as_known_at, "as_known_at")
        retention.check_known_at(self.catalog, self.settings.retention_days, known)
        return known

    @overload
    def get_historical(
        self, entities: pl.DataFrame | pl.LazyFrame, features: str | Sequence[str], *,
        as_known_at: datetime | None = None, output: None = None, engine: Literal["local"] = "local",
        scheduler: None = None, out: None = None, partitions: None = None,
    ) -> pl.DataFrame: ...
    @overload
    def get_historical(
        self, entities: pd.DataFrame, features: str | Sequence[str], *, as_known_at: datetime | None = None,
        output: None = None, engine: Literal["local"] = "local", scheduler: None = None, out: None = None,
        partitions: None = None,
    ) -> pd.DataFrame: ...
    @overload
    def get_historical(
        self, entities: object, features: str | Sequence[str], *, as_known_at: datetime | None = None,
        output: Literal["polars"], engine: str = "local", scheduler: Any = None, out: None = None,
        partitions: int | None = None,
    ) -> pl.DataFrame: ...
    @overload
    def get_historical(
        self, entities: object, features: str | Sequence[str], *, as_known_at: datetime | None = None,
        output: Literal["pandas"], engine: str = "local", scheduler: Any = None, out: None = None,
        partitions: int | None = None,
    ) -> pd.DataFrame: ...
    @overload
    def get_historical(
        self, entities: object, features: str | Sequence[str], *, as_known_at: datetime | None = None,
        output: Literal["arrow"], engine: str = "local", scheduler: Any = None, out: None = None,
        partitions: int | None = None,
    ) -> pa.Table: ...
    @overload
    def get_historical(
        self, entities: object, features: str | Sequence[str], *, as_known_at: datetime | None = None,
        output: FrameKind | None = None, engine: Literal["dask"], scheduler: Any = None,
        out: str | os.PathLike[str], partitions: int | None = None,
    ) -> HistoricalDataset: ...
    @overload
    def get_historical(
        # Arrow entities (Any to mypy), a Dask DataFrame or a Parquet dataset path (engine="dask"): the frame family
        # then depends on what is passed at run time.
        self, entities: Any, features: str | Sequence[str], *, as_known_at: datetime | None = None,
        output: FrameKind | None = None, engine: str = "local", scheduler: Any = None,
        out: str | os.PathLike[str] | None = None, partitions: int | None = None,
    ) -> Frame | HistoricalDataset: ...
    def get_historical(
        self,
        entities: Any,
        features: str | Sequence[str],
        *,
        as_known_at: datetime | None = None,
        output: FrameKind | None = None,
        engine: str = "local",
        scheduler: Any = None,
        out: str | os.PathLike[str] | None = None,
        partitions: int | None = None,
    ) -> Frame | HistoricalDataset:
        """Features as of each (symbol, ts) of ``entities``: one row per input row, in input order.

        ``engine="dask"`` (``pitstore[dask]``): ``entities`` a Dask DataFrame or a Parquet dataset path, joined
        on a Dask cluster (``scheduler`` as for :meth:`backfill`) in ``partitions`` partitions by symbol; the
        local engine's answer, or with ``out="dir/"`` written there by the workers as a Parquet dataset with an
        ``input_row`` column (nothing gathered here; returns a :class:`pitstore.HistoricalDataset`).

        Extra entity columns pass through, untouched: one named ``status``, ``status_<set>`` or like an output
        feature column is refused (InvalidInputError naming them). ``status`` says ``ok``, ``stale``,
        ``no_data_yet``, ``unknown_symbol`` or ``damaged`` (the symbol's stored entry is missing, truncated or
        does not match its hash: values null, a warning logged naming the file; other symbols are answered).
        With several feature sets ``status`` is the worst over them and ``status_<set>`` (``status_<set>@<v>``
        for two versions of one set) gives each set's own. ``as_known_at`` replays what the store knew then
        (before later restatements).
        """
        _engine(engine, scheduler, partitions, out)
        known = self._known_at(as_known_at)
        if engine == "dask":
            dask_out: Frame | HistoricalDataset = scale.get_historical(
                self.root, self.catalog, self.registry, entities, features, known,
                                        scheduler=scheduler, out=out, partitions=partitions, output=output,
                                        storage=self.storage)
            return dask_out
        rows = reads.get_historical(self.reader, self.catalog, self.registry, entities, features, known,
                                    batch_bytes=self.settings.read_batch_bytes)
        return from_polars(rows, output or frame_kind(entities))

    @overload
    def read(self, features: str | Sequence[str], symbols: Sequence[str] | str | None = None,
             start: datetime | None = None, end: datetime | None = None, *, as_known_at: datetime | None = None,
             output: Literal["polars"] = "polars") -> pl.DataFrame: ...
    @overload
    def read(self, features: str | Sequence[str], symbols: Sequence[str] | str | None = None,
             start: datetime | None = None, end: datetime | None = None, *, as_known_at: datetime | None = None,
             output: Literal["pandas"]) -> pd.DataFrame: ...
    @overload
    def read(self, features: str | Sequence[str], symbols: Sequence[str] | str | None = None,
             start: datetime | None = None, end: datetime | None = None, *, as_known_at: datetime | None = None,
             output: Literal["arrow"]) -> pa.Table: ...
    @overload
    def read(self, features: str | Sequence[str], symbols: Sequence[str] | str | None = None,
             start: datetime | None = None, end: datetime | None = None, *, as_known_at: datetime | None = None,
             output: FrameKind) -> Frame: ...
    def read(
        self,
        features: str | Sequence[str],
        symbols: Sequence[str] | str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        as_known_at: datetime | None = None,
        output: FrameKind = "polars",
    ) -> Frame:
        """The stored feature rows in ``[start, end]``; identical whatever ``start`` is (no warm-up effects).

        A symbol whose stored entry is damaged is not read: the frame then gets a ``status`` column, ``ok`` on
        the rows read and ``damaged`` on one row per such symbol (ts and values null); a warning names the file.
        """
        out = reads.read_range(self.reader, self.catalog, self.registry, features, _symbols(symbols),
                               _aware(start, "start"), _aware(end, "end"), self._known_at(as_known_at),
                               on_damage="status", batch_bytes=self.settings.read_batch_bytes)
        return from_polars(out, output)

    def iter_read(
        self,
        features: str | Sequence[str],
        symbols: Sequence[str] | str | None = None,
        start: datetime | None = None,
        end: datetime | None = None,
        *,
        as_known_at: datetime | None = None,
        output: FrameKind = "polars",
    ) -> Iterator[Frame]:
        """:meth:`read`'s rows as frames of consecutive symbols (in order), each of about the ``read_batch_bytes``
        setting, decoded as it is asked for: a read larger than memory, streamed. A frame holding a damaged
        symbol has the ``status`` column (``ok`` rows, one ``damaged`` row for that symbol), the others none."""
        for out in reads.iter_range(self.reader, self.catalog, self.registry, features, _symbols(symbols),
                                    _aware(start, "start"), _aware(end, "end"), self._known_at(as_known_at),
                                    on_damage="status", batch_bytes=self.settings.read_batch_bytes):
            yield from_polars(out, output)

    # --- compute cache --------------------------------------------------------------------------------

    # The result comes back as the frame family compute returned (a polars LazyFrame is stored collected).
    @overload
    def get_or_compute(self, symbol: str, raw: R, config: C, compute: Callable[[R, C], pl.DataFrame | pl.LazyFrame],
                       *, wait_timeout: float | None = None) -> pl.DataFrame: ...
    @overload
    def get_or_compute(self, symbol: str, raw: R, config: C, compute: Callable[[R, C], T], *,
                       wait_timeout: float | None = None) -> T: ...
    def get_or_compute(
        self, symbol: str, raw: Any, config: Any, compute: Callable[[Any, Any], Any], *,
        wait_timeout: float | None = None,
    ) -> Any:
        """``compute(raw, config)``, computed once and afterwards read from the store, by any process.

        The key covers the symbol, raw's first and last timestamp and full content (xxh3-128 of every byte),
        the canonical ``config`` and the code of ``compute`` with the helpers it calls: change any of them and
        it is a new computation, never a stale result. Concurrent callers of one key wait for one compute.
        """
        return self.cache.get_or_compute(symbol, raw, config, compute, wait_timeout=wait_timeout)

    @overload
    def cached(self, fn: Callable[[R, C], pl.DataFrame | pl.LazyFrame]) -> CachedCompute[R, C, pl.DataFrame]: ...
    @overload
    def cached(self, fn: Callable[[R, C], T]) -> CachedCompute[R, C, T]: ...
    def cached(self, fn: Callable[[Any, Any], Any]) -> CachedCompute[Any, Any, Any]:
        """Decorator: ``fn(raw, config)`` goes through :meth:`get_or_compute`; call it as
        ``fn(raw, config, symbol=...)`` (``symbol`` defaults to raw's single ``symbol`` value)."""
        return self.cache.cached(fn)

    def warm_cache(
        self, symbols: Sequence[str] | str | None, configs: Sequence[Any], compute: Callable[[Any, Any], Any], *,
        load: Callable[[str], Any] | None = None, progress: Callable[[int], None] | None = None,
    ) -> WarmReport:
        """Precompute ``compute(raw, config)`` for each symbol (all stored ones when None) and config.

        ``load(symbol)`` gives the raw frame; by default the symbol's stored bars (a polars frame).
        Already stored keys are skipped, so an interrupted nightly run resumes where it stopped.
        """
        self._writes("warm the compute cache")
        chosen = _symbols(symbols) or (self.symbols() if symbols is None else [])
        return self.cache.warm(chosen, load or self.bars, configs, compute, progress=progress)

    def clear(self, symbol: str | None = None) -> int:
        """Delete cached results of ``symbol`` (all when None); returns how many were deleted."""
        self._writes("delete compute-cache entries")
        return self.cache.clear(symbol)

    def invalidate(self, feature_set: str | None = None, symbols: Sequence[str] | str | None = None, *,
                   online: bool = True, cache: bool = False) -> dict[str, int]:
        """Drop online rows of ``feature_set`` (a reference; every set and version when None) for ``symbols``
        (all when None): the next read refills them from the offline tier. With ``cache``, also delete the
        compute-cache entries of those symbols. Returns how many of each were dropped."""
        self._writes("invalidate online rows or cache entries")
        chosen = _symbols(symbols)
        done = {"online_rows": 0, "cache_entries": 0}
        if online:
            if feature_set is not None:
                ref = self.resolve(feature_set)
                tables = [f"{ref.feature_set}@{ref.version}"]
            else:
                tables = [f"{n}@{v.version}" for n in self.registry.names() for v in self.registry.versions(n)]
            done["online_rows"] = sum(self.serving.online.delete(t, chosen) for t in tables)
        if cache:
            done["cache_entries"] = (self.cache.clear() if chosen is None
                                     else sum(self.cache.clear(s) for s in chosen))
        return done

    def cleanup_old_entries(self, days_old: float) -> int:
        """Delete cached results not accessed within ``days_old`` days; returns how many."""
        self._writes("clean up compute-cache entries")
        return self.cache.cleanup_old_entries(days_old)

    def gc(
        self, *, retention_weeks: float | None = None, max_versions: int | None = None, dry_run: bool = False,
        orphan_grace_seconds: float = housekeeping.ORPHAN_GRACE_SECONDS,
    ) -> housekeeping.GcReport:
        """Garbage-collect: cache entries not accessed within ``retention_weeks``, bar snapshots and feature
        entries superseded more than the ``retention_days`` setting ago (``as_known_at`` cannot go back that far:
        :mod:`pitstore.catalog.retention`), files no catalog row refers to, rows whose file is gone, feature-set
        versions beyond the newest ``max_versions``; then VACUUM. Safe while other processes use the store. ``dry_run``
        reports what it would do and changes nothing."""
        self._writes("garbage-collect (gc, dry runs included: they take the locks gc takes)")
        return housekeeping.gc(self.root, self.catalog, self.cache, retention_weeks=retention_weeks,
                               max_versions=max_versions, dry_run=dry_run, orphan_grace_seconds=orphan_grace_seconds,
                               superseded_before=retention.gc_horizon(self.settings.retention_days))

    def compact(self, feature_set: str | FeatureSet | None = None, *, dry_run: bool = False) -> _compact.CompactReport:
        """Rewrite the live entries of each version (of ``feature_set``; all when None) that has more than one
        outside compacted files into few large files sorted by symbol (:mod:`pitstore.offline.compact`). No answer
        changes, ``as_known_at`` ones included; safe while other processes read and write."""
        self._writes("compact feature entries")
        name = feature_set.name if isinstance(feature_set, FeatureSet) else feature_set
        return _compact.compact(self.root, self.storage, self.catalog, feature_set=name, dry_run=dry_run)

    def verify(self, *, repair: bool = False, feature_sets: Sequence[FeatureSet] = ()) -> housekeeping.VerifyReport:
        """Check every entry's file against the catalog (exists, size, hash); ``report.ok`` when all pass.

        ``repair``: recompute broken feature entries from the stored bars (their definitions are the
        ``feature_sets`` given, those registered in this process and the standard set: Python code cannot be
        rebuilt from the catalog), replace a broken bar snapshot by the newest older intact one, drop what cannot
        be rebuilt; ``report.repaired``, ``dropped`` and ``unrepairable`` say what happened to each.
        """
        if repair:
            self._writes("repair entries (verify --repair)")
        # The built-in standard set is pitstore's own code: always rebuildable (matched by fingerprint).
        known = [*feature_sets, *(fs for fs, _ in self._defined.values()), standard_features()]
        return housekeeping.verify(self.root, self.catalog, self.cache, repair=repair, feature_sets=known)

    def import_hdf5(self, paths: Sequence[str | os.PathLike[str]] | str | os.PathLike[str], *, tz: str | None = None,
                    timeframe: str | None = None) -> ImportReport:
        """Import the HDF5 files of older in-house stores (hash-named ``AAPL_b1686acd.h5`` or the partitioned
        ``features/<set>/symbol=.../version=v1/...`` layout): bars are ingested, feature tables become a set of
        kind "imported", one version per legacy version (see :mod:`pitstore.sources.legacy.hdf5`). A file holding a
        pickle outside pandas' own types is refused before it is opened. Needs ``pip install 'pitstore[hdf5]'``."""
        from pitstore.sources.legacy import hdf5

        return hdf5.import_hdf5(self, [Path(paths)] if isinstance(paths, str | os.PathLike) else
                                [Path(p) for p in paths], tz=tz, timeframe=timeframe)

    # --- serving -------------------------------------------------------------------------------------

    @property
    def serving(self) -> Serving:
        """The online tier and the reads through it (opened on first use)."""
        if self._serving is None:
            self._serving = Serving(self.settings, self.catalog, self.registry, self.reader)
            if not self.read_only:  # read-only: its own online tier comes from the offline one, nothing to undo
                # Before anything is served: online rows a killed pushing process left without their bars.
                reconcile_dead_pushers(self.root, self.catalog, self._serving.online)
        return self._serving

    def materialize(self, feature_set: FeatureSet | str, symbols: Sequence[str] | str | None = None) -> int:
        """Write the latest stored row of each symbol (all when None) of a feature set (a FeatureSet, or a
        reference such as ``"daily_core"`` or ``"daily_core@2"``) to the online tier; returns rows written."""
        self._writes("materialize rows into the online tier")
        if isinstance(feature_set, FeatureSet):
            name, version = feature_set.name, self.register(feature_set)
        else:
            ref = self.resolve(feature_set)
            name, version = ref.feature_set, ref.version
        return self.serving.materialize(name, version, _symbols(symbols))

    @overload
    def get_online(self, symbols: Sequence[str] | str, features: str | Sequence[str], *,
                   output: None = None) -> list[FeatureVector]: ...
    @overload
    def get_online(self, symbols: Sequence[str] | str, features: str | Sequence[str], *,
                   output: Literal["polars"]) -> pl.DataFrame: ...
    @overload
    def get_online(self, symbols: Sequence[str] | str, features: str | Sequence[str], *,
                   output: Literal["pandas"]) -> pd.DataFrame: ...
    @overload
    def get_online(self, symbols: Sequence[str] | str, features: str | Sequence[str], *,
                   output: Literal["arrow"]) -> pa.Table: ...
    @overload
    def get_online(self, symbols: Sequence[str] | str, features: str | Sequence[str], *,
                   output: FrameKind) -> Frame: ...
    def get_online(
        self, symbols: Sequence[str] | str, features: str | Sequence[str], *, output: FrameKind | None = None
    ) -> list[FeatureVector] | Frame:
        """The latest feature vector of each symbol from the online tier, in one round trip.

        Returns a list of :class:`FeatureVector` (symbol, ts, status, values) in input order, or a frame when
        ``output`` is given. ``status``: ``ok``; ``stale`` when older than the feature set's TTL (values are
        null, never served as fresh); ``unknown_symbol``; ``no_data_yet``; ``fallback`` when the online tier is
        unreachable and a lower tier answered. The answer at now is :meth:`get_features`'s (:mod:`pitstore.rules`).
        """
        vectors = self.serving.get_online(_symbols(symbols) or [], features)
        if output is None:
            return vectors
        return from_polars(self.serving.frame(vectors, features), output)

    def get_features(self, symbol: str, as_of: datetime, names: str | Sequence[str], *,
                     as_known_at: datetime | None = None) -> FeatureVector:
        """The features of ``symbol`` as of ``as_of`` (DESIGN section 2): one point-in-time look-up, the shape a
        backtest calls in a loop. Served online when ``as_of`` is at or after the newest stored row, from the
        history tier (PostgreSQL) inside its window, else from the offline tier; the answer is the same
        whichever tier gives it. ``as_known_at`` replays what the store knew then. ``status`` is the one
        :meth:`get_historical` gives for the same look-up: ``ok``, ``stale``, ``no_data_yet``, ``unknown_symbol``
        or ``damaged``."""
        return self.serving.get_features(symbol, utc(as_of, "as_of"), names,
                                         as_known_at=self._known_at(as_known_at))

    def tier(self, *, window_days: float | None = None, dry_run: bool = False) -> tiering.TierReport:
        """Move history-tier rows older than ``window_days`` (default: the ``history_days`` setting) into
        Parquet archives; rows leave PostgreSQL only after their archive is committed."""
        self._writes("tier history rows into archives")
        history = self.serving.history
        if history is None:
            raise ConfigError("no history tier: set postgres_url (PITSTORE_POSTGRES_URL) to tier its rows")
        return tiering.tier(self.root, self.catalog, history.db, dry_run=dry_run, storage=self.storage,
                            window_days=window_days if window_days is not None else self.settings.history_days)

    # --- live ----------------------------------------------------------------------------------------

    @property
    def live(self) -> LiveEngine:
        if self._live is None:
            self._live = LiveEngine(self.root, self.catalog, self.serving, self.settings.live_flush_bars,
                                    storage=self.storage)
        return self._live

    def push(self, bars: Any, feature_sets: FeatureSet | Sequence[FeatureSet] | None = None) -> PushReport:
        """Live bars (one or more, any symbols): validated, their feature rows computed incrementally (equal to
        a batch backfill of the same bars, bit for bit), written to the online and history tiers at once and
        to the offline tier in batches (see :meth:`flush`); ``report.rows`` has them per ``name@version``.

        ``feature_sets``: the sets to compute, from now on (default: every set this process registered or
        backfilled; when none, the latest version of every set in the catalog, rebuilt by
        :meth:`Registry.rebuild`, an error naming any set with expression or Python features). A bar at or
        before the latest of its symbol is a restatement, recomputed through the offline tier, never overwriting
        newer online values; one identical to the latest is skipped. Bars dated more than the
        ``max_future_days`` setting after now are refused (one would make every real bar after it look like a
        restatement).
        """
        self._writes("push live bars")
        chosen = [feature_sets] if isinstance(feature_sets, FeatureSet) else list(feature_sets or [])
        for fs in chosen:
            self.register(fs)
        if not chosen and not self._defined:  # another process registered them: rebuild them from the catalog
            for name in self.registry.names():
                if self.registry.get(name).definition.get("kind") != "imported":  # rows, not a computation
                    self.register(self.registry.rebuild(name))
        sets = [self._defined[fs.name] for fs in chosen] if chosen else list(self._defined.values())
        if not sets:
            raise InvalidInputError("push needs feature sets: the catalog has none; pass feature_sets= or register()"
                                    " them")
        for fs, version in sets:
            self.live.add(fs, version)
        return self.live.push(bars, max_future=self.settings.max_future)

    def flush(self) -> int:
        """Write pushed bars still buffered to the offline tier now (also done by :meth:`close`)."""
        return self._live.flush() if self._live is not None else 0

    def warm(self, symbols: Sequence[str] | str | None = None, *, top: int | None = None) -> int:
        """Load the latest vectors of ``symbols`` (or of the ``top`` most requested ones, or all) of every
        feature set's latest version into the online tier, e.g. at market open; returns rows written."""
        self._writes("warm the online tier")
        if symbols is None and top is not None:
            self._flush_requests()
            chosen: list[str] | None = self.catalog.top_requested(top)
        else:
            chosen = _symbols(symbols)
        done = 0
        for name in self.registry.names():
            latest = self.registry.get(name)
            if self.catalog.feature_entries(name, latest.version, chosen):
                done += self.serving.materialize(name, latest.version, chosen)
        return done

    def _flush_requests(self) -> None:
        if self._serving is not None and self._serving.requests and not self.read_only:
            self.catalog.add_requests(dict(self._serving.requests))
            self._serving.requests.clear()

    # --- bars and statistics -------------------------------------------------------------------------

    def bars(self, symbol: str, *, timeframe: str | None = None) -> pl.DataFrame:
        """The stored bars of ``symbol`` (polars), oldest first; with ``timeframe`` (coarser than the stored
        bars) aggregated to it (:mod:`pitstore.sources.resample`: UTC-aligned buckets, each stamped with its last
        bar)."""
        live = self.catalog.live_bars([symbol])
        if not live:
            raise NotFoundError(f"no bars stored for symbol {symbol!r}")
        df = read_bars(self.storage, live)
        assert df is not None
        return df if timeframe is None else resample_bars(df, timeframe)

    @overload
    def get_indicators(self, symbol: str, indicators: Sequence[str] | str, start: datetime | None = None,
                       end: datetime | None = None, *, timeframe: str | None = None,
                       output: Literal["polars"] = "polars") -> pl.DataFrame: ...
    @overload
    def get_indicators(self, symbol: str, indicators: Sequence[str] | str, start: datetime | None = None,
                       end: datetime | None = None, *, timeframe: str | None = None,
                       output: Literal["pandas"]) -> pd.DataFrame: ...
    @overload
    def get_indicators(self, symbol: str, indicators: Sequence[str] | str, start: datetime | None = None,
                       end: datetime | None = None, *, timeframe: str | None = None,
                       output: Literal["arrow"]) -> pa.Table: ...
    @overload
    def get_indicators(self, symbol: str, indicators: Sequence[str] | str, start: datetime | None = None,
                       end: datetime | None = None, *, timeframe: str | None = None, output: FrameKind) -> Frame: ...
    def get_indicators(self, symbol: str, indicators: Sequence[str] | str, start: datetime | None = None,
                       end: datetime | None = None, *, timeframe: str | None = None,
                       output: FrameKind = "polars") -> Frame:
        """Indicator rows of ``symbol`` in ``[start, end]`` by the catalogue's default names (``sma_50``,
        ``rsi_14``, ``macd_12_26_9``): from a stored feature set that holds them for the current bars, else
        computed once from the stored bars through the compute cache (later calls, by any process, are hits).
        ``timeframe``: computed on the bars aggregated to it (see :meth:`bars`)."""
        names = [indicators] if isinstance(indicators, str) else list(indicators)
        if not names:
            raise InvalidInputError("no indicators given", column="indicators")
        rows, _ = self._on_demand(symbol, [parse_indicator(n) for n in names], start, end, timeframe)
        return from_polars(rows, output)

    @overload
    def compute_feature(self, name: str, symbol: str, start: datetime | None = None, end: datetime | None = None,
                        *, params: dict[str, Any] | None = None, timeframe: str | None = None,
                        output: Literal["polars"] = "polars") -> pl.DataFrame: ...
    @overload
    def compute_feature(self, name: str, symbol: str, start: datetime | None = None, end: datetime | None = None,
                        *, params: dict[str, Any] | None = None, timeframe: str | None = None,
                        output: Literal["pandas"]) -> pd.DataFrame: ...
    @overload
    def compute_feature(self, name: str, symbol: str, start: datetime | None = None, end: datetime | None = None,
                        *, params: dict[str, Any] | None = None, timeframe: str | None = None,
                        output: Literal["arrow"]) -> pa.Table: ...
    @overload
    def compute_feature(self, name: str, symbol: str, start: datetime | None = None, end: datetime | None = None,
                        *, params: dict[str, Any] | None = None, timeframe: str | None = None,
                        output: FrameKind) -> Frame: ...
    def compute_feature(self, name: str, symbol: str, start: datetime | None = None, end: datetime | None = None,
                        *, params: dict[str, Any] | None = None, timeframe: str | None = None,
                        output: FrameKind = "polars") -> Frame:
        """One feature of the catalogue with ``params`` (``compute_feature("rsi", "AAPL", params={"n": 21})``)
        over the stored bars of ``symbol`` (aggregated to ``timeframe`` when given), rows in ``[start, end]``,
        computed once through the compute cache."""
        rows, _ = self._on_demand(symbol, [build_feature(name, params)], start, end, timeframe)
        return from_polars(rows, output)

    def _on_demand(self, symbol: str, features: Sequence[Feature], start: datetime | None,
                   end: datetime | None, timeframe: str | None) -> tuple[pl.DataFrame, str]:
        t0, t1 = _aware(start, "start"), _aware(end, "end")
        stored = self.bars(symbol)
        bars = stored if timeframe is None else resample_bars(stored, timeframe)
        # Stored feature sets are computed on the stored bars: they answer only when no aggregation happened.
        return indicator_rows(bars, features, t0, t1, registry=self.registry, cache=self.cache,
                              read=lambda ref, a, b: self.read(ref, [symbol], a, b), use_stored=bars is stored)

    def newest_rows(self) -> dict[str, int]:
        """Per feature set's latest version (``name@version``): the ts (µs) of its newest row, stored or pushed
        by this process and not yet flushed; the age of what the store can serve."""
        out: dict[str, int] = {}
        pending = self._serving.pending.newest() if self._serving is not None else {}
        for name in self.registry.names():
            version = self.registry.get(name).version
            table = f"{name}@{version}"
            stored = [e.last_ts for e in self.catalog.feature_entries(name, version)]
            pushed = [pending[table]] if table in pending else []
            if stored or pushed:
                out[table] = max(stored + pushed)
        return out

    def symbols(self) -> list[str]:
        """Symbols with stored bars."""
        return [e.symbol for e in self.catalog.live_bars()]

    def stats(self) -> dict[str, Any]:  # Any: a JSON-shaped report (nested dicts), its counts are the catalog's
        """Feature sets and their readable versions (``name@v``; retired ones are not), counts of symbols, bars,
        entries and bytes on disk; ``cache``: the compute cache's entries, bytes, hits, misses, hit rate, compute
        seconds spent and saved and hashing, in total and ``per_symbol``."""
        counts = self.catalog.counts()
        size = sum(o.size for top in housekeeping.DATA_DIRS for o in self.storage.list(top)
                   if o.path.endswith(".parquet"))
        names = self.registry.names()
        versions = [f"{n}@{v.version}" for n in names for v in self.catalog.versions(n)]
        return {"root": str(self.root), "data_url": self.storage.url, "read_only": self.read_only,
                "catalog_mode": self.catalog.mode,
                "feature_sets": names, "versions": versions, **counts,
                "bytes_on_disk": size, "cache": self.cache.stats()}

    def close(self) -> None:
        try:
            if self._live is not None:
                self._live.close()
            if self._serving is not None:
                self._flush_requests()
                self._serving.close()
        finally:
            self.catalog.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _engine(engine: str, scheduler: Any, size: int | None, out: object = None) -> None:
    """Refuse an unknown engine, and Dask options without the Dask engine (they would be silently ignored)."""
    if engine not in scale.ENGINES:
        raise InvalidInputError(f"engine must be one of {', '.join(scale.ENGINES)}, got {engine!r}", column="engine")
    if engine != "dask" and (scheduler is not None or size is not None or out is not None):
        raise InvalidInputError("scheduler=, out=, partitions= and partition_rows= need engine='dask'",
                                column="engine")
    if size is not None and size < 1:
        raise InvalidInputError(f"partitions and partition_rows must be positive, got {size}", column="engine")


def _partition(partition_rows: int | None) -> dict[str, int]:
    return {} if partition_rows is None else {"partition_rows": partition_rows}


def _symbols(symbols: Sequence[str] | str | None) -> list[str] | None:
    return [symbols] if isinstance(symbols, str) else (list(symbols) if symbols is not None else None)


def _aware(t: datetime | None, name: str) -> datetime | None:
    """Every time argument of the facade goes through here: UTC, or a typed error (see :func:`timeutil.utc`)."""
    return None if t is None else utc(t, name)

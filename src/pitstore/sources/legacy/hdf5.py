"""``Store.import_hdf5`` / ``pitstore import-hdf5``: the HDF5 files of the older in-house stores, imported.

Bars become bar snapshots through the normal ingest (validated, all or nothing). Feature tables become a
registered feature set of kind ``"imported"``, one pitstore version per legacy version: its fingerprint is the
hash of its content (name, legacy version, timeframe, columns, every symbol's rows), so importing the same files
again is a no-op and different content is a new version. Imported rows are read like any other set's
(``get_historical``, ``read``, ``get_features``, ``materialize``); they cannot be backfilled or pushed (there is
no computation to run). Every file is checked for pickles before PyTables opens it (:mod:`.safety`).

Needs the optional extra: ``pip install 'pitstore[hdf5]'`` (pandas, PyTables, h5py).
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl

from pitstore.catalog.base import FeatureEntry
from pitstore.errors import InvalidInputError, MissingDependencyError
from pitstore.fingerprint import canonical_json, sha256_hex
from pitstore.offline.entries import content_hash, encode_symbol, file_facts, write_entry
from pitstore.sources.ingest import IngestReport
from pitstore.sources.legacy.layouts import Frame, discover, read_frames, stage
from pitstore.timeutil import parse_timeframe

if TYPE_CHECKING:
    from pitstore.store import Store

__all__ = ["IMPORTED", "ImportReport", "ImportedVersion", "import_hdf5", "require"]

IMPORTED = "imported"  # the kind of a feature set whose rows were imported, not computed


@dataclass(frozen=True)
class ImportedVersion:
    name: str
    version: int
    legacy_version: str | None
    fingerprint: str
    columns: tuple[str, ...]
    timeframe: str
    symbols: int
    rows: int
    written: list[str]  # symbols whose rows this import stored (the others were stored by an earlier import)


@dataclass
class ImportReport:
    files: list[str] = field(default_factory=list)
    bars: IngestReport | None = None
    feature_sets: list[ImportedVersion] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def require() -> None:
    """MissingDependencyError naming the extra when pandas, PyTables or h5py is missing."""
    try:
        import h5py  # noqa: F401
        import pandas  # noqa: F401
        import tables  # noqa: F401
    except ImportError as exc:
        raise MissingDependencyError(f"importing HDF5 files needs its extra: pip install 'pitstore[hdf5]' ({exc})"
                                     ) from exc


def import_hdf5(store: Store, paths: Iterable[str | Path] | str | Path, *, tz: str | None = None,
                timeframe: str | None = None) -> ImportReport:
    """Import legacy HDF5 files (or directories of them): see the module docstring. ``tz``: the zone of
    timezone-naive timestamps (refused without it); ``timeframe``: of the feature sets (inferred from the
    spacing of their rows when None)."""
    require()
    if timeframe is not None:
        parse_timeframe(timeframe)
    sources = discover([paths] if isinstance(paths, str | Path) else paths)
    report = ImportReport([s.shown for s in sources])
    frames: list[Frame] = []
    with tempfile.TemporaryDirectory(prefix="pitstore-hdf5-") as private:
        # Every file copied and checked before PyTables opens any: a refused file imports nothing.
        copies = [stage(s, Path(private), i) for i, s in enumerate(sources)]
        for s, copy in zip(sources, copies, strict=True):
            frames.extend(read_frames(s, copy, tz))
    groups: dict[tuple[str, str | None], list[Frame]] = {}
    for f in frames:
        if f.kind == "features":
            assert f.set_name is not None
            groups.setdefault((f.set_name, f.source.legacy_version), []).append(f)
    prepared = [_prepare(name, legacy, parts, timeframe) for (name, legacy), parts in
                sorted(groups.items(), key=lambda kv: (kv[0][0], _version_order(kv[0][1])))]
    for p in prepared:
        _refuse_computed(store, p.name)
    bars = [f.df for f in frames if f.kind == "bars"]
    if bars:
        report.bars = store.ingest(pl.concat(bars, how="diagonal_relaxed").unique(maintain_order=True))
    report.feature_sets = [_store_version(store, p) for p in prepared]
    return report


def _version_order(legacy: str | None) -> tuple[int, str]:
    m = re.search(r"\d+", legacy or "")
    return (int(m.group()) if m else 0, legacy or "")


@dataclass(frozen=True)
class _Prepared:
    name: str
    legacy_version: str | None
    timeframe: str
    columns: tuple[str, ...]
    by_symbol: dict[str, pl.DataFrame]  # symbol, ts, columns; sorted by ts
    shown: str  # the files, for errors


def _prepare(name: str, legacy: str | None, parts: Sequence[Frame], timeframe: str | None) -> _Prepared:
    """One version's rows per symbol: months stacked, feature types joined on ts."""
    shown = ", ".join(sorted({p.source.shown for p in parts})[:3]) + (" ..." if len(parts) > 3 else "")
    columns: list[str] = []
    by_symbol: dict[str, pl.DataFrame] = {}
    kinds: dict[tuple[str, str | None], list[pl.DataFrame]] = {}
    for p in parts:
        for c in p.df.columns[2:]:
            if c not in columns:
                columns.append(c)
        for (symbol,), rows in p.df.partition_by("symbol", as_dict=True).items():
            kinds.setdefault((str(symbol), p.source.feature_type), []).append(rows)
    for (symbol, kind), stacks in sorted(kinds.items(), key=lambda kv: (kv[0][0], kv[0][1] or "")):
        df = pl.concat(stacks, how="diagonal_relaxed").unique(maintain_order=True).sort("ts")
        if df["ts"].is_duplicated().any():
            ts = df.filter(df["ts"].is_duplicated())["ts"][0]
            raise InvalidInputError(f"{shown}: {name} has two different rows of {symbol!r} at {ts}"
                                    + (f" (feature type {kind})" if kind else ""), symbol=symbol)
        have = by_symbol.get(symbol)
        if have is None:
            by_symbol[symbol] = df
            continue
        clash = set(have.columns[2:]) & set(df.columns[2:])
        if clash:
            raise InvalidInputError(f"{shown}: {name}: columns {sorted(clash)} of {symbol!r} are in two feature "
                                    "types", symbol=symbol)
        by_symbol[symbol] = have.join(df.drop("symbol"), on="ts", how="full", coalesce=True).sort("ts")
    schema = {"symbol": pl.String, "ts": pl.Datetime("us", "UTC"), **dict.fromkeys(columns, pl.Float64)}
    by_symbol = {s: df.select([pl.col(c) if c in df.columns else pl.lit(None, pl.Float64).alias(c) for c in schema])
                 for s, df in by_symbol.items()}
    return _Prepared(name, legacy, timeframe or _infer_timeframe(by_symbol, name, shown), tuple(columns),
                     by_symbol, shown)


def _infer_timeframe(by_symbol: dict[str, pl.DataFrame], name: str, shown: str) -> str:
    gaps = pl.concat([df.select(pl.col("ts").diff().drop_nulls()) for df in by_symbol.values()])
    if gaps.height == 0:
        raise InvalidInputError(f"{shown}: {name} has one row per symbol: give its timeframe (timeframe='1d', "
                                "--timeframe 1d)")
    median = gaps["ts"].median()
    seconds = int(median.total_seconds()) if isinstance(median, timedelta) else 0
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    raise InvalidInputError(f"{shown}: {name}: rows are a median {seconds} s apart, not a timeframe; give one"
                            " (--timeframe)")


def _refuse_computed(store: Store, name: str) -> None:
    if name in store.registry.names():
        kinds = {r.definition.get("kind") for r in store.registry.versions(name)}
        if kinds - {IMPORTED}:
            raise InvalidInputError(f"feature set {name!r} exists and is computed by pitstore: imported rows cannot "
                                    "become a version of it; rename the legacy set's directory (or key) first")


def _store_version(store: Store, p: _Prepared) -> ImportedVersion:
    content = {s: content_hash(df) for s, df in sorted(p.by_symbol.items())}
    identity = {"kind": IMPORTED, "name": p.name, "legacy_version": p.legacy_version, "timeframe": p.timeframe,
                "columns": list(p.columns), "content": content}
    fp = sha256_hex(canonical_json(identity))
    definition = {"name": p.name, "kind": IMPORTED, "legacy_version": p.legacy_version, "timeframe": p.timeframe,
                  "columns": list(p.columns), "features": [], "ttl_seconds": None, "availability_lag_seconds": 0.0,
                  "version_tag": None, "content_hash": fp}
    row = store.catalog.register_version(p.name, fp, json.dumps(definition, sort_keys=True))
    written = []
    bars = {e.symbol: e.id for e in store.catalog.live_bars(list(p.by_symbol))}
    for symbol, df in sorted(p.by_symbol.items()):
        if store.catalog.feature_entries(p.name, row.version, [symbol]):
            continue  # the same content, stored by an earlier import of these files
        path = write_entry(store.storage, f"features/{p.name}/v{row.version}/{encode_symbol(symbol)}", df)
        epochs = df["ts"].dt.epoch("us")
        entry = FeatureEntry(0, p.name, row.version, symbol, path, df.height, int(epochs[0]), int(epochs[-1]),
                             bars.get(symbol, 0), 0, None, *file_facts(store.storage, path))
        if store.catalog.commit_features(entry, supersede=[], expected_live=[]):
            written.append(symbol)
        else:  # another import of the same files got there first
            store.storage.delete(path)
    return ImportedVersion(p.name, row.version, p.legacy_version, fp, p.columns, p.timeframe, len(p.by_symbol),
                           sum(df.height for df in p.by_symbol.values()), written)

"""``store.get_historical(entities, features, engine="dask")``: the point-in-time join, partitioned by symbol.

Entities (a Dask DataFrame or a Parquet dataset path) get an ``input_row`` id (their position, 0-based), are
hash-partitioned by symbol, and each partition runs the local engine's join (:func:`pitstore.reads.
get_historical`) on its symbols' entries, read by the worker from the store's root: every row's answer depends
on its own symbol and ts only, so it is the local engine's whatever the partitioning. The client lists the
entries once (one snapshot for all partitions) and holds the versions' leases until the last partition is done.
"""

from __future__ import annotations

import os
import uuid
from contextlib import ExitStack
from dataclasses import dataclass
from datetime import datetime
from importlib import import_module
from pathlib import Path
from typing import Any

import polars as pl

from pitstore import reads
from pitstore.atomic import publish
from pitstore.catalog.base import Catalog
from pitstore.errors import InvalidInputError
from pitstore.features.registry import Registry
from pitstore.frames import FrameKind, from_polars, to_polars
from pitstore.offline import EntryReader
from pitstore.scale.cluster import client_for, dask
from pitstore.scale.snapshot import CatalogSnapshot
from pitstore.versions import ensure_live, reading

dd: Any = import_module("dask.dataframe")  # untyped: Any at the boundary (see pitstore.scale.cluster)

__all__ = ["ROW", "HistoricalDataset", "get_historical"]

ROW = "input_row"  # the entity row's position in the input: the written dataset's order key


@dataclass(frozen=True)
class HistoricalDataset:
    """Where ``get_historical(..., out=path)`` wrote its result: one Parquet file per partition, rows sorted by
    ``input_row`` within each file (sort the dataset by it for the input order)."""

    path: Path
    rows: int
    files: list[str]


def get_historical(
    root: Path, catalog: Catalog, registry: Registry, entities: Any, features: str | list[str] | tuple[str, ...],
    as_known_at: datetime | None, *, scheduler: Any = None, out: str | os.PathLike[str] | None = None,
    partitions: int | None = None, output: FrameKind | None = None,
) -> Any:
    """The local engine's answer (in input order, as ``output``, polars by default) or, with ``out``, a Parquet
    dataset of it written by the workers (a :class:`HistoricalDataset`; nothing is gathered here)."""
    ddf = _entities(entities)
    known = reads.known_at_us(as_known_at)
    sels = reads.select(registry, features)
    target = _out_dir(out)
    with ExitStack() as leases, client_for(scheduler) as client:
        # Leases first, then the listing: no cleanup deletes a listed file before the workers have read it.
        for sel in sels:
            leases.enter_context(reading(root, catalog, sel.feature_set, sel.version, check_live=False))
        snap = CatalogSnapshot({s.feature_set: catalog.versions(s.feature_set) for s in sels})
        for sel in sels:
            snap.entries[(sel.feature_set, sel.version)] = catalog.feature_entries(sel.feature_set, sel.version,
                                                                                   None, known)
            if not snap.entries[(sel.feature_set, sel.version)]:
                ensure_live(catalog, sel.feature_set, sel.version)
        shuffled = _numbered(ddf).shuffle(on="symbol", npartitions=partitions or ddf.npartitions)
        shipped = dask.delayed(snap, name=f"pitstore-snapshot-{uuid.uuid4().hex}")
        join = dask.delayed(_join_partition, pure=False)
        tasks = [join(part, shipped, root, list(features) if not isinstance(features, str) else features,
                      as_known_at, target, i) for i, part in enumerate(shuffled.to_delayed())]
        results = client.gather(client.compute(tasks))
    if target is not None:
        written = [r for r in results if r is not None]
        return HistoricalDataset(target, sum(n for _, n in written), [name for name, _ in written])
    frames = [r for r in results if r.height]
    merged = pl.concat(frames) if frames else results[0]
    return from_polars(merged.sort(ROW).drop(ROW), output or "polars")


def _entities(entities: Any) -> Any:
    """A Dask DataFrame of the entities: given as one, or read from a Parquet dataset (file or directory)."""
    if isinstance(entities, str | os.PathLike):
        ddf = dd.read_parquet(os.fspath(entities))
    elif isinstance(entities, dd.DataFrame):
        ddf = entities
    else:
        raise InvalidInputError(f"engine='dask' takes entities as a Dask DataFrame or a Parquet dataset path, got "
                                f"{type(entities).__name__} (engine='local' takes in-memory frames)")
    for col in ("symbol", "ts"):
        if col not in ddf.columns:
            raise InvalidInputError(f"entities need a {col!r} column", column=col)
    if ROW in ddf.columns:
        raise InvalidInputError(f"entities have a column {ROW!r}: engine='dask' adds it (each row's position); "
                                "rename it", column=ROW)
    return ddf


def _numbered(ddf: Any) -> Any:
    """``ddf`` with each row's position: a running count over the partitions in order (one pass, no gather)."""
    ddf = ddf.assign(**{ROW: 1})
    return ddf.assign(**{ROW: (ddf[ROW].cumsum() - 1).astype("int64")})


def _out_dir(out: str | os.PathLike[str] | None) -> Path | None:
    if out is None:
        return None
    path = Path(out)
    if path.exists() and any(path.iterdir()):
        raise InvalidInputError(f"out={os.fspath(out)!r} is not empty: a dataset is written only into a new or "
                                "empty directory (its files would mix with others)", column="out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _join_partition(part: Any, snap: CatalogSnapshot, root: Path, features: str | list[str],
                    as_known_at: datetime | None, out: Path | None, index: int) -> Any:
    """On a worker: one partition's as-of join by the local engine, sorted by ``input_row``; returned, or
    written as ``part-<index>.parquet`` under ``out`` (atomically: a retried task replaces, never half-writes)."""
    catalog = snap.as_catalog()
    # No decoded-entry cache: each partition reads its own symbols' entries once.
    result = reads.get_historical(EntryReader(root, 0), catalog, Registry(catalog), to_polars(part), features,
                                  as_known_at).sort(ROW)
    if out is None:
        return result
    if not result.height:
        return None
    name = f"part-{index:05d}.parquet"
    publish(out, name, lambda tmp: result.write_parquet(tmp, compression="zstd", compression_level=1))
    return name, result.height

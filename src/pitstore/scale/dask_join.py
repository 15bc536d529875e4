"""``store.get_historical(entities, features, engine="dask")``: the point-in-time join, partitioned by symbol.

Two stages of tasks, polars throughout: each input partition (a Parquet file of the dataset, or a partition of
the Dask DataFrame) is split by a hash of the symbol into ``partitions`` pieces; join task ``i`` takes piece ``i``
of every input partition (so each symbol is in one join task), numbers its rows by their input position
(``input_row``: the input partitions' lengths come along, no extra pass) and runs the local engine's join
(:func:`pitstore.offline.reads.get_historical`) on them, reading its symbols' entries from the store's root. Every row's
answer depends on its own symbol and ts only, so it is the local engine's whatever the partitioning. The
client lists the entries once (one snapshot for every task) and holds the versions' leases until the end.

Not Dask DataFrame's shuffle: it converts every piece to pandas and back, and on this 2-core machine its
per-partition overhead was 16-23% of the work for partitions of 500k rows (bench_scale), above the 10% target.
"""

from __future__ import annotations

import os
import uuid
from contextlib import ExitStack
from datetime import datetime
from importlib import import_module
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pitstore.atomic import publish
from pitstore.catalog.base import Catalog
from pitstore.catalog.versions import ensure_live, reading
from pitstore.errors import InvalidInputError
from pitstore.features.registry import Registry
from pitstore.frames import Frame, FrameKind, from_polars, to_polars
from pitstore.offline import reads
from pitstore.offline.entries import EntryReader
from pitstore.scale.cluster import client_for, dask
from pitstore.scale.results import HistoricalDataset
from pitstore.scale.snapshot import CatalogSnapshot
from pitstore.storage import Storage, as_storage

dd: Any = import_module("dask.dataframe")  # untyped: Any at the boundary (see pitstore.scale.cluster)

__all__ = ["ROW", "HistoricalDataset", "get_historical"]  # HistoricalDataset: re-exported from pitstore.scale.results

ROW = "input_row"  # the entity row's position in the input: the written dataset's order key
_LOCAL = "__pitstore_local_row"  # position within its input partition
_BUCKET = "__pitstore_bucket"


def get_historical(
    root: Path, catalog: Catalog, registry: Registry, entities: Any, features: str | list[str] | tuple[str, ...],
    as_known_at: datetime | None, *, scheduler: Any = None, out: str | os.PathLike[str] | None = None,
    partitions: int | None = None, output: FrameKind | None = None, storage: Storage | None = None,
) -> Frame | HistoricalDataset:
    """The local engine's answer (in input order, as ``output``, polars by default) or, with ``out``, a Parquet
    dataset of it written by the workers (a :class:`HistoricalDataset`; nothing is gathered here)."""
    sources = _sources(entities)
    known = reads.known_at_us(as_known_at)
    sels = reads.select(registry, features)
    target = _out_dir(out)
    k = partitions or len(sources)
    asked = features if isinstance(features, str) else list(features)
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
        run = uuid.uuid4().hex[:12]
        shipped = dask.delayed(snap, name=f"pitstore-snapshot-{run}")
        split = dask.delayed(_split, nout=k + 1, pure=False)
        splits = [split(src, k, dask_key_name=f"pitstore-split-{run}-{j}") for j, src in enumerate(sources)]
        lengths = [s[0] for s in splits]
        join = dask.delayed(_join_partition, pure=False)
        data = storage if storage is not None else as_storage(root)  # where the entries are (workers read them)
        tasks = [join(lengths, [s[i + 1] for s in splits], shipped, data, asked, as_known_at, target, i,
                      dask_key_name=f"pitstore-join-{run}-{i}") for i in range(k)]
        results = client.gather(client.compute(tasks))
    if target is not None:
        written = [r for r in results if r is not None]
        return HistoricalDataset(target, sum(n for _, n in written), [name for name, _ in written])
    frames = [r for r in results if r.height]
    merged = pl.concat(frames) if frames else results[0]
    return from_polars(merged.sort(ROW).drop(ROW), output or "polars")


def _sources(entities: Any) -> list[Any]:
    """The input partitions, in input order: Parquet file paths (a file, or a directory's files by name), or the
    partitions of a Dask DataFrame (as delayed pandas frames)."""
    if isinstance(entities, str | os.PathLike):
        path = Path(entities)
        files = sorted(str(f) for f in path.rglob("*.parquet")) if path.is_dir() else [str(path)]
        if not files:
            raise InvalidInputError(f"no Parquet files under {os.fspath(entities)!r}", column="entities")
        columns: list[str] = list(pl.read_parquet_schema(files[0]))
        parts: list[Any] = files
    elif isinstance(entities, dd.DataFrame):
        columns, parts = list(entities.columns), list(entities.to_delayed())
    else:
        raise InvalidInputError(f"engine='dask' takes entities as a Dask DataFrame or a Parquet dataset path, got "
                                f"{type(entities).__name__} (engine='local' takes in-memory frames)")
    for col in ("symbol", "ts"):
        if col not in columns:
            raise InvalidInputError(f"entities need a {col!r} column", column=col)
    if ROW in columns:
        raise InvalidInputError(f"entities have a column {ROW!r}: engine='dask' adds it (each row's position); "
                                "rename it", column=ROW)
    return parts


def _split(source: Any, k: int) -> tuple[Any, ...]:
    """On a worker: one input partition's length, then its rows in ``k`` pieces by symbol (with their position
    in the partition, ``_LOCAL``)."""
    df = pl.read_parquet(source) if isinstance(source, str) else to_polars(source)
    df = df.with_row_index(_LOCAL)
    # Any fixed assignment is correct (a row's answer depends on its symbol alone); a hash spreads the symbols.
    bucket = (df["symbol"].cast(pl.String).hash(seed=0) % k).alias(_BUCKET)
    pieces = df.with_columns(bucket).partition_by(_BUCKET, as_dict=True, include_key=False)
    empty = df.clear()
    return (df.height, *(pieces.get((i,), empty) for i in range(k)))


def _out_dir(out: str | os.PathLike[str] | None) -> Path | None:
    if out is None:
        return None
    path = Path(out)
    if path.exists() and any(path.iterdir()):
        raise InvalidInputError(f"out={os.fspath(out)!r} is not empty: a dataset is written only into a new or "
                                "empty directory (its files would mix with others)", column="out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _join_partition(lengths: list[int], pieces: list[pl.DataFrame], snap: CatalogSnapshot, data: Storage,
                    features: str | list[str], as_known_at: datetime | None, out: Path | None, index: int) -> Any:
    """On a worker: the pieces of one symbol partition numbered by input position, joined by the local engine,
    sorted by ``input_row``; returned, or written as ``part-<index>.parquet`` under ``out`` (atomically: a retried
    task replaces it, never half-writes it)."""
    offsets = np.concatenate([[0], np.cumsum(lengths[:-1], dtype=np.int64)])
    spine = pl.concat([p.with_columns((pl.col(_LOCAL).cast(pl.Int64) + int(o)).alias(ROW)).drop(_LOCAL)
                       for p, o in zip(pieces, offsets.tolist(), strict=True)])
    catalog = snap.as_catalog()
    # No decoded-entry cache: each partition reads its own symbols' entries once.
    result = reads.get_historical(EntryReader(Path("."), 0, data), catalog, Registry(catalog), spine, features,
                                  as_known_at).sort(ROW)
    if out is None:
        return result
    if not result.height:
        return None
    name = f"part-{index:05d}.parquet"
    publish(out, name, lambda tmp: result.write_parquet(tmp, compression="zstd", compression_level=1))
    return name, result.height

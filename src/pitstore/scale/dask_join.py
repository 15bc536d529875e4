"""``store.get_historical(entities, features, engine="dask")``: the point-in-time join, partitioned by symbol.

Two stages of tasks, polars throughout: each input partition (a Parquet file of the dataset, or a partition of
the Dask DataFrame) is split by a hash of the symbol into ``partitions`` pieces, which its worker writes as Arrow
IPC scratch files under the store's data (``features/_shuffle/<run>/``: where every worker reads entries from)
and returns only their row counts; join task ``i`` reads piece ``i`` of every input partition (so each symbol is
in one join task), numbers its rows by their input position (``input_row``: the input partitions' lengths come
with the counts, no extra pass) and runs the local engine's join (:func:`pitstore.offline.reads.get_historical`)
on them, reading its symbols' entries from the store's root. Every row's answer depends on its own symbol and ts
only, so it is the local engine's whatever the partitioning. The client lists the entries once (one snapshot,
shipped to each worker once), holds the versions' leases until the end, then deletes the scratch files (a
crashed client's are removed by ``gc``'s orphan sweep: they end in ``.tmp``).

Not Dask DataFrame's shuffle: it converts every piece to pandas and back, and on this 2-core machine its
per-partition overhead was 16-23% of the work for partitions of 500k rows (bench_scale), above the 10% target.
Nor pieces as Dask results: one key per piece is a ``getitem`` task per (input, output) pair (420 of 461 tasks
at 500k rows: 13% overhead), and one key per split would ship every split whole to every worker that joins.
"""

from __future__ import annotations

import io
import os
import sys
import uuid
from contextlib import ExitStack, suppress
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pitstore.atomic import TMP_SUFFIX, publish
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

__all__ = ["ROW", "HistoricalDataset", "get_historical"]  # HistoricalDataset: re-exported from pitstore.scale.results

ROW = "input_row"  # the entity row's position in the input: the written dataset's order key
_LOCAL = "__pitstore_local_row"  # position within its input partition
_BUCKET = "__pitstore_bucket"
SCRATCH = "features/_shuffle"  # under a data directory: gc's orphan sweep removes what a crashed run left


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
        scratch = f"{SCRATCH}/{run}"
        data = storage if storage is not None else as_storage(root)  # where the entries are (workers read them)
        [shipped] = client.scatter([snap], broadcast=True, hash=False)  # once per worker, not per task
        split = dask.delayed(_split, pure=False)
        splits = [split(src, k, data, f"{scratch}/{j:05d}", dask_key_name=f"pitstore-split-{run}-{j}")
                  for j, src in enumerate(sources)]
        join = dask.delayed(_join_partition, pure=False)
        tasks = [join(splits, shipped, data, scratch, asked, as_known_at, target, i,
                      dask_key_name=f"pitstore-join-{run}-{i}") for i in range(k)]
        try:
            results = client.gather(client.compute(tasks))
        finally:
            _drop_scratch(data, scratch)
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
    # Not imported here at module level: workers load this module, and dask.dataframe (pandas, dask-expr) took
    # them about a second each, in the first join's first tasks. Entities can be one only if it is imported.
    elif (dd := sys.modules.get("dask.dataframe")) is not None and isinstance(entities, dd.DataFrame):
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


def _split(source: Any, k: int, data: Storage, prefix: str) -> tuple[int, list[int], pl.DataFrame]:
    """On a worker: one input partition in ``k`` pieces by symbol (with their position in the partition,
    ``_LOCAL``), each non-empty one written as ``<prefix>-<i>.arrow.tmp``; returns the partition's length, each
    piece's rows and the (empty) frame of its schema."""
    df = pl.read_parquet(source) if isinstance(source, str) else to_polars(source)
    df = df.with_row_index(_LOCAL)
    # Any fixed assignment is correct (a row's answer depends on its symbol alone); a hash spreads the symbols.
    bucket = (df["symbol"].cast(pl.String).hash(seed=0) % k).alias(_BUCKET)
    pieces = df.with_columns(bucket).partition_by(_BUCKET, as_dict=True, include_key=False)
    for (i,), piece in pieces.items():
        _write_piece(data, _piece(prefix, int(i)), piece)
    counts = [pieces[(i,)].height if (i,) in pieces else 0 for i in range(k)]
    return df.height, counts, df.clear()


def _piece(prefix: str, index: int) -> str:
    return f"{prefix}-{index:05d}.arrow{TMP_SUFFIX}"


def _write_piece(data: Storage, path: str, piece: pl.DataFrame) -> None:
    """Atomically (a retried split replaces a piece, never half-writes it); no fsync on a local disk: a scratch
    file outlives no crash (its run is then redone)."""
    local = data.local_path(path)
    if local is not None:
        publish(local.parent, local.name, piece.write_ipc, durable=False)
        return
    buf = io.BytesIO()
    piece.write_ipc(buf)
    data.put(path, buf.getbuffer())


def _drop_scratch(data: Storage, scratch: str) -> None:
    for obj in list(data.list(scratch)):
        data.delete(obj.path)
    local = data.local_path(scratch)
    if local is not None:
        with suppress(OSError):  # a retried split's piece written after the listing: left to gc
            local.rmdir()


def _read_piece(data: Storage, path: str) -> pl.DataFrame:
    local = data.local_path(path)  # polars' own reader: its dtypes come back as written (Enum, Categorical)
    return pl.read_ipc(local if local is not None else io.BytesIO(data.read(path)))


def _out_dir(out: str | os.PathLike[str] | None) -> Path | None:
    if out is None:
        return None
    path = Path(out)
    if path.exists() and any(path.iterdir()):
        raise InvalidInputError(f"out={os.fspath(out)!r} is not empty: a dataset is written only into a new or "
                                "empty directory (its files would mix with others)", column="out")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _join_partition(splits: list[tuple[int, list[int], pl.DataFrame]], snap: CatalogSnapshot, data: Storage,
                    scratch: str, features: str | list[str], as_known_at: datetime | None, out: Path | None,
                    index: int) -> Any:
    """On a worker: the pieces ``index`` of every input partition numbered by input position, joined by the
    local engine, sorted by ``input_row``; returned, or written as ``part-<index>.parquet`` under ``out``
    (atomically: a retried task replaces it, never half-writes it)."""
    offsets = np.concatenate([[0], np.cumsum([n for n, _, _ in splits[:-1]], dtype=np.int64)]).tolist()
    pieces = [_read_piece(data, _piece(f"{scratch}/{j:05d}", index)).with_columns(
                  (pl.col(_LOCAL).cast(pl.Int64) + int(offsets[j])).alias(ROW)).drop(_LOCAL)
              for j, (_, counts, _) in enumerate(splits) if counts[index]]
    empty = splits[0][2].with_columns(pl.lit(0, pl.Int64).alias(ROW)).drop(_LOCAL)
    spine = pl.concat(pieces) if pieces else empty
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

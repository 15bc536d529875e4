"""``store.backfill(..., engine="dask")``: the local engine's work, split at its seam.

The client plans (reads the catalog), Dask workers run :func:`pitstore.offline.backfill.compute_batch` on whole symbols
(the same function the local engine calls: same values, same files and paths) and return only the metadata of
the files they wrote; the client commits each symbol in its own transaction with the same optimistic check.

A worker killed mid-task: the scheduler runs the task again elsewhere. Whatever the dead attempt wrote has a
unique name and no catalog row (an orphan ``gc`` removes); only the attempt whose result reaches the client is
committed, so there are no duplicate or partial entries.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

from pitstore.catalog.base import Catalog
from pitstore.features.base import FeatureSet
from pitstore.offline import backfill as _backfill
from pitstore.offline.backfill import BackfillReport, Progress
from pitstore.rules import to_us
from pitstore.scale.cluster import client_for, distributed
from pitstore.storage import Storage

__all__ = ["DEFAULT_PARTITION_ROWS", "backfill"]

# Bars per task: at 500k the scheduling and serialisation cost is a few percent of the work (bench_scale).
DEFAULT_PARTITION_ROWS = 500_000


def backfill(
    root: Storage | Path,
    catalog: Catalog,
    feature_set: FeatureSet,
    version: int,
    *,
    symbols: Sequence[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    progress: Progress | None = None,
    scheduler: Any = None,
    partition_rows: int = DEFAULT_PARTITION_ROWS,
) -> BackfillReport:
    """Bring ``feature_set`` up to date on a Dask cluster; the same report as the local engine's."""
    report = BackfillReport(feature_set.name, version)
    start_us = None if start is None else to_us(start)
    end_us = None if end is None else to_us(end)
    plans = _backfill.plan(catalog, feature_set, version, symbols, start_us, end_us, report)
    parts = list(_backfill.batches(plans, partition_rows))
    if not parts:
        return report
    planned = len(report.up_to_date)
    run = uuid.uuid4().hex[:12]
    with client_for(scheduler) as client:
        # The workers read the bars and write the entries where the store's data is: a shared disk, or S3.
        futures = {
            client.submit(_backfill.compute_batch, root, feature_set, version, part, start_us, end_us,
                          key=f"pitstore-backfill-{run}-{i}", pure=False): part
            for i, part in enumerate(parts)
        }
        try:
            # Commit as results arrive: the client's catalog work overlaps the workers' compute.
            for future in distributed.as_completed(futures):
                computed, written = future.result()
                _backfill.commit_batch(root, catalog, feature_set, version, futures[future], computed, written,
                                       report, progress)
        except BaseException:
            client.cancel(list(futures))  # files written by tasks not committed are orphans: gc removes them
            raise
    _plan_order(report, [p.bars.symbol for p in plans], planned)
    return report


def _plan_order(report: BackfillReport, order: Sequence[str], planned: int) -> None:
    """Results arrive in completion order; the report lists symbols in plan order, as the local engine's does."""
    rank = {s: i for i, s in enumerate(order)}
    for lst in (report.full, report.incremental, report.lost_race):
        lst.sort(key=rank.__getitem__)
    report.up_to_date[planned:] = sorted(report.up_to_date[planned:], key=rank.__getitem__)

"""Benchmark: the Dask engine (issue #15, speed line 2): local vs 1 vs 2 workers, on one machine.

What runs, all in one process run so the ratios are side by side:

* backfill of 500 symbols x 9,800 one-minute bars (4.9M bars, ``synthetic_bars(..., timeframe="1m")``) of the
  seven standard features plus RSI(14) and MACD(12, 26, 9): the local engine, then ``engine="dask"`` on a
  ``LocalCluster`` of 1 worker and of 2 workers (processes, 1 thread each), tasks of ``--partition-rows`` bars
  (whole symbols). Each run writes a new feature-set name (same features: a full backfill every time); the
  Dask runs' entries are checked equal (catalog rows and decoded frames) to the local run's.
* get_historical of ``--rows`` look-ups (default 10M) over those feature rows: the local engine on the frame in
  memory; the Dask engine reading the same look-ups from a Parquet dataset (files of ``--join-partition-rows``
  rows, as many partitions) and writing its answer as a Parquet dataset (``out=``: nothing gathered), checked
  equal to the local answer; on 2 workers also with files and partitions twice as large (the split by symbol
  is all-to-all: partitions x files pieces, each a task); and a 1M-row Dask join gathered in input order,
  checked equal to the local engine.

Per-partition overhead, from the client's task stream (``distributed.get_task_stream``): for each worker, the
time from submission to its last task's end minus the time its tasks computed is what scheduling, result and
argument serialisation, transfers and dispatch cost it (the gaps around its tasks); summed over the workers and
divided by the summed compute, it is the overhead as a fraction of the work. What follows a worker's last
task (waiting for the other worker, the client's last commits) is reported apart as the tail (imbalance, not a
per-partition cost). Wall time is the client's, around the whole call.

Usage::

    .venv/bin/python bench/bench_scale.py           # full run, writes bench/results/bench_scale.txt
    .venv/bin/python bench/bench_scale.py --quick   # small smoke run, writes a file only with --out
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

sys.path.insert(0, str(Path(__file__).resolve().parent))
import distributed
from _common import Report, git_commit, load_average, machine, nproc

from pitstore import FeatureSet, Store, macd, rsi, standard_features
from pitstore.offline.entries import EntryReader, is_compacted
from pitstore.testing import synthetic_bars

DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "bench_scale.txt"
TARGET_OVERHEAD = 0.10  # per-partition overhead / work, for partitions of >= 500k rows


@dataclass
class Run:
    label: str
    wall: float
    tasks: int = 0
    compute: float = 0.0  # summed task compute seconds
    gaps: float = 0.0  # summed per-worker (span - compute): the per-partition overhead
    tail: float = 0.0  # summed per-worker idle after its last task

    @property
    def overhead(self) -> float:
        return self.gaps / self.compute if self.compute else 0.0

    def line(self, base: float) -> str:
        s = f"  {self.label:<28} wall {self.wall:7.2f} s   speedup vs local {base / self.wall:4.2f}x"
        if self.tasks:
            s += (f"   tasks {self.tasks:3d}, compute {self.compute:6.2f} s, per-partition overhead"
                  f" {self.gaps:5.2f} s = {self.overhead:5.1%} of the work ({self.gaps / self.tasks * 1e3:5.1f}"
                  f" ms/task), tail {self.tail:5.2f} s")
        return s


def _timed_on(client: Any, label: str, workers: int, fn: Callable[[], Any]) -> tuple[Run, Any]:
    """Run ``fn`` and read its task stream: compute per worker, the gaps around its tasks, its tail."""
    with distributed.get_task_stream(client) as stream:
        t0 = time.time()
        result = fn()
        t1 = time.time()
    busy: dict[str, float] = {}
    last: dict[str, float] = {}
    tasks = 0
    for rec in stream.data:
        spans = [s for s in rec["startstops"] if s["action"] == "compute"]
        if not spans:
            continue
        tasks += 1
        w = rec["worker"]
        busy[w] = busy.get(w, 0.0) + sum(s["stop"] - s["start"] for s in spans)
        last[w] = max(last.get(w, t0), *(s["stop"] for s in spans))
    compute = sum(busy.values())
    gaps = sum((last[w] - t0) - busy[w] for w in busy)
    tail = sum(t1 - last[w] for w in busy) + (workers - len(busy)) * (t1 - t0)
    return Run(label, t1 - t0, tasks, compute, gaps, tail), result


def _entries(store: Store, name: str) -> list[tuple[Any, ...]]:
    version = store.registry.get(name).version
    # An entry in a shared (compacted) file has the file's size and hash, and the engines cut files differently
    # (the local one packs a backfill of many symbols): for those the rows are compared, by _same_frames.
    return [(e.symbol, e.n_rows, e.first_ts, e.last_ts, e.bars_entry_id,
             *((None, None) if is_compacted(e.path) else (e.size, e.file_hash)))
            for e in store.catalog.feature_entries(name, version)]


def _same_frames(store: Store, a: str, b: str) -> bool:
    ea = store.catalog.feature_entries(a, store.registry.get(a).version)
    eb = store.catalog.feature_entries(b, store.registry.get(b).version)
    # Through the catalog's entries: a backfill of 500 symbols compacts them (pitstore.offline.compact), so an entry
    # is a slice of a shared file (reading the files themselves read every compacted file once per entry).
    reader = EntryReader(store.root, 0)
    columns = list(pl.read_parquet_schema(store.root / ea[0].path))
    fa, fb = reader.read_of(ea, columns), reader.read_of(eb, columns)
    assert fa is not None and fb is not None
    return fa.equals(fb, null_equal=True)


def _lookups(n: int, symbols: Sequence[str], lo: int, hi: int, seed: int = 1) -> pl.DataFrame:
    rng = np.random.default_rng(seed)
    return pl.DataFrame({
        "symbol": pl.Series(np.asarray(symbols, dtype=object)[rng.integers(0, len(symbols), n)], dtype=pl.String),
        "ts": pl.Series(rng.integers(lo, hi, n), dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
    })


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--symbols", type=int, default=500)
    parser.add_argument("--bars", type=int, default=9_800, help="one-minute bars per symbol")
    parser.add_argument("--rows", type=int, default=10_000_000, help="look-ups of the big join")
    parser.add_argument("--partition-rows", type=int, default=500_000, help="bars per backfill task")
    parser.add_argument("--join-partition-rows", type=int, default=500_000, help="look-ups per join partition")
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true", help="small smoke run (writes a file only with --out)")
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    if args.quick:
        args.symbols, args.bars, args.rows = 20, 3_000, 200_000
        args.partition_rows = args.join_partition_rows = 20_000
    out_path = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)
    emit = Report()
    emit(f"pitstore Dask engine benchmark{'  [QUICK: smoke test]' if args.quick else ''}")
    emit(machine(f"commit {git_commit()}", f"polars {pl.__version__}", f"dask {distributed.__version__}"))
    emit(f"load average at start: {load_average()}")
    base = Path(args.dir or tempfile.mkdtemp(prefix="bench_scale_"))
    store = Store.open(base / "store")
    features = [*standard_features(timeframe="1m").features, rsi(14), macd(12, 26, 9)]
    bars = synthetic_bars(args.symbols, args.bars, timeframe="1m", seed=0)
    t = time.perf_counter()
    store.ingest(bars)
    emit(f"ingest: {bars.height:,} bars ({args.symbols} symbols x {args.bars:,}) in {time.perf_counter() - t:.1f} s"
         " (not compared)")
    lo, hi = bars["ts"].dt.epoch("us").min(), bars["ts"].dt.epoch("us").max()
    assert isinstance(lo, int) and isinstance(hi, int)
    del bars
    lookups = _lookups(args.rows, store.symbols(), lo, hi + 60_000_000)
    src = base / "lookups"
    src.mkdir()
    for i, chunk in enumerate(lookups.iter_slices(args.join_partition_rows)):
        chunk.write_parquet(src / f"part-{i:05d}.parquet")
    src_big = base / "lookups_big"  # the same look-ups in files (and partitions) twice as large
    src_big.mkdir()
    for i, chunk in enumerate(lookups.iter_slices(2 * args.join_partition_rows)):
        chunk.write_parquet(src_big / f"part-{i:05d}.parquet")
    small = lookups.head(min(1_000_000, args.rows))
    (base / "small").mkdir()
    small.write_parquet(base / "small" / "part-0.parquet")

    backfills: list[Run] = []
    joins: list[Run] = []
    checks: list[tuple[str, bool]] = []
    t = time.perf_counter()
    store.backfill(FeatureSet("local", features, timeframe="1m"))
    backfills.append(Run("local engine", time.perf_counter() - t))
    t = time.perf_counter()
    expected = store.get_historical(lookups, "local")
    joins.append(Run("local engine (in memory)", time.perf_counter() - t))
    expected_small = store.get_historical(small, "local")
    for workers in (1, 2):
        # polars in each worker gets its share of the cores (a pool per worker would oversubscribe them).
        cluster = distributed.LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                           dashboard_address=":0",
                                           env={"POLARS_MAX_THREADS": str(max(1, nproc() // workers))})
        with distributed.Client(cluster) as client:
            name = f"dask{workers}"
            fs = FeatureSet(name, features, timeframe="1m")
            run, _ = _timed_on(client, f"dask, {workers} worker{'s' * (workers > 1)}", workers,
                               lambda: store.backfill(fs, engine="dask", scheduler=client,  # noqa: B023
                                                      partition_rows=args.partition_rows))
            backfills.append(run)
            same = _entries(store, name) == _entries(store, "local") and _same_frames(store, name, "local")
            checks.append((f"backfill on {workers} worker(s): entries equal to local (rows; sizes and hashes "
                           "of files of their own; frames bit for bit)", same))
            target = base / f"joined{workers}"
            run, _ = _timed_on(client, f"dask, {workers} worker{'s' * (workers > 1)}, out=", workers,
                                  lambda: store.get_historical(str(src), name, engine="dask",  # noqa: B023
                                                               scheduler=client, out=target))  # noqa: B023
            joins.append(run)
            back = pl.read_parquet(target).sort("input_row").drop("input_row")
            checks.append((f"{args.rows:,}-row join on {workers} worker(s): dataset equal to local",
                           back.equals(expected, null_equal=True)))
            del back
            if workers == 2:
                target = base / "joined_big"
                run, _ = _timed_on(client, f"dask, 2 workers, out=, {2 * args.join_partition_rows // 1000}k/part",
                                   2, lambda: store.get_historical(str(src_big), name, engine="dask",  # noqa: B023
                                                                   scheduler=client, out=target))  # noqa: B023
                joins.append(run)
                checks.append((f"{args.rows:,}-row join on 2 workers, larger partitions: dataset equal to local",
                               pl.read_parquet(target).sort("input_row").drop("input_row").equals(
                                   expected, null_equal=True)))
            got = store.get_historical(str(base / "small"), name, engine="dask", scheduler=client, partitions=2)
            checks.append((f"{small.height:,}-row join on {workers} worker(s), gathered: equal to local",
                           got.equals(expected_small, null_equal=True)))
        cluster.close()
    emit()
    emit(f"backfill: {args.symbols * args.bars:,} bars, tasks of whole symbols, ~{args.partition_rows:,} bars each")
    for r in backfills:
        emit(r.line(backfills[0].wall))
    emit(f"  2 workers vs 1: {backfills[1].wall / backfills[2].wall:.2f}x")
    emit()
    emit(f"get_historical: {args.rows:,} look-ups, partitions of {args.join_partition_rows:,} (Dask: Parquet dataset"
         " in, Parquet dataset out; includes the shuffle by symbol)")
    for r in joins:
        emit(r.line(joins[0].wall))
    emit(f"  2 workers vs 1: {joins[1].wall / joins[2].wall:.2f}x (same partitions)")
    emit()
    emit("checks:")
    for text, ok in checks:
        emit(f"  {'PASS' if ok else 'FAIL'}  {text}")
    big = args.partition_rows >= 500_000
    emit.verdicts([
        (f"backfill per-partition overhead < {TARGET_OVERHEAD:.0%} of the work on 2 workers "
         f"({backfills[2].overhead:.1%})" + ("" if big else " [partitions < 500k: no target]"),
         backfills[2].overhead < TARGET_OVERHEAD or not big),
        (f"join per-partition overhead < {TARGET_OVERHEAD:.0%} of the work on 2 workers ({joins[2].overhead:.1%})"
         + ("" if args.join_partition_rows >= 500_000 else " [partitions < 500k: no target]"),
         joins[2].overhead < TARGET_OVERHEAD or args.join_partition_rows < 500_000),
        (f"join per-partition overhead < {TARGET_OVERHEAD:.0%} of the work on 2 workers, partitions of "
         f"{2 * args.join_partition_rows:,} ({joins[3].overhead:.1%})", joins[3].overhead < TARGET_OVERHEAD),
    ])
    emit.write(out_path)
    store.close()
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    raise SystemExit(main())

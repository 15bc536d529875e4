"""Benchmark: the offline tier, as-of reads (get_historical) and backfill, against bare polars and pandas.

Targets (from the issue), on the 2-core reference machine:

* ``Store.get_historical`` for 1M look-ups over 500 symbols x 2,520 daily bars of the seven standard
  features runs within 1.5x of a bare polars ``join_asof`` on the same feature rows already in memory
  (both frames sorted by ts, then ``join_asof(on="ts", by="symbol")``), with a peak RSS under 2 GB for the
  process doing it.
* ``Store.backfill`` of 4.9M one-minute bars (50 symbols x 98,280) runs at >= 3 M bars/s end to end:
  catalog queries, reading the bar snapshots, computing, writing zstd Parquet entries (fsynced), commits.
* a no-change re-backfill of the same data takes < 1 s.

What is timed:

* get_historical runs in worker processes (this script with ``--worker``), one per cold run: the worker
  imports pitstore, builds the look-ups, opens the store, then times the first call (cold: catalog and
  Parquet reads from a just-opened store, OS page cache warm, since the files were just written) and
  ``--runs`` repeated calls (warm; the store caches nothing, so each call reads the entries again). Its
  peak RSS is its VmHWM (see ``peak_rss_mb``), i.e. the whole process: interpreter, imports, look-ups,
  Arrow memory. Best and median over calls.
* bare polars: ``spine.sort("ts").join_asof(rows.sort("ts"), on="ts", by="symbol")`` on the stored rows
  read into memory beforehand (not timed); best and median of ``--runs`` after one warm-up. pandas:
  ``merge_asof`` of the two frames sorted by ts (the sorts timed too), for reference.
* backfill: bars are ingested first (timed, reported, no target). Each run backfills the same stored bars
  under a new feature-set name (same seven features, so a full backfill each time). Best and median of
  ``--backfill-runs`` after one warm-up; then ``--noop-runs`` re-backfills of the last one with nothing to
  do. Each full backfill writes ~260 MB of new files: on a VM whose memory is backed lazily by the host,
  page-cache writes into never-touched memory are slow and vary from run to run (see the encode stage).
* pruning (``--only pruning``, written to ``bench/results/bench_offline_pruning.txt``): 1,000 look-ups in the
  last day of a store of minute bars (200 symbols x 98,280 by default, the seven standard features), each
  variant in its own worker process (cold call after Store.open, then warm calls; peak RSS = VmHWM): pitstore
  with pruning (pitstore.offline.prune.ENABLED, the default), without (the module flag turned off: every touched
  symbol's full history decoded, as before #18), and polars reading the same files with a ts filter plus
  ``join_asof`` (the floor). The variants' answers are compared by hash before anything is reported.
* scale (``--only scale``, written to ``bench/results/bench_offline_scale.txt``; issue #18 item 4): stores of
  500 symbols x 98,280 minute bars (49M), of 5,000 symbols x 2,520 daily bars, and the 4.9M-bar reference
  (500 x 9,828 minute bars: the 49M shape's symbols, a tenth of the history), the seven standard features. Per
  shape, each step runs in its own worker process (``--scale-worker``), so each peak RSS (VmHWM) is that step's:
  writing the bars as Parquet files of whole symbols (setup), ingesting those files one by one, the full
  backfill, a get_historical of 10M look-ups (uniform symbols, uniform times over the whole history; built in
  the worker before the timer starts, counted in its RSS), a full-range ``read`` (the answer materialised) and
  the same read streamed (``Store.iter_read``: frames of consecutive symbols, each dropped once counted). Cost
  per bar (per look-up plus stored row joined, per row read) is set against the reference's; targets: peak RSS
  < 4 GB, cost <= 1.5x the reference's.
* one more backfill and one more get_historical call run instrumented: pitstore's stage functions are
  wrapped with timers (catalog calls, Parquet reads, compute, Parquet encode, fsync, commits) to show
  where the time goes. The instrumented runs are not the timed ones.

Results are checked before they are reported: get_historical's values equal the polars join's, pandas'
equal polars', and the backfilled rows equal ``pitstore.compute`` on all bars.

Usage::

    .venv/bin/python bench/bench_offline.py            # full run, writes bench/results/bench_offline.txt
    .venv/bin/python bench/bench_offline.py --quick    # small smoke run, writes a file only with --out
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
from _common import Report, git_commit, load_average, machine, timed  # bench/ is sys.path[0] when a script runs

import pitstore
from pitstore import Store, standard_features
from pitstore.catalog.sqlite import SqliteCatalog
from pitstore.offline import backfill as backfill_module
from pitstore.offline import compact as compact_module
from pitstore.offline import prune as prune_module
from pitstore.offline import reads as reads_module
from pitstore.offline.entries import EntryReader
from pitstore.testing import synthetic_bars
from pitstore.timeutil import parse_timeframe

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results" / "bench_offline.txt"
DEFAULT_OUT_PRUNING = BENCH_DIR / "results" / "bench_offline_pruning.txt"
DEFAULT_OUT_SCALE = BENCH_DIR / "results" / "bench_offline_scale.txt"

SEED = 42
HIST_SYMBOLS, HIST_BARS, LOOKUPS = 500, 2_520, 1_000_000
BF_SYMBOLS, BF_BARS = 50, 98_280
QUICK_HIST_SYMBOLS, QUICK_LOOKUPS, QUICK_BF_SYMBOLS = 20, 50_000, 5
PRUNE_SYMBOLS, PRUNE_BARS, PRUNE_LOOKUPS = 200, 98_280, 1_000
QUICK_PRUNE_SYMBOLS, QUICK_PRUNE_BARS = 10, 20_000
PRUNE_FS = "minute_core"
PRUNE_FEATURES = ["ret_5", "ret_20", "ret_60", "vol_20", "vol_60", "mom_20", "mom_60"]  # the 1m names
START = datetime(2015, 1, 2, tzinfo=UTC)  # synthetic_bars' default start
FS = "daily_core"
FEATURES = ["ret_5d", "ret_20d", "ret_60d", "vol_20d", "vol_60d", "mom_20d", "mom_60d"]

TARGET_RATIO = 1.5
TARGET_COLD_FLOOR = 1.5  # cold get_historical vs the floor: polars reading one Parquet file + join_asof + input order
TARGET_WARM_BARE = 1.2  # warm get_historical vs a bare in-memory join_asof
INCREMENTS = 50  # incremental backfills of the many-backfills store (one new bar per symbol each)
TARGET_RSS_MB = 2_000.0  # 2 GB, decimal
TARGET_M_BARS_PER_S = 3.0
TARGET_NOOP_S = 1.0


def lookups(n_symbols: int, n_bars: int, n: int) -> pl.DataFrame:
    """``n`` seeded look-ups: uniform symbols, uniform times (µs) from 30 days before the first bar to 30 days
    after the last, so a few fall before any data."""
    rng = np.random.default_rng(SEED + 1)
    names = np.array([f"S{i:04d}" for i in range(n_symbols)])
    lo = int((START - timedelta(days=30)).timestamp() * 1e6)
    hi = int((START + timedelta(days=n_bars - 1 + 30)).timestamp() * 1e6)
    return pl.DataFrame({
        "symbol": names[rng.integers(0, n_symbols, n)],
        "ts": pl.Series(rng.integers(lo, hi, n), dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
    })


def best_median(xs: Sequence[float]) -> tuple[float, float]:
    return min(xs), statistics.median(xs)


# --- the get_historical worker --------------------------------------------------------------------------


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM), in MB.

    Not ``ru_maxrss``: on Linux a child's ru_maxrss (RUSAGE_SELF in the child, RUSAGE_CHILDREN or wait4 in
    the parent) starts from the parent's RSS at fork time, so a big parent inflates it. VmHWM belongs to the
    address space the child got at exec and counts only its own pages (Arrow's allocations included).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024 / 1e6
    raise SystemExit("no VmHWM in /proc/self/status: peak RSS needs Linux")


def worker(root: str, n_symbols: int, n_bars: int, n_lookups: int, runs: int) -> None:
    """Runs in its own process: a cold call right after Store.open, then ``runs`` warm calls; prints JSON."""
    spine = lookups(n_symbols, n_bars, n_lookups)
    rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    store = Store.open(root)
    open_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    out = store.get_historical(spine, FS)
    cold = time.perf_counter() - t0
    assert out.height == n_lookups
    del out
    warm = timed(lambda: store.get_historical(spine, FS), runs, warmup=False)
    store.close()
    print(json.dumps({"open": open_s, "cold": cold, "warm": warm, "rss_before": rss_before, "peak": peak_rss_mb()}),
          flush=True)


def floor_worker(path: str, n_symbols: int, n_bars: int, n_lookups: int, runs: int) -> None:
    """Runs in its own process: the floor of a cold read. Polars reads ONE Parquet file holding the stored rows,
    then join_asof + back to input order (what get_historical returns); cold first, then ``runs`` warm."""
    spine = lookups(n_symbols, n_bars, n_lookups)
    indexed = spine.with_row_index("i")

    def call() -> pl.DataFrame:
        rows = pl.read_parquet(path)
        return indexed.sort("ts").join_asof(rows.sort("ts"), on="ts", by="symbol", check_sortedness=False).sort("i")

    t0 = time.perf_counter()
    out = call()
    cold = time.perf_counter() - t0
    assert out.height == n_lookups
    del out
    warm = timed(call, runs, warmup=False)
    print(json.dumps({"open": 0.0, "cold": cold, "warm": warm, "rss_before": 0.0, "peak": peak_rss_mb()}), flush=True)


def last_day_lookups(n_symbols: int, n_bars: int, n: int) -> pl.DataFrame:
    """``n`` seeded look-ups of uniform symbols at uniform times within the last day of the minute bars."""
    rng = np.random.default_rng(SEED + 2)
    names = np.array([f"S{i:04d}" for i in range(n_symbols)])
    last = int((START + timedelta(minutes=n_bars - 1)).timestamp() * 1e6)
    return pl.DataFrame({
        "symbol": names[rng.integers(0, n_symbols, n)],
        "ts": pl.Series(rng.integers(last - 86_400 * 10**6, last + 1, n), dtype=pl.Int64)
        .cast(pl.Datetime("us", "UTC")),
    })


def prune_worker(root: str, n_symbols: int, n_bars: int, n_lookups: int, runs: int, mode: str) -> None:
    """Runs in its own process: one variant (``on``, ``off``: pitstore with or without pruning; ``polars``: the
    floor) cold after open, then ``runs`` warm; prints JSON with times, peak RSS and a hash of the answer."""
    spine = last_day_lookups(n_symbols, n_bars, n_lookups)
    rss_before = peak_rss_mb()
    store = Store.open(root)
    if mode == "polars":
        sel = reads_module.select(store.registry, PRUNE_FS)[0]
        paths = [str(store.root / e.path) for e in store.catalog.feature_entries(sel.feature_set, sel.version)]
        indexed = spine.with_row_index("i")

        def call() -> pl.DataFrame:
            # What a hand-written reader would do: the files, only rows young enough to be fresh, as-of join.
            since = spine["ts"].min() - sel.ttl  # type: ignore[operator]
            young = pl.scan_parquet(paths).filter(pl.col("ts") >= since)
            rows = young.select("symbol", "ts", *PRUNE_FEATURES).collect()
            joined = indexed.sort("ts").join_asof(rows.sort("ts"), on="ts", by="symbol", check_sortedness=False)
            return joined.sort("i").drop("i")
    else:
        prune_module.ENABLED = mode == "on"

        def call() -> pl.DataFrame:
            out = store.get_historical(spine, PRUNE_FS)
            assert isinstance(out, pl.DataFrame)
            return out
    t0 = time.perf_counter()
    out = call()
    cold = time.perf_counter() - t0
    peak_cold = peak_rss_mb()
    # Values only (polars does not null stale rows: the look-ups are all fresh here, checked by the caller).
    digest = pitstore.datahash.table_hash(out.select(PRUNE_FEATURES).to_arrow()).hex
    statuses = dict(out["status"].value_counts().iter_rows()) if "status" in out.columns else {}
    del out
    warm = timed(call, runs, warmup=False)
    store.close()
    print(json.dumps({"cold": cold, "warm": warm, "rss_before": rss_before, "peak_cold": peak_cold,
                      "peak": peak_rss_mb(), "digest": digest, "statuses": statuses}), flush=True)


@dataclass
class WorkerResult:
    open_s: float
    cold: float
    warm: list[float]
    rss_before_mb: float
    peak_rss_mb: float


def run_worker(root: Path, n_symbols: int, n_lookups: int, runs: int, flag: str = "--worker") -> WorkerResult:
    cmd = [sys.executable, str(Path(__file__).resolve()), flag, str(root), str(n_symbols), str(HIST_BARS),
           str(n_lookups), str(runs)]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if res.returncode != 0:
        raise SystemExit(f"get_historical worker failed with exit code {res.returncode}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return WorkerResult(out["open"], out["cold"], out["warm"], out["rss_before"], out["peak"])


# --- stage timing ---------------------------------------------------------------------------------------


@dataclass
class Stages:
    """Wall time and call count of wrapped functions, while installed."""

    seconds: dict[str, float] = field(default_factory=dict)
    calls: dict[str, int] = field(default_factory=dict)

    @contextlib.contextmanager
    def wrap(self, targets: Sequence[tuple[str, Any, str]]) -> Iterator[Stages]:
        saved = []
        for label, owner, name in targets:
            original = getattr(owner, name)
            saved.append((owner, name, original))
            setattr(owner, name, self._timer(label, original))
        try:
            yield self
        finally:
            for owner, name, original in reversed(saved):
                setattr(owner, name, original)

    def _timer(self, label: str, fn: Callable[..., Any]) -> Callable[..., Any]:
        def timed_call(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[label] = self.seconds.get(label, 0.0) + time.perf_counter() - t0
                self.calls[label] = self.calls.get(label, 0) + 1
        return timed_call


def stage_lines(stages: Stages, total: float, order: Sequence[tuple[str, bool]], other: str) -> list[str]:
    """One line per stage (``nested`` ones are part of the stage above and not added to ``other``)."""
    w = 50
    lines = [f"  {'stage':<{w}} {'calls':>6} {'s':>7} {'% wall':>7}"]
    top = 0.0
    for label, nested in order:
        s = stages.seconds.get(label, 0.0)
        if not nested:
            top += s
        name = ("    " if nested else "") + label
        lines.append(f"  {name:<{w}} {stages.calls.get(label, 0):>6} {s:>7.3f} {100 * s / total:>6.1f}%")
    rest = total - top
    lines.append(f"  {other:<{w}} {'':>6} {rest:>7.3f} {100 * rest / total:>6.1f}%")
    lines.append(f"  {'total (wall)':<{w}} {'':>6} {total:>7.3f} {100.0:>6.1f}%")
    return lines


# --- checks ---------------------------------------------------------------------------------------------


def same_values(a: pl.DataFrame, b: pd.DataFrame | pl.DataFrame, columns: Sequence[str]) -> bool:
    for c in columns:
        x = a[c].to_numpy().astype(np.float64)
        y = b[c].to_numpy(np.float64, na_value=np.nan) if isinstance(b, pd.DataFrame) else b[c].to_numpy()
        if not np.array_equal(x, np.asarray(y, dtype=np.float64), equal_nan=True):
            return False
    return True


# --- main -----------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="warm get_historical and polars runs (default 5)")
    parser.add_argument("--cold-runs", type=int, default=3, help="worker processes, one cold call each (default 3)")
    parser.add_argument("--pandas-runs", type=int, default=2, help="timed pandas merge_asof runs (default 2)")
    parser.add_argument("--backfill-runs", type=int, default=5, help="timed full backfills (default 5)")
    parser.add_argument("--noop-runs", type=int, default=5, help="timed no-change re-backfills (default 5)")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the stores (default: a temp dir)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_HIST_SYMBOLS} symbols and {QUICK_LOOKUPS:_} look-ups, "
                             f"{QUICK_BF_SYMBOLS} minute-bar symbols, at most 2 runs each; writes a file only "
                             "with --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"also write the report here (default for a full run: {DEFAULT_OUT})")
    parser.add_argument("--only", choices=("all", "historical", "incremental", "backfill", "pruning", "append",
                                           "scale"),
                        default="all",
                        help="run one section (pruning alone writes bench/results/bench_offline_pruning.txt, "
                             "append alone bench/results/bench_offline_append.txt, scale alone "
                             "bench/results/bench_offline_scale.txt; scale is not part of all)")
    parser.add_argument("--append-symbols", type=int, default=None,
                        help=f"symbols of the append stores (default {APPEND_SYMBOLS}; quick {QUICK_APPEND_SYMBOLS})")
    parser.add_argument("--append-rounds", type=int, default=5, help="timed one-bar appends per store (default 5)")
    parser.add_argument("--prune-symbols", type=int, default=None,
                        help=f"symbols of the pruning store (default {PRUNE_SYMBOLS}; quick {QUICK_PRUNE_SYMBOLS})")
    parser.add_argument("--prune-bars", type=int, default=None,
                        help=f"minute bars per symbol of the pruning store (default {PRUNE_BARS:_})")
    parser.add_argument("--worker", nargs=5, metavar=("ROOT", "SYMBOLS", "BARS", "LOOKUPS", "RUNS"),
                        help=argparse.SUPPRESS)
    parser.add_argument("--scale-shapes", default=",".join(SCALE_SHAPES),
                        help=f"scale section: which shapes, comma-separated (default {','.join(SCALE_SHAPES)}; "
                             "the reference always runs first)")
    parser.add_argument("--scale-worker", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--prune-worker", nargs=6, help=argparse.SUPPRESS)
    parser.add_argument("--floor-worker", nargs=5, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        root, *nums = args.worker
        worker(root, *(int(n) for n in nums))
        return 0
    if args.floor_worker:
        path, *nums = args.floor_worker
        floor_worker(path, *(int(n) for n in nums))
        return 0
    if args.scale_worker:
        step, root, timeframe, *nums = args.scale_worker
        scale_worker(step, root, timeframe, *(int(n) for n in nums))
        return 0
    if args.prune_worker:
        root, *nums, mode = args.prune_worker
        prune_worker(root, *(int(n) for n in nums), mode)
        return 0
    if min(args.runs, args.cold_runs, args.pandas_runs, args.backfill_runs, args.noop_runs) < 1:
        parser.error("run counts must be at least 1")
    q = args.quick
    hist_symbols = QUICK_HIST_SYMBOLS if q else HIST_SYMBOLS
    n_lookups = QUICK_LOOKUPS if q else LOOKUPS
    bf_symbols = QUICK_BF_SYMBOLS if q else BF_SYMBOLS
    runs = min(args.runs, 2) if q else args.runs
    cold_runs = 1 if q else args.cold_runs
    pandas_runs = 1 if q else args.pandas_runs
    bf_runs = min(args.backfill_runs, 2) if q else args.backfill_runs
    noop_runs = min(args.noop_runs, 2) if q else args.noop_runs
    default_out = {"pruning": DEFAULT_OUT_PRUNING, "append": DEFAULT_OUT_APPEND,
                   "scale": DEFAULT_OUT_SCALE}.get(args.only, DEFAULT_OUT)
    out_path: Path | None = args.out if args.out is not None else (None if q else default_out)
    prune_symbols = args.prune_symbols or (QUICK_PRUNE_SYMBOLS if q else PRUNE_SYMBOLS)
    prune_bars = args.prune_bars or (QUICK_PRUNE_BARS if q else PRUNE_BARS)

    emit = Report()
    with contextlib.ExitStack() as stack:
        base = args.dir if args.dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        base.mkdir(parents=True, exist_ok=True)
        quick_note = "  [QUICK: smoke test, not the benchmark configuration]" if q else ""
        emit(f"pitstore offline-tier benchmark{quick_note}")
        emit(f"date:      {datetime.now(UTC).isoformat(timespec='seconds')}")
        emit(f"versions:  python {platform.python_version()}, pitstore {pitstore.__version__} ({git_commit()}), "
             f"polars {pl.__version__}, pyarrow {pa.__version__}, numpy {np.__version__}, pandas {pd.__version__}")
        emit(machine(f"polars threads {pl.thread_pool_size()}", f"load average at start {load_average()}"))
        emit(f"stores:    {base} (zstd Parquet entries, fsynced; SQLite catalog in WAL mode)")
        emit()
        verdicts: list[str] = []
        if args.only in ("all", "historical"):
            verdicts += historical(emit, base / "daily", hist_symbols, n_lookups, runs, cold_runs, pandas_runs)
            emit()
        if args.only in ("all", "incremental"):
            verdicts += incremental(emit, base / "incremental", hist_symbols, n_lookups, cold_runs)
            emit()
        if args.only in ("all", "backfill"):
            verdicts += backfill(emit, base / "minute", bf_symbols, bf_runs, noop_runs)
            emit()
        if args.only in ("all", "pruning"):
            verdicts += pruning(emit, base / "pruning", prune_symbols, prune_bars, runs, cold_runs)
            emit()
        if args.only in ("all", "append"):
            sizes = QUICK_APPEND_SIZES if q else APPEND_SIZES
            verdicts += append_cost(emit, base / "append", args.append_symbols or (
                QUICK_APPEND_SYMBOLS if q else APPEND_SYMBOLS), sizes, min(args.append_rounds, 2) if q
                else args.append_rounds)
            emit()
        if args.only == "scale":  # not in "all": the 49M store alone takes a quarter of an hour to build
            verdicts += scale(emit, base / "scale", args.scale_shapes.split(","), q)
            emit()
        emit(f"load average at end: {load_average()}")
        emit("summary:")
        for v in verdicts:
            emit(f"  {v}{' (quick run: not the benchmark configuration)' if q else ''}")
    emit.write(out_path)
    if out_path is not None:
        print(f"wrote {out_path}")
    return 0


def historical(emit: Callable[[str], None], root: Path, n_symbols: int, n_lookups: int, runs: int,
               cold_runs: int, pandas_runs: int) -> list[str]:
    bars = synthetic_bars(n_symbols, HIST_BARS, seed=SEED)
    t0 = time.perf_counter()
    with Store.open(root) as store:
        store.ingest(bars)
        ingest_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.backfill(standard_features())
        backfill_s = time.perf_counter() - t0
        rows = store.read(FS)  # the baselines' input, in memory (not timed)
        listed = store.catalog.feature_entries(FS, store.registry.get(FS).version)
        entries, files = len(listed), len({e.path for e in listed})
        spine = lookups(n_symbols, HIST_BARS, n_lookups)
        ours = store.get_historical(spine, FS)
        stages = Stages()
        reads = reads_module
        with stages.wrap([
            ("entities: checks, casts, row index", reads, "_spine"),
            ("registry: resolve feature refs", reads, "select"),
            ("catalog: feature_entries", SqliteCatalog, "feature_entries"),
            ("parquet read (cached): EntryReader.read", EntryReader, "read"),
            ("as-of join: pit.asof_join (sorts, join, status)", reads, "asof_join"),
        ]):
            t0 = time.perf_counter()
            store.get_historical(spine, FS)
            instrumented = time.perf_counter() - t0
    emit(f"get_historical: {n_lookups:,} look-ups, {n_symbols} symbols x {HIST_BARS:,} daily bars "
         f"(synthetic_bars(seed={SEED})), {rows.height:,} stored rows of {FS} ({len(FEATURES)} features)")
    emit(f"  entries: {entries:,} in {files:,} file(s)" + (" (the backfill compacted them: more than"
         f" pitstore.offline.compact.AUTO_ENTRIES = {compact_module.AUTO_ENTRIES})" if files < entries else ""))
    emit(f"  setup (not timed against targets): ingest {ingest_s:.2f} s, backfill {backfill_s:.2f} s")

    # --- correctness: pitstore vs polars vs pandas, on the same look-ups
    def polars_join() -> pl.DataFrame:
        return spine.sort("ts").join_asof(rows.sort("ts"), on="ts", by="symbol", check_sortedness=False)

    indexed = spine.with_row_index("i")

    def polars_join_in_order() -> pl.DataFrame:
        return indexed.sort("ts").join_asof(rows.sort("ts"), on="ts", by="symbol", check_sortedness=False).sort("i")

    left_pd = indexed.to_pandas()
    right_pd = rows.to_pandas()

    def pandas_join() -> pd.DataFrame:
        return pd.merge_asof(left_pd.sort_values("ts", kind="stable"), right_pd.sort_values("ts", kind="stable"),
                             on="ts", by="symbol")

    ref = polars_join_in_order()
    pd_ref = pandas_join().sort_values("i")
    # get_historical nulls the values of stale rows (older than the effective TTL); the bare join keeps them.
    stale = ours["status"] == "stale"
    ok_polars = same_values(ours, ref.with_columns(pl.when(stale).then(None).otherwise(pl.col(c)).alias(c)
                                                   for c in FEATURES), FEATURES)
    ok_pandas = same_values(ref, pd_ref, FEATURES)
    statuses = dict(ours["status"].value_counts().iter_rows())
    emit(f"  check: get_historical == polars join_asof: {'yes' if ok_polars else 'NO'}; "
         f"pandas merge_asof == polars: {'yes' if ok_pandas else 'NO'}; statuses {statuses}")
    if not (ok_polars and ok_pandas):
        raise SystemExit("ABORT: the implementations disagree, the timings would not compare like with like")
    del ours, ref, pd_ref
    gc.collect()

    # --- timings
    floor_file = root / "floor.parquet"  # the same stored rows in one file (zstd, statistics), outside the store
    rows.write_parquet(floor_file, compression="zstd", compression_level=1, statistics=True)
    # Alternating, so both see the same machine load.
    workers, floors = [], []
    for _ in range(cold_runs):
        workers.append(run_worker(root, n_symbols, n_lookups, runs))
        floors.append(run_worker(floor_file, n_symbols, n_lookups, runs, "--floor-worker"))
    floor_cold = [w.cold for w in floors]
    cold = [w.cold for w in workers]
    warm = [t for w in workers for t in w.warm]
    peak = max(w.peak_rss_mb for w in workers)
    pl_runs = timed(polars_join, runs)
    pl_order_runs = timed(polars_join_in_order, runs)
    pd_runs = timed(pandas_join, pandas_runs, warmup=False)
    pl_best, pl_med = best_median(pl_runs)
    rows_out = [
        ("pitstore cold", cold, "first call after Store.open, one per worker process"),
        ("floor cold", floor_cold, "polars: read one Parquet file of the rows + join_asof + input order, own process"),
        ("pitstore warm", warm, "repeated calls (decoded entries cached in the Store)"),
        ("polars join_asof", pl_runs, "sort both by ts + join_asof by symbol, rows in memory"),
        ("polars, input order", pl_order_runs, "the same + sort back to input order, as get_historical returns"),
        ("pandas merge_asof", pd_runs, "sort_values both + merge_asof by symbol, rows in memory"),
    ]
    emit(f"  {'method':<19} {'N':>2} {'best s':>7} {'vs polars':>9} {'median s':>9} {'vs polars':>9}  what")
    for name, ts, what in rows_out:
        b, m = best_median(ts)
        emit(f"  {name:<19} {len(ts):>2} {b:>7.3f} {b / pl_best:>8.2f}x {m:>9.3f} {m / pl_med:>8.2f}x  {what}")
    emit(f"  Store.open: {statistics.median(w.open_s for w in workers) * 1e3:.1f} ms (median, not in the timings)")
    emit(f"  peak RSS (VmHWM) of the get_historical process: {peak:,.0f} MB (max of {len(workers)} workers; "
         f"{max(w.rss_before_mb for w in workers):,.0f} MB before Store.open: interpreter, imports, look-ups)")
    for name, ts, _ in rows_out:
        emit(f"  {name} runs (s): " + ", ".join(f"{t:.3f}" for t in ts))
    emit(f"  stages of one instrumented warm call ({instrumented:.3f} s; wrappers add a little):")
    for line in stage_lines(stages, instrumented, [
        ("entities: checks, casts, row index", False), ("registry: resolve feature refs", False),
        ("catalog: feature_entries", False), ("parquet read: read_entries", False),
        ("as-of join: pit.asof_join (sorts, join, status)", False),
    ], "other: joined columns onto entities, worst status"):
        emit("  " + line)

    verdicts = []
    for name, ts in (("warm", warm), ("cold", cold)):
        ratio = min(ts) / pl_best
        verdicts.append(
            f"get_historical {name} within {TARGET_RATIO}x of bare polars (best vs best): {ratio:.2f}x -> "
            f"{'PASS' if ratio <= TARGET_RATIO else 'FAIL'} (median vs median: {statistics.median(ts) / pl_med:.2f}x)"
        )
    fb, fm = best_median(floor_cold)
    ratio = min(cold) / fb
    verdicts.append(f"get_historical cold within {TARGET_COLD_FLOOR}x of the floor (one Parquet file + join_asof +"
                    f" input order, best vs best): {ratio:.2f}x -> {'PASS' if ratio <= TARGET_COLD_FLOOR else 'FAIL'}"
                    f" (median vs median: {statistics.median(cold) / fm:.2f}x)")
    ratio = min(warm) / pl_best
    verdicts.append(f"get_historical warm within {TARGET_WARM_BARE}x of a bare in-memory join_asof (best vs best):"
                    f" {ratio:.2f}x -> {'PASS' if ratio <= TARGET_WARM_BARE else 'FAIL'}"
                    f" (median vs median: {statistics.median(warm) / pl_med:.2f}x)")
    return [
        *verdicts,
        f"get_historical peak RSS < {TARGET_RSS_MB:,.0f} MB: {peak:,.0f} MB -> "
        f"{'PASS' if peak < TARGET_RSS_MB else 'FAIL'}",
    ]


def incremental(emit: Callable[[str], None], root: Path, n_symbols: int, n_lookups: int, cold_runs: int) -> list[str]:
    """The many-incremental-backfills store: the daily bars ingested and backfilled up to the last INCREMENTS
    bars, then one bar more per symbol and a backfill, INCREMENTS times (compaction off: one entry per symbol and
    backfill); cold get_historical on it, then on a copy compacted (``Store.compact``), and the floor."""
    bars = synthetic_bars(n_symbols, HIST_BARS, seed=SEED)
    day = pl.col("ts").rank("dense") - 1
    saved = compact_module.AUTO_ENTRIES
    compact_module.AUTO_ENTRIES = 1 << 62  # off while the small entries pile up
    t0 = time.perf_counter()
    try:
        with Store.open(root / "loose") as store:
            for cut in range(HIST_BARS - INCREMENTS, HIST_BARS + 1):
                store.ingest(bars.filter(day < cut))
                store.backfill(standard_features())
            rows = store.read(FS)
            entries = store.catalog.feature_entries(FS, store.registry.get(FS).version)
    finally:
        compact_module.AUTO_ENTRIES = saved
    build_s = time.perf_counter() - t0
    shutil.copytree(root / "loose", root / "packed")
    with Store.open(root / "packed") as store:
        report = store.compact(FS)
        packed_rows = store.read(FS)
        packed_files = len({e.path for e in store.catalog.feature_entries(FS, store.registry.get(FS).version)})
    if not packed_rows.equals(rows):
        raise SystemExit("ABORT: the compacted store reads other rows than the uncompacted one")
    floor_file = root / "floor.parquet"
    rows.write_parquet(floor_file, compression="zstd", compression_level=1, statistics=True)
    loose, packed, floor = [], [], []
    for _ in range(cold_runs):  # alternating, so all three see the same machine load
        loose.append(run_worker(root / "loose", n_symbols, n_lookups, 1).cold)
        packed.append(run_worker(root / "packed", n_symbols, n_lookups, 1).cold)
        floor.append(run_worker(floor_file, n_symbols, n_lookups, 1, "--floor-worker").cold)
    emit(f"after {INCREMENTS} incremental backfills: {n_symbols} symbols x {HIST_BARS:,} daily bars,"
         f" {rows.height:,} rows of {FS} in {len(entries):,} entries / {len({e.path for e in entries}):,} files"
         f" (built in {build_s:.1f} s)")
    emit(f"  compact: {report.entries:,} entries, {report.rows:,} rows -> {packed_files} file(s)"
         f" in {report.seconds:.2f} s")
    fb, fm = best_median(floor)
    emit(f"  {'cold get_historical':<24} {'N':>2} {'best s':>7} {'vs floor':>9} {'median s':>9} {'vs floor':>9}")
    for name, ts in (("not compacted", loose), ("compacted", packed), ("floor (one Parquet file)", floor)):
        b, m = best_median(ts)
        emit(f"  {name:<24} {len(ts):>2} {b:>7.3f} {b / fb:>8.2f}x {m:>9.3f} {m / fm:>8.2f}x  runs: "
             + ", ".join(f"{t:.3f}" for t in ts))
    ratio = min(packed) / fb
    return [f"after {INCREMENTS} incremental backfills, compacted cold within {TARGET_COLD_FLOOR}x of the floor"
            f" (best vs best): {ratio:.2f}x -> {'PASS' if ratio <= TARGET_COLD_FLOOR else 'FAIL'} (not compacted:"
            f" {min(loose) / fb:.2f}x; compacted {min(loose) / min(packed):.1f}x faster than not)"]


def backfill(emit: Callable[[str], None], root: Path, n_symbols: int, runs: int, noop_runs: int) -> list[str]:
    bars = synthetic_bars(n_symbols, BF_BARS, timeframe="1m", seed=SEED)
    n = bars.height
    emit(f"backfill: {n:,} one-minute bars, {n_symbols} symbols x {BF_BARS:,} "
         f"(synthetic_bars(timeframe='1m', seed={SEED})), the seven standard features")
    with Store.open(root) as store:
        t0 = time.perf_counter()
        store.ingest(bars)
        emit(f"  setup (not timed against targets): ingest {time.perf_counter() - t0:.2f} s")
        store.backfill(standard_features("bench_warmup", timeframe="1m"))  # warm-up, not timed
        times: list[float] = []
        for i in range(runs):
            fs = standard_features(f"bench_{i}", timeframe="1m")
            gc.collect()
            t0 = time.perf_counter()
            report = store.backfill(fs)
            times.append(time.perf_counter() - t0)
            assert len(report.full) == n_symbols and report.written_rows == n, report
        got = store.read("bench_0")
        ok = got.equals(pitstore.compute(standard_features(timeframe="1m"), bars))
        del got
        emit(f"  check: stored rows == pitstore.compute on all bars: {'yes' if ok else 'NO'}")
        if not ok:
            raise SystemExit("ABORT: backfilled rows differ from pitstore.compute")
        noop: list[float] = []
        for _ in range(noop_runs):
            t0 = time.perf_counter()
            report = store.backfill(fs)
            noop.append(time.perf_counter() - t0)
            assert report.nothing_to_do and len(report.up_to_date) == n_symbols, report
        stages = Stages()
        bf = backfill_module
        with stages.wrap([
            ("catalog: register_version", SqliteCatalog, "register_version"),
            ("catalog: feature_entries + live_bars", SqliteCatalog, "feature_entries"),
            ("catalog: feature_entries + live_bars", SqliteCatalog, "live_bars"),
            ("catalog: bar_history", SqliteCatalog, "bar_history"),
            ("parquet read: read_entries (bars)", bf, "read_entries"),
            ("compute: compute_frame", bf, "compute_frame"),
            ("parquet write: write_entry", bf, "write_entry"),
            ("encode: DataFrame.write_parquet", pl.DataFrame, "write_parquet"),
            ("fsync (file + directory)", os, "fsync"),
            ("commit: commit_features", SqliteCatalog, "commit_features"),
        ]):
            t0 = time.perf_counter()
            store.backfill(standard_features("bench_instrumented", timeframe="1m"))
            instrumented = time.perf_counter() - t0
        stored = store.stats()["bytes_on_disk"]
    best, med = best_median(times)
    emit(f"  {'run':<22} {'N':>2} {'best s':>7} {'M bars/s':>9} {'median s':>9} {'M bars/s':>9}")
    emit(f"  {'full backfill':<22} {len(times):>2} {best:>7.3f} {n / best / 1e6:>9.2f} {med:>9.3f}"
         f" {n / med / 1e6:>9.2f}")
    nb, nm = best_median(noop)
    emit(f"  {'no-change re-backfill':<22} {len(noop):>2} {nb:>7.4f} {'':>9} {nm:>9.4f} {'':>9}  "
         f"(worst {max(noop):.4f} s)")
    emit("  full backfill runs (s): " + ", ".join(f"{t:.3f}" for t in times))
    emit("  no-change runs (s): " + ", ".join(f"{t:.4f}" for t in noop))
    emit(f"  bytes on disk after {runs + 2} feature sets: {stored / 1e6:,.0f} MB")
    emit(f"  stages of one instrumented full backfill ({instrumented:.3f} s, {n / instrumented / 1e6:.2f} M bars/s):")
    for line in stage_lines(stages, instrumented, [
        ("catalog: register_version", False), ("catalog: feature_entries + live_bars", False),
        ("catalog: bar_history", False), ("parquet read: read_entries (bars)", False),
        ("compute: compute_frame", False), ("partition_by symbol", False),
        ("parquet write: write_entry", False), ("encode: DataFrame.write_parquet", True),
        ("fsync (file + directory)", True), ("commit: commit_features", False),
    ], "other: python glue, per-symbol filters"):
        emit("  " + line)
    rate = n / best / 1e6
    return [
        f"backfill >= {TARGET_M_BARS_PER_S:g} M bars/s (best of {len(times)}): {rate:.2f} M bars/s -> "
        f"{'PASS' if rate >= TARGET_M_BARS_PER_S else 'FAIL'} (median {n / med / 1e6:.2f} M bars/s)",
        f"no-change re-backfill < {TARGET_NOOP_S:g} s (worst of {len(noop)}): {max(noop) * 1e3:.1f} ms -> "
        f"{'PASS' if max(noop) < TARGET_NOOP_S else 'FAIL'}",
    ]



def pruning(emit: Callable[[str], None], root: Path, n_symbols: int, n_bars: int, runs: int,
            cold_runs: int) -> list[str]:
    """1,000 look-ups in the last day of a large minute-bar store: pruned, unpruned, polars floor."""
    t0 = time.perf_counter()
    with Store.open(root) as store:
        for first in range(0, n_symbols, 50):  # ingested 50 symbols at a time: the bars frame stays small
            bars = synthetic_bars(min(50, n_symbols - first), n_bars, timeframe="1m", seed=SEED + first)
            names = {f"S{i:04d}": f"S{first + i:04d}" for i in range(50)}
            store.ingest(bars.with_columns(pl.col("symbol").replace(names)))
            del bars
        ingest_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        store.backfill(standard_features(PRUNE_FS, timeframe="1m"))
        backfill_s = time.perf_counter() - t0
        counts = store.catalog.counts()
        disk = store.stats()["bytes_on_disk"]
    gc.collect()
    emit(f"pruning: {PRUNE_LOOKUPS:,} look-ups in the last day, {n_symbols} symbols x {n_bars:,} one-minute bars "
         f"({counts['feature_rows_live']:,} stored rows of {PRUNE_FS}, {len(PRUNE_FEATURES)} features, "
         f"{disk / 1e6:,.0f} MB on disk)")
    emit(f"  setup (not timed): ingest {ingest_s:.2f} s, backfill {backfill_s:.2f} s")

    def run(mode: str) -> dict[str, Any]:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--prune-worker", str(root), str(n_symbols),
               str(n_bars), str(PRUNE_LOOKUPS), str(runs), mode]
        res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
        if res.returncode != 0:
            raise SystemExit(f"pruning worker ({mode}) failed with exit code {res.returncode}")
        out: dict[str, Any] = json.loads(res.stdout.strip().splitlines()[-1])
        return out

    # Interleaved (on, off, polars, on, off, ...): a change in the machine's load hits every variant alike.
    results: dict[str, list[dict[str, Any]]] = {"on": [], "off": [], "polars": []}
    for _ in range(cold_runs):
        for mode in results:
            results[mode].append(run(mode))
    digests = {m: {r["digest"] for r in rs} for m, rs in results.items()}
    same = len(set().union(*digests.values())) == 1
    statuses = results["on"][0]["statuses"]
    emit(f"  check: pruned == unpruned == polars (values, by hash): {'yes' if same else 'NO'}; statuses {statuses}")
    if not same or set(statuses) != {"ok"}:
        raise SystemExit("ABORT: the variants disagree (or some look-up is not ok), the timings would not compare")
    names = {"on": "pitstore, pruned", "off": "pitstore, unpruned", "polars": "polars ts filter + join"}
    emit(f"  {'variant':<24} {'cold best s':>11} {'cold med s':>10} {'warm best s':>11} {'peak RSS cold MB':>16}"
         f" {'peak RSS MB':>11}")
    for mode, rs in results.items():
        cb, cm = best_median([r["cold"] for r in rs])
        wb, _ = best_median([t for r in rs for t in r["warm"]])
        emit(f"  {names[mode]:<24} {cb:>11.3f} {cm:>10.3f} {wb:>11.3f} {max(r['peak_cold'] for r in rs):>16,.0f}"
             f" {max(r['peak'] for r in rs):>11,.0f}")
    emit(f"  ({len(results['on'])} worker processes per variant, interleaved; {runs} warm calls each; peak RSS is"
         f" VmHWM after the cold call and at the end; {results['on'][0]['rss_before']:,.0f} MB before Store.open)")
    for mode, rs in results.items():
        emit(f"  {names[mode]} cold runs (s): " + ", ".join(f"{r['cold']:.3f}" for r in rs))
    on = min(r["cold"] for r in results["on"])
    off = min(r["cold"] for r in results["off"])
    floor = min(r["cold"] for r in results["polars"])
    return [f"pruning: cold 1,000 last-day look-ups {off:.3f} s -> {on:.3f} s ({off / on:.1f}x faster), "
            f"{on / floor:.2f}x the polars floor; peak RSS {max(r['peak_cold'] for r in results['off']):,.0f} MB -> "
            f"{max(r['peak_cold'] for r in results['on']):,.0f} MB"]



# --- scale (#18 item 4) -------------------------------------------------------------------------------------

SCALE_FS = "scale_core"
SCALE_LOOKUPS, QUICK_SCALE_LOOKUPS = 10_000_000, 200_000
TARGET_SCALE_RSS_MB = 4_000.0  # 4 GB, decimal
TARGET_SCALE_COST = 1.5  # cost per bar (look-up, row) against the 4.9M-bar reference's
SCALE_FILE_BARS = 2_500_000  # bars per Parquet file the bench writes (whole symbols): what one ingest call gets


@dataclass(frozen=True)
class Shape:
    name: str
    symbols: int
    bars: int
    timeframe: str

    @property
    def n(self) -> int:
        return self.symbols * self.bars

    def label(self) -> str:
        return f"{self.symbols:,} x {self.bars:,} {self.timeframe} bars ({self.n / 1e6:.1f}M)"


# The reference shares the 49M shape's symbol count: the ratio then isolates the length of the history.
SCALE_SHAPES = {"reference": Shape("reference", 500, 9_828, "1m"), "daily": Shape("daily", 5_000, 2_520, "1d"),
                "minute": Shape("minute", 500, 98_280, "1m")}
QUICK_SCALE_SHAPES = {"reference": Shape("reference", 20, 2_000, "1m"), "daily": Shape("daily", 200, 2_520, "1d"),
                      "minute": Shape("minute", 20, 20_000, "1m")}
# write: setup, not against the targets; stream: the full-range read taken batch by batch (Store.iter_read)
SCALE_STEPS = ("write", "ingest", "backfill", "historical", "read", "stream")


def spread_lookups(n_symbols: int, n_bars: int, timeframe: str, n: int) -> pl.DataFrame:
    """``n`` seeded look-ups: uniform symbols, uniform times over the symbols' whole history."""
    rng = np.random.default_rng(SEED + 3)
    names = np.array([f"S{i:04d}" for i in range(n_symbols)])
    lo = int(START.timestamp() * 1e6)
    hi = int((START + parse_timeframe(timeframe) * n_bars).timestamp() * 1e6)
    return pl.DataFrame({
        "symbol": names[rng.integers(0, n_symbols, n)],
        "ts": pl.Series(rng.integers(lo, hi, n), dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
    })


def scale_worker(step: str, root: str, timeframe: str, n_symbols: int, n_bars: int, n_lookups: int) -> None:
    """Runs in its own process: one step of the scale section on the store at ``root``; prints JSON with its
    wall seconds, what it counted (bars, look-ups or rows) and this process's peak RSS."""
    files = Path(root).parent / f"{Path(root).name}-parquet"
    rss_before = peak_rss_mb()
    extra: dict[str, Any] = {}
    if step == "historical":
        spine = spread_lookups(n_symbols, n_bars, timeframe, n_lookups)
        rss_before = peak_rss_mb()
    t0 = time.perf_counter()
    if step == "write":
        files.mkdir(parents=True, exist_ok=True)
        per_file = max(SCALE_FILE_BARS // n_bars, 1)
        for first in range(0, n_symbols, per_file):
            k = min(per_file, n_symbols - first)
            bars = synthetic_bars(k, n_bars, timeframe=timeframe, seed=SEED + first)
            names = {f"S{i:04d}": f"S{first + i:04d}" for i in range(k)}
            bars.with_columns(pl.col("symbol").replace(names)).write_parquet(files / f"bars_{first:05d}.parquet")
            del bars
        count = n_symbols * n_bars
    else:
        with Store.open(root) as store:
            t0 = time.perf_counter()
            if step == "ingest":
                count = sum(store.ingest(path).rows for path in sorted(files.glob("*.parquet")))
                shutil.rmtree(files)
            elif step == "backfill":
                report = store.backfill(standard_features(SCALE_FS, timeframe=timeframe))
                count = report.written_rows
            elif step == "historical":
                out = store.get_historical(spine, SCALE_FS)
                # Its work is the look-ups and the stored rows they are joined to (every row: they span it all).
                stored = store.catalog.feature_entries(SCALE_FS, store.registry.get(SCALE_FS).version)
                count = out.height + sum(e.n_rows for e in stored)
                extra["statuses"] = dict(out["status"].value_counts().iter_rows())
            elif step == "read":
                count = store.read(SCALE_FS).height
            elif step == "stream":  # each frame dropped once counted: what a consumer of batches holds
                count = sum(frame.height for frame in store.iter_read(SCALE_FS))
            else:
                raise SystemExit(f"unknown scale step {step!r}")
    seconds = time.perf_counter() - t0
    print(json.dumps({"seconds": seconds, "count": count, "rss_before": rss_before, "peak": peak_rss_mb(),
                      **extra}), flush=True)


def scale(emit: Callable[[str], None], base: Path, names: Sequence[str], quick: bool) -> list[str]:
    """Each step in its own process, step by step across the shapes (the reference's step first, the others' right
    after it: a machine shared with others changes its speed within minutes); cost per unit against the
    reference's."""
    shapes = QUICK_SCALE_SHAPES if quick else SCALE_SHAPES
    unknown = [n for n in names if n not in shapes]
    if unknown:
        raise SystemExit(f"unknown scale shapes {unknown}: choose from {list(shapes)}")
    order = ["reference", *(n for n in shapes if n in names and n != "reference")]
    n_lookups = QUICK_SCALE_LOOKUPS if quick else SCALE_LOOKUPS
    emit(f"scale: the seven standard features ({SCALE_FS}); each step in its own process (peak RSS = its VmHWM);"
         f" get_historical of {n_lookups:,} look-ups (uniform symbols and times over the history); ingest from"
         f" Parquet files of about {SCALE_FILE_BARS:,} bars (whole symbols), one ingest call per file; target:"
         f" peak RSS < {TARGET_SCALE_RSS_MB / 1e3:g} GB and cost per unit <= {TARGET_SCALE_COST}x the reference's;"
         " units: bars (write, ingest, backfill), look-ups + stored rows (historical), rows (read, stream);"
         " steps interleaved across the shapes, the reference's first")
    for name in order:
        emit(f"  {name}: {shapes[name].label()}")
    emit(f"    {'step':<11} {'shape':<10} {'s':>8} {'units':>12} {'units/s':>11} {'µs/unit':>8} {'vs ref':>7}"
         f" {'peak MB':>8} {'RSS':>5} {'cost':>5}  load (1 min) before")
    ref: dict[str, float] = {}
    verdicts: list[str] = []
    failed: set[str] = set()
    for step in SCALE_STEPS:
        for name in order:
            if name in failed:
                continue
            shape = shapes[name]
            load = os.getloadavg()[0]
            cmd = [sys.executable, str(Path(__file__).resolve()), "--scale-worker", step, str(base / name),
                   shape.timeframe, str(shape.symbols), str(shape.bars), str(n_lookups)]
            res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
            if res.returncode != 0:
                emit(f"    {step:<11} {name:<10} FAILED: exit code {res.returncode} (negative: the signal; -9: killed)")
                verdicts.append(f"scale {name} {step}: the worker failed (exit code {res.returncode}) -> FAIL")
                failed.add(name)
                continue
            r = json.loads(res.stdout.strip().splitlines()[-1])
            unit_us = r["seconds"] / max(r["count"], 1) * 1e6
            if name == "reference":
                ref[step] = unit_us
            ratio = unit_us / ref[step] if step in ref else float("nan")
            rss_ok, cost_ok = r["peak"] < TARGET_SCALE_RSS_MB, ratio <= TARGET_SCALE_COST
            targets = step != "write"  # the bench's own setup: reported, no target
            rss_mark = ("PASS" if rss_ok else "FAIL") if targets else ""
            cost_mark = ("PASS" if cost_ok else "FAIL") if targets and name != "reference" else ""
            emit(f"    {step:<11} {name:<10} {r['seconds']:>8.2f} {r['count']:>12,} {r['count'] / r['seconds']:>11,.0f}"
                 f" {unit_us:>8.3f} {ratio:>6.2f}x {r['peak']:>8,.0f} {rss_mark:>5} {cost_mark:>5}  {load:.2f}"
                 + (f"  statuses {r['statuses']}" if "statuses" in r else ""))
            if targets:
                verdicts.append(f"scale {name} {step}: peak RSS {r['peak']:,.0f} MB -> {'PASS' if rss_ok else 'FAIL'}"
                                + ("" if name == "reference" else f"; cost per unit {ratio:.2f}x the reference's ->"
                                   f" {'PASS' if cost_ok else 'FAIL'}"))
    for name in order:
        root = base / name
        emit(f"  {name}: {sum(f.stat().st_size for f in root.rglob('*') if f.is_file()) / 1e6:,.0f} MB on disk")
        shutil.rmtree(root, ignore_errors=True)  # the big stores do not stay on the shared disk
        shutil.rmtree(base / f"{name}-parquet", ignore_errors=True)
    return verdicts


# --- append cost (#18 item 2) ------------------------------------------------------------------------------

APPEND_SYMBOLS = 500
QUICK_APPEND_SYMBOLS = 20
APPEND_SIZES = (10_000, 98_280)
QUICK_APPEND_SIZES = (1_000, 4_000)
TARGET_APPEND_S = 0.5
DEFAULT_OUT_APPEND = Path(__file__).resolve().parent / "results" / "bench_offline_append.txt"


def append_cost(emit: Callable[[str], None], base: Path, n_symbols: int, sizes: Sequence[int],
                rounds: int) -> list[str]:
    """One new one-minute bar for each symbol of a store holding ``size`` bars per symbol: ingest, then backfill
    of the standard seven, then of the seven plus rsi/macd/atr. Each store is built once (ingest + full
    backfills, timed as setup) and then appended to ``rounds`` times; last, one append with whole snapshots
    (``bar_segments=0``, the pre-segment ingest) on the same store, for the side-by-side ratio."""
    from pitstore.features.base import FeatureSet
    from pitstore.features.library import atr, macd, rsi

    std = standard_features("append_std", timeframe="1m")
    ten = FeatureSet("append_ten", [*std.features, rsi(14), macd(), atr(14)], timeframe="1m")
    emit(f"append cost: one new 1-minute bar for each of {n_symbols} symbols, {rounds} rounds per store; "
         f"bar_segments=16 (default); seven = standard_features, ten = seven + rsi_14, macd, atr_14")
    verdicts = []
    for size in sizes:
        bars = synthetic_bars(n_symbols, size + rounds + 1, timeframe="1m", seed=SEED)
        pos = pl.int_range(pl.len()).over("symbol")
        root = base / f"h{size}"
        with Store.open(root) as store:
            t0 = time.perf_counter()
            store.ingest(bars.filter(pos < size))
            t1 = time.perf_counter()
            store.backfill(std)
            store.backfill(ten)
            t2 = time.perf_counter()
            emit(f"  {size:,} stored bars per symbol ({n_symbols * size:,} bars): setup ingest {t1 - t0:.1f} s, "
                 f"full backfills of both sets {t2 - t1:.1f} s (not timed against targets)")
            ingest_s, std_s, ten_s = [], [], []
            resumed: list[int] = []  # symbols whose rsi/macd/atr continued from carried TA-Lib state, per round
            for r in range(rounds):
                new = bars.filter(pos == size + r)
                gc.collect()
                t0 = time.perf_counter()
                report = store.ingest(new)
                t1 = time.perf_counter()
                b1 = store.backfill(std)
                t2 = time.perf_counter()
                b2 = store.backfill(ten)
                t3 = time.perf_counter()
                assert len(report.appended) == n_symbols, report
                assert len(b1.incremental) == n_symbols and len(b2.incremental) == n_symbols, (b1, b2)
                resumed.append(len(b2.resumed))
                ingest_s.append(t1 - t0)
                std_s.append(t2 - t1)
                ten_s.append(t3 - t2)
            with Store.open(root, bar_segments=0) as whole:
                new = bars.filter(pos == size + rounds)
                t0 = time.perf_counter()
                whole.ingest(new)
                whole_s = time.perf_counter() - t0
            check = store.symbols()[:: max(n_symbols // 5, 1)]
            stored = store.read("append_ten", symbols=check)
            want = pitstore.compute(ten, bars.filter(pl.col("symbol").is_in(check) & (pos < size + rounds)))
            ok = stored.equals(want)
        emit(f"    check: stored rows of {len(check)} symbols == pitstore.compute on their bars: "
             f"{'yes' if ok else 'NO'}; symbols resumed from carried TA-Lib state per round: {resumed}")
        if not ok:
            raise SystemExit("ABORT: appended rows differ from pitstore.compute")
        for label, xs in (("ingest", ingest_s), ("backfill seven", std_s), ("backfill ten (rsi/macd/atr)", ten_s),
                          ("ingest + seven", [a + b for a, b in zip(ingest_s, std_s, strict=True)]),
                          ("ingest + seven + ten", [a + b + c for a, b, c in zip(ingest_s, std_s, ten_s,
                                                                                   strict=True)])):
            best, med = best_median(xs)
            emit(f"    {label:<30} best {best:7.3f} s  median {med:7.3f} s  runs " + ", ".join(f"{x:.3f}" for x in xs))
        emit(f"    {'ingest, whole snapshots (=0)':<30} {whole_s:7.3f} s  (segments: {whole_s / min(ingest_s):.0f}x "
             "faster, best)")
        med_std = best_median([a + b for a, b in zip(ingest_s, std_s, strict=True)])[1]
        med_ten = best_median([a + b + c for a, b, c in zip(ingest_s, std_s, ten_s, strict=True)])[1]
        verdicts.append(f"append at {size:,} bars/symbol: ingest + seven {med_std:.3f} s median; ingest + seven + "
                        f"rsi/macd/atr {med_ten:.3f} s median (target < {TARGET_APPEND_S} s: "
                        f"{'PASS' if med_ten < TARGET_APPEND_S else 'FAIL'})")
    return verdicts


if __name__ == "__main__":
    sys.exit(main())


"""Benchmark: the compute cache (DESIGN 3.1): content hashing of raw inputs and get_or_compute hits.

Targets (from the issue), on the 2-core reference machine:

* ``pitstore.datahash.table_hash`` (xxh3-128 over every byte of the Arrow buffers) hashes a 4.9M-row
  one-symbol frame of 1-minute bars (~300 MB of buffers) at >= 10 GB/s.
* a ``Store.get_or_compute`` hit returning a 4.9M-row feature frame (ts + 7 float features) takes at most
  1.5x the time of reading the very same Parquet entry file directly with ``pl.read_parquet(path)``.

What is timed:

* hashing: ``table_hash`` on the bars as an Arrow table already in memory; ``cache_key`` on the polars frame
  (what every get_or_compute call pays: polars -> Arrow, time bounds, table_hash, code fingerprint); the
  naive approach ``write_parquet`` (polars defaults: zstd) to memory + ``hashlib.sha256``; and, as the
  ceiling, ``xxh3_128`` over one contiguous buffer holding the same bytes. GB/s is always the frame's
  Arrow bytes (the bytes table_hash reads) over the wall time, so the rows compare like with like. Best
  and median of ``--hash-runs`` (``--naive-runs`` for the naive one) after one warm-up.
* hit: ``store.get_or_compute`` on the stored key (hash of the raw input, catalog look-up, reading the
  entry, size + xxh3-128 check of its bytes, Parquet decode, hit statistics committed to the catalog) vs
  ``pl.read_parquet`` of the entry's file, interleaved in alternating order, best and median of ``--runs``
  after one warm-up each. The entry was just written, so both read from the OS page cache.
* miss: ``store.get_or_compute`` with the entry deleted first (``store.clear()``, not timed): compute,
  Parquet encode, atomic publish (fsync), catalog commit, decode of the stored bytes. Context, no target.
* one hit and one miss run instrumented (pitstore's stage functions wrapped with timers) to show where the
  time goes; the instrumented runs are not the timed ones.
* key sensitivity: one cell in the middle of the frame moves by one ulp -> a different key.

Usage::

    .venv/bin/python bench/bench_cache.py            # full run, writes bench/results/bench_cache.txt
    .venv/bin/python bench/bench_cache.py --quick    # small smoke run, writes a file only with --out
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import io
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from _common import Report, git_commit, load_average, machine, timed  # bench/ is sys.path[0] when a script runs
from bench_offline import Stages, best_median, stage_lines

import pitstore
from pitstore import Store, atomic
from pitstore.cache import codec, core, keys
from pitstore.catalog.sqlite import SqliteCatalog
from pitstore.datahash import table_hash
from pitstore.testing import synthetic_bars

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results" / "bench_cache.txt"

SEED = 42
SYMBOL = "S0000"
N_BARS = 4_914_000  # one symbol, 4.9M one-minute bars (the backfill benchmark's row count, in one frame)
QUICK_BARS = 500_000
CONFIG: dict[str, Any] = {"horizons": [1, 5, 15, 60], "vol_windows": [30, 120], "z_window": 60}

TARGET_GB_PER_S = 10.0
TARGET_HIT_RATIO = 1.5


def features(raw: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
    """ts + 7 float features of one symbol's bars: log returns over several horizons, rolling volatility of
    1-bar log returns, z-score of close against its rolling mean."""
    close = pl.col("close")
    log_ret = close.log().diff()
    z = config["z_window"]
    return raw.select(
        "ts",
        *[(close / close.shift(h)).log().alias(f"ret_{h}") for h in config["horizons"]],
        *[log_ret.rolling_std(w).alias(f"vol_{w}") for w in config["vol_windows"]],
        ((close - close.rolling_mean(z)) / close.rolling_std(z)).alias(f"z_{z}"),
    )


def timed_pair(a: Callable[[], Any], b: Callable[[], Any], runs: int) -> tuple[list[float], list[float]]:
    """Like :func:`timed` for two functions, interleaved and in alternating order, so that load from other
    processes and page-cache state fall on both alike."""
    a()
    b()
    ta: list[float] = []
    tb: list[float] = []
    for i in range(runs):
        for fn, acc in ((a, ta), (b, tb)) if i % 2 == 0 else ((b, tb), (a, ta)):
            gc.collect()
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    return ta, tb


def runs_line(name: str, ts: Sequence[float]) -> str:
    return f"  {name} runs (s): " + ", ".join(f"{t:.4f}" for t in ts)


# --- a) hashing -------------------------------------------------------------------------------------------


def naive_hash(df: pl.DataFrame) -> str:
    """What one writes without a content hasher: serialise to Parquet in memory, sha256 the bytes."""
    sink = io.BytesIO()
    df.write_parquet(sink)
    return hashlib.sha256(sink.getbuffer()).hexdigest()


def contiguous_copy(table: pa.Table) -> np.ndarray:
    """The bytes table_hash reads (each column's value, offset and data buffers), copied into one buffer."""
    parts = []
    for col in table.columns:
        for chunk in col.chunks:
            for buf in chunk.buffers():
                if buf is not None:
                    parts.append(np.frombuffer(buf, dtype=np.uint8))
    return np.concatenate(parts)


def hashing(emit: Callable[[str], None], bars: pl.DataFrame, runs: int, naive_runs: int) -> list[str]:
    table = bars.to_arrow()
    dh = table_hash(table)
    n = dh.nbytes
    flat = contiguous_copy(table)
    emit(f"a) hashing {bars.height:,} one-minute bars of one symbol: {n:,} bytes hashed by table_hash "
         f"({n / 1e6:,.1f} MB; the Arrow table's buffers: {table.nbytes / 1e6:,.1f} MB)")
    if flat.nbytes != n:  # the ceiling must read exactly as many bytes, or the ratio means nothing
        raise SystemExit(f"ABORT: contiguous copy has {flat.nbytes} bytes, table_hash read {n}")

    def key() -> keys.CacheKey:
        return keys.cache_key(SYMBOL, bars, CONFIG, features)

    sink = io.BytesIO()
    bars.write_parquet(sink)
    parquet_bytes = sink.getvalue()
    rows = [
        ("pitstore table_hash", timed(lambda: table_hash(table), runs), "xxh3-128 over the Arrow buffers in memory"),
        ("pitstore cache_key", timed(key, runs),
         "on the polars frame: to_arrow + time bounds + table_hash + code fingerprint"),
        ("parquet + sha256", timed(lambda: naive_hash(bars), naive_runs),
         "naive: polars write_parquet (zstd) to memory, hashlib.sha256"),
        ("  of which sha256", timed(lambda: hashlib.sha256(parquet_bytes).hexdigest(), runs),
         f"sha256 of the {len(parquet_bytes) / 1e6:,.1f} MB of Parquet alone"),
        ("xxh3_128 contiguous", timed(lambda: xxhash.xxh3_128_hexdigest(memoryview(flat)), runs),
         "ceiling: one call over one buffer holding the same bytes"),
    ]
    ref_best, ref_med = best_median(rows[0][1])
    emit(f"  {'method':<21} {'N':>2} {'best s':>8} {'GB/s':>6} {'median s':>8} {'GB/s':>6} {'vs table_hash':>13}  what")
    for name, ts, what in rows:
        b, m = best_median(ts)
        emit(f"  {name:<21} {len(ts):>2} {b:>8.4f} {n / b / 1e9:>6.2f} {m:>8.4f} {n / m / 1e9:>6.2f} "
             f"{b / ref_best:>12.2f}x  {what}")
    for name, ts, _ in rows:
        emit(runs_line(name.strip(), ts))
    gbs, gbs_med = n / ref_best / 1e9, n / ref_med / 1e9
    return [f"table_hash >= {TARGET_GB_PER_S:g} GB/s (best of {runs}): {gbs:.2f} GB/s -> "
            f"{'PASS' if gbs >= TARGET_GB_PER_S else 'FAIL'} (median {gbs_med:.2f} GB/s)"]


# --- b) hit vs direct read, and the miss ------------------------------------------------------------------


HIT_STAGES: list[tuple[str, Any, str]] = [
    ("cache_key", core, "cache_key"),
    ("polars -> Arrow (raw_table)", keys, "raw_table"),
    ("table_hash", keys, "table_hash"),
    ("code_fingerprint", keys, "code_fingerprint"),
    ("catalog: cache_get", SqliteCatalog, "cache_get"),
    ("check: mmap, size, xxh3-128 of the file", core.ComputeCache, "check"),
    ("decode: codec.decode", codec, "decode"),
    ("pl.read_parquet(path)", pl, "read_parquet"),
    ("pyarrow.parquet.read_table", pq, "read_table"),
    ("pl.from_arrow", pl, "from_arrow"),
    ("catalog: cache_record (commit)", SqliteCatalog, "cache_record"),
]
HIT_ORDER = [
    ("cache_key", False), ("polars -> Arrow (raw_table)", True), ("table_hash", True), ("code_fingerprint", True),
    ("catalog: cache_get", False), ("check: mmap, size, xxh3-128 of the file", False),
    ("decode: codec.decode", False), ("pl.read_parquet(path)", True), ("pyarrow.parquet.read_table", True),
    ("pl.from_arrow", True), ("catalog: cache_record (commit)", False),
]
MISS_STAGES: list[tuple[str, Any, str]] = [
    ("cache_key", core, "cache_key"),
    ("catalog: cache_get", SqliteCatalog, "cache_get"),
    ("to Arrow: codec.to_arrow", codec, "to_arrow"),
    ("Parquet encode: codec.encode", codec, "encode"),
    ("publish: write, fsync, rename", core, "publish_bytes"),
    ("fsync (file + directory)", atomic, "_fsync"),
    ("file_hash of the bytes", core, "file_hash"),
    ("catalog: cache_put + cache_record", SqliteCatalog, "cache_put"),
    ("catalog: cache_put + cache_record", SqliteCatalog, "cache_record"),
    ("decode the stored bytes: codec.decode", codec, "decode"),
]
MISS_ORDER = [
    ("cache_key", False), ("catalog: cache_get", False), ("compute", False), ("to Arrow: codec.to_arrow", False),
    ("Parquet encode: codec.encode", False), ("publish: write, fsync, rename", False),
    ("fsync (file + directory)", True), ("file_hash of the bytes", False),
    ("catalog: cache_put + cache_record", False), ("decode the stored bytes: codec.decode", False),
]


def hits(emit: Callable[[str], None], root: Path, bars: pl.DataFrame, runs: int, miss_runs: int) -> list[str]:
    reference = features(bars, CONFIG)
    emit(f"b) get_or_compute on the same bars: features(bars, config) -> {reference.height:,} rows x "
         f"{reference.width} columns ({', '.join(reference.columns)}), {reference.estimated_size() / 1e6:,.0f} MB")

    # entry_cache_bytes=0: every hit reads and decodes its file (the figure here); a process's own repeated
    # hits are served from memory otherwise (bench_cache_small.py shows that path).
    with Store.open(root, entry_cache_bytes=0) as store:

        def call() -> pl.DataFrame:
            out: pl.DataFrame = store.get_or_compute(SYMBOL, bars, CONFIG, features)
            return out

        misses: list[float] = []
        for _ in range(miss_runs):
            store.clear()  # the next call is a miss on the same key (deleting is not timed)
            gc.collect()
            t0 = time.perf_counter()
            call()
            misses.append(time.perf_counter() - t0)
        entries = store.catalog.cache_entries()
        assert len(entries) == 1, entries
        entry = entries[0]
        path = store.root / entry.path
        got, direct = call(), pl.read_parquet(path)
        ok = got.equals(reference) and direct.equals(reference)
        emit(f"  entry: {entry.path} ({entry.size / 1e6:,.1f} MB zstd Parquet, {entry.n_rows:,} rows); "
             f"check: hit == direct read == compute: {'yes' if ok else 'NO'}")
        if not ok:
            raise SystemExit("ABORT: the cached frame differs from the computed one")
        del got, direct
        hit_runs, direct_runs = timed_pair(call, lambda: pl.read_parquet(path), runs)
        arrow_runs = timed(lambda: pl.from_arrow(pq.read_table(pa.memory_map(str(path)).read_buffer())), runs)
        compute_runs = timed(lambda: features(bars, CONFIG), min(runs, 3), warmup=False)

        hit_stages = Stages()
        with hit_stages.wrap(HIT_STAGES):
            t0 = time.perf_counter()
            call()
            hit_instrumented = time.perf_counter() - t0
        store.clear()
        miss_stages = Stages()
        with miss_stages.wrap(MISS_STAGES):
            t0 = time.perf_counter()
            call()
            miss_instrumented = time.perf_counter() - t0
        # The compute's own time, as the cache measured it: wrapping features() would change its fingerprint
        # (strict fingerprints refuse the timer's closure).
        miss_stages.seconds["compute"] = store.catalog.cache_entries()[0].compute_seconds
        miss_stages.calls["compute"] = 1
        cache = store.stats()["cache"]

    d_best, d_med = best_median(direct_runs)
    rows = [
        ("get_or_compute hit", hit_runs, "hash raw, catalog, read + verify entry, decode, commit hit stats"),
        ("pl.read_parquet", direct_runs, "the same entry file read directly (the baseline)"),
        ("pq.read_table+from_arrow", arrow_runs, "reference: Arrow's reader on the mmapped file, then to polars"),
        ("compute (no cache)", compute_runs, "features(bars, config): what a hit saves"),
        ("get_or_compute miss", misses, "compute + encode + publish (fsync) + catalog + decode (after clear())"),
    ]
    emit(f"  {'method':<25} {'N':>2} {'best s':>7} {'vs direct':>9} {'median s':>9} {'vs direct':>9}  what")
    for name, ts, what in rows:
        b, m = best_median(ts)
        emit(f"  {name:<25} {len(ts):>2} {b:>7.3f} {b / d_best:>8.2f}x {m:>9.3f} {m / d_med:>8.2f}x  {what}")
    for name, ts, _ in rows:
        emit(runs_line(name, ts))
    emit(f"  cache statistics after the runs: {cache['hits']} hits, {cache['misses']} misses, hit rate "
         f"{cache['hit_rate']:.1%}, hashing inside get_or_compute {cache['hash_gb_per_s']:.1f} GB/s "
         f"({cache['hash_bytes'] / 1e9:,.1f} GB in {cache['hash_seconds']:.2f} s), "
         f"compute {cache['compute_seconds']:.2f} s spent, {cache['saved_seconds']:.2f} s saved")
    emit(f"  stages of one instrumented hit ({hit_instrumented:.3f} s; wrappers add a little):")
    # Nested decoders that did not run are left out: which one a hit uses depends on the frame family.
    hit_order = [(label, nested) for label, nested in HIT_ORDER if not nested or hit_stages.calls.get(label)]
    for line in stage_lines(hit_stages, hit_instrumented, hit_order, "other: locks, python glue"):
        emit("  " + line)
    emit(f"  stages of one instrumented miss ({miss_instrumented:.3f} s):")
    for line in stage_lines(miss_stages, miss_instrumented, MISS_ORDER, "other: key lock, python glue"):
        emit("  " + line)

    h_best, h_med = best_median(hit_runs)
    ratio = h_best / d_best
    return [f"get_or_compute hit within {TARGET_HIT_RATIO}x of pl.read_parquet of its entry (best vs best): "
            f"{ratio:.2f}x -> {'PASS' if ratio <= TARGET_HIT_RATIO else 'FAIL'} "
            f"(median vs median: {h_med / d_med:.2f}x)"]


# --- c) key sensitivity -----------------------------------------------------------------------------------


def sensitivity(emit: Callable[[str], None], bars: pl.DataFrame) -> list[str]:
    mid = bars.height // 2
    old = float(bars["close"][mid])
    new = float(np.nextafter(old, np.inf))  # the smallest possible change of one value
    changed = bars.with_columns(bars["close"].clone().scatter(mid, new))
    a = keys.cache_key(SYMBOL, bars, CONFIG, features)
    b = keys.cache_key(SYMBOL, changed, CONFIG, features)
    differ = a.key != b.key and a.data.hex != b.data.hex
    same_bounds = (a.first_ts, a.last_ts) == (b.first_ts, b.last_ts)
    emit(f"c) key sensitivity: close at row {mid:,} of {bars.height:,} moved by one ulp ({old!r} -> {new!r}); "
         f"first/last ts unchanged: {'yes' if same_bounds else 'no'}")
    emit(f"  content hash {a.data.hex} -> {b.data.hex}")
    emit(f"  cache key    {a.key[:32]}... -> {b.key[:32]}...: {'different' if differ else 'THE SAME'}")
    assert differ, "one changed cell must change the key"
    return [f"one changed cell in the middle -> a different cache key: {'PASS' if differ else 'FAIL'}"]


# --- main -------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--bars", type=int, default=N_BARS, help=f"one-minute bars of the one symbol ({N_BARS:_})")
    parser.add_argument("--hash-runs", type=int, default=9, help="timed runs of each fast hash (default 9)")
    parser.add_argument("--naive-runs", type=int, default=3, help="timed Parquet + sha256 runs (default 3)")
    parser.add_argument("--runs", type=int, default=9, help="timed hits and direct reads, each (default 9)")
    parser.add_argument("--miss-runs", type=int, default=3, help="timed misses (default 3)")
    parser.add_argument("--dir", type=Path, default=None, help="where to build the store (default: a temp dir)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_BARS:_} bars, at most 2 runs each; writes a file only with --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"also write the report here (default for a full run: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if min(args.hash_runs, args.naive_runs, args.runs, args.miss_runs) < 1 or args.bars < 1000:
        parser.error("run counts must be at least 1 and --bars at least 1000")
    q = args.quick
    n_bars = min(args.bars, QUICK_BARS) if q else args.bars
    hash_runs, naive_runs, runs, miss_runs = (
        (min(x, 2) for x in (args.hash_runs, args.naive_runs, args.runs, args.miss_runs)) if q
        else (args.hash_runs, args.naive_runs, args.runs, args.miss_runs))
    out_path: Path | None = args.out if args.out is not None else (None if q else DEFAULT_OUT)

    emit = Report()
    t_start = time.perf_counter()
    with contextlib.ExitStack() as stack:
        base = args.dir if args.dir is not None else Path(stack.enter_context(tempfile.TemporaryDirectory()))
        base.mkdir(parents=True, exist_ok=True)
        quick_note = "  [QUICK: smoke test, not the benchmark configuration]" if q else ""
        emit(f"pitstore compute-cache benchmark{quick_note}")
        emit(f"date:      {datetime.now(UTC).isoformat(timespec='seconds')}")
        emit(f"versions:  python {platform.python_version()}, pitstore {pitstore.__version__} ({git_commit()}), "
             f"polars {pl.__version__}, pyarrow {pa.__version__}, numpy {np.__version__}, "
             f"xxhash {xxhash.VERSION} (xxHash {xxhash.XXHASH_VERSION})")
        emit(machine(f"polars threads {pl.thread_pool_size()}", f"load average at start {load_average()}"))
        emit(f"store:     {base} (zstd Parquet entries, fsynced; SQLite catalog in WAL mode)")
        bars = synthetic_bars(1, n_bars, timeframe="1m", seed=SEED)
        emit(f"input:     synthetic_bars(1, {n_bars:_}, timeframe='1m', seed={SEED}): {bars.height:,} rows, "
             f"columns {', '.join(bars.columns)}")
        emit()
        verdicts = hashing(emit, bars, hash_runs, naive_runs)
        emit()
        verdicts += hits(emit, base / "store", bars, runs, miss_runs)
        emit()
        verdicts += sensitivity(emit, bars)
        emit()
        emit(f"load average at end: {load_average()}; "
             f"benchmark wall time {time.perf_counter() - t_start:.0f} s")
        emit("summary:")
        for v in verdicts:
            emit(f"  {v}{' (quick run: not the benchmark configuration)' if q else ''}")
    emit.write(out_path)
    if out_path is not None:
        print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: the online tier backends (memory, SQLite, Redis), single-symbol and 100-symbol reads, 500-row writes.

Targets (from the issue), on the 2-core reference machine:

* memory and SQLite: single-symbol ``get_latest`` p99 < 20 µs at the backend level (the facade's budget; the
  backend should be far under it).
* Redis: single-symbol p99 <= 1.3x a bare redis-py GET of the same key; 100 symbols p99 < 2 ms.
* ``put_latest`` of 500 rows (one per symbol) well under 50 ms on every backend.

What is timed (``time.perf_counter_ns`` around each call, garbage collector on, as a server would run):

* data: 500 symbols x 7 float columns (a few nulls and NaNs), table ``daily_core@1``.
* writes: ``--write-runs`` calls of ``put_latest`` with all 500 rows, each with a newer ts so every row is written;
  after one untimed warm-up call. Median and max.
* single reads: ``--single`` calls of ``get_latest`` for one seeded random symbol each, after ``--warmup`` calls.
* batch reads: ``--batch`` calls of ``get_latest`` for 100 seeded random distinct symbols each.
* Redis baseline: a bare ``redis.Redis.from_url(url)`` client (redis-py defaults) doing ``GET`` of the same key and
  ``MGET`` of the same 100 keys, returning raw bytes (no decoding). Its calls alternate with the backend's calls in
  one loop, so both see the same machine noise; the ratio is backend / baseline per percentile.
* codec: encode and decode of one 7-value row, mean ns over 200,000 calls.

Every read is checked against the rows written before timing starts. Usage::

    .venv/bin/python bench/bench_online_backends.py            # writes bench/results/bench_online_backends.txt
    .venv/bin/python bench/bench_online_backends.py --out /tmp/x.txt --single 2000
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

import redis
from _common import (  # bench/ is sys.path[0] when a script runs
    TARGET_EMBEDDED_P99_US,
    TARGET_REDIS_BATCH_P99_US,
    TARGET_REDIS_RATIO,
    Report,
    git_commit,
    load_average,
    machine,
    pct_us,
)

import pitstore
from pitstore.online import OnlineStore, open_online
from pitstore.online.codec import decode, encode

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results" / "bench_online_backends.txt"
REDIS_URL = os.environ.get("PITSTORE_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")

TABLE = "daily_core@1"
COLUMNS = ["ret_5d", "ret_20d", "ret_60d", "vol_20d", "vol_60d", "mom_20d", "mom_60d"]
N_SYMBOLS, BATCH = 500, 100
TS0 = 1_700_000_000_000_000
SEED = 42

TARGET_PUT_MS = 50.0

Emit = Callable[[str], None]


def make_rows(ts: int) -> list[tuple[str, int, list[float | None]]]:
    rng = random.Random(SEED)
    rows: list[tuple[str, int, list[float | None]]] = []
    for i in range(N_SYMBOLS):
        values: list[float | None] = [rng.gauss(0.0, 0.02) for _ in COLUMNS]
        if i % 50 == 0:
            values[6] = None  # a few nulls (warm-up) and NaNs, so the codec's slower path is exercised too
        if i % 70 == 0:
            values[3] = math.nan
        rows.append((f"S{i:04d}", ts, values))
    return rows


def percentiles(ns: Sequence[int]) -> tuple[float, float]:
    """p50 and p99 in µs."""
    return pct_us(ns, 50), pct_us(ns, 99)


def time_calls(fn: Callable[[int], object], n: int) -> list[int]:
    gc.collect()
    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        fn(i)
        out.append(clock() - t0)
    return out


def time_interleaved(a: Callable[[int], object], b: Callable[[int], object], n: int) -> tuple[list[int], list[int]]:
    """Time ``a(i)`` and ``b(i)`` alternately, so slow phases of a noisy machine hit both alike."""
    gc.collect()
    ta, tb = [], []
    clock = time.perf_counter_ns
    for i in range(n):
        t0 = clock()
        a(i)
        t1 = clock()
        b(i)
        t2 = clock()
        ta.append(t1 - t0)
        tb.append(t2 - t1)
    return ta, tb


def check_reads(store: OnlineStore, expected: dict[str, tuple[int, list[float | None]]]) -> None:
    """Every symbol reads back exactly as written (NaN as NaN, None as None)."""
    symbols = list(expected)
    for sym, row in zip(symbols, store.get_latest(TABLE, symbols), strict=True):
        ts, values = expected[sym]
        assert row is not None and row.ts == ts, sym
        assert all(_same(got, want) for got, want in zip(row.values, values, strict=True)), sym


def _same(a: float | None, b: float | None) -> bool:
    if a is None or b is None:
        return a is b
    return a == b or (math.isnan(a) and math.isnan(b))


def bench_backend(emit: Emit, name: str, store: OnlineStore, args: argparse.Namespace,
                  baseline: redis.Redis | None, namespace: str) -> list[tuple[str, bool]]:
    rng = random.Random(SEED + 1)
    symbols = [f"S{i:04d}" for i in range(N_SYMBOLS)]
    singles = [[rng.choice(symbols)] for _ in range(args.single)]
    batches = [rng.sample(symbols, BATCH) for _ in range(args.batch)]

    # writes: each run has a newer ts, so every row is written (an older ts would be skipped, and cheaper)
    store.put_latest(TABLE, COLUMNS, make_rows(TS0))
    runs = [make_rows(TS0 + 1 + k) for k in range(args.write_runs)]
    put_ns = time_calls(lambda k: store.put_latest(TABLE, COLUMNS, runs[k]), args.write_runs)
    last = runs[-1]
    check_reads(store, {s: (ts, v) for s, ts, v in last})

    for i in range(args.warmup):
        store.get_latest(TABLE, singles[i % len(singles)])
    rows: list[tuple[str, Sequence[int], Sequence[int] | None]] = []
    if baseline is None:
        rows.append(("single", time_calls(lambda i: store.get_latest(TABLE, singles[i]), args.single), None))
        rows.append((f"{BATCH} symbols", time_calls(lambda i: store.get_latest(TABLE, batches[i]), args.batch), None))
    else:
        prefix = f"{namespace}:r:{TABLE}:".encode()
        single_keys = [prefix + s[0].encode() for s in singles]
        batch_keys = [[prefix + s.encode() for s in b] for b in batches]
        for i in range(args.warmup):
            baseline.get(single_keys[i % len(single_keys)])
        assert baseline.get(single_keys[0]) is not None, "the baseline must read the keys the backend wrote"
        ours, bare = time_interleaved(lambda i: store.get_latest(TABLE, singles[i]),
                                      lambda i: baseline.get(single_keys[i]), args.single)
        rows.append(("single", ours, bare))
        ours, bare = time_interleaved(lambda i: store.get_latest(TABLE, batches[i]),
                                      lambda i: baseline.mget(batch_keys[i]), args.batch)
        rows.append((f"{BATCH} symbols", ours, bare))

    verdicts: list[tuple[str, bool]] = []
    for what, ours, bare in rows:
        p50, p99 = percentiles(ours)
        line = f"  {name:<7} {what:<11} {len(ours):>6} {p50:>9.1f} {p99:>9.1f}"
        if bare is not None:
            b50, b99 = percentiles(bare)
            line += f" {b50:>10.1f} {b99:>10.1f} {p50 / b50:>8.2f}x {p99 / b99:>8.2f}x"
            if what == "single":
                verdicts.append((f"{name} single p99 {p99:.1f} µs = {p99 / b99:.2f}x bare redis-py GET "
                                 f"({b99:.1f} µs) <= {TARGET_REDIS_RATIO}x", p99 / b99 <= TARGET_REDIS_RATIO))
            else:
                verdicts.append((f"{name} {what} p99 {p99:.1f} µs < {TARGET_REDIS_BATCH_P99_US:.0f} µs",
                                 p99 < TARGET_REDIS_BATCH_P99_US))
        elif what == "single":
            verdicts.append((f"{name} single p99 {p99:.1f} µs < {TARGET_EMBEDDED_P99_US:.0f} µs",
                             p99 < TARGET_EMBEDDED_P99_US))
        emit(line)
    put_med, put_max = statistics.median(put_ns) / 1e6, max(put_ns) / 1e6
    emit(f"  {name:<7} {'put 500':<11} {len(put_ns):>6}   median {put_med:.2f} ms, max {put_max:.2f} ms")
    verdicts.append((f"{name} put_latest 500 rows median {put_med:.2f} ms (max {put_max:.2f}) < {TARGET_PUT_MS:.0f} ms",
                     put_med < TARGET_PUT_MS))
    return verdicts


def bench_codec(emit: Emit) -> None:
    values: list[float | None] = [0.01 * i for i in range(7)]
    with_null = [*values[:6], None]
    n = 200_000
    for label, vals in (("7 floats", values), ("7 values, 1 null", with_null)):
        data = encode(TS0, vals)
        t0 = time.perf_counter_ns()
        for _ in range(n):
            encode(TS0, vals)
        t1 = time.perf_counter_ns()
        for _ in range(n):
            decode(data)
        t2 = time.perf_counter_ns()
        emit(f"  codec {label:<17} {len(data)} bytes: encode {(t1 - t0) / n:>5.0f} ns, decode {(t2 - t1) / n:>5.0f} ns")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--single", type=int, default=10_000, help="timed single-symbol reads (default 10,000)")
    parser.add_argument("--batch", type=int, default=1_000, help=f"timed {BATCH}-symbol reads (default 1,000)")
    parser.add_argument("--warmup", type=int, default=1_000, help="untimed reads first (default 1,000)")
    parser.add_argument("--write-runs", type=int, default=20, help="timed 500-row writes (default 20)")
    parser.add_argument("--redis-url", default=REDIS_URL, help=f"Redis server (default {REDIS_URL})")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"write the report here (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if min(args.single, args.batch, args.warmup, args.write_runs) < 1:
        parser.error("counts must be at least 1")

    emit = Report()
    emit("pitstore online-tier backends benchmark")
    emit(f"date:      {datetime.now(UTC).isoformat(timespec='seconds')}")
    emit(f"versions:  python {platform.python_version()}, pitstore {pitstore.__version__} ({git_commit()}), "
         f"redis-py {redis.__version__}")
    emit(machine(f"load average at start {load_average()}"))
    emit(f"data:      {N_SYMBOLS} symbols x {len(COLUMNS)} float columns, table {TABLE!r}; {args.single:,} single "
         f"reads, {args.batch:,} reads of {BATCH} symbols, {args.write_runs} writes of {N_SYMBOLS} rows")
    emit()
    bench_codec(emit)
    emit()
    emit(f"  {'backend':<7} {'call':<11} {'n':>6} {'p50 µs':>9} {'p99 µs':>9} {'bare p50':>10} {'bare p99':>10} "
         f"{'p50 ratio':>9} {'p99 ratio':>9}")
    emit("  " + "-" * 96)
    verdicts: list[tuple[str, bool]] = []
    namespace = f"bench_{uuid.uuid4().hex[:8]}"
    with tempfile.TemporaryDirectory() as tmp:
        for name, url in (("memory", "memory://"), ("sqlite", "sqlite://"), ("redis", args.redis_url)):
            baseline = None
            options: dict[str, object] = {}
            if name == "redis":
                baseline = redis.Redis.from_url(url)
                try:
                    baseline.ping()
                except redis.RedisError as exc:
                    emit(f"  redis   skipped: {url} is not reachable ({exc})")
                    continue
                options = {"namespace": namespace}
            store = open_online(url, root=Path(tmp), **options)
            try:
                verdicts += bench_backend(emit, name, store, args, baseline, namespace)
            finally:
                if name == "redis":
                    store.delete(TABLE)
                store.close()
    emit("  bare: a bare redis-py client (defaults) doing GET of the same key / MGET of the same keys, no decoding,")
    emit("  its calls alternating with the backend's; ratio = backend / bare at that percentile.")
    emit()
    emit.verdicts(verdicts)
    emit.write(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

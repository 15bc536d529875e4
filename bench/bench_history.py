"""Benchmark: the PostgreSQL history tier (``pitstore.history.PostgresHistory``) on a realistic 30-day window.

Target (from the brief): a single ``asof()`` look-up has p99 < 2 ms, measured end to end from Python (argument
checks, lock, psycopg, one prepared index seek over loopback TCP, result conversion).

Data (seeded, 7 float feature columns per row, ~1% nulls and a few NaN, like warm-up rows and bad ticks):

* ``intraday_core@1``: 50 symbols x 21 sessions x 390 one-minute bars (a US-equity month, one session a day)
  = 409,500 rows, written one session per ``write()`` call (19,500 rows per call), as a backfill would; then
  200 live writes of one new minute bar for all 50 symbols (50 rows per call), as each bar closes.
* ``daily_core@1``: 500 symbols x 30 daily bars = 15,000 rows, then 5% of them restated one hour later (a vendor
  fix), so ``as_known_at`` look-ups see two versions.

The tables are ANALYZEd after loading (autovacuum would do the same on a live server; the as-of plan does not
depend on it, see tests/test_history_postgres.py). What is timed, each call separately (perf_counter_ns):

* 10,000 ``asof()`` on the minute table at uniform random (symbol, t), t from one day before the first bar to
  one day after the last, after 1,000 warm-up calls; 10,000 ``asof(..., as_known_at=T)`` on the daily table
  with T uniform over the two write times.
* 1,000 ``asof_many()`` calls of 100 random (symbol, t) pairs on each table; 200 ``latest()`` of all 500 daily
  symbols; ``ping()`` (SELECT 1) as the round-trip floor.
* write throughput of the backfill (rows/s, total over the 21 calls) and the live one-bar writes (ms per call);
  ``scan()`` of the whole minute table; ``delete_before()`` of its oldest session.

Every look-up result is checked against a brute-force numpy reading of the as-of rule before it is reported.

Usage::

    .venv/bin/python bench/bench_history.py            # full run, writes bench/results/bench_history.txt
    .venv/bin/python bench/bench_history.py --quick    # fewer look-ups, writes a file only with --out
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import psycopg
import pyarrow as pa
from _common import Report, git_commit, load_average, machine  # bench/ is sys.path[0] when a script runs
from psycopg import sql

import pitstore
from pitstore.history import PostgresHistory
from pitstore.history._rows import encode_rows

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results" / "bench_history.txt"
DEFAULT_URL = os.environ.get("PITSTORE_POSTGRES_URL") or os.environ.get(
    "PITSTORE_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")

SEED = 42
COLUMNS = ["ret_5d", "ret_20d", "ret_60d", "vol_20d", "vol_60d", "mom_20d", "mom_60d"]
MINUTE_US, DAY_US = 60_000_000, 86_400_000_000
MIN_SYMBOLS, MIN_DAYS, MIN_BARS = 50, 21, 390
DAILY_SYMBOLS, DAILY_DAYS = 500, 30
LIVE_WRITES = 200
START = int(datetime(2026, 10, 1, 13, 31, tzinfo=UTC).timestamp() * 1_000_000)  # first minute bar close
TARGET_P99_US = 2_000.0

IntArray = npt.NDArray[np.int64]
Stored = dict[str, tuple[IntArray, list[tuple[float | None, ...]]]]


@dataclass
class Table:
    """What was written, per symbol: sorted ts and the value tuples (latest version) for checking."""

    table_id: str
    symbols: list[str]
    stored: Stored


def frame(rng: np.random.Generator, symbols: Sequence[str], ts: IntArray) -> pa.Table:
    """Rows for every (symbol, ts): 7 float columns, ~1% nulls and ~0.1% NaN."""
    n = len(symbols) * len(ts)
    cols: dict[str, Any] = {"symbol": pa.array(np.repeat(np.array(symbols), len(ts))),
                            "ts": pa.array(np.tile(ts, len(symbols)), pa.int64())}
    for name in COLUMNS:
        x = rng.standard_normal(n)
        x[rng.random(n) < 0.001] = np.nan
        cols[name] = pa.array(x, mask=rng.random(n) < 0.01)
    return pa.table(cols)


def remember(stored: Stored, rows: pa.Table) -> None:
    """Add ``rows`` to ``stored`` (later writes win), for the brute-force check."""
    by_symbol: dict[str, dict[int, tuple[float | None, ...]]] = {}
    for s, arr in stored.items():
        by_symbol[s] = dict(zip(arr[0].tolist(), arr[1], strict=True))
    values = list(zip(*(rows[c].to_pylist() for c in COLUMNS), strict=True))
    for s, t, v in zip(rows["symbol"].to_pylist(), rows["ts"].to_pylist(), values, strict=True):
        by_symbol.setdefault(s, {})[t] = v
    for s, d in by_symbol.items():
        keys = sorted(d)
        stored[s] = (np.array(keys, dtype=np.int64), [d[k] for k in keys])


def expected(stored: Stored, symbol: str, t: int) -> tuple[int, tuple[float | None, ...]] | None:
    ts, vals = stored[symbol]
    i = int(np.searchsorted(ts, t, side="right")) - 1
    return None if i < 0 else (int(ts[i]), vals[i])


def same(a: Any, b: Any) -> bool:
    if a is None or b is None:
        return a is b
    return bool(a[0] == b[0] and all((x is None and y is None) or (x is not None and y is not None and (
        x == y or (x != x and y != y))) for x, y in zip(a[1], b[1], strict=True)))


def timed_calls(fn: Callable[[int], Any], n: int, warmup: int = 0) -> tuple[list[float], list[Any]]:
    """Call ``fn(n + i)`` for i < warmup (untimed), then ``fn(i)`` for i < n; per-call µs and the results of
    the timed calls. Inputs for warm-up calls are extra ones, so the timed calls do not repeat them."""
    for i in range(warmup):
        fn(n + i)
    times, results = [], []
    for i in range(n):
        t0 = time.perf_counter_ns()
        r = fn(i)
        times.append((time.perf_counter_ns() - t0) / 1000)
        results.append(r)
    return times, results


def pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs), q))


def row(name: str, xs: Sequence[float], what: str, unit: float = 1.0) -> str:
    return (f"  {name:<30} {len(xs):>6} {pct(xs, 50) / unit:>9.1f} {pct(xs, 90) / unit:>9.1f}"
            f" {pct(xs, 99) / unit:>9.1f} {max(xs) / unit:>9.1f}  {what}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--url", default=DEFAULT_URL, help="PostgreSQL URL (default: %(default)s)")
    parser.add_argument("--quick", action="store_true", help="1,000 look-ups instead of 10,000")
    parser.add_argument("--out", type=Path, default=None, help=f"results file (default: {DEFAULT_OUT}, none with"
                                                                " --quick)")
    parser.add_argument("--keep", action="store_true", help="keep the benchmark schema")
    args = parser.parse_args(argv)
    out_path = args.out if args.out is not None or args.quick else DEFAULT_OUT
    lookups = 1_000 if args.quick else 10_000

    emit = Report()
    schema = f"pitstore_bench_{uuid.uuid4().hex[:10]}"
    h = PostgresHistory(args.url, schema=schema)
    admin = psycopg.connect(args.url, autocommit=True)
    try:
        h.migrate()
        server = admin.execute("SHOW server_version").fetchone()[0]  # type: ignore[index]
        emit("pitstore history-tier benchmark (PostgreSQL)")
        emit(f"date:      {datetime.now(UTC).isoformat(timespec='seconds')}")
        emit(f"versions:  python {platform.python_version()}, pitstore {pitstore.__version__} ({git_commit()}),"
             f" psycopg {psycopg.__version__} ({psycopg.pq.__impl__}), pyarrow {pa.__version__},"
             f" PostgreSQL server {server}")
        emit(machine(f"load average at start {load_average()}"))
        emit(f"server:    {h!r} over loopback TCP; schema {schema} (dropped afterwards)")
        emit()
        failures = run(h, admin, schema, emit, lookups)
    finally:
        if not args.keep:
            admin.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))
        admin.close()
        h.close()
    emit(f"load average at end: {load_average()}")
    emit.write(out_path)
    return 1 if failures else 0


def run(h: PostgresHistory, admin: psycopg.Connection[Any], schema: str, emit: Callable[[str], None],
        lookups: int) -> int:
    rng = np.random.default_rng(SEED)

    # --- load -------------------------------------------------------------------------------------------
    minute = Table("intraday_core@1", [f"M{i:03d}" for i in range(MIN_SYMBOLS)], {})
    day_ts = [START + d * DAY_US + np.arange(MIN_BARS, dtype=np.int64) * MINUTE_US for d in range(MIN_DAYS)]
    batches = [frame(rng, minute.symbols, ts) for ts in day_ts]
    t0 = time.perf_counter()
    encode_rows(batches[0], tuple(COLUMNS))
    encode_s = time.perf_counter() - t0
    write_s = []
    for b in batches:
        t0 = time.perf_counter()
        assert h.write(minute.table_id, COLUMNS, b) == b.num_rows
        write_s.append(time.perf_counter() - t0)
    backfill_rows = sum(b.num_rows for b in batches)
    live_start = int(day_ts[-1][-1]) + MINUTE_US
    live_batches = [frame(rng, minute.symbols, np.array([live_start + i * MINUTE_US], dtype=np.int64))
                    for i in range(LIVE_WRITES)]
    live_ms, _ = timed_calls(lambda i: h.write(minute.table_id, COLUMNS, live_batches[i]), LIVE_WRITES)
    remember(minute.stored, pa.concat_tables(batches + live_batches))

    daily = Table("daily_core@1", [f"D{i:03d}" for i in range(DAILY_SYMBOLS)], {})
    daily_ts = START - 13 * 3_600_000_000 + np.arange(DAILY_DAYS, dtype=np.int64) * DAY_US
    first = frame(rng, daily.symbols, daily_ts)
    h.write(daily.table_id, COLUMNS, first, recorded_at=START + 40 * DAY_US)
    restated = first.take(np.sort(rng.choice(first.num_rows, first.num_rows // 20, replace=False)))
    restated = restated.set_column(2, COLUMNS[0], pa.array(rng.standard_normal(restated.num_rows)))
    h.write(daily.table_id, COLUMNS, restated, recorded_at=START + 40 * DAY_US + 3_600_000_000)
    known_v1: Stored = {}
    remember(known_v1, first)
    remember(daily.stored, first)
    remember(daily.stored, restated)
    admin.execute(sql.SQL("ANALYZE {}.history_rows").format(sql.Identifier(schema)))

    rows_total = backfill_rows + LIVE_WRITES * MIN_SYMBOLS + first.num_rows + restated.num_rows
    emit(f"data: {minute.table_id} {MIN_SYMBOLS} symbols x {MIN_DAYS} sessions x {MIN_BARS} one-minute bars"
         f" + {LIVE_WRITES} live bars; {daily.table_id} {DAILY_SYMBOLS} symbols x {DAILY_DAYS} daily bars,"
         f" {restated.num_rows} restated; {len(COLUMNS)} float8 columns; {rows_total:,} rows in all")
    emit("")
    total_s = sum(write_s)
    emit("writes")
    emit(f"  backfill: {backfill_rows:,} rows in {len(write_s)} write() calls of {batches[0].num_rows:,} rows:"
         f" {total_s:.2f} s, {backfill_rows / total_s:,.0f} rows/s"
         f" (calls {min(write_s):.3f} to {max(write_s):.3f} s; client-side validation + CSV encoding"
         f" {encode_s / (total_s / len(write_s)):.0%} of a call)")
    emit(f"  {'call':<30} {'N':>6} {'p50 ms':>9} {'p90 ms':>9} {'p99 ms':>9} {'max ms':>9}")
    emit(row("live write, 1 bar x 50 symbols", live_ms, "one transaction each, server clock recorded_at",
             1000.0))
    emit("")

    # --- look-ups ---------------------------------------------------------------------------------------
    failures = 0

    def check(name: str, got: Sequence[Any], want: Sequence[Any]) -> None:
        nonlocal failures
        bad = sum(not same(g, w) for g, w in zip(got, want, strict=True))
        hits = sum(g is not None for g in got)
        emit(f"  check {name}: {len(got):,} results equal the brute force: {'yes' if not bad else f'NO ({bad})'}"
             f" ({hits:,} rows, {len(got) - hits:,} None)")
        failures += bool(bad)

    lo, hi = int(day_ts[0][0]) - DAY_US, live_start + LIVE_WRITES * MINUTE_US + DAY_US
    m_sym = rng.choice(minute.symbols, lookups + 1_000).tolist()  # + warm-up
    m_t = rng.integers(lo, hi, lookups + 1_000).tolist()
    asof_us, got = timed_calls(lambda i: h.asof(minute.table_id, m_sym[i], m_t[i]), lookups, warmup=1_000)
    check("asof (minute)", got, [expected(minute.stored, m_sym[i], m_t[i]) for i in range(lookups)])

    w1, w2 = START + 40 * DAY_US, START + 40 * DAY_US + 3_600_000_000
    d_sym = rng.choice(daily.symbols, lookups).tolist()
    d_t = rng.integers(int(daily_ts[0]) - DAY_US, int(daily_ts[-1]) + DAY_US, lookups).tolist()
    d_known = rng.integers(w1, w2 + 1, lookups).tolist()
    known_us, got = timed_calls(lambda i: h.asof(daily.table_id, d_sym[i], d_t[i], as_known_at=d_known[i]),
                                lookups)
    check("asof as_known_at (daily)", got, [
        expected(daily.stored if d_known[i] >= w2 else known_v1, d_sym[i], d_t[i]) for i in range(lookups)])

    calls, size = 1_000, 100
    many: dict[str, list[float]] = {}
    for table in (minute, daily):
        span = (lo, hi) if table is minute else (int(daily_ts[0]) - DAY_US, int(daily_ts[-1]) + DAY_US)
        syms = [rng.choice(table.symbols, size).tolist() for _ in range(calls + 50)]
        ts = [rng.integers(*span, size).tolist() for _ in range(calls + 50)]

        def lookup(i: int, table: Table = table, syms: list[list[str]] = syms, ts: list[list[int]] = ts) -> Any:
            return h.asof_many(table.table_id, syms[i], ts[i])

        times, got = timed_calls(lookup, calls, warmup=50)
        many[table.table_id] = times
        check(f"asof_many (x{size}, {table.table_id})", [r for res in got for r in res],
              [expected(table.stored, s, t) for i in range(calls) for s, t in zip(syms[i], ts[i], strict=True)])
    latest_us, got = timed_calls(lambda i: h.latest(daily.table_id, daily.symbols), 200, warmup=10)
    check("latest (500 symbols)", got[0], [expected(daily.stored, s, 2**62) for s in daily.symbols])
    ping_us, _ = timed_calls(lambda i: h.ping(), 2_000, warmup=100)
    emit("")

    emit(f"  {'call':<30} {'N':>6} {'p50 µs':>9} {'p90 µs':>9} {'p99 µs':>9} {'max µs':>9}")
    emit(row("ping (SELECT 1)", ping_us, "round-trip floor"))
    emit(row("asof, minute table", asof_us, "random (symbol, t); latest versions"))
    emit(row("asof as_known_at, daily table", known_us, "random (symbol, t, T), 5% of rows restated"))
    emit(row(f"asof_many x{size}, minute table", many[minute.table_id], "one round trip per call"))
    emit(row(f"asof_many x{size}, daily table", many[daily.table_id], "one round trip per call"))
    emit(row("latest x500, daily table", latest_us, "one round trip per call"))
    emit("")

    t0 = time.perf_counter()
    scanned = h.scan(minute.table_id)
    scan_s = time.perf_counter() - t0
    ok = scanned.num_rows == backfill_rows + LIVE_WRITES * MIN_SYMBOLS
    failures += not ok
    emit(f"  scan() of the whole minute table: {scanned.num_rows:,} rows in {scan_s:.2f} s"
         f" ({scanned.num_rows / scan_s:,.0f} rows/s, COPY to CSV parsed by pyarrow){'' if ok else ' WRONG COUNT'}")
    t0 = time.perf_counter()
    deleted = h.delete_before(minute.table_id, int(day_ts[1][0]))
    emit(f"  delete_before() of the oldest session: {deleted:,} rows in {time.perf_counter() - t0:.3f} s;"
         f" window_start() then {h.window_start(minute.table_id) == int(day_ts[1][0])}")
    emit("")

    p99 = pct(asof_us, 99)
    p99_known = pct(known_us, 99)
    emit(f"asof p99 < {TARGET_P99_US / 1000:.0f} ms: {p99:.0f} µs (as_known_at: {p99_known:.0f} µs) -> "
         f"{'PASS' if max(p99, p99_known) < TARGET_P99_US else 'FAIL'}")
    failures += max(p99, p99_known) >= TARGET_P99_US
    return failures


if __name__ == "__main__":
    sys.exit(main())

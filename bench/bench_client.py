"""The client's overhead over a bare httpx request to the same URL on the same pooled connection, and the
warm client cache.

    PYTHONPATH=src python bench/bench_client.py [--requests 3000] [--out bench/results/bench_client.txt]

Targets (issue #13): get_online of one symbol through AsyncClient, p99 within 1.3x of a bare httpx POST of
the same body on the client's own pool (the two interleaved in one loop); a warm FeatureCache get under 5 µs
(p99), and get_online served from a warm client cache (its own loop) too; 50 concurrent tasks each calling
get_online (one random symbol per call) at >= 80% of the server's capacity, measured with the server
benchmark's load generator (wrk, 50 connections, the same random single-symbol requests), rounds
alternating. The server runs on core 0, this process and wrk on core 1 (as in bench_server.py).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import random
import statistics
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from _common import Report, git_commit, load_average, pct_us  # bench/ is sys.path[0]
from bench_server import MACHINE, ensure_wrk, online_path, run_wrk, start_pitstore, wrk_script  # pins to core 1

import pitstore
from pitstore import Store, standard_features
from pitstore.client import AsyncClient, FeatureCache, Resilience
from pitstore.testing import synthetic_bars

TARGET_RATIO = 1.3
TARGET_TASKS_RATIO = 0.8
N_TASKS, SEED = 50, 42
TARGET_CACHE_P99_US = 5.0
N_SYMBOLS, N_BARS = 100, 200


async def _tasks(url: str, symbols: list[str], seconds: float, coalesce: bool) -> float:
    """get_online calls per second of 50 tasks, each calling with one random symbol in a loop."""
    cfg = Resilience(coalesce=coalesce, max_keepalive=N_TASKS)  # no connection churn without coalescing
    async with AsyncClient(url, resilience=cfg) as fs:
        await fs.get_online(symbols[:1], "daily_core")
        stop, calls = time.perf_counter() + seconds, 0

        async def task(seed: int) -> None:
            nonlocal calls
            pick = random.Random(seed).choice
            while time.perf_counter() < stop:
                await fs.get_online([pick(symbols)], "daily_core")
                calls += 1

        t0 = time.perf_counter()
        await asyncio.gather(*(task(i) for i in range(N_TASKS)))
        return calls / (time.perf_counter() - t0)


def _online_requests(url: str) -> float:
    return sum(float(x.rsplit(" ", 1)[1]) for x in httpx.get(url + "/metrics").text.splitlines()
               if x.startswith("pitstore_http_requests_total{") and 'endpoint="/v1/online"' in x)


def _throughput(url: str, symbols: list[str], tmp: Path, seconds: int, rounds: int) -> dict[str, list[float]]:
    wrk = ensure_wrk()
    rng = random.Random(SEED)
    lua = wrk_script([online_path([rng.choice(symbols)], "daily_core") for _ in range(5000)], tmp / "singles.lua")
    out: dict[str, list[float]] = {"wrk": [], "coalesced": [], "plain": [], "symbols_per_request": []}
    for _ in range(rounds):
        out["wrk"].append(run_wrk(wrk, url, lua, N_TASKS, seconds)["rps"])
        before = _online_requests(url)
        rate = asyncio.run(_tasks(url, symbols, seconds, True))
        out["coalesced"].append(rate)
        out["symbols_per_request"].append(rate * seconds / max(1.0, _online_requests(url) - before))
        out["plain"].append(asyncio.run(_tasks(url, symbols, seconds, False)))
    return out


async def _interleaved(url: str, n: int, warmup: int) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {"client": [], "bare": [], "cached": []}
    body = {"symbols": ["S0000"], "features": ["daily_core"]}
    async with AsyncClient(url) as fs, AsyncClient(url, cache=FeatureCache(ttl=3600)) as cached:
        pool = fs._http.http  # the client's own pooled httpx.AsyncClient: the same connection for both
        for i in range(warmup + n):
            t0 = time.perf_counter_ns()
            await fs.get_online(["S0000"], "daily_core")
            t1 = time.perf_counter_ns()
            resp = await pool.post("/v1/online", json=body)
            resp.json()
            t2 = time.perf_counter_ns()
            if i >= warmup:
                out["client"].append(t1 - t0)
                out["bare"].append(t2 - t1)
        # Warm cache: its own loop (between network calls the CPU caches are cold, which is not this figure).
        for i in range(warmup + n):
            t0 = time.perf_counter_ns()
            await cached.get_online(["S0000"], "daily_core")
            if i >= warmup:
                out["cached"].append(time.perf_counter_ns() - t0)
    return out


def _cache_gets(n: int) -> list[int]:
    cache = FeatureCache(ttl=3600)
    cache.set("online:daily_core:S0000", {"ret_5d": 0.01})
    out = []
    get, clock = cache.get, time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        get("online:daily_core:S0000")
        out.append(clock() - t0)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--warmup", type=int, default=300)
    parser.add_argument("--seconds", type=int, default=5, help="per throughput figure and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_client.txt")
    args = parser.parse_args()
    for key in ("ROOT", "ONLINE_URL", "API_KEYS"):
        os.environ.pop(f"PITSTORE_{key}", None)
    emit = Report()
    emit("pitstore client benchmark (AsyncClient against pitstore serve on loopback)")
    emit(f"date:      {datetime.now(UTC).isoformat(timespec='seconds')}")
    emit(f"versions:  python {platform.python_version()}, pitstore {pitstore.__version__} ({git_commit()}), "
         f"httpx {httpx.__version__}")
    emit(f"{MACHINE}, load average at start {load_average()}")
    emit(f"data:      {N_SYMBOLS} symbols x {N_BARS} daily bars ending today, the standard set (sqlite online "
         f"tier); {args.requests:,} timed requests per figure after {args.warmup:,} warm-up ones; client and bare "
         "interleaved")
    emit()
    with tempfile.TemporaryDirectory(prefix="bench_client_") as tmp:
        root = Path(tmp) / "store"
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        with Store.open(root) as store:
            store.ingest(synthetic_bars(N_SYMBOLS, N_BARS, start=today - timedelta(days=N_BARS - 1), seed=1))
            store.backfill(standard_features())
            store.materialize("daily_core")
        server = start_pitstore(root, Path(tmp))
        try:
            t = asyncio.run(_interleaved(server.url, args.requests, args.warmup))
            tp = _throughput(server.url, [f"S{i:04d}" for i in range(N_SYMBOLS)], Path(tmp), args.seconds,
                             args.rounds)
        finally:
            server.stop()
    gets = _cache_gets(100_000)
    emit("  get_online, 1 symbol, 7 features               n    p50 µs    p99 µs  p99.9 µs")
    emit("  " + "-" * 80)
    for label, key in (("AsyncClient.get_online", "client"), ("bare httpx POST, same pool", "bare"),
                       ("AsyncClient.get_online, warm cache", "cached")):
        xs = t[key]
        emit(f"  {label:<42} {len(xs):>6} {pct_us(xs, 50):>9.1f} {pct_us(xs, 99):>9.1f} {pct_us(xs, 99.9):>9.1f}")
    emit(f"  {'FeatureCache.get, warm':<42} {len(gets):>6} {pct_us(gets, 50):>9.2f} {pct_us(gets, 99):>9.2f} "
         f"{pct_us(gets, 99.9):>9.2f}")
    ratio = pct_us(t["client"], 99) / pct_us(t["bare"], 99)
    emit()
    emit(f"  {N_TASKS} concurrent tasks, get_online of 1 random symbol each; {args.rounds} rounds of {args.seconds} s,"
         " median")
    emit("  " + "-" * 80)
    med = {k: statistics.median(v) for k, v in tp.items()}
    emit(f"  {'server capacity: wrk -t1 -c50, same requests':<52} {med['wrk']:>10,.0f} req/s")
    emit(f"  {'AsyncClient, 50 tasks (calls coalesced)':<52} {med['coalesced']:>10,.0f} calls/s "
         f"({med['symbols_per_request']:.1f} calls per request)")
    emit(f"  {'AsyncClient, 50 tasks, coalesce=False':<52} {med['plain']:>10,.0f} calls/s")
    emit(f"  rounds: wrk {', '.join(f'{x:,.0f}' for x in tp['wrk'])}; coalesced "
         f"{', '.join(f'{x:,.0f}' for x in tp['coalesced'])}; plain {', '.join(f'{x:,.0f}' for x in tp['plain'])}")
    tasks_ratio = med["coalesced"] / med["wrk"]
    emit.verdicts([
        (f"client p99 / bare httpx p99 = {ratio:.2f}x (target <= {TARGET_RATIO}x)", ratio <= TARGET_RATIO),
        (f"warm FeatureCache.get p99 {pct_us(gets, 99):.2f} µs (target < {TARGET_CACHE_P99_US} µs)",
         pct_us(gets, 99) < TARGET_CACHE_P99_US),
        (f"get_online from a warm client cache p99 {pct_us(t['cached'], 99):.1f} µs (target < "
         f"{TARGET_CACHE_P99_US} µs)", pct_us(t["cached"], 99) < TARGET_CACHE_P99_US),
        (f"{N_TASKS} tasks: {tasks_ratio:.2f}x the server's capacity by wrk (target >= {TARGET_TASKS_RATIO}x)",
         tasks_ratio >= TARGET_TASKS_RATIO)])
    emit.write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

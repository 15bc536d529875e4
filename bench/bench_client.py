"""The client's overhead over a bare httpx request to the same URL on the same pooled connection, and the
warm client cache.

    PYTHONPATH=src python bench/bench_client.py [--requests 3000] [--out bench/results/bench_client.txt]

Targets (issue #13): get_online of one symbol through AsyncClient, p99 within 1.3x of a bare httpx POST of
the same body on the client's own pool (the two interleaved in one loop); a warm FeatureCache get under 5 µs
(p99), and get_online served from a warm client cache (its own loop) too.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
from _common import Report, git_commit, load_average, machine, pct_us  # bench/ is sys.path[0]

import pitstore
from pitstore import Store, standard_features
from pitstore.client import AsyncClient, FeatureCache
from pitstore.testing import synthetic_bars

TARGET_RATIO = 1.3
TARGET_CACHE_P99_US = 5.0
N_SYMBOLS, N_BARS = 100, 200


def _serve(root: Path) -> tuple[subprocess.Popen[bytes], str]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "pitstore", "serve", "--root", str(root), "--port", str(port),
                             "--log-level", "warning"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url + "/healthz").status_code == 200:
                return proc, url
        except httpx.TransportError:
            time.sleep(0.05)  # polling readiness
    proc.kill()
    raise RuntimeError("pitstore serve did not start")


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
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "bench_client.txt")
    args = parser.parse_args()
    for key in ("ROOT", "ONLINE_URL", "API_KEYS"):
        os.environ.pop(f"PITSTORE_{key}", None)
    emit = Report()
    emit("pitstore client benchmark (AsyncClient against pitstore serve on loopback)")
    emit(f"date:      {datetime.now(UTC).isoformat(timespec='seconds')}")
    emit(f"versions:  python {platform.python_version()}, pitstore {pitstore.__version__} ({git_commit()}), "
         f"httpx {httpx.__version__}")
    emit(machine(f"load average at start {load_average()}"))
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
        proc, url = _serve(root)
        try:
            t = asyncio.run(_interleaved(url, args.requests, args.warmup))
        finally:
            proc.terminate()
            proc.wait(30)
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
    emit("  not measured here: 50 concurrent tasks against the server benchmark's load generator (issue #13)")
    emit.verdicts([
        (f"client p99 / bare httpx p99 = {ratio:.2f}x (target <= {TARGET_RATIO}x)", ratio <= TARGET_RATIO),
        (f"warm FeatureCache.get p99 {pct_us(gets, 99):.2f} µs (target < {TARGET_CACHE_P99_US} µs)",
         pct_us(gets, 99) < TARGET_CACHE_P99_US),
        (f"get_online from a warm client cache p99 {pct_us(t['cached'], 99):.1f} µs (target < "
         f"{TARGET_CACHE_P99_US} µs)", pct_us(t["cached"], 99) < TARGET_CACHE_P99_US)])
    emit.write(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

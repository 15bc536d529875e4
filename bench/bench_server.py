"""Benchmark: the HTTP service (``pitstore serve``, one uvicorn worker) loaded from another process on loopback.

Targets (issue #12 "Speed"), on the 2-core reference machine:

1. single-symbol ``GET /v1/online``, random symbols, one worker: >= 5,000 requests/s, and within 1.5x of the floor
   (``bench/floor_app.py``: a bare ASGI app under the same uvicorn settings answering the same bytes from a dict);
2. at a constant 1,000 requests/s: single-symbol p99 < 2 ms; 100-symbol requests p99 < 5 ms;
3. ``POST /v1/historical`` of 1,000,000 look-ups as an Arrow IPC stream (Arrow back) within 2x of an in-process
   ``Store.get_historical`` of the same entities.

Data: 500 symbols x 300 daily bars (``pitstore.testing.synthetic_bars``) ending today 00:00 UTC, so the online rows
are fresh (status ``ok``, checked), ``pitstore.standard_features()`` (7 features): ingested, backfilled and
materialized into the default SQLite online tier under a temporary root, deleted at the end.

How figures are taken:

* CPUs: with 2 or more cores, both servers run under ``taskset -c 0`` and this script, the load generators and the
  in-process calls on core 1 (``sched_setaffinity``), so load and server do not share a core. The machine may run
  other work: the load average is shown; every comparison is side by side in one run, rounds alternating.
* throughput: ``wrk`` (Debian package; ``scripts/install-load-tools.sh`` installs it), 1 thread, ``--connections``
  keep-alive connections, requests from a seeded list of random symbols (a Lua script cycles through them);
  ``--rounds`` rounds of ``--seconds`` each, pitstore and floor alternating; median requests/s, non-2xx must be 0.
  Beside it, the server's CPU time per request (``/proc/<pid>/task/*/schedstat``, all threads): on a shared,
  loaded machine requests/s follows the load, CPU per request much less.
* constant rate: ``bench/openloop.py`` (wrk2 is not in Debian): requests leave on a fixed schedule, latency from
  the time each was due to its last byte (no coordinated omission); its own precision is shown (send lag) and its
  headroom by the floor at a rate far above 1,000/s. 100-symbol requests: seeded random sets of 100 distinct
  symbols; the floor answers them from its dict too.
* historical: ``--hist-runs`` runs of each, alternating: in-process ``store.get_historical(entities,
  'daily_core')`` vs (Arrow IPC encode of the entities, POST with httpx, decode of the Arrow answer); both from a
  polars frame in hand to a polars frame in hand, one core each. The answers are checked equal.
* where the time goes (informational): the ASGI app called directly in this process (no sockets, no uvicorn), the
  same request path, per call: the whole app, the FastAPI app without its edge middleware, the Store call, the JSON
  encoding, and the floor app. What uvicorn and the sockets cost is the rest of 1 / (requests/s).

Usage::

    .venv/bin/python bench/bench_server.py                  # writes bench/results/bench_server.txt
    .venv/bin/python bench/bench_server.py --seconds 3 --rounds 1 --out /tmp/x.txt
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import platform
import random
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from _common import Report, git_commit, load_average, machine, pct_us  # bench/ is sys.path[0]

MACHINE = machine()  # before pinning: it counts the CPUs this process may use
CORES = sorted(os.sched_getaffinity(0))
SERVER_CPU = CORES[0]
LOAD_CPU = CORES[1] if len(CORES) > 1 else None
if LOAD_CPU is not None:  # before polars starts its thread pool: it sizes it from the affinity
    os.sched_setaffinity(0, {LOAD_CPU})

import httpx  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402
import pyarrow as pa  # noqa: E402
import uvicorn  # noqa: E402

import pitstore  # noqa: E402
from pitstore import Store, standard_features  # noqa: E402
from pitstore.testing import synthetic_bars  # noqa: E402

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
DEFAULT_OUT = BENCH_DIR / "results" / "bench_server.txt"
ARROW = "application/vnd.apache.arrow.stream"

N_SYMBOLS, N_BARS, BATCH, N_BATCHES = 500, 300, 100, 200
N_LOOKUPS = 1_000_000
SEED = 42

TARGET_RPS = 5_000.0
TARGET_FLOOR_RATIO = 1.5
STEADY_RATE = 1_000.0
TARGET_P99_1_US = 2_000.0
TARGET_P99_100_US = 5_000.0
TARGET_HIST_RATIO = 2.0
LOW_BATCH_RATE = 200.0  # 100-symbol requests also below the rate where one worker saturates (informational)
HEADROOM_RATE = 5_000.0  # the generator against the floor at this rate: it is not the bottleneck at 1,000/s

Emit = Callable[[str], None]
Verdicts = list[tuple[str, bool]]


# --- servers -----------------------------------------------------------------------------------------------


def pinned(cmd: list[str]) -> list[str]:
    return ["taskset", "-c", str(SERVER_CPU), *cmd] if LOAD_CPU is not None and shutil.which("taskset") else cmd


class Server:
    """A server process started by this script (pinned to the server core), stopped with SIGTERM."""

    def __init__(self, name: str, cmd: list[str], port: int, env: dict[str, str], log: Path) -> None:
        self.name, self.port, self.log = name, port, log
        self.proc = subprocess.Popen(pinned(cmd), env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{name} exited ({self.proc.returncode}): {log.read_text()[-2000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code in (200, 404):
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"{name} did not answer on port {port} within 60 s")

    def cpu_ns(self) -> int | None:
        """CPU time the server process has used (all its threads, user + system), from Linux's schedstat; None
        where there is none. Per request it is what the request cost the server whatever else the machine
        runs, which the requests/s of a shared core is not."""
        try:
            return sum(int(f.read_text().split()[0]) for f in Path(f"/proc/{self.proc.pid}/task").glob("*/schedstat"))
        except (OSError, ValueError, IndexError):
            return None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def server_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PITSTORE_")}  # settings from the flags only
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "src"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


def start_pitstore(root: Path, tmp: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, "-m", "pitstore", "serve", "--root", str(root), "--port", str(port), "--workers", "1",
           "--log-level", "warning"]
    return Server("pitstore serve", cmd, port, server_env(), tmp / "pitstore.log")


def start_floor(bodies: Path, tmp: Path) -> Server:
    port = free_port()
    cmd = [sys.executable, str(BENCH_DIR / "floor_app.py"), str(bodies), "--port", str(port)]
    return Server("floor", cmd, port, server_env(), tmp / "floor.log")


# --- load generators ---------------------------------------------------------------------------------------


def ensure_wrk() -> str:
    script = REPO / "scripts" / "install-load-tools.sh"
    if shutil.which("wrk") is None:
        subprocess.run(["bash", str(script)], check=False)
    wrk = shutil.which("wrk")
    if wrk is None:
        raise SystemExit(f"wrk is not installed: run {script} (as root) or apt-get install -y wrk")
    return wrk


def wrk_script(paths: Sequence[str], lua: Path) -> Path:
    """A wrk Lua script that cycles through ``paths`` (requests formatted once, in init)."""
    items = ",\n".join(json.dumps(p) for p in paths)
    lua.write_text("local paths = {\n" + items + "\n}\nlocal reqs, i = {}, 0\n"
                   "function init(args)\n  for k, p in ipairs(paths) do reqs[k] = wrk.format('GET', p) end\nend\n"
                   "function request()\n  i = i % #reqs + 1\n  return reqs[i]\nend\n")
    return lua


def run_wrk(wrk: str, server: Server, lua: Path, connections: int, seconds: int) -> dict[str, float]:
    before = server.cpu_ns()
    out = subprocess.run([wrk, "-t1", f"-c{connections}", f"-d{seconds}s", "--latency", "-s", str(lua), server.url],
                         capture_output=True, text=True, check=True).stdout
    after = server.cpu_ns()
    done = re.search(r"^\s*(\d+) requests in", out, re.M)
    cpu_us = ((after - before) / 1e3 / int(done.group(1)) if before is not None and after is not None and done
              and int(done.group(1)) else float("nan"))
    rps = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if rps is None:
        raise RuntimeError(f"wrk printed no Requests/sec:\n{out}")
    non2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors:.*", out)
    lat = {q: _wrk_ms(re.search(rf"^\s+{q}%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)) for q in ("50", "99")}
    return {"rps": float(rps.group(1)), "non2xx": float(non2xx.group(1)) if non2xx else 0.0,
            "socket_errors": 1.0 if errors else 0.0, "p50_ms": lat["50"], "p99_ms": lat["99"], "cpu_us": cpu_us}


def _wrk_ms(m: re.Match[str] | None) -> float:
    if m is None:
        return float("nan")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[m.group(2)]


def open_loop(server: Server, paths_file: Path, rate: float, seconds: float, connections: int) -> dict[str, Any]:
    res = subprocess.run([sys.executable, str(BENCH_DIR / "openloop.py"), str(paths_file), "--port",
                          str(server.port), "--rate", str(rate), "--seconds", str(seconds), "--connections",
                          str(connections)], capture_output=True, text=True, check=True)
    out: dict[str, Any] = json.loads(res.stdout)
    return out


# --- data --------------------------------------------------------------------------------------------------


def build_store(root: Path) -> tuple[str, list[str], datetime]:
    end = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    bars = synthetic_bars(N_SYMBOLS, N_BARS, timeframe="1d", start=end - (N_BARS - 1) * timedelta(days=1),
                          seed=SEED)
    fs = standard_features()
    with Store.open(root) as store:
        store.ingest(bars)
        store.backfill(fs)
        store.materialize(fs.name)
        symbols = sorted(set(bars["symbol"].to_list()))
        statuses = {v.status for v in store.get_online(symbols, fs.name)}
        assert statuses == {"ok"}, f"online rows must be fresh, got statuses {statuses}"
    return fs.name, symbols, end


def online_path(symbols: Sequence[str], name: str) -> str:
    return f"/v1/online?symbols={','.join(symbols)}&features={name}"


def floor_bodies(server: Server, requests: Sequence[Sequence[str]], name: str, path: Path) -> None:
    """pitstore's own answer to each distinct symbols value, for the floor app to send back."""
    bodies: dict[str, str] = {}
    with httpx.Client(base_url=server.url) as client:
        for syms in requests:
            key = ",".join(syms)
            if key not in bodies:
                r = client.get(online_path(syms, name))
                r.raise_for_status()
                bodies[key] = r.text
    path.write_text(json.dumps(bodies))


# --- 1: throughput -----------------------------------------------------------------------------------------


def bench_throughput(emit: Emit, wrk: str, servers: Sequence[Server], lua: Path, batch_lua: Path,
                     args: argparse.Namespace) -> tuple[Verdicts, float]:
    """The verdicts, and pitstore's median requests/s."""
    emit(f"  1. GET /v1/online, 1 random symbol per request: wrk -t1 -c{args.connections}, {args.rounds} rounds of"
         f" {args.seconds} s, servers alternating")
    emit(f"     {'server':<16} {'round':>5} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'non-2xx':>8} {'CPU µs/req':>11}")
    emit("     " + "-" * 72)
    rps: dict[str, list[float]] = {s.name: [] for s in servers}
    cpu: dict[str, list[float]] = {s.name: [] for s in servers}
    bad = 0.0
    for k in range(args.rounds):
        for s in servers:
            r = run_wrk(wrk, s, lua, args.connections, args.seconds)
            rps[s.name].append(r["rps"])
            cpu[s.name].append(r["cpu_us"])
            bad += r["non2xx"] + r["socket_errors"]
            emit(f"     {s.name:<16} {k + 1:>5} {r['rps']:>9,.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f}"
                 f" {r['non2xx']:>8.0f} {r['cpu_us']:>11.1f}")
    ours, floor = (statistics.median(rps[s.name]) for s in servers)
    ratio = floor / ours
    ours_cpu, floor_cpu = (statistics.median(cpu[s.name]) for s in servers)
    emit(f"     median: pitstore {ours:,.0f} req/s, floor {floor:,.0f} req/s: floor / pitstore = {ratio:.2f}x")
    emit(f"     server CPU per request (median): pitstore {ours_cpu:.1f} µs, floor {floor_cpu:.1f} µs:"
         f" pitstore / floor = {ours_cpu / floor_cpu:.2f}x (what req/s would be on a core of its own)")
    batch = {s.name: run_wrk(wrk, s, batch_lua, args.connections, args.seconds) for s in servers}
    for s in servers:
        bad += batch[s.name]["non2xx"] + batch[s.name]["socket_errors"]
    emit(f"     {BATCH} random symbols per request, 1 round (informational, the capacity behind 2.): "
         + ", ".join(f"{s.name} {batch[s.name]['rps']:,.0f} req/s" for s in servers))
    emit("     (wrk latencies are closed-loop, informational: see 2. for latency at a fixed rate)")
    emit("")
    return [(f"one worker, 1 symbol: {ours:,.0f} req/s >= {TARGET_RPS:,.0f} req/s", ours >= TARGET_RPS),
            (f"1 symbol: floor {floor:,.0f} req/s / pitstore {ours:,.0f} req/s = {ratio:.2f}x <= "
             f"{TARGET_FLOOR_RATIO}x", ratio <= TARGET_FLOOR_RATIO),
            ("no non-2xx answers or socket errors under wrk", bad == 0)], ours


# --- 2: latency at a constant rate -------------------------------------------------------------------------


def bench_constant_rate(emit: Emit, ours: Server, floor: Server, singles: Path, batches: Path,
                        args: argparse.Namespace) -> Verdicts:
    emit(f"  2. latency at a constant rate: bench/openloop.py, {args.open_connections} keep-alive connections,"
         f" {args.open_seconds:g} s per row, {args.open_rounds} rounds (rows alternating), latency from each"
         " request's due time")
    emit(f"     {'server':<10} {'symbols':>7} {'rate/s':>7} {'round':>5} {'achieved':>8} {'p50 µs':>8} {'p99 µs':>8}"
         f" {'p99.9 µs':>9} {'max µs':>9} {'late p99':>9} {'lag p99':>9}  non-200")
    emit("     " + "-" * 106)
    rows = [(floor, singles, 1, HEADROOM_RATE), (floor, singles, 1, STEADY_RATE), (ours, singles, 1, STEADY_RATE),
            (floor, batches, BATCH, STEADY_RATE), (ours, batches, BATCH, STEADY_RATE),
            (ours, batches, BATCH, LOW_BATCH_RATE)]
    p99: dict[tuple[str, int, float], list[float]] = {}
    bad = 0
    for k in range(args.open_rounds):
        for server, paths, n_sym, rate in rows:
            r = open_loop(server, paths, rate, args.open_seconds, args.open_connections)
            lat = r["latency_ns"]
            non200 = sum(v for code, v in r["statuses"].items() if code != "200")
            bad += non200
            p99.setdefault((server.name, n_sym, rate), []).append(pct_us(lat, 99))
            emit(f"     {server.name[:10]:<10} {n_sym:>7} {rate:>7,.0f} {k + 1:>5} {r['achieved_rate']:>8,.0f}"
                 f" {pct_us(lat, 50):>8.0f} {pct_us(lat, 99):>8.0f} {pct_us(lat, 99.9):>9.0f} {lat[-1] / 1e3:>9.0f}"
                 f" {pct_us(r['late_ns'], 99):>9.0f} {pct_us(r['send_lag_ns'], 99):>9.0f}  {non200}")
    emit("     late: how long after its due time the generator noticed a request (its own slip, when another process")
    emit("     takes its core); lag: until it was sent (adds the wait for an idle connection). Both are inside the")
    emit(f"     latencies. The floor at {HEADROOM_RATE:,.0f}/s shows the generator's headroom. Verdicts: median p99"
         " over the rounds.")
    emit("")

    def med(server: Server, n_sym: int, rate: float) -> float:
        return statistics.median(p99[(server.name, n_sym, rate)])

    one, many = med(ours, 1, STEADY_RATE), med(ours, BATCH, STEADY_RATE)
    return [(f"1 symbol at {STEADY_RATE:,.0f} req/s: p99 {one:,.0f} µs < {TARGET_P99_1_US:,.0f} µs (floor p99"
             f" {med(floor, 1, STEADY_RATE):,.0f} µs)", one < TARGET_P99_1_US),
            (f"{BATCH} symbols at {STEADY_RATE:,.0f} req/s: p99 {many:,.0f} µs < {TARGET_P99_100_US:,.0f} µs"
             f" (floor p99 {med(floor, BATCH, STEADY_RATE):,.0f} µs; at {LOW_BATCH_RATE:,.0f} req/s pitstore p99"
             f" {med(ours, BATCH, LOW_BATCH_RATE):,.0f} µs)", many < TARGET_P99_100_US),
            ("no non-200 answers at a constant rate", bad == 0)]


# --- 3: historical -----------------------------------------------------------------------------------------


def lookups(symbols: Sequence[str], end: datetime, n: int) -> pl.DataFrame:
    """``n`` seeded random (symbol, ts) look-ups inside the stored range, at random times of day."""
    rng = np.random.default_rng(SEED)
    span_us = N_BARS * 86_400_000_000
    start_us = int(end.timestamp() * 1e6) - (N_BARS - 1) * 86_400_000_000
    return pl.DataFrame({
        "symbol": np.asarray(symbols)[rng.integers(0, len(symbols), n)],
        "ts": pl.Series(start_us + rng.integers(0, span_us, n), dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
    })


def arrow_bytes(df: pl.DataFrame) -> bytes:
    sink = io.BytesIO()
    table = df.to_arrow()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    return sink.getvalue()


def bench_historical(emit: Emit, root: Path, server: Server, name: str, symbols: Sequence[str], end: datetime,
                     args: argparse.Namespace) -> Verdicts:
    entities = lookups(symbols, end, N_LOOKUPS)
    emit(f"  3. {N_LOOKUPS:,} point-in-time look-ups: POST /v1/historical (Arrow IPC stream in and out) vs"
         f" in-process Store.get_historical; {args.hist_runs} runs each after one warm-up, alternating")
    emit(f"     {'run':>3} {'in-process s':>12} {'HTTP s':>8} {'= encode':>9} {'+ POST':>8} {'+ decode':>9}"
         f" {'body MB':>8} {'answer MB':>9}")
    emit("     " + "-" * 76)
    local_s: list[float] = []
    http_s: list[float] = []
    with Store.open(root) as store, httpx.Client(base_url=server.url, timeout=None) as client:
        url = f"/v1/historical?features={name}"
        headers = {"Content-Type": ARROW, "Accept": ARROW}
        expected = None
        for k in range(args.hist_runs + 1):
            t0 = time.perf_counter()
            expected = store.get_historical(entities, name, output="polars")
            t_local = time.perf_counter() - t0
            t0 = time.perf_counter()
            body = arrow_bytes(entities)
            t1 = time.perf_counter()
            resp = client.post(url, content=body, headers=headers)
            resp.raise_for_status()
            t2 = time.perf_counter()
            got = pl.from_arrow(pa.ipc.open_stream(resp.content).read_all())
            t3 = time.perf_counter()
            assert isinstance(got, pl.DataFrame) and got.equals(expected), "HTTP and in-process answers differ"
            if k == 0:
                continue  # warm-up: first reads of the feature files
            local_s.append(t_local)
            http_s.append(t3 - t0)
            emit(f"     {k:>3} {t_local:>12.3f} {t3 - t0:>8.3f} {t1 - t0:>9.3f} {t2 - t1:>8.3f} {t3 - t2:>9.3f}"
                 f" {len(body) / 1e6:>8.1f} {len(resp.content) / 1e6:>9.1f}")
    assert expected is not None
    local, http = statistics.median(local_s), statistics.median(http_s)
    ratio = http / local
    statuses = dict(expected["status"].value_counts().iter_rows())
    emit(f"     median: in-process {local:.3f} s, HTTP {http:.3f} s = {ratio:.2f}x; answers equal ({expected.height:,}"
         f" rows, statuses {statuses})")
    emit("")
    return [(f"historical {N_LOOKUPS:,} look-ups: HTTP (Arrow) {http:.3f} s / in-process {local:.3f} s = {ratio:.2f}x"
             f" <= {TARGET_HIST_RATIO}x", ratio <= TARGET_HIST_RATIO)]


# --- 4: where the time goes (informational) ----------------------------------------------------------------


async def _asgi_calls(app: Any, paths: Sequence[str], n: int) -> list[int]:
    """ns per direct call of ``app`` for GET ``paths[i]`` (no sockets); the answer must be a 200."""
    status = [0]

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            status[0] = message["status"]

    out = []
    clock = time.perf_counter_ns
    for i in range(n):
        path, _, query = paths[i % len(paths)].partition("?")
        scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "GET",
                 "scheme": "http", "path": path, "raw_path": path.encode(), "query_string": query.encode(),
                 "root_path": "", "headers": [(b"host", b"127.0.0.1")], "client": ("127.0.0.1", 1),
                 "server": ("127.0.0.1", 80)}
        t0 = clock()
        await app(scope, receive, send)
        out.append(clock() - t0)
        assert status[0] == 200, status[0]
    return out


async def _lifespan(app: Any) -> tuple[asyncio.Task[None], asyncio.Queue[dict[str, Any]]]:
    """Run ``app``'s startup (as uvicorn does); the returned task ends once shutdown is sent to the queue."""
    inbox: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    started = asyncio.Event()

    async def send(message: dict[str, Any]) -> None:
        if message["type"].startswith("lifespan.startup"):
            started.set()

    await inbox.put({"type": "lifespan.startup"})
    task = asyncio.create_task(app({"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}, inbox.get, send))
    await started.wait()
    return task, inbox


def _layer_apps(handler: Callable[[str, str], bytes], body: bytes) -> list[tuple[str, Any]]:
    """Minimal apps on the same handler work (or a constant body), to tell the framework's share from ours."""
    from fastapi import FastAPI
    from fastapi.responses import Response
    from starlette.applications import Starlette
    from starlette.requests import Request
    from starlette.routing import Route

    fastapi_same, fastapi_const = FastAPI(), FastAPI()

    @fastapi_same.get("/v1/online")
    async def same(symbols: str, features: str) -> Response:
        return Response(handler(symbols, features), media_type="application/json")

    @fastapi_const.get("/v1/online")
    async def const(symbols: str, features: str) -> Response:
        return Response(body, media_type="application/json")

    async def endpoint(request: Request) -> Response:
        q = request.query_params
        return Response(handler(q["symbols"], q["features"]), media_type="application/json")

    async def bare(scope: dict[str, Any], receive: Any, send: Callable[[dict[str, Any]], Any]) -> None:
        q = dict(part.split("=", 1) for part in scope["query_string"].decode().split("&"))
        out = handler(q["symbols"], q["features"])
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-length", str(len(out)).encode()), (b"content-type", b"application/json")]})
        await send({"type": "http.response.body", "body": out})

    return [("FastAPI, 1 route, the handler's work", fastapi_same),
            ("FastAPI, 1 route, constant body (FastAPI's own cost)", fastapi_const),
            ("Starlette, 1 route, the handler's work", Starlette(routes=[Route("/v1/online", endpoint)])),
            ("bare ASGI, the handler's work", bare)]


def bench_breakdown(emit: Emit, root: Path, name: str, singles: Sequence[str], batches: Sequence[Sequence[str]],
                    bodies: Path, rps: float, args: argparse.Namespace) -> None:
    from pitstore.server import create_app, metrics
    from pitstore.server.wire import parse_list, parse_symbols, vectors_json

    sys.path.insert(0, str(BENCH_DIR))
    import floor_app

    floor_app.load(bodies)
    n = args.calls
    syms = [p.split("symbols=")[1].split("&")[0] for p in singles]
    emit(f"  4. where the time goes, informational: the request called directly in this process (no sockets, no"
         f" uvicorn), {n:,} calls per row after {n // 10:,} warm-up ones, random symbols")
    emit(f"     {'call':<62} {'p50 µs':>8} {'mean µs':>8}")
    emit("     " + "-" * 80)
    with Store.open(root) as store:

        def handler(symbols: str, features: str) -> bytes:  # what pitstore's GET /v1/online handler does (JSON)
            vectors = store.get_online(parse_symbols(symbols), parse_list(features, "features"))
            metrics.count_online([v.status for v in vectors], "online")
            return vectors_json(vectors)

        full = create_app(store)
        inner = getattr(full, "app", None)  # the FastAPI app inside the edge middleware
        apps = [("pitstore app: edge middleware + FastAPI + handler", full),
                ("pitstore FastAPI app without the edge middleware", inner),
                *_layer_apps(handler, handler(syms[0], name)), ("floor_app (dict look-up)", floor_app.app)]

        async def run() -> list[tuple[str, list[int]]]:
            task, inbox = await _lifespan(full)
            rows = []
            try:
                for label, app in apps:
                    if app is not None:
                        await _asgi_calls(app, singles, n // 10)
                        rows.append((label, await _asgi_calls(app, singles, n)))
                batch_paths = [online_path(b, name) for b in batches]
                for label, app in ((f"pitstore app, {BATCH} symbols per request", full),
                                   (f"floor_app, {BATCH} symbols per request", floor_app.app)):
                    await _asgi_calls(app, batch_paths, n // 200)
                    rows.append((label, await _asgi_calls(app, batch_paths, n // 20)))
            finally:
                await inbox.put({"type": "lifespan.shutdown"})
                await task
            return rows

        rows = asyncio.run(run())

        def each(fn: Callable[[int], object], calls: int = n) -> list[int]:
            for i in range(calls // 10):
                fn(i)
            out, clock = [], time.perf_counter_ns
            for i in range(calls):
                t0 = clock()
                fn(i)
                out.append(clock() - t0)
            return out

        one = [store.get_online([s], name) for s in syms[:500]]
        many = [store.get_online(list(b), name) for b in batches]
        rows += [("store.get_online([sym], name)", each(lambda i: store.get_online([syms[i % len(syms)]], name))),
                 ("wire.vectors_json(1 vector)", each(lambda i: vectors_json(one[i % len(one)]))),
                 (f"store.get_online({BATCH} symbols)", each(lambda i: store.get_online(batches[i % len(batches)],
                                                                                         name), n // 20)),
                 (f"wire.vectors_json({BATCH} vectors)", each(lambda i: vectors_json(many[i % len(many)]), n // 20))]
    for label, ns in rows:
        emit(f"     {label:<62} {pct_us(ns, 50):>8.1f} {statistics.fmean(ns) / 1e3:>8.1f}")
    emit(f"     1 / (pitstore req/s under wrk) = {1e6 / rps:.1f} µs per request: what the app does not spend there is"
         " uvicorn, httptools, the event loop and the sockets (compare floor_app with the floor's req/s).")
    emit("     The pitstore app answers GET /v1/online from its kept rows (server/fragments.py) while the online tier's"
         " change token holds; the store.get_online rows are what a kept row saves.")
    emit("")


# --- main --------------------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--seconds", type=int, default=8, help="seconds per wrk round (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="wrk rounds per server (default 3)")
    parser.add_argument("--connections", type=int, default=32, help="wrk keep-alive connections (default 32)")
    parser.add_argument("--open-seconds", type=float, default=10.0, help="seconds per constant-rate row (default 10)")
    parser.add_argument("--open-rounds", type=int, default=2, help="rounds of the constant-rate rows (default 2)")
    parser.add_argument("--open-connections", type=int, default=16,
                        help="keep-alive connections of the open-loop generator (default 16)")
    parser.add_argument("--hist-runs", type=int, default=3, help="timed historical runs of each (default 3)")
    parser.add_argument("--calls", type=int, default=20_000, help="direct calls per breakdown row (default 20,000)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help=f"write the report here (default {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if min(args.seconds, args.rounds, args.connections, args.open_seconds, args.open_connections, args.open_rounds,
           args.hist_runs,
           args.calls) <= 0:
        parser.error("counts and durations must be positive")
    for key in ("ROOT", "ONLINE_URL", "ONLINE_NAMESPACE", "POSTGRES_URL"):
        os.environ.pop(f"PITSTORE_{key}", None)  # every setting comes from this script
    wrk = ensure_wrk()
    wrk_version = subprocess.run([wrk, "--version"], capture_output=True, text=True).stdout.split(" [")[0]

    emit = Report()
    emit("pitstore HTTP service benchmark (pitstore serve, 1 worker, SQLite online tier, loopback)")
    emit(f"date:      {datetime.now(UTC).isoformat(timespec='seconds')}")
    emit(f"versions:  python {platform.python_version()}, pitstore {pitstore.__version__} ({git_commit()}), "
         f"uvicorn {uvicorn.__version__}, polars {pl.__version__}, httpx {httpx.__version__}, {wrk_version}")
    emit(f"{MACHINE}, load average at start {load_average()}")
    pin = (f"servers on CPU {SERVER_CPU} (taskset -c {SERVER_CPU}), wrk, openloop.py and in-process calls on CPU"
           f" {LOAD_CPU}" if LOAD_CPU is not None else "one CPU: servers and load share it (no pinning)")
    emit(f"cpus:      {pin}")
    emit(f"data:      {N_SYMBOLS} symbols x {N_BARS} daily bars ending {datetime.now(UTC):%Y-%m-%d},"
         " standard_features() (7 features), ingested, backfilled, materialized to sqlite://")
    verdicts: Verdicts = []
    rng = random.Random(SEED)
    with tempfile.TemporaryDirectory(prefix="bench_server_") as tmp_name:
        tmp = Path(tmp_name)
        root = tmp / "store"
        t0 = time.perf_counter()
        name, symbols, end = build_store(root)
        emit(f"setup:     store built in {time.perf_counter() - t0:.1f} s; every symbol's online status is ok")
        emit("")
        singles = [[rng.choice(symbols)] for _ in range(20_000)]
        batches = [rng.sample(symbols, BATCH) for _ in range(N_BATCHES)]
        single_paths = [online_path(s, name) for s in singles]
        (tmp / "singles.json").write_text(json.dumps(single_paths))
        batch_paths = [online_path(b, name) for b in batches]
        (tmp / "batches.json").write_text(json.dumps(batch_paths))
        bodies = tmp / "bodies.json"
        ours = start_pitstore(root, tmp)
        floor = None
        try:
            floor_bodies(ours, [[s] for s in symbols] + batches, name, bodies)
            floor = start_floor(bodies, tmp)
            for path in (single_paths[0], online_path(batches[0], name)):  # the floor answers what pitstore does
                assert httpx.get(floor.url + path).content == httpx.get(ours.url + path).content, path
            tput, rps = bench_throughput(emit, wrk, [ours, floor], wrk_script(single_paths, tmp / "singles.lua"),
                                         wrk_script(batch_paths, tmp / "batches.lua"), args)
            verdicts += tput
            verdicts += bench_constant_rate(emit, ours, floor, tmp / "singles.json", tmp / "batches.json", args)
            verdicts += bench_historical(emit, root, ours, name, symbols, end, args)
        finally:
            for server in (ours, floor):
                if server is not None:
                    server.stop()
        bench_breakdown(emit, root, name, single_paths, batches, bodies, rps, args)
    emit.verdicts(verdicts)
    emit.write(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

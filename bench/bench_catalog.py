"""Benchmark: team mode (PostgreSQL catalog on loopback; data local or on S3) against the embedded store (SQLite
catalog, local data), same data, side by side in one run; the in-memory
catalog (``catalog_url="memory://"``) alongside, for reference (no target: it is for tests).

Issue #15's targets: get_historical of 1M look-ups within 2x of the embedded store, and a compute-cache hit
within 2x. The stores hold the same bars (``--symbols`` x ``--bars`` daily) and the seven standard features:
``sqlite`` (embedded), ``postgres`` (team catalog, local data files) and ``postgres+s3`` (team catalog, data on
an S3-compatible server: moto's standalone server, a separate process on loopback, started here; skipped when
moto is not installed). get_historical: the first call (it reads every entry it needs from the data backend),
then best and median of ``--runs`` further calls (values checked equal between the stores). Cache hit: median
and p99 of ``--hits`` calls of ``get_or_compute`` on a stored key (a 200-row raw frame: the catalog round trips
dominate). A raw S3 GET of one entry object is timed too, to tell moto's cost from pitstore's.

Usage::

    .venv/bin/python bench/bench_catalog.py            # writes bench/results/bench_catalog.txt
    .venv/bin/python bench/bench_catalog.py --quick    # small smoke run, writes a file only with --out
"""

from __future__ import annotations

import argparse
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import psycopg
from _common import BENCH_DIR, Report, git_commit, load_average, machine, timed

from pitstore import Store, standard_features
from pitstore.testing import synthetic_bars

URL = "postgresql://postgres@127.0.0.1:5432/test"
SCHEMA = "pitstore_bench_catalog"


def _summary(raw: pl.DataFrame, config: dict[str, Any]) -> pl.DataFrame:
    return raw.select(pl.col("close").sum() * config["k"])


@contextmanager
def _moto() -> Iterator[dict[str, Any] | None]:
    """``{"data_url", "data_options"}`` of a fresh bucket on a ``python -m moto.server`` process (None without
    moto); the server is stopped afterwards."""
    try:
        import boto3
        import moto.server  # noqa: F401
        import s3fs  # noqa: F401
    except ImportError:
        yield None
        return
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    endpoint = f"http://127.0.0.1:{port}"
    log = tempfile.TemporaryFile()  # noqa: SIM115  (its request log: an unread pipe would block the server)
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(f"{endpoint}/moto-api/", timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("moto.server did not start") from None
                time.sleep(0.1)  # polling a starting server process, not synchronising pitstore
        bucket = f"bench-{uuid.uuid4().hex[:8]}"
        boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing", aws_secret_access_key="testing",
                     region_name="us-east-1").create_bucket(Bucket=bucket)
        yield {"data_url": f"s3://{bucket}/store",
               "data_options": {"endpoint_url": endpoint, "key": "testing", "secret": "testing",
                                "client_kwargs": {"region_name": "us-east-1"}}}
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--symbols", type=int, default=500)
    p.add_argument("--bars", type=int, default=2520)
    p.add_argument("--lookups", type=int, default=1_000_000)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--hits", type=int, default=2000)
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args(argv)
    if args.quick:
        args.symbols, args.bars, args.lookups, args.runs, args.hits = 20, 300, 50_000, 2, 200
    out = args.out or (None if args.quick else BENCH_DIR / "results" / "bench_catalog.txt")
    emit = Report()
    emit(f"bench_catalog at {git_commit()}: {args.symbols} symbols x {args.bars} bars, {args.lookups:,} look-ups")
    emit(machine(f"load average at start {load_average()}"))
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    bars = synthetic_bars(args.symbols, args.bars, seed=1)
    rng = np.random.default_rng(0)
    ts = bars["ts"].dt.epoch("us").to_numpy()
    syms = bars["symbol"].unique().sort().to_list()
    entities = pl.DataFrame({"symbol": rng.choice(syms, args.lookups),
                             "ts": pl.Series(rng.integers(ts.min(), ts.max(), args.lookups))
                             .cast(pl.Datetime("us", "UTC"))})
    raw = synthetic_bars(1, 200, seed=2)
    config = {"k": 3}
    results: dict[str, dict[str, float]] = {}
    answers: dict[str, pl.DataFrame] = {}
    with tempfile.TemporaryDirectory() as tmp, _moto() as s3:
        kinds: list[tuple[str, str | None, dict[str, Any]]] = [("sqlite", None, {}),
                                                                ("memory", "memory://bench", {}),
                                                                ("postgres", f"{URL}?schema={SCHEMA}", {})]
        if s3 is not None:
            kinds.append(("postgres+s3", f"{URL}?schema={SCHEMA}_s3", s3))
        else:
            emit("postgres+s3: skipped (moto[server] and s3fs are not installed: pip install -e '.[test]')")
        for kind, url, data in kinds:
            with Store.open(Path(tmp) / kind, catalog_url=url, **data) as store:
                t0 = time.perf_counter()
                store.ingest(bars)
                store.backfill(standard_features())
                setup = time.perf_counter() - t0
                t0 = time.perf_counter()
                answers[kind] = store.get_historical(entities, "daily_core")
                first = time.perf_counter() - t0
                hist = timed(lambda s=store: s.get_historical(entities, "daily_core"), args.runs, warmup=False)
                store.get_or_compute("S0000", raw, config, _summary)  # the miss that stores it
                hits = []
                for _ in range(args.hits):
                    t = time.perf_counter_ns()
                    store.get_or_compute("S0000", raw, config, _summary)
                    hits.append(time.perf_counter_ns() - t)
                hits.sort()
                results[kind] = {"setup": setup, "first": first, "best": min(hist), "median": statistics.median(hist),
                                 "hit_median_us": statistics.median(hits) / 1e3,
                                 "hit_p99_us": hits[int(len(hits) * 0.99) - 1] / 1e3}
                if data:  # one entry object fetched straight from the server: what moto costs per request
                    path = store.catalog.cache_entries()[0].path
                    gets = []
                    for _ in range(200):
                        t = time.perf_counter_ns()
                        store.storage.read(path)
                        gets.append(time.perf_counter_ns() - t)
                    results[kind]["get_median_us"] = statistics.median(gets) / 1e3
            emit(f"{kind:11s}: ingest+backfill {setup:6.2f} s; get_historical first {first:.3f} s, best"
                 f" {results[kind]['best']:.3f} s, median {results[kind]['median']:.3f} s; cache hit median"
                 f" {results[kind]['hit_median_us']:.0f} us, p99 {results[kind]['hit_p99_us']:.0f} us"
                 + (f"; one raw S3 GET {results[kind]['get_median_us']:.0f} us" if data else ""))
    for kind in answers:
        assert answers[kind].equals(answers["sqlite"]), f"{kind} answered differently from the embedded store"
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA}_s3 CASCADE")
    verdicts = []
    for kind in (k for k in results if k != "sqlite"):  # memory: a reference line, no target
        hist_ratio = results[kind]["best"] / results["sqlite"]["best"]
        first_ratio = results[kind]["first"] / results["sqlite"]["first"]
        hit_ratio = results[kind]["hit_median_us"] / results["sqlite"]["hit_median_us"]
        emit(f"ratio {kind}/sqlite: get_historical {hist_ratio:.2f}x (first call {first_ratio:.2f}x),"
             f" cache hit {hit_ratio:.2f}x")
        if kind == "memory":
            continue
        verdicts += [(f"{kind}: get_historical {args.lookups:,} look-ups within 2x of the embedded store"
                      f" ({hist_ratio:.2f}x)", hist_ratio <= 2.0),
                     (f"{kind}: cache hit within 2x of the embedded store ({hit_ratio:.2f}x)", hit_ratio <= 2.0)]
    emit.verdicts(verdicts)
    emit.write(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark: team mode's catalog (PostgreSQL on loopback) against the embedded one (SQLite), same data; the
in-memory catalog (``catalog_url="memory://"``) alongside, for reference (no target: it is for tests).

Issue #15's targets: get_historical of 1M look-ups within 2x of the embedded store, and a compute-cache hit
within 2x. Both stores hold the same bars (``--symbols`` x ``--bars`` daily) and the seven standard features;
the data files are local in both, only the catalog differs. get_historical: best and median of ``--runs``
calls after one warm-up (values checked equal between the stores). Cache hit: median and p99 of ``--hits``
calls of ``get_or_compute`` on a stored key (a 200-row raw frame: the catalog round trips dominate).

Usage::

    .venv/bin/python bench/bench_catalog.py            # writes bench/results/bench_catalog.txt
    .venv/bin/python bench/bench_catalog.py --quick    # small smoke run, writes a file only with --out
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Sequence
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
    with tempfile.TemporaryDirectory() as tmp:
        for kind, url in (("sqlite", None), ("memory", "memory://bench"), ("postgres", f"{URL}?schema={SCHEMA}")):
            with Store.open(Path(tmp) / kind, catalog_url=url) as store:
                t0 = time.perf_counter()
                store.ingest(bars)
                store.backfill(standard_features())
                setup = time.perf_counter() - t0
                hist = timed(lambda s=store: s.get_historical(entities, "daily_core"), args.runs)
                answers[kind] = store.get_historical(entities, "daily_core")
                store.get_or_compute("S0000", raw, config, _summary)  # the miss that stores it
                hits = []
                for _ in range(args.hits):
                    t = time.perf_counter_ns()
                    store.get_or_compute("S0000", raw, config, _summary)
                    hits.append(time.perf_counter_ns() - t)
                hits.sort()
                results[kind] = {"setup": setup, "best": min(hist), "median": statistics.median(hist),
                                 "hit_median_us": statistics.median(hits) / 1e3,
                                 "hit_p99_us": hits[int(len(hits) * 0.99) - 1] / 1e3}
            emit(f"{kind:8s}: ingest+backfill {setup:6.2f} s; get_historical best {results[kind]['best']:.3f} s,"
                 f" median {results[kind]['median']:.3f} s; cache hit median {results[kind]['hit_median_us']:.0f}"
                 f" us, p99 {results[kind]['hit_p99_us']:.0f} us")
    assert answers["sqlite"].equals(answers["postgres"]), "the two stores answered differently"
    assert answers["sqlite"].equals(answers["memory"]), "the memory catalog's store answered differently"
    with psycopg.connect(URL, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE")
    hist_ratio = results["postgres"]["best"] / results["sqlite"]["best"]
    hit_ratio = results["postgres"]["hit_median_us"] / results["sqlite"]["hit_median_us"]
    emit(f"ratio postgres/sqlite: get_historical {hist_ratio:.2f}x, cache hit {hit_ratio:.2f}x")
    emit("ratio memory/sqlite (reference): get_historical {:.2f}x, cache hit {:.2f}x".format(
        results["memory"]["best"] / results["sqlite"]["best"],
        results["memory"]["hit_median_us"] / results["sqlite"]["hit_median_us"]))
    emit.verdicts([(f"get_historical {args.lookups:,} look-ups within 2x of the embedded store ({hist_ratio:.2f}x)",
                    hist_ratio <= 2.0),
                   (f"cache hit within 2x of the embedded store ({hit_ratio:.2f}x)", hit_ratio <= 2.0)])
    emit.write(out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

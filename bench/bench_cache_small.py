"""Benchmark: a compute-cache hit on a small frame (2,520 daily bars) against recomputing it, side by side.

The hit (``store.get_or_compute`` on a stored key: key = raw content hash + config + the compute's code
fingerprint, catalog look-up, the entry's bytes checked, the decoded frame kept by this process; hit statistics
committed) must beat recomputing ``features(raw, config)``; it did not while the code fingerprint was rebuilt
from source on every call and every hit decoded its file again. The fingerprint alone is timed too.

Usage::

    .venv/bin/python bench/bench_cache_small.py   # writes bench/results/bench_cache_small.txt
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from _common import Report, git_commit, machine  # bench/ is sys.path[0] when a script runs
from bench_cache import CONFIG, features

import pitstore
from pitstore.fingerprint import code_fingerprint

OUT = Path(__file__).resolve().parent / "results" / "bench_cache_small.txt"
N_BARS = 2_520


def _times(fn: Callable[[], Any], runs: int) -> list[float]:
    fn()
    out = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=200, help="timed calls of each (default 200)")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    emit = Report()
    raw = pitstore.testing.synthetic_bars(1, N_BARS, timeframe="1d", seed=7).drop("symbol")
    emit("pitstore small cache hit benchmark")
    emit(f"date:      {datetime.now(UTC).isoformat(timespec='seconds')}")
    emit(f"data:      synthetic_bars(1, {N_BARS:_}, timeframe='1d', seed=7) -> {raw.height:,} rows; "
         f"compute: bench_cache.features (ts + 7 features), pitstore {pitstore.__version__} ({git_commit()})")
    emit(machine())
    with tempfile.TemporaryDirectory() as tmp, pitstore.Store.open(Path(tmp) / "store") as store:
        store.get_or_compute("AAA", raw, CONFIG, features)
        # Interleaved, so that load on the machine hits both alike.
        hit: list[float] = []
        compute: list[float] = []
        for _ in range(args.runs // 20):
            hit += _times(lambda: store.get_or_compute("AAA", raw, CONFIG, features), 20)
            compute += _times(lambda: features(raw, CONFIG), 20)
        fp = _times(lambda: code_fingerprint(features, strict=True), args.runs)
    emit()
    emit(f"  {'what':<34} {'best ms':>8} {'median ms':>10}")
    for name, ts in (("get_or_compute hit", hit), ("recompute features(raw, config)", compute),
                     ("code_fingerprint(features) alone", fp)):
        emit(f"  {name:<34} {min(ts) * 1e3:>8.3f} {statistics.median(ts) * 1e3:>10.3f}")
    ratio = statistics.median(compute) / statistics.median(hit)
    emit()
    emit(f"result:    a hit is {ratio:.2f}x as fast as recomputing (medians) -> {'PASS' if ratio > 1 else 'FAIL'}")
    emit.write(args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

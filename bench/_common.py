"""Shared by the benchmark scripts: the report they print and write under bench/results/, the machine it was
measured on, and the timing helpers more than one script uses."""

from __future__ import annotations

import gc
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent

# The serving targets of issue #5, checked by bench_online (through the Store) and bench_online_backends (the
# online backends alone).
TARGET_EMBEDDED_P99_US = 20.0  # memory / SQLite get_online, one symbol
TARGET_REDIS_RATIO = 1.3  # Redis get_online, one symbol, against a bare redis-py fetch of the same values
TARGET_REDIS_BATCH_P99_US = 2_000.0  # Redis get_online, 100 symbols


class Report:
    """``report(line)`` prints a line and keeps it; :meth:`write` puts the kept lines in a results file."""

    def __init__(self) -> None:
        self.lines: list[str] = []

    def __call__(self, line: str = "") -> None:
        self.lines.append(line)
        print(line, flush=True)

    def verdicts(self, verdicts: Sequence[tuple[str, bool]]) -> None:
        """The closing lines: load average at the end, then each target as PASS or FAIL."""
        self(f"load average at end: {load_average()}")
        self("summary:")
        for text, ok in verdicts:
            self(f"  {'PASS' if ok else 'FAIL'}  {text}")

    def write(self, path: Path | None) -> None:
        """Write the kept lines to ``path`` (nothing when None)."""
        write_results(path, self.lines)


def write_results(path: Path | None, lines: Sequence[str]) -> None:
    """Write the printed lines to ``path`` (nothing when None)."""
    if path is None:
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")


def git_commit() -> str:
    try:
        res = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=BENCH_DIR, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=BENCH_DIR.parent, capture_output=True,
            text=True, check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return res.stdout.strip() + (" (src modified)" if dirty.stdout.strip() else "")


def nproc() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 0


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg())


def machine(*extra: str) -> str:
    """The ``machine:`` line of a report, with ``extra`` facts appended."""
    return ", ".join([f"machine:   nproc {nproc()}", cpu_model(), f"{platform.system()} {platform.machine()}",
                      *extra])


def timed(fn: Callable[[], Any], runs: int, *, warmup: bool = True) -> list[float]:
    """Wall seconds of ``runs`` calls (after one untimed warm-up); results are dropped before the next call."""
    if warmup:
        fn()
    out = []
    for _ in range(runs):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def pct_us(ns: Sequence[int], q: float) -> float:
    """Nearest-rank percentile ``q`` (0..100) of nanosecond timings, in µs."""
    xs = sorted(ns)
    return xs[min(len(xs) - 1, max(0, math.ceil(len(xs) * q / 100) - 1))] / 1e3

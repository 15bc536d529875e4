"""Benchmark: the seven standard features over 4.9M one-minute bars, pitstore vs TA-Lib vs pandas.

Target (issue #18, item 3): ``pitstore.compute(pitstore.standard_features(), bars)`` over 50 symbols x
98,280 one-minute bars (seeded synthetic data), validation included, reaches at least 0.6x the throughput of
the TA-Lib reference below, measured in the same run (best of ``--runs`` each; the median ratio is reported
too), with window values independent of where the computation starts, bit for bit (tests/test_windows.py,
tests/test_steppers.py). The machine is shared: the ratio within one run is the figure, absolute M bars/s
follow the load (printed with the result).

What is timed:

* pitstore: ``pitstore.compute`` end to end on the polars frame, bar validation included (the figure a
  user sees); best and median of ``--runs`` runs after one warm-up.
* TA-Lib: the reference kernels alone, per symbol, on numpy arrays split before timing: ROC(5), ROC(20),
  ROC(60), STDDEV(20), STDDEV(60), SMA(20), SMA(60), i.e. 7 calls per symbol, outputs kept. Similar work,
  not the same numbers: STDDEV runs on close rather than on log returns, and there is no validation and
  no output frame. Best and median of ``--runs`` after one warm-up. A second row, "TA-Lib kernels*", makes
  the same calls but drops each output at once, which isolates the arithmetic from the cost of first
  touching fresh memory (minor page faults, counted per run for every method).
* pandas: a plain groupby implementation of the same seven features (shift, rolling std of log returns,
  rolling mean) on a pandas frame converted before timing; best and median of ``--pandas-runs`` after
  one warm-up, which is also the run whose values are checked against pitstore.

Before timing, pitstore's values are checked against pandas' (same nulls, max relative difference), and
ret/mom against TA-Lib's ROC/SMA where TA-Lib computes the same quantity.

Usage::

    .venv/bin/python bench/bench_compute.py            # full run, writes bench/results/bench_compute.txt
    .venv/bin/python bench/bench_compute.py --quick    # 5 symbols, smoke test, writes nothing by default
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import pandas as pd
import polars as pl
import talib
from _common import Report, git_commit, machine  # bench/ is sys.path[0] when a script runs

import pitstore

FloatArray = npt.NDArray[np.float64]

BENCH_DIR = Path(__file__).resolve().parent
DEFAULT_OUT = BENCH_DIR / "results" / "bench_compute.txt"

N_SYMBOLS = 50
N_BARS = 98_280
QUICK_SYMBOLS = 5
TIMEFRAME = "1m"
SEED = 42
TARGET_VS_TALIB = 0.6  # issue #18 item 3: pitstore at least 0.6x TA-Lib's throughput, same run
PERIODS_PER_YEAR = 252  # vol's default annualisation, as in standard_features()

# Agreement required between pitstore and pandas (same definitions, different summation orders).
RTOL = 1e-8
ATOL = 1e-12


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds and minor page faults of the timed runs of one method."""

    method: str
    runs: list[float]
    faults: list[int]

    @property
    def best(self) -> float:
        return min(self.runs)

    @property
    def median(self) -> float:
        return statistics.median(self.runs)


def _load() -> str:
    """The 1, 5 and 15 minute load averages (other processes share the cores: context for the timings)."""
    try:
        one, five, fifteen = os.getloadavg()
    except OSError:
        return "unknown"
    return f"{one:.2f}, {five:.2f}, {fifteen:.2f} (1, 5, 15 min) on {os.cpu_count()} cores"


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def time_runs(method: str, fn: Callable[[], object], runs: int, *, warmup: bool = True) -> Timing:
    """Time ``runs`` calls of ``fn`` after one untimed warm-up call, collecting garbage between calls.

    Minor page faults are counted too: on this VM first-touching freshly mapped memory is a large and
    variable part of the cost, and the fault count explains most of the run-to-run noise.
    """
    if warmup:
        fn()
    times: list[float] = []
    faults: list[int] = []
    for _ in range(runs):
        gc.collect()
        f0 = _minor_faults()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
        faults.append(_minor_faults() - f0)
    return Timing(method, times, faults)


# --- the three implementations ------------------------------------------------------------------------


def split_close(bars: pl.DataFrame) -> list[FloatArray]:
    """Each symbol's closes as a contiguous float64 array (bars are sorted by symbol, ts)."""
    lengths = bars["symbol"].rle().struct.field("len").to_numpy().astype(np.int64)
    ends = np.cumsum(lengths)
    close = np.ascontiguousarray(bars["close"].to_numpy(), dtype=np.float64)
    return [close[a:b] for a, b in zip((ends - lengths).tolist(), ends.tolist(), strict=True)]


def talib_reference(closes: Sequence[FloatArray]) -> list[tuple[FloatArray, ...]]:
    """The TA-Lib reference workload: 7 calls per symbol, outputs kept."""
    out: list[tuple[FloatArray, ...]] = []
    for c in closes:
        out.append(
            (
                talib.ROC(c, timeperiod=5),
                talib.ROC(c, timeperiod=20),
                talib.ROC(c, timeperiod=60),
                talib.STDDEV(c, timeperiod=20, nbdev=1.0),
                talib.STDDEV(c, timeperiod=60, nbdev=1.0),
                talib.SMA(c, timeperiod=20),
                talib.SMA(c, timeperiod=60),
            )
        )
    return out


def talib_kernels_only(closes: Sequence[FloatArray]) -> None:
    """The same 7 calls per symbol, each output dropped at once (its memory is reused): kernel speed alone."""
    for c in closes:
        talib.ROC(c, timeperiod=5)
        talib.ROC(c, timeperiod=20)
        talib.ROC(c, timeperiod=60)
        talib.STDDEV(c, timeperiod=20, nbdev=1.0)
        talib.STDDEV(c, timeperiod=60, nbdev=1.0)
        talib.SMA(c, timeperiod=20)
        talib.SMA(c, timeperiod=60)


def pandas_features(pdf: pd.DataFrame) -> pd.DataFrame:
    """The seven standard features with plain pandas groupby operations (same definitions as pitstore)."""
    close = pdf["close"]
    symbol = pdf["symbol"]
    by_symbol = close.groupby(symbol, sort=False)
    out = pdf[["symbol", "ts"]].copy()
    for n in (5, 20, 60):
        out[f"ret_{n}d"] = close / by_symbol.shift(n) - 1.0
    log_ret = cast("pd.Series[float]", np.log(close / by_symbol.shift(1)))
    lr_by_symbol = log_ret.groupby(symbol, sort=False)
    for n in (20, 60):
        out[f"vol_{n}d"] = lr_by_symbol.rolling(n).std().droplevel(0) * math.sqrt(PERIODS_PER_YEAR)
    for n in (20, 60):
        out[f"mom_{n}d"] = close / by_symbol.rolling(n).mean().droplevel(0) - 1.0
    return out


# --- value checks -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Diff:
    column: str
    max_rel: float
    max_abs: float
    at_value: float  # |value| where the largest relative difference occurs
    nulls_match: bool
    close: bool


def compare(column: str, got: FloatArray, want: FloatArray) -> Diff:
    """Compare two float arrays with NaN for null: same null positions, then relative/absolute error."""
    nan_got, nan_want = np.isnan(got), np.isnan(want)
    nulls_match = bool(np.array_equal(nan_got, nan_want))
    both = ~(nan_got | nan_want)
    a, b = got[both], want[both]
    if a.size == 0:
        return Diff(column, 0.0, 0.0, 0.0, nulls_match, nulls_match)
    abs_diff = np.abs(a - b)
    scale = np.maximum(np.abs(a), np.abs(b))
    with np.errstate(divide="ignore", invalid="ignore"):
        rel = np.where(scale > 0, abs_diff / scale, 0.0)
    ok = bool(np.all(abs_diff <= ATOL + RTOL * np.abs(b)))
    worst = int(np.argmax(rel))
    return Diff(
        column, float(rel[worst]), float(abs_diff.max()), float(scale[worst]), nulls_match, nulls_match and ok
    )


def check_against_pandas(ours: pl.DataFrame, theirs: pd.DataFrame, names: Sequence[str]) -> list[Diff]:
    if list(theirs.columns) != ["symbol", "ts", *names]:
        expected = ["symbol", "ts", *names]
        raise SystemExit(f"pandas columns {list(theirs.columns)} differ from pitstore's {expected}")
    if ours.height != len(theirs):
        raise SystemExit(f"row counts differ: pitstore {ours.height}, pandas {len(theirs)}")
    if ours["symbol"].to_list() != theirs["symbol"].tolist():
        raise SystemExit("symbol columns differ between pitstore and pandas")
    ts_ours = ours["ts"].dt.epoch("us").to_numpy()
    ts_theirs = pd.DatetimeIndex(theirs["ts"]).as_unit("us").asi8
    if not np.array_equal(ts_ours, ts_theirs):
        raise SystemExit("ts columns differ between pitstore and pandas")
    return [
        compare(n, ours[n].to_numpy().astype(np.float64), theirs[n].to_numpy(np.float64, na_value=np.nan))
        for n in names
    ]


def check_against_talib(
    ours: pl.DataFrame, closes: Sequence[FloatArray], ref: Sequence[tuple[FloatArray, ...]]
) -> list[Diff]:
    """ret_N against ROC(N)/100 and mom_N against close/SMA(N) - 1 (STDDEV is not vol: not compared)."""
    roc = [np.concatenate([r[i] for r in ref]) / 100.0 for i in range(3)]
    close = np.concatenate(closes)
    sma = [np.concatenate([r[i] for r in ref]) for i in (5, 6)]
    pairs = [("ret_5d", roc[0]), ("ret_20d", roc[1]), ("ret_60d", roc[2]),
             ("mom_20d", close / sma[0] - 1.0), ("mom_60d", close / sma[1] - 1.0)]
    return [compare(n, ours[n].to_numpy().astype(np.float64), want) for n, want in pairs]


# --- report -------------------------------------------------------------------------------------------


def format_diffs(title: str, diffs: Sequence[Diff]) -> list[str]:
    head = f"  {'column':<10} {'nulls':>6} {'max rel diff':>13} {'(at |value|)':>13} {'max abs diff':>13}  ok"
    lines = [title, head]
    for d in diffs:
        lines.append(
            f"  {d.column:<10} {'same' if d.nulls_match else 'DIFF':>6} {d.max_rel:>13.2e}"
            f" {f'{d.at_value:.2e}' if d.max_rel > 0 else '-':>13}"
            f" {d.max_abs:>13.2e}  {'yes' if d.close else 'NO'}"
        )
    return lines


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--runs", type=int, default=5, help="timed runs for pitstore and TA-Lib (default 5)")
    parser.add_argument("--pandas-runs", type=int, default=2, help="timed runs for pandas (default 2)")
    parser.add_argument("--quick", action="store_true",
                        help=f"smoke test: {QUICK_SYMBOLS} symbols, at most 2 runs each; "
                             "writes a file only with --out")
    parser.add_argument("--out", type=Path, default=None,
                        help=f"also write the report here (default for a full run: {DEFAULT_OUT})")
    args = parser.parse_args(argv)
    if args.runs < 1 or args.pandas_runs < 1:
        parser.error("--runs and --pandas-runs must be at least 1")

    n_symbols = QUICK_SYMBOLS if args.quick else N_SYMBOLS
    runs = min(args.runs, 2) if args.quick else args.runs
    pandas_runs = min(args.pandas_runs, 1) if args.quick else args.pandas_runs
    out_path: Path | None = args.out if args.out is not None else (None if args.quick else DEFAULT_OUT)

    emit = Report()
    t0 = time.perf_counter()
    bars = pitstore.testing.synthetic_bars(n_symbols, N_BARS, timeframe=TIMEFRAME, seed=SEED)
    gen_s = time.perf_counter() - t0
    n_rows = bars.height
    features = pitstore.standard_features()
    names = [c for f in features.features for c in f.outputs]

    quick_note = "  [QUICK: smoke test, not the benchmark configuration]" if args.quick else ""
    emit(f"pitstore compute benchmark{quick_note}")
    emit(f"date:      {datetime.now(UTC).isoformat(timespec='seconds')}")
    emit(f"data:      synthetic_bars({n_symbols}, {N_BARS:_}, timeframe={TIMEFRAME!r}, seed={SEED}) -> "
         f"{n_rows:,} bars, {bars.width} columns, {bars.estimated_size() / 1e6:.0f} MB "
         f"(generated in {gen_s:.1f} s)")
    emit(f"features:  {features.name}: {', '.join(names)}")
    emit(f"versions:  python {platform.python_version()}, pitstore {pitstore.__version__} ({git_commit()}), "
         f"polars {pl.__version__}, numpy {np.__version__}, talib {talib.__version__}, "
         f"pandas {pd.__version__}")
    emit(machine(f"polars threads {pl.thread_pool_size()}"))
    emit(f"load:      {_load()} at the start")
    emit()

    # Inputs for the other two methods, prepared outside the timings.
    closes = split_close(bars)
    pdf = bars.to_pandas()

    # --- correctness first: the warm-up runs double as the runs whose values are checked --------------
    ours = pitstore.compute(features, bars)
    t0 = time.perf_counter()
    theirs = pandas_features(pdf)
    pandas_warmup_s = time.perf_counter() - t0
    ref = talib_reference(closes)
    pandas_diffs = check_against_pandas(ours, theirs, names)
    talib_diffs = check_against_talib(ours, closes, ref)
    for line in format_diffs(f"check: pitstore vs pandas (rtol {RTOL:g}, atol {ATOL:g})", pandas_diffs):
        emit(line)
    for line in format_diffs("check: pitstore vs TA-Lib (ret vs ROC/100, mom vs close/SMA - 1)", talib_diffs):
        emit(line)
    worst = max(d.max_rel for d in pandas_diffs)
    emit(f"max relative diff pitstore vs pandas over all {len(names)} features: {worst:.2e}, "
         f"max absolute diff: {max(d.max_abs for d in pandas_diffs):.2e}")
    emit("  (mom = close/mean - 1 nears 0 when close nears its mean: its largest relative diffs sit at tiny")
    emit("   |values|, see the absolute diffs)")
    emit()
    if not all(d.close for d in [*pandas_diffs, *talib_diffs]):
        emit("ABORT: the implementations disagree, the timings would not compare like with like")
        emit.write(out_path)
        return 1
    del ours, theirs, ref
    gc.collect()

    # --- timings ---------------------------------------------------------------------------------------
    timings = [
        time_runs("pitstore", lambda: pitstore.compute(features, bars), runs),
        time_runs("TA-Lib", lambda: talib_reference(closes), runs),
        time_runs("TA-Lib kernels*", lambda: talib_kernels_only(closes), runs),
        # pandas' warm-up was the checked run above.
        time_runs("pandas", lambda: pandas_features(pdf), pandas_runs, warmup=False),
    ]
    talib_best = timings[1].best
    talib_median = timings[1].median

    emit(f"timings: best and median of N runs after one warm-up (pandas warm-up: {pandas_warmup_s:.2f} s)")
    header = (f"  {'method':<15} {'N':>2} {'best s':>7} {'M bars/s':>9} {'vs TA-Lib':>10}"
              f" {'median s':>9} {'M bars/s':>9} {'vs TA-Lib':>10} {'faults/run':>11}")
    emit(header)
    emit("  " + "-" * (len(header) - 2))
    for t in timings:
        emit(
            f"  {t.method:<15} {len(t.runs):>2} {t.best:>7.3f} {n_rows / t.best / 1e6:>9.1f}"
            f" {talib_best / t.best:>9.2f}x {t.median:>9.3f} {n_rows / t.median / 1e6:>9.1f}"
            f" {talib_median / t.median:>9.2f}x {int(statistics.median(t.faults)):>11,}"
        )
    emit("  vs TA-Lib: throughput relative to the TA-Lib row (0.50x = half of TA-Lib's speed).")
    emit("  faults/run: median minor page faults of a run (first touches of fresh memory, 4 KiB pages).")
    emit("  TA-Lib keeps its 7 outputs per symbol as pitstore does (7 x 8 bytes of new memory per bar);")
    emit("  * TA-Lib kernels drops each output at once so its memory is reused: kernel arithmetic only.")
    emit("  The spread between runs and between processes follows faults/run: whether glibc's malloc returns")
    emit("  freed memory to the OS (to be faulted in again) or reuses it varies from process to process.")
    for t in timings:
        emit(f"  {t.method} runs (s): " + ", ".join(f"{r:.3f}" for r in t.runs))
    emit()

    pit = timings[0]
    best_ratio = talib_best / pit.best
    median_ratio = talib_median / pit.median
    verdict = "PASS" if best_ratio >= TARGET_VS_TALIB else "FAIL"
    if args.quick:
        verdict += " (quick run: not the benchmark configuration)"
    emit(f"target:    pitstore >= {TARGET_VS_TALIB:g}x TA-Lib's throughput in the same run "
         f"(best of {len(pit.runs)} each, validation included)")
    emit(f"result:    {best_ratio:.2f}x best, {median_ratio:.2f}x median "
         f"({n_rows / pit.best / 1e6:.1f} vs {n_rows / talib_best / 1e6:.1f} M bars/s best) -> {verdict}")
    emit(f"load:      {_load()} at the end")
    emit.write(out_path)
    if out_path is not None:
        print(f"wrote {out_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Grid search with the compute cache: 10 parameter sets x 5 cross-validation folds over several symbols.

The expensive step is computing features from the raw 1-minute bars; the parameter set decides the
feature windows, while the fold only selects which rows the model is fitted on. So a plain loop computes
the same features 5 times per (parameter set, symbol), and again in every later session. With
``store.get_or_compute`` each one is computed once, then read back, by this process or any later one.

The script runs the whole search three times and checks that the scores are identical bit for bit:

1. without the cache (a plain function call every time);
2. with the cache, in a fresh store (the first fold of each parameter set computes, the other folds hit);
3. as a later process (this script started again on the same store): every request hits.

Usage::

    .venv/bin/python examples/grid_search.py                      # 3 symbols x 100,000 bars, < 1 minute
    .venv/bin/python examples/grid_search.py --symbols 5 --bars 500000 --store /tmp/grid-store
"""

from __future__ import annotations

import argparse
import itertools
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import polars as pl

import pitstore

# 5 fast x 2 slow windows = 10 parameter sets; the volatility window follows the fast one.
PARAM_GRID: list[dict[str, int]] = [
    {"fast": fast, "slow": slow, "vol": 4 * fast}
    for fast, slow in itertools.product([10, 30, 60, 120, 240], [480, 1440])
]
HORIZON = 15  # bars ahead: the model predicts the 15-minute forward log return
RIDGE = 1e-3  # ridge penalty (relative to the feature variance), fixed: the grid is over features only
SEED = 7

Scores = dict[tuple[int, int, str], float]  # (parameter set, fold, symbol) -> out-of-sample IC
FeatureFn = Callable[[str, pl.DataFrame, dict[str, int]], pl.DataFrame]


def features(raw: pl.DataFrame, params: dict[str, int]) -> pl.DataFrame:
    """Ten rolling-window features of one symbol's 1-minute bars: the expensive step (~0.1-0.3 s per call)."""
    close, high, low, volume = pl.col("close"), pl.col("high"), pl.col("low"), pl.col("volume")
    log_ret = close.log().diff()
    fast, slow, vol = params["fast"], params["slow"], params["vol"]
    median = close.rolling_median(slow)
    mad = (close - median).abs().rolling_median(slow)  # robust scale: median absolute deviation
    return raw.select(
        "ts",
        log_ret.rolling_sum(fast).alias("mom_fast"),
        log_ret.rolling_sum(slow).alias("mom_slow"),
        ((close - close.rolling_mean(slow)) / close.rolling_std(slow)).alias("z_slow"),
        ((close - median) / mad).alias("robust_z_slow"),
        log_ret.rolling_std(vol).alias("vol"),
        (log_ret.rolling_std(fast) / log_ret.rolling_std(vol)).alias("vol_ratio"),
        log_ret.rolling_skew(vol).alias("skew"),
        (high / low).log().pow(2).rolling_mean(vol).sqrt().alias("parkinson_vol"),
        (volume / volume.rolling_median(slow)).log().alias("volume_surprise"),
        ((close.rolling_quantile(0.9, window_size=vol) - close.rolling_quantile(0.1, window_size=vol))
         / close).alias("range_q90_q10"),
    )


def forward_return(raw: pl.DataFrame) -> np.ndarray:
    """The target: log return over the next HORIZON bars (NaN where unknown). Cheap, so not cached."""
    return raw.select((pl.col("close").shift(-HORIZON) / pl.col("close")).log()).to_series().to_numpy()


def fold_masks(n: int, folds: int, fold: int) -> tuple[np.ndarray, np.ndarray]:
    """Blocked k-fold over time: block ``fold`` is the test set, the rest trains. Training rows whose target
    reaches into the test block are purged, and an embargo after it keeps the features that look back into
    the test block out of training too (the usual guards against leakage in time-series cross-validation)."""
    edges = np.linspace(0, n, folds + 1).astype(int)
    start, end = edges[fold], edges[fold + 1]
    test = np.zeros(n, dtype=bool)
    test[start:end] = True
    train = ~test
    train[max(0, start - HORIZON):start] = False
    train[end:min(n, end + max(p["slow"] for p in PARAM_GRID))] = False
    return train, test


def fit_and_score(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray) -> float:
    """Ridge regression fitted on the training rows; the Pearson correlation of its predictions with the
    realised returns on the test rows (information coefficient)."""
    ok = np.isfinite(x).all(axis=1) & np.isfinite(y)  # drops the windows' warm-up and the last HORIZON rows
    # Every HORIZON-th row only: neighbouring rows' targets overlap (each spans HORIZON bars), so the other
    # rows add little information, and the fit stays cheap next to the features.
    ok &= np.arange(len(y)) % HORIZON == 0
    x_train, y_train = x[train & ok], y[train & ok]
    mu, sd = x_train.mean(axis=0), x_train.std(axis=0)
    sd[sd == 0] = 1.0
    a = (x_train - mu) / sd
    beta = np.linalg.solve(a.T @ a + RIDGE * len(a) * np.eye(a.shape[1]), a.T @ y_train)
    return float(np.corrcoef((x[test & ok] - mu) / sd @ beta, y[test & ok])[0, 1])


def grid_search(raw_by_symbol: dict[str, pl.DataFrame], folds: int, get_features: FeatureFn) -> Scores:
    """Every parameter set x fold x symbol; the features of each cell come from ``get_features``."""
    targets = {s: forward_return(raw) for s, raw in raw_by_symbol.items()}
    scores: Scores = {}
    for p, params in enumerate(PARAM_GRID):
        for fold in range(folds):
            for symbol, raw in raw_by_symbol.items():
                # Requested again for every fold, as a plain CV loop does: only the rows used differ.
                x = get_features(symbol, raw, params).drop("ts").to_numpy()
                train, test = fold_masks(len(x), folds, fold)
                scores[(p, fold, symbol)] = fit_and_score(x, targets[symbol], train, test)
    return scores


def load_bars(n_symbols: int, n_bars: int) -> dict[str, pl.DataFrame]:
    """Each symbol's 1-minute bars (seeded, so a later process gets the very same data)."""
    bars = pitstore.testing.synthetic_bars(n_symbols, n_bars, timeframe="1m", seed=SEED)
    return {str(k[0]): df for k, df in bars.partition_by("symbol", as_dict=True, maintain_order=True).items()}


def cache_counts(store: pitstore.Store) -> tuple[int, int]:
    cache = store.stats()["cache"]
    return int(cache["hits"]), int(cache["misses"])


def cached_run(root: Path, raw_by_symbol: dict[str, pl.DataFrame], folds: int) -> tuple[Scores, float, int, int]:
    """The grid search through the store's cache: scores, wall seconds, hits and misses of this run."""
    with pitstore.Store.open(root) as store:
        hits0, misses0 = cache_counts(store)

        def cached_features(symbol: str, raw: pl.DataFrame, params: dict[str, int]) -> pl.DataFrame:
            out: pl.DataFrame = store.get_or_compute(symbol, raw, params, features)
            return out

        t0 = time.perf_counter()
        scores = grid_search(raw_by_symbol, folds, cached_features)
        seconds = time.perf_counter() - t0
        hits1, misses1 = cache_counts(store)
    return scores, seconds, hits1 - hits0, misses1 - misses0


def later_process(root: Path, n_symbols: int, n_bars: int, folds: int) -> tuple[Scores, float, int, int, float]:
    """Run this script again as a new process on the same store (``--later-run``) and collect its results."""
    t0 = time.perf_counter()
    cmd = [sys.executable, str(Path(__file__).resolve()), "--later-run", str(root),
           "--symbols", str(n_symbols), "--bars", str(n_bars), "--folds", str(folds)]
    res = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    process_s = time.perf_counter() - t0
    out = json.loads(res.stdout.strip().splitlines()[-1])
    scores = {(p, f, s): v for p, f, s, v in out["scores"]}  # JSON keeps floats exact (shortest repr)
    return scores, out["seconds"], out["hits"], out["misses"], process_s


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--symbols", type=int, default=3, help="symbols (default 3)")
    parser.add_argument("--bars", type=int, default=100_000, help="1-minute bars per symbol (default 100,000)")
    parser.add_argument("--folds", type=int, default=5, help="cross-validation folds (default 5)")
    parser.add_argument("--store", type=Path, default=None,
                        help="store directory (default: a fresh temp dir; an existing store starts warm)")
    parser.add_argument("--later-run", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.symbols < 1 or args.folds < 2 or args.bars < 10 * max(p["slow"] for p in PARAM_GRID):
        parser.error("need at least 1 symbol, 2 folds and enough bars for the longest window in every fold")
    raw_by_symbol = load_bars(args.symbols, args.bars)

    if args.later_run is not None:  # the child of later_process(): one cached run, results as JSON
        scores, seconds, hits, misses = cached_run(args.later_run, raw_by_symbol, args.folds)
        print(json.dumps({"seconds": seconds, "hits": hits, "misses": misses,
                          "scores": [[p, f, s, v] for (p, f, s), v in scores.items()]}))
        return

    requests = len(PARAM_GRID) * args.folds * args.symbols
    print(f"grid search: {len(PARAM_GRID)} parameter sets x {args.folds} folds x {args.symbols} symbols = "
          f"{requests} feature requests ({len(PARAM_GRID) * args.symbols} distinct), "
          f"{args.bars:,} one-minute bars per symbol")

    t0 = time.perf_counter()
    plain = grid_search(raw_by_symbol, args.folds, lambda symbol, raw, params: features(raw, params))
    plain_s = time.perf_counter() - t0
    print(f"  without cache: {plain_s:.1f} s ({plain_s / requests * 1e3:.0f} ms per request)")

    with tempfile.TemporaryDirectory() as tmp:
        root = args.store if args.store is not None else Path(tmp) / "store"
        first, first_s, first_hits, first_misses = cached_run(root, raw_by_symbol, args.folds)
        print(f"  with cache, first run: {first_s:.1f} s")
        later, later_s, later_hits, later_misses, process_s = later_process(root, args.symbols, args.bars, args.folds)
        print(f"  with cache, later process: {later_s:.1f} s")
        with pitstore.Store.open(root) as store:
            cache = store.stats()["cache"]

    # Cached features are the stored Parquet bytes decoded: the same floats, so the same scores, exactly.
    assert first == plain, "scores with the cache (first run) differ from scores without it"
    assert later == plain, "scores with the cache (later process) differ from scores without it"

    print()
    print(f"  {'run':<27} {'wall s':>7} {'speedup':>8} {'hits':>5} {'misses':>6} {'hit rate':>8}")
    print(f"  {'without cache':<27} {plain_s:>7.2f} {1.0:>7.2f}x {'-':>5} {'-':>6} {'-':>8}")
    for name, secs, h, m in (("with cache, first run", first_s, first_hits, first_misses),
                             ("with cache, later process", later_s, later_hits, later_misses)):
        print(f"  {name:<27} {secs:>7.2f} {plain_s / secs:>7.2f}x {h:>5} {m:>6} {h / (h + m):>8.1%}")
    print(f"  (the later process took {process_s:.1f} s in all: interpreter, imports and loading the bars too)")
    print(f"  results identical with and without the cache: yes ({len(plain)} scores, bit for bit)")
    print(f"  store.stats()['cache']: hit rate {cache['hit_rate']:.1%} ({cache['hits']} hits, {cache['misses']} "
          f"misses), {cache['entries']} entries, {cache['bytes'] / 1e6:,.0f} MB, "
          f"compute {cache['compute_seconds']:.1f} s spent, {cache['saved_seconds']:.1f} s saved")

    mean_ic = {p: float(np.mean([v for (q, _, _), v in plain.items() if q == p])) for p in range(len(PARAM_GRID))}
    print("best parameter sets by mean out-of-sample IC (random-walk data: no real signal, expect ~0):")
    for p in sorted(mean_ic, key=mean_ic.__getitem__, reverse=True)[:3]:
        print(f"  {PARAM_GRID[p]}: IC {mean_ic[p]:+.4f}")


if __name__ == "__main__":
    main()

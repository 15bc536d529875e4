"""``pitstore demo``: the main job end to end on the embedded store, with the time of each stage."""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import polars as pl
from rich.console import Console
from rich.table import Table

from pitstore.cli.common import print_wide, symbol_progress
from pitstore.cli.output import frame_table
from pitstore.features.library import standard_features
from pitstore.offline.backfill import BackfillReport
from pitstore.sources.ingest import IngestReport
from pitstore.store import Store
from pitstore.testing import synthetic_bars

__all__ = ["make_lookups", "run"]

BARS_PER_YEAR = 252
UNKNOWN_SYMBOLS = ("NOPE", "XXXX", "ZZZ9")  # look-ups for symbols the store has never seen
_UNKNOWN_SHARE = 0.001  # of the look-ups
_SAMPLE_FEATURES = ("ret_5d", "vol_20d", "mom_60d")  # of the seven, shown in the sample
_BEFORE_SHARE = 0.05  # about this share of look-ups fall before the first bar


@dataclass
class _Stage:
    name: str
    detail: str
    rows: int
    seconds: float


def make_lookups(bars: pl.DataFrame, n: int, seed: int) -> pl.DataFrame:
    """``n`` seeded look-ups (id, symbol, ts): random stored symbols plus a few unknown ones, at random
    whole-second times from a little before the first bar to the last one.

    >>> make_lookups(synthetic_bars(2, 10), 5, seed=1).columns
    ['id', 'symbol', 'ts']
    """
    rng = np.random.default_rng(seed)
    symbols = np.array(bars["symbol"].unique().sort().to_list() or list(UNKNOWN_SYMBOLS))
    picked = symbols[rng.integers(0, len(symbols), n)].astype(object)
    n_unknown = min(n, max(1, round(n * _UNKNOWN_SHARE)))
    picked[rng.choice(n, n_unknown, replace=False)] = rng.choice(np.array(UNKNOWN_SYMBOLS, dtype=object), n_unknown)
    first = int(bars["ts"].min().timestamp())  # type: ignore[union-attr]
    last = int(bars["ts"].max().timestamp())  # type: ignore[union-attr]
    lo = first - int((last - first) * _BEFORE_SHARE / (1 - _BEFORE_SHARE)) - 1
    seconds = rng.integers(lo, last + 1, n)
    return pl.DataFrame({
        "id": np.arange(n),
        "symbol": pl.Series(picked.tolist(), dtype=pl.String),
        "ts": pl.Series(seconds * 1_000_000, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
    })


def _ingest_detail(r: IngestReport) -> str:
    return (f"{len(r.new_symbols)} new, {len(r.appended)} appended, {len(r.restated)} restated, "
            f"{len(r.unchanged)} unchanged symbols")


def _backfill_detail(r: BackfillReport) -> str:
    ref = f"{r.feature_set}@{r.version}"
    if r.nothing_to_do:
        return f"{ref}: nothing to do, {len(r.up_to_date)} symbols up to date ({r.computed_rows:,} rows computed)"
    return (f"{ref}: {len(r.full)} symbols computed in full, {len(r.incremental)} incrementally, "
            f"{r.computed_rows:,} rows computed, {r.written_rows:,} written")


def _sample(result: pl.DataFrame, rows: int = 8) -> pl.DataFrame:
    """A few rows of each status, with values where there are some, in request order."""
    feature_cols = [c for c in result.columns if c not in ("id", "symbol", "ts", "status")]
    has_values = pl.all_horizontal(pl.col(feature_cols).is_not_null()) if feature_cols else pl.lit(True)
    ok = result.filter((pl.col("status") == "ok") & has_values).head(rows - 3)
    warming = result.filter((pl.col("status") == "ok") & ~has_values).head(1)
    others = [result.filter(pl.col("status") == s).head(1) for s in ("no_data_yet", "unknown_symbol", "stale")]
    return pl.concat([ok, warming, *others]).sort("id").head(rows)


def run(store: Store, *, n_symbols: int, years: int, n_lookups: int, seed: int, console: Console) -> bool:
    """Run the demo against ``store``; True when the second pass recomputed nothing (as it must)."""
    fs = standard_features()
    n_bars = BARS_PER_YEAR * years
    console.print(f"[bold]pitstore demo[/bold]: {n_symbols} symbols x {n_bars} daily bars ({years} years), "
                  f"standard seven features, store at {store.root.resolve()}", soft_wrap=True)
    stages: list[_Stage] = []

    def stage(name: str, detail: str, rows: int, seconds: float) -> None:
        stages.append(_Stage(name, detail, rows, seconds))
        console.print(f"[cyan]{name:<14}[/cyan] {detail}  [dim]{seconds:.2f} s[/dim]", soft_wrap=True)

    t0 = time.perf_counter()
    bars = synthetic_bars(n_symbols, n_bars, timeframe="1d", seed=seed)
    stage("generate", f"{bars.height:,} bars (seed {seed})", bars.height, time.perf_counter() - t0)

    t0 = time.perf_counter()
    first_ingest = store.ingest(bars)
    stage("ingest", _ingest_detail(first_ingest), bars.height, time.perf_counter() - t0)

    t0 = time.perf_counter()
    with symbol_progress(len(store.symbols()), "backfill") as progress:
        first = store.backfill(fs, progress=progress)
    stage("backfill", _backfill_detail(first), first.computed_rows, time.perf_counter() - t0)
    if first.nothing_to_do:
        console.print("               [yellow]the store already held these bars and features from an earlier run, "
                      "so there was nothing to compute (delete the store directory to start from scratch)[/yellow]",
                      soft_wrap=True)

    lookups = make_lookups(bars, n_lookups, seed)
    t0 = time.perf_counter()
    result = store.get_historical(lookups, fs.name)
    seconds = time.perf_counter() - t0
    counts = dict(result["status"].value_counts().iter_rows())
    shown = ", ".join(f"{s} {counts[s]:,}" for s in ("ok", "stale", "no_data_yet", "unknown_symbol") if s in counts)
    stage("point-in-time", f"{result.height:,} look-ups joined as of their time ({shown}), "
          f"{result.height / seconds:,.0f} look-ups/s", result.height, seconds)
    sample = _sample(result).select("id", "symbol", "ts", *_SAMPLE_FEATURES, "status")
    print_wide(frame_table(sample, 8, title=f"sample ({len(_SAMPLE_FEATURES)} of {len(fs.columns)} features "
                           "shown)", digits=4, timespec="minutes", compact=True), console)

    t0 = time.perf_counter()
    second_ingest = store.ingest(bars)
    stage("ingest again", _ingest_detail(second_ingest), bars.height, time.perf_counter() - t0)
    t0 = time.perf_counter()
    second = store.backfill(fs)
    stage("backfill again", _backfill_detail(second), second.computed_rows, time.perf_counter() - t0)

    table = Table(title="timings", title_justify="left", header_style="bold")
    for col, justify in (("stage", "left"), ("rows", "right"), ("seconds", "right"), ("rows/s", "right")):
        table.add_column(col, justify=justify)  # type: ignore[arg-type]
    for s in stages:
        rate = f"{s.rows / s.seconds:,.0f}" if s.rows and s.seconds > 0 else "-"
        table.add_row(s.name, f"{s.rows:,}", f"{s.seconds:.3f}", rate)
    table.add_row("total", "", f"{sum(s.seconds for s in stages):.3f}", "", style="bold")
    print_wide(table, console)

    changed = len(second_ingest.new_symbols) + len(second_ingest.appended) + len(second_ingest.restated)
    if changed == 0 and second.nothing_to_do and second.computed_rows == 0:
        console.print(f"[green]second pass: nothing recomputed[/green] (bars of {len(second_ingest.unchanged)} "
                      f"symbols unchanged, features of {len(second.up_to_date)} symbols up to date)", soft_wrap=True)
        return True
    console.print(f"[red]second pass was not a no-op[/red]: ingesting the same bars again changed {changed} "
                  f"symbols' bars and the backfill after it computed {second.computed_rows:,} rows", soft_wrap=True)
    return False

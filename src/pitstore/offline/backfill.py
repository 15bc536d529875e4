"""Backfill: compute a feature-set version for every symbol's stored bars, incrementally.

Per symbol, the stored feature entries record the bar snapshot they were computed from. Nothing changed:
nothing is computed. Bars only appended since: only the new rows are written, as a new entry. Bars
restated: the symbol is recomputed in full and the new entry supersedes the old ones, which stay readable
for ``as_known_at`` queries.

Values are computed from the symbol's full stored history: recursive indicators need it, and TA-Lib's
running sums give last-bit differences when started elsewhere. Computing from the same start is what makes
incremental rows equal a full recompute bit for bit. Two exceptions. When every feature of the set is a window
feature (:func:`pitstore.features.library.is_window`), a value depends on its window and its absolute position
alone (:mod:`pitstore.features.windows`), so new rows are computed from the lookback bars before them only,
with the position of the first of those passed on. And when the others are TA-Lib features whose streaming
handles this process carries at the symbol's newest entry (:mod:`pitstore.offline.carry`), those continue from
the handles over the new bars, which TA-Lib makes equal to its function over the whole history.

One run writes the new rows of all its incremental symbols into one shared file and commits every symbol in
one catalog transaction (:meth:`pitstore.catalog.base.FeatureEntries.commit_features_batch`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import polars as pl

from pitstore.catalog.base import BarEntry, Catalog, FeatureCommit, FeatureEntry
from pitstore.features.base import Feature, FeatureSet
from pitstore.features.engine import compute_frame
from pitstore.features.library import is_window
from pitstore.filenames import safe_name
from pitstore.memo import BytesLRU
from pitstore.offline.carry import Carry, Handles, carried, open_handles, step_handles
from pitstore.offline.compact import write_compacted, write_packed
from pitstore.offline.entries import COMPACTED_DIR, encode_symbol, put_entry
from pitstore.rules import to_us
from pitstore.sources.bars import symbol_runs
from pitstore.sources.segments import TAIL_ROWS, PartReader, read_bars, read_tails
from pitstore.sources.spacing import check_spacing
from pitstore.storage import Storage, as_storage

__all__ = ["BackfillReport", "Written", "backfill", "batches", "commit_batch", "compute_batch", "plan"]

Progress = Callable[[int], None]


@dataclass
class BackfillReport:
    """What a backfill did."""

    feature_set: str
    version: int
    computed_rows: int = 0
    written_rows: int = 0
    full: list[str] = field(default_factory=list)  # symbols computed from scratch
    incremental: list[str] = field(default_factory=list)  # symbols that got only their new rows
    up_to_date: list[str] = field(default_factory=list)
    lost_race: list[str] = field(default_factory=list)  # another process committed the same work first
    resumed: list[str] = field(default_factory=list)  # incremental, TA-Lib features resumed from carried state

    @property
    def nothing_to_do(self) -> bool:
        return not (self.full or self.incremental)


@dataclass
class _Plan:
    bars: BarEntry
    live: list[FeatureEntry]
    full: bool
    after_us: int | None  # write rows with ts after this (incremental)


def _us(t: datetime | None) -> int | None:
    return None if t is None else to_us(t)  # the one conversion (pitstore.rules): integer arithmetic, no float


def _plan(catalog: Catalog, bars: BarEntry, live: list[FeatureEntry], start_us: int | None,
          end_us: int | None) -> _Plan | None:
    if not live:
        return _Plan(bars, live, True, None)
    latest = max(live, key=lambda e: e.last_ts)
    first = min(e.first_ts for e in live)
    wanted_first = max(bars.first_ts, start_us) if start_us is not None else bars.first_ts
    wanted_last = bars.last_ts if end_us is None else min(bars.last_ts, end_us)
    if latest.bars_entry_id == bars.id and first <= wanted_first and latest.last_ts >= wanted_last:
        return None
    since = catalog.bar_history(bars.symbol, latest.bars_entry_id)
    if first <= wanted_first and all(e.appended_only for e in since):
        # Bars were only appended: nothing to do unless some fall in the wanted range.
        return _Plan(bars, live, False, latest.last_ts) if latest.last_ts < wanted_last else None
    return _Plan(bars, live, True, None)


def _needed(bars: pl.DataFrame, lookback: int, after: Mapping[str, int], starts: Mapping[str, int]
            ) -> tuple[pl.DataFrame, dict[str, int]]:
    """The bars the new rows need: all of them, except for the symbols in ``after`` (incremental plans whose
    window features read a tail), which need just the ``lookback`` bars before their first new row (after
    ``after[symbol]``); and per symbol cut so, the absolute position of its first bar kept (window blocks are
    anchored to it: pitstore.features.windows). ``starts``: the absolute position of the first bar in ``bars``
    of symbols read from a tail only (others start at 0)."""
    if not after:
        return bars, {}
    cut = pl.DataFrame({"symbol": list(after), "after": list(after.values())},
                       schema={"symbol": pl.String, "after": pl.Int64})
    # Bars already computed, per symbol (0 for full plans: their "after" is null); signed, to subtract from.
    stored = (pl.col("ts").dt.epoch("us") <= pl.col("after")).sum().over("symbol").cast(pl.Int64)
    marked = (bars.join(cut, on="symbol", how="left", maintain_order="left")
              .with_columns(_first=(stored - lookback).clip(lower_bound=0)))
    kept = marked.filter(pl.int_range(pl.len()).over("symbol") >= pl.col("_first"))
    firsts = kept.group_by("symbol").agg(pl.col("_first").first())
    offsets = {s: int(f) + starts.get(s, 0) for s, f in firsts.iter_rows() if f or starts.get(s, 0)}
    return kept.drop("after", "_first"), offsets


def plan(catalog: Catalog, feature_set: FeatureSet, version: int, symbols: Sequence[str] | None,
         start_us: int | None, end_us: int | None, report: BackfillReport) -> list[_Plan]:
    """What each symbol needs (symbols already up to date go to ``report.up_to_date``): read on the client only,
    so every engine (local, Dask) starts from the same catalog snapshot and commits against it."""
    live_by_symbol: dict[str, list[FeatureEntry]] = {}
    for e in catalog.feature_entries(feature_set.name, version, symbols):
        live_by_symbol.setdefault(e.symbol, []).append(e)
    plans: list[_Plan] = []
    for bars in catalog.live_bars(symbols):
        p = _plan(catalog, bars, live_by_symbol.get(bars.symbol, []), start_us, end_us)
        if p is None:
            report.up_to_date.append(bars.symbol)
        else:
            plans.append(p)
    return plans


def batches(plans: Sequence[_Plan], max_rows: int, *, tail_reads: bool | Callable[[_Plan], bool] = False
            ) -> Iterator[list[_Plan]]:
    """Whole symbols in batches of about ``max_rows`` bars read (one vectorised pass each keeps memory bounded;
    ``tail_reads``: which incremental plans read only a tail (all of them: the set is all window features))."""
    batch: list[_Plan] = []
    rows = 0
    for p in plans:
        batch.append(p)
        # With tail reads an incremental plan reads its new bars and a short tail before them, not the history.
        new = p.bars.n_rows - sum(e.n_rows for e in p.live)
        tail = tail_reads(p) if callable(tail_reads) else tail_reads
        rows += p.bars.n_rows if p.full or not tail else max(new, 0) + TAIL_ROWS
        if rows >= max_rows:
            yield batch
            batch, rows = [], 0
    if batch:
        yield batch


def backfill(
    data: Storage | Path,
    catalog: Catalog,
    feature_set: FeatureSet,
    version: int,
    *,
    symbols: Sequence[str] | None = None,
    start: datetime | None = None,
    end: datetime | None = None,
    progress: Progress | None = None,
    carry: Carry | None = None,
    pack_above: int | None = None,
) -> BackfillReport:
    """Bring the stored features of ``feature_set`` (registered as ``version``) up to date; ``data``: where the
    entries are (a Path: files under an embedded store's root). ``carry``: the TA-Lib features' state kept
    between runs of this process (:mod:`pitstore.offline.carry`): a symbol whose newest entry it holds the state
    of is resumed from it (O(new bars)), the others are computed from their whole history and their state kept.
    ``pack_above``: when more symbols than that are computed in full, their rows go straight into compacted
    files (:func:`pitstore.offline.compact.write_packed`), a file per batch, not a file per symbol that a
    compaction would rewrite next (None: a file per symbol)."""
    storage = as_storage(data)
    report = BackfillReport(feature_set.name, version)
    start_us, end_us = _us(start), _us(end)
    plans = plan(catalog, feature_set, version, symbols, start_us, end_us, report)
    pack = pack_above is not None and sum(p.full for p in plans) > pack_above
    resume: dict[str, Handles] = {}
    if carry is not None and carried(feature_set.features):
        for p in plans:
            if not p.full and p.after_us is not None:
                latest = max(p.live, key=lambda e: e.last_ts)
                handles = carry.get(feature_set.name, version, p.bars.symbol, latest.id)
                if handles is not None:
                    resume[p.bars.symbol] = handles
    windows_only = all(is_window(f) for f in feature_set.features)
    for batch in batches(plans, 2_000_000, tail_reads=lambda p: windows_only or p.bars.symbol in resume):
        _run(storage, catalog, feature_set, version, batch, start_us, end_us, report, progress,
             None if carry is None else (carry, resume), pack)
    report.resumed = [s for s in report.incremental if s in resume]
    return report


def _run(
    data: Storage | Path, catalog: Catalog, fs: FeatureSet, version: int, plans: list[_Plan],
    start_us: int | None, end_us: int | None, report: BackfillReport, progress: Progress | None,
    carry: tuple[Carry, Mapping[str, Handles]] | None, pack: bool = False,
) -> None:
    """One batch on this machine: compute and write, then commit (the Dask engine splits the two)."""
    resume, keep = (None, None) if carry is None else (carry[1], carry[0].tails)
    computed, written, handles = _compute(data, fs, version, plans, start_us, end_us, resume, keep, pack)
    commit_batch(data, catalog, fs, version, plans, computed, written, report, progress,
                 carry=None if carry is None else (carry[0], handles))


@dataclass(frozen=True)
class Written:
    """An entry file written for one plan, not yet committed (an orphan until it is: gc removes it)."""

    path: str
    size: int
    file_hash: str
    n_rows: int
    first_ts: int
    last_ts: int


def compute_batch(
    data: Storage | Path, fs: FeatureSet, version: int, plans: Sequence[_Plan], start_us: int | None,
    end_us: int | None, *, pack: bool = False,
) -> tuple[int, list[Written | None]]:
    """Compute a batch and write its entry files (no catalog access: a Dask worker runs this as is); returns
    the rows computed and, per plan, the file written (None: no new rows). ``pack``: the full plans' rows go
    into compacted files shared by the batch (see :func:`backfill`)."""
    computed, written, _ = _compute(data, fs, version, plans, start_us, end_us, None, None, pack)
    return computed, written


def _compute(
    data: Storage | Path, fs: FeatureSet, version: int, plans: Sequence[_Plan], start_us: int | None,
    end_us: int | None, resume: Mapping[str, Handles] | None, keep: BytesLRU | None, pack: bool = False,
) -> tuple[int, list[Written | None], list[Handles | None]]:
    """:func:`compute_batch`, and with ``resume`` (the handles to resume symbols from; None: carry nothing) the
    TA-Lib handles at each written entry's last row, for :class:`pitstore.offline.carry.Carry`; ``keep``: where
    decoded bar row groups outlive the batch (:class:`pitstore.sources.segments.PartReader`)."""
    storage = as_storage(data)
    talibs = carried(fs.features) if resume is not None else []
    windows = [f for f in fs.features if is_window(f)]
    lookback = max((f.lookback for f in windows), default=0)
    resumed = {p.bars.symbol for p in plans if talibs and not p.full and p.after_us is not None
               and resume is not None and p.bars.symbol in resume}
    after = {p.bars.symbol: p.after_us for p in plans if not p.full and p.after_us is not None
             and (len(windows) == len(fs.features) or p.bars.symbol in resumed)}
    bars, tail_starts = _read_bars(storage, plans, after, lookback, keep)
    if end_us is not None:
        bars = bars.filter(pl.col("ts").dt.epoch("us") <= end_us)
    check_spacing(bars, fs)  # before anything of the batch is written
    handles: dict[str, Handles] = {}
    if resumed:
        mine = pl.col("symbol").is_in(sorted(resumed))
        whole, tails = bars.filter(~mine), bars.filter(mine)
        outs = [] if whole.height == 0 else [compute_frame(fs.features, whole)]
        assert resume is not None
        outs.append(_resume(fs, windows, talibs, tails, {s: after[s] for s in resumed}, tail_starts, lookback,
                            {s: resume[s] for s in resumed}, handles))
        out = pl.concat(outs, how="vertical") if len(outs) > 1 else outs[0]
    else:
        whole = bars
        needed, offsets = _needed(bars, lookback, after, tail_starts)
        out = compute_frame(fs.features, needed, offsets=offsets)
    if talibs and whole.height:
        handles.update(_open(talibs, whole))
    computed = out.height
    # Only the rows each plan writes: after its stored rows (incremental) or from start (full); one filter for
    # all symbols, each symbol's rows then a slice (a filter per symbol cost ~0.1 ms each, 500 symbols an append).
    lower = {p.bars.symbol: p.after_us if not p.full else None if start_us is None else start_us - 1 for p in plans}
    bounds = pl.DataFrame({"symbol": list(lower), "_lower": list(lower.values())},
                          schema={"symbol": pl.String, "_lower": pl.Int64})
    epochs = pl.col("ts").dt.epoch("us")
    out = (out.join(bounds, on="symbol", how="left", maintain_order="left")
           .filter(pl.col("_lower").is_null() | (epochs > pl.col("_lower"))).drop("_lower"))
    names, firsts, ends = symbol_runs(out["symbol"])
    runs = {n: (a, b) for n, a, b in zip(names, firsts.tolist(), ends.tolist(), strict=True)}
    ts = out["ts"].dt.epoch("us").to_numpy()
    directory = f"features/{safe_name(fs.name)}/v{version}"
    written: list[Written | None] = [None] * len(plans)
    # The new rows of every incremental plan go into ONE file (the compacted layout, small symbols packed):
    # a file per symbol made an append of one bar to 500 symbols 500 file writes, and the compaction after it
    # (more than AUTO_ENTRIES loose entries) read and rewrote them all again.
    shared = [i for i, p in enumerate(plans) if not p.full and p.bars.symbol in runs]
    if shared:
        rows = pl.concat([out.slice(a, b - a) for a, b in (runs[plans[i].bars.symbol] for i in shared)], rechunk=True)
        path, size, digest = write_compacted(storage, f"{directory}/{COMPACTED_DIR}", rows, pack=True)
        for i in shared:
            a, b = runs[plans[i].bars.symbol]
            written[i] = Written(path, size, digest, b - a, int(ts[a]), int(ts[b - 1]))
    full = [i for i, p in enumerate(plans) if p.full and p.bars.symbol in runs]
    if pack and full:  # many symbols in full: compacted files a batch, not a file per symbol to compact next
        order = sorted(plans[i].bars.symbol for i in full)  # compacted files hold symbols in order
        rows = pl.concat([out.slice(a, b - a) for a, b in (runs[s] for s in order)], rechunk=True)
        packed = _packed(storage, directory, rows)
        for i in full:
            written[i] = packed[plans[i].bars.symbol]
        full = []

    def write_full(i: int) -> Written:
        a, b = runs[plans[i].bars.symbol]
        return _write(storage, f"{directory}/{encode_symbol(plans[i].bars.symbol)}", out.slice(a, b - a))

    # Full recomputes keep a file per symbol (large; written on two threads: Parquet encoding releases the GIL).
    with ThreadPoolExecutor(max_workers=2) as pool:
        for i, w in zip(full, pool.map(write_full, full), strict=True):
            written[i] = w
    last = dict(bars.group_by("symbol").agg(pl.col("ts").dt.epoch("us").last()).iter_rows())
    carried_at: list[Handles | None] = [
        handles.get(p.bars.symbol) if w is not None and w.last_ts == last.get(p.bars.symbol) else None
        for p, w in zip(plans, written, strict=True)]  # a handle stands at the bar its entry's last row is of
    return computed, written, carried_at


def _resume(fs: FeatureSet, windows: Sequence[Feature], talibs: Sequence[Feature], tails: pl.DataFrame,
            after: Mapping[str, int], starts: Mapping[str, int], lookback: int, resume: Mapping[str, Handles],
            handles: dict[str, Handles]) -> pl.DataFrame:
    """The new rows of symbols resumed from carried state: window features from their tails, TA-Lib features
    by stepping the handles over the new bars (left advanced in ``handles``)."""
    needed, offsets = _needed(tails, lookback, after, starts)
    frame = compute_frame(windows, needed, offsets=offsets) if windows else needed.select("symbol", "ts")
    cut = pl.DataFrame({"symbol": list(after), "after": list(after.values())},
                       schema={"symbol": pl.String, "after": pl.Int64})
    new = (needed.join(cut, on="symbol", how="left", maintain_order="left")
           .select(pl.col("ts").dt.epoch("us") > pl.col("after"))).to_series().to_numpy()
    frame, new_bars = frame.filter(new), needed.filter(new)
    columns = {c: np.empty(frame.height) for f in talibs for c in f.outputs}
    inputs = sorted({c for f in talibs for c in f.inputs})
    arrays = {c: new_bars[c].cast(pl.Float64).to_numpy() for c in inputs}
    names, firsts, ends = symbol_runs(new_bars["symbol"])
    for symbol, a, b in zip(names, firsts.tolist(), ends.tolist(), strict=True):
        outs = step_handles(talibs, resume[symbol], {c: v[a:b] for c, v in arrays.items()})
        for f in talibs:
            for c, values in zip(f.outputs, outs[f.name], strict=True):
                columns[c][a:b] = values
        handles[symbol] = resume[symbol]
    frame = frame.with_columns(pl.Series(c, v, nan_to_null=True) for c, v in columns.items())
    return frame.select("symbol", "ts", *(c for f in fs.features for c in f.outputs))


def _open(talibs: Sequence[Feature], whole: pl.DataFrame) -> dict[str, Handles]:
    """Handles opened on each symbol's whole history in ``whole`` (its first stored bar on)."""
    inputs = sorted({c for f in talibs for c in f.inputs})
    arrays = {c: whole[c].cast(pl.Float64).to_numpy() for c in inputs}
    names, firsts, ends = symbol_runs(whole["symbol"])
    opened = {}
    for symbol, a, b in zip(names, firsts.tolist(), ends.tolist(), strict=True):
        h = open_handles(talibs, {c: v[a:b] for c, v in arrays.items()})
        if h is not None:
            opened[symbol] = h
    return opened


def _read_bars(storage: Storage, plans: Sequence[_Plan], after: Mapping[str, int], lookback: int,
               keep: BytesLRU | None) -> tuple[pl.DataFrame, dict[str, int]]:
    """The stored bars the plans need: a symbol's whole snapshot, or, for the incremental plans in ``after``
    (their window features read a tail), just its tail from the ``lookback`` bars before the first new row on
    (read from the newest segments back: O(new bars), not O(history)); and the absolute position of the first
    bar of each tail."""
    whole = [p.bars for p in plans if p.bars.symbol not in after]
    frames = [] if not whole else [read_bars(storage, whole)]
    tails = [(p.bars, after[p.bars.symbol]) for p in plans if p.bars.symbol in after]
    starts: dict[str, int] = {}
    if tails:
        # At least one stored bar: a tail read stops at the first part holding a bar at or before after_us.
        # The symbols' tails share segment files and row groups: each decoded once (kept: once per process).
        tail, positions = read_tails(PartReader(storage, keep=keep), tails, max(lookback, 1))
        frames.append(tail)
        starts = {e.symbol: at for (e, _), at in zip(tails, positions, strict=True)}
    kept = [f for f in frames if f is not None]
    return pl.concat(kept, how="vertical_relaxed") if len(kept) > 1 else kept[0], starts


def commit_batch(
    data: Storage | Path, catalog: Catalog, fs: FeatureSet, version: int, plans: Sequence[_Plan], computed: int,
    written: Sequence[Written | None], report: BackfillReport, progress: Progress | None, *,
    carry: tuple[Carry, Sequence[Handles | None]] | None = None,
) -> None:
    """Commit the files :func:`compute_batch` wrote, in ONE catalog transaction, each symbol checked against the
    live entries its plan saw (optimistic: a symbol another process committed meanwhile is ``lost_race``, the
    others are committed). A file no committed entry points to is deleted (a shared file only when every symbol
    in it lost). ``carry``: where to keep each plan's TA-Lib handles, under the id of its committed entry."""
    report.computed_rows += computed
    items: list[FeatureCommit] = []
    todo: list[tuple[int, _Plan, Written]] = []
    for i, (p, w) in enumerate(zip(plans, written, strict=True)):
        if w is None:
            report.up_to_date.append(p.bars.symbol)
        else:
            entry = FeatureEntry(0, fs.name, version, p.bars.symbol, w.path, w.n_rows, w.first_ts, w.last_ts,
                                 p.bars.id, 0, None, w.size, w.file_hash)
            items.append((entry, [e.id for e in p.live] if p.full else [], [e.id for e in p.live]))
            todo.append((i, p, w))
    done = catalog.commit_features_batch(items) if items else []
    kept = {w.path for (_, _, w), new in zip(todo, done, strict=True) if new is not None}
    for (i, p, w), new in zip(todo, done, strict=True):
        if new is not None:
            report.written_rows += w.n_rows
            (report.full if p.full else report.incremental).append(p.bars.symbol)
            handles = None if carry is None else carry[1][i]
            if carry is not None and handles is not None:
                carry[0].put(fs.name, version, p.bars.symbol, new, handles)
        else:
            report.lost_race.append(p.bars.symbol)
    for path in sorted({w.path for _, _, w in todo} - kept):
        as_storage(data).delete(path)
    if progress:
        for _ in plans:
            progress(1)


def _packed(storage: Storage, directory: str, rows: pl.DataFrame) -> dict[str, Written]:
    """``rows`` (by symbol) in compacted files; per symbol, its entry in them."""
    out: dict[str, Written] = {}
    for path, size, digest, part in write_packed(storage, directory, rows):
        names, starts, ends = symbol_runs(part["symbol"])
        epochs = part["ts"].dt.epoch("us")
        for name, a, b in zip(names, starts.tolist(), ends.tolist(), strict=True):
            out[name] = Written(path, size, digest, b - a, int(epochs[a]), int(epochs[b - 1]))
    return out


def _write(storage: Storage, directory: str, part: pl.DataFrame) -> Written:
    """Publish ``part`` as an entry; its path, size and hash (recorded in the catalog for verify and reads)."""
    return _facts(*put_entry(storage, directory, part), part)


def _facts(path: str, size: int, digest: str, part: pl.DataFrame) -> Written:
    """What the catalog records of ``part``'s rows, written to ``path`` (size and hash of the whole file)."""
    epochs = part["ts"].dt.epoch("us")
    return Written(path, size, digest, part.height, int(epochs[0]), int(epochs[-1]))

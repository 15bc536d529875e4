"""Live bars: ``push`` computes the new feature rows incrementally and serves them at once.

Per feature set, the window features of all symbols form one block and the other features have a stepper per
symbol (:mod:`pitstore.live.steppers`); both are primed once from the stored bars and then fed the pushed bars
(the block steps every symbol of a push at once): the rows equal a batch backfill of the same bars bit for bit.
New rows go to the online tier at once and to the history tier through its writer thread (a push never waits
for PostgreSQL); the bars go to the offline tier in batches (``flush``: ingest, then an incremental backfill,
which computes the same values). A batch is written by a background thread once ``flush_bars`` are buffered,
so a push never waits seconds for it; until it is stored, this process answers look-ups of those rows from
memory. Pushes come from one thread; the flush thread is the engine's own.

A push is all or nothing per bar: rows are computed and written online first, and only then does a symbol's
latest bar advance and its bars join the buffer. When anything fails the touched symbols are primed again from
their stored and buffered bars and the error is raised; the same push retried is computed again, not skipped.
A process killed with bars buffered leaves online rows no tier has the bars of: :mod:`pitstore.live.marker`
has the next process to open the store drop them.

A bar dated at or before the latest known bar of its symbol is a duplicate when it is identical to it, else
a restatement: buffered bars are flushed, the restated bars are ingested (recorded as a restatement), the
symbol is recomputed by the offline tier, and its steppers are primed again. The online row is rewritten
only with the recomputed row of the same (latest) ts, never with an older one. Bars newer than the latest in
the same push are part of that restatement; those of later pushes are new bars again. A restated bar older than
the history tier's window is no different: the offline tier holds every recomputed row, the history tier the
ones inside its window.

Bars closer together than the live sets' timeframes allow (:mod:`pitstore.sources.spacing`) are refused before anything
of the push is computed or stored.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from pitstore.catalog.base import Catalog
from pitstore.features.base import Feature, FeatureSet
from pitstore.features.library import is_window
from pitstore.live.marker import PushMarker
from pitstore.live.steppers import Stepper, WindowBlock, stepper_for
from pitstore.offline import backfill as _backfill
from pitstore.offline.entries import read_entries
from pitstore.online.serving import Serving
from pitstore.sources import ingest as _ingest
from pitstore.sources.bars import BAR_COLUMNS, symbol_runs, validate_bars
from pitstore.sources.segments import read_bars
from pitstore.sources.spacing import check_spacing, min_gap_us, spacing_error
from pitstore.storage import Storage, as_storage

__all__ = ["LiveEngine", "PushReport"]

log = logging.getLogger("pitstore.live")

_RETRY_SECONDS = 5.0  # after a failed background flush, the next one starts no sooner than this
_HISTORY_WAIT_SECONDS = 10.0  # a flush waits this long for pushed rows to reach PostgreSQL before marking

Row = tuple[str, int, tuple[float | None, ...]]
_VALUES = tuple(c for c in BAR_COLUMNS if c not in ("symbol", "ts"))  # what a stepper reads of a bar


@dataclass
class PushReport:
    """What a push did. ``rows``: per table (``name@version``) the new or recomputed feature rows."""

    rows: dict[str, pl.DataFrame] = field(default_factory=dict)
    bars: int = 0  # new bars computed
    duplicates: int = 0  # bars identical to the latest known one of their symbol, skipped
    restated: dict[str, int] = field(default_factory=dict)  # symbol -> bars changed (recomputed offline)
    pending_offline: int = 0  # pushed bars not yet written to the offline tier


@dataclass
class _Symbol:
    last_ts: int | None
    last_bar: tuple[float, ...] | None  # its _VALUES
    steppers: dict[str, list[Stepper]]  # per table, of its features outside the window block


@dataclass
class _Table:
    """How one feature set is computed live: its window features as one block for all symbols, the others by
    a stepper per symbol; the positions of each part's outputs in a row."""

    block: WindowBlock
    block_columns: list[int]
    others: list[Feature]
    other_columns: list[int]
    width: int

    @classmethod
    def of(cls, fs: FeatureSet) -> _Table:
        windows: list[Feature] = []
        others: list[Feature] = []
        block_columns: list[int] = []
        other_columns: list[int] = []
        col = 0
        for f in fs.features:
            part, columns = (windows, block_columns) if is_window(f) else (others, other_columns)
            part.append(f)
            columns.extend(range(col, col + len(f.outputs)))
            col += len(f.outputs)
        return cls(WindowBlock(windows), block_columns, others, other_columns, col)


class LiveEngine:
    """The live state of one store in one process."""

    def __init__(self, root: Path, catalog: Catalog, serving: Serving, flush_bars: int,
                 storage: Storage | None = None) -> None:
        self.root = root  # local state: the push marker
        self.storage = storage if storage is not None else as_storage(root)  # the data files
        self.catalog = catalog
        self.serving = serving
        self.flush_bars = flush_bars
        self.sets: dict[str, tuple[FeatureSet, int]] = {}  # table_id -> (feature set, version)
        self._tables: dict[str, _Table] = {}
        self._symbols: dict[str, _Symbol] = {}
        self._buffer: list[pl.DataFrame] = []
        self._buffered = 0
        self._lock = threading.Lock()  # the buffer, shared with the flush thread (pushed rows have their own)
        self._flushing: threading.Thread | None = None
        self._in_flight = 0  # bars the flush thread is writing
        self._flying: pl.DataFrame | None = None  # those bars
        self.marker = PushMarker(root)
        self._retry_at = 0.0
        # The live set of the longest timeframe and its least bar spacing (µs), which pushed bars are checked by.
        self._strictest: tuple[FeatureSet, int] | None = None

    def add(self, feature_set: FeatureSet, version: int) -> None:
        """Compute ``feature_set`` (registered as ``version``) on pushes from now on."""
        table_id = f"{feature_set.name}@{version}"
        if table_id in self.sets:
            return
        self.flush()
        self.sets = {k: v for k, v in self.sets.items() if v[0].name != feature_set.name}
        self.sets[table_id] = (feature_set, version)
        self._tables = {t: _Table.of(fs) for t, (fs, _) in self.sets.items()}
        strictest = max((fs for fs, _ in self.sets.values()), key=min_gap_us)
        self._strictest = strictest, min_gap_us(strictest)
        self._symbols.clear()  # primed again, with the new set's steppers

    # --- push ---------------------------------------------------------------------------------------------

    def push(self, bars: Any, *, max_future: timedelta | None = None) -> PushReport:
        df = validate_bars(bars, max_future=max_future).select(BAR_COLUMNS)
        report = PushReport()
        if df.height == 0:
            return report
        names, starts, ends = symbol_runs(df["symbol"])
        self._prime([s for s in names if s not in self._symbols])
        # Plain Python values once: per-bar work must not go through a DataFrame.
        ts = df["ts"].dt.epoch("us").to_list()
        values = list(zip(*(df[c].cast(pl.Float64).to_list() for c in _VALUES), strict=True))
        accepted: list[int] = []
        restated: list[int] = []
        todo: list[tuple[str, int, int]] = []  # (symbol, first, end) of the new bars to compute
        for symbol, a, b in zip(names, starts.tolist(), ends.tolist(), strict=True):
            state = self._symbols[symbol]
            i = a
            if state.last_ts is not None and ts[a] <= state.last_ts:
                if ts[a] == state.last_ts and values[a] == state.last_bar:  # the latest bar, sent again
                    report.duplicates += 1
                    i += 1
                if i < b and ts[i] <= state.last_ts:
                    restated.extend(range(i, b))
                    continue
            if i < b:
                self._check_gaps(symbol, state.last_ts, ts, i, b)
                todo.append((symbol, i, b))
                accepted.extend(range(i, b))
        if restated:
            self._check_restated(df[restated])  # before anything of the push is computed or stored
        if accepted:
            self._accept(df, todo, ts, values, report)
            with self._lock:
                self._buffer.append(df[accepted])
                self._buffered += len(accepted)
            report.bars = len(accepted)
        if restated:
            self._restate(df[restated], report)
        if self._buffered >= self.flush_bars:
            self._flush_in_background()
        report.pending_offline = self.pending
        return report

    def _check_gaps(self, symbol: str, last_ts: int | None, ts: list[int], i: int, b: int) -> None:
        """New bars ``ts[i:b]`` of ``symbol`` after its latest known bar: far enough apart for every live set
        (:mod:`pitstore.sources.spacing`). Plain Python: a push of one bar must not pay for a DataFrame operation."""
        assert self._strictest is not None
        fs, gap = self._strictest
        prev = last_ts
        for j in range(i, b):
            if prev is not None and ts[j] - prev < gap:
                raise spacing_error(fs, symbol, prev, ts[j])
            prev = ts[j]

    def _check_restated(self, bars: pl.DataFrame) -> None:
        """The known bars of the restated symbols with ``bars`` laid over them, far enough apart."""
        assert self._strictest is not None
        known = self._known_bars(sorted(set(bars["symbol"].to_list())))
        keys = bars.select("symbol", "ts")
        if known is not None:
            keys = pl.concat([known.select("symbol", "ts"), keys]).unique().sort("symbol", "ts")
        check_spacing(keys, self._strictest[0])

    def _accept(self, df: pl.DataFrame, todo: list[tuple[str, int, int]], ts: list[int],
                values: list[tuple[float, ...]], report: PushReport) -> None:
        """Compute and serve the new bars, all or nothing: when anything fails (a Python feature, the online
        write), the touched symbols are primed again from their known bars and the error raised, so that the
        same push retried computes and serves them (it is no duplicate); the symbols' latest bar advances only
        once every row is online."""
        symbols = [s for s, _, _ in todo]
        self.marker.note(self.sets, symbols)  # before any row goes online: a kill leaves it to reconcile
        try:
            rows = self._compute(df, todo, ts, values)
            self._serve(rows, report)
        except BaseException:
            self._reprime(symbols)
            raise
        for symbol, _, b in todo:
            state = self._symbols[symbol]
            state.last_ts, state.last_bar = ts[b - 1], values[b - 1]

    def _compute(self, df: pl.DataFrame, todo: list[tuple[str, int, int]], ts: list[int],
                 values: list[tuple[float, ...]]) -> dict[str, list[Row]]:
        """The feature rows of the new bars: in rounds, the k-th new bar of every symbol in round k, so that
        each table's window block steps all its symbols at once."""
        rows: dict[str, list[Row]] = {t: [] for t in self.sets}
        if not todo:
            return rows
        columns = {c: df[c].cast(pl.Float64).to_numpy() for c in _VALUES}
        for r in range(max(b - i for _, i, b in todo)):
            step = [(symbol, i + r) for symbol, i, b in todo if i + r < b]
            symbols = [s for s, _ in step]
            at = np.fromiter((j for _, j in step), np.int64, len(step))
            for table_id, table in self._tables.items():
                out = np.empty((len(step), table.width))
                if table.block_columns:
                    out[:, table.block_columns] = table.block.step(symbols,
                                                                   {c: columns[c][at] for c in table.block.inputs})
                if table.others:
                    for k, (symbol, j) in enumerate(step):
                        bar: dict[str, Any] = dict(zip(_VALUES, values[j], strict=True))
                        bar["symbol"], bar["ts"] = symbol, ts[j]  # an expression or Python feature reads them
                        steppers = self._symbols[symbol].steppers[table_id]
                        out[k, table.other_columns] = [v for s in steppers for v in s.step(bar)]
                new = rows[table_id]
                for (symbol, j), row in zip(step, out.tolist(), strict=True):
                    new.append((symbol, ts[j], tuple([None if v != v else v for v in row])))  # NaN is null
        if r:  # several rounds: back to (symbol, ts) order
            for new in rows.values():
                new.sort(key=lambda row: (row[0], row[1]))
        return rows

    @property
    def pending(self) -> int:
        """Pushed bars not yet in the offline tier (buffered, or being written by the flush thread)."""
        return self._buffered + self._in_flight

    def _serve(self, rows: dict[str, list[Row]], report: PushReport) -> None:
        """The online writes first (they may fail: the rows already written are taken back), then the rest,
        which does not raise."""
        written: list[str] = []
        try:
            for table_id, new in rows.items():
                if new:
                    self.serving.put_pushed(table_id, new)
                    written.append(table_id)
        except BaseException:
            self._take_back(written, sorted({s for new in rows.values() for s, _, _ in new}))
            raise
        for table_id in written:
            new = rows[table_id]
            frame = _frame(new, self.serving.columns(table_id))
            report.rows[table_id] = frame
            self.serving.keep_pushed(table_id, new, frame)

    def _take_back(self, table_ids: list[str], symbols: list[str]) -> None:
        """A push failed after writing the online rows of ``table_ids``: those rows are of bars that were not
        accepted. Put back each symbol's previous row: its last pushed one, else none (a read fills the latest
        stored one)."""
        for table_id in table_ids:
            try:
                self.serving.take_back(table_id, symbols)
            except Exception as exc:  # the push's own error is the one raised
                log.error("online rows of a failed push of %s not taken back: %s", table_id, exc)

    def _restate(self, bars: pl.DataFrame, report: PushReport) -> None:
        """Restated bars: through the offline tier, as an ingest and a backfill would do it. Only the pushed bars
        are ingested (ingest overlays them on the stored ones): a stored bar is never written back as it was
        read, which would undo a correction another process committed meanwhile."""
        self.flush()
        ingested = _ingest.ingest(self.root, self.catalog, bars, storage=self.storage)
        symbols = sorted(set(bars["symbol"].to_list()))
        report.restated.update(ingested.restated)
        for s in symbols:
            self._symbols.pop(s, None)
        first = bars.group_by("symbol").agg(pl.col("ts").min())
        for table_id, (fs, version) in self.sets.items():
            _backfill.backfill(self.storage, self.catalog, fs, version, symbols=symbols)
            self.serving.refresh(fs.name, version, symbols)
            changed = self.serving.stored_rows(table_id, symbols)
            changed = changed.join(first, on="symbol", suffix="_from").filter(pl.col("ts") >= pl.col("ts_from"))
            frame = changed.select("symbol", "ts", *self.serving.columns(table_id))
            report.rows[table_id] = pl.concat([report.rows[table_id], frame]) if table_id in report.rows else frame

    # --- state --------------------------------------------------------------------------------------------

    def _reprime(self, symbols: Sequence[str]) -> None:
        """After a failed push: ``symbols`` primed again, as before it. Should priming fail too, they are left
        unprimed: the next push primes them."""
        for s in symbols:
            self._symbols.pop(s, None)
        try:
            self._prime(symbols)
        except Exception as exc:
            for s in symbols:
                self._symbols.pop(s, None)
            log.error("priming %d symbols again after a failed push failed (next push retries): %s",
                      len(symbols), exc)

    def _known_bars(self, symbols: Sequence[str]) -> pl.DataFrame | None:
        """Every bar of ``symbols`` this process knows: the stored ones, then those pushed and not yet stored."""
        flying = self._flying
        if flying is not None and flying["symbol"].is_in(list(symbols)).any():
            self.join()  # then its bars are stored, or back in the buffer
        entries = self.catalog.live_bars(symbols)
        stored = read_bars(self.storage, entries)
        with self._lock:
            buffered = [b.filter(pl.col("symbol").is_in(list(symbols))) for b in self._buffer]
        parts = [p for p in [stored, *buffered] if p is not None and p.height]
        if not parts:
            return None
        if len(parts) == 1:
            return parts[0]
        # Pushed bars are newer than the stored ones of their symbol (an older one is a restatement, stored first).
        return pl.concat(parts, how="diagonal_relaxed").sort("symbol", "ts", maintain_order=True)

    def _prime(self, symbols: Sequence[str]) -> None:
        """Steppers of ``symbols`` fed with their known bars (one read for all of them)."""
        if not symbols:
            return
        stored = self._known_bars(symbols)
        parts: dict[str, pl.DataFrame] = {}
        if stored is not None and stored.height:
            names, starts, ends = symbol_runs(stored["symbol"])
            parts = {n: stored.slice(a, b - a) for n, a, b in zip(names, starts.tolist(), ends.tolist(), strict=True)}
        for symbol in symbols:
            history = parts.get(symbol)
            steppers: dict[str, list[Stepper]] = {}
            for table_id, table in self._tables.items():
                table.block.forget(symbol)
                steppers[table_id] = [stepper_for(f) for f in table.others]
                if history is not None:
                    table.block.prime(symbol, history)
                    for s in steppers[table_id]:
                        s.prime(history)
            if history is None or history.height == 0:
                self._symbols[symbol] = _Symbol(None, None, steppers)
            else:
                last = history.select(pl.col(_VALUES).cast(pl.Float64)).row(-1)
                self._symbols[symbol] = _Symbol(int(history["ts"].dt.epoch("us")[-1]), last, steppers)

    # --- the offline tier ---------------------------------------------------------------------------------

    def flush(self) -> int:
        """Write every buffered bar to the offline tier now (after a background flush in progress); returns
        the bars written by this call. Raises what the write raised; the bars stay buffered then."""
        self.join()
        bars = self._take()
        if bars is None:
            return 0
        try:
            self._write_offline(bars)
        except BaseException:
            self._give_back(bars)
            raise
        return bars.height

    def close(self) -> None:
        """Flush; the marker goes once every pushed bar is stored (else the next opener reconciles)."""
        stored = False
        try:
            self.flush()
            stored = self.pending == 0
        finally:
            self.marker.release(remove=stored)

    def join(self) -> None:
        """Wait for the background flush in progress, if any."""
        if self._flushing is not None:
            self._flushing.join()
            self._flushing = None

    def _flush_in_background(self) -> None:
        if self._flushing is not None:
            if self._flushing.is_alive():
                if self._buffered < 2 * self.flush_bars:
                    return
                self._flushing.join()  # back pressure: the buffer stays bounded when writes are slower
            self._flushing = None
        if time.monotonic() < self._retry_at:
            return
        bars = self._take()
        if bars is None:
            return
        self._in_flight, self._flying = bars.height, bars
        self._flushing = threading.Thread(target=self._flush_thread, args=(bars,), name="pitstore-live-flush",
                                          daemon=True)
        self._flushing.start()

    def _flush_thread(self, bars: pl.DataFrame) -> None:
        try:
            self._write_offline(bars)
        except BaseException as exc:  # kept, not raised: a later flush retries the same bars
            log.error("background flush of %d pushed bars failed (retried later): %s", bars.height, exc,
                      exc_info=exc)
            self._retry_at = time.monotonic() + _RETRY_SECONDS
            self._give_back(bars)
        finally:
            self._in_flight, self._flying = 0, None

    def _take(self) -> pl.DataFrame | None:
        with self._lock:
            if not self._buffer:
                return None
            bars = pl.concat(self._buffer)
            self._buffer, self._buffered = [], 0
        return bars

    def _give_back(self, bars: pl.DataFrame) -> None:
        with self._lock:
            self._buffer.insert(0, bars)
            self._buffered += bars.height

    def _write_offline(self, bars: pl.DataFrame) -> None:
        """Ingest ``bars`` and backfill every live set incrementally; then the pushed rows of those bars are
        no longer needed in memory."""
        upto = dict(bars.group_by("symbol").agg(pl.col("ts").max().dt.epoch("us")).iter_rows())
        symbols = sorted(upto)
        _ingest.ingest(self.root, self.catalog, bars, storage=self.storage)
        for table_id, (fs, version) in self.sets.items():
            before = {e.id for e in self.catalog.feature_entries(fs.name, version, symbols)}
            _backfill.backfill(self.storage, self.catalog, fs, version, symbols=symbols)
            flushed = self.serving.pushed_upto(table_id, upto)
            if self.serving.history_written(_HISTORY_WAIT_SECONDS):
                # The new entries hold the rows this process pushed and wrote to the history tier, unless
                # another process restated bars meanwhile: mark them synced only when the values agree.
                new = [e for e in self.catalog.feature_entries(fs.name, version, symbols) if e.id not in before]
                same = [e for e in new if self._pushed_equal(e.path, flushed.get(e.symbol, []))]
                if same:
                    self.catalog.mark_history_synced(table_id, {e.id: e.first_ts for e in same})
                differ = sorted({e.symbol for e in new} - {e.symbol for e in same})
                if differ:
                    self.serving.refresh(fs.name, version, differ)
            self.serving.pushed_stored(table_id, upto)  # rows pushed since the bars were taken stay

    def _pushed_equal(self, path: str, pushed: list[tuple[int, tuple[float | None, ...]]]) -> bool:
        stored = read_entries(self.storage, [path])
        if stored is None or stored.height != len(pushed):
            return False
        ts = stored["ts"].dt.epoch("us").to_list()
        rows = stored.drop("symbol", "ts").rows()
        return all(t == p[0] and r == p[1] for t, r, p in zip(ts, rows, pushed, strict=True))


def _frame(rows: list[Row], columns: Sequence[str]) -> pl.DataFrame:
    symbols, ts, values = zip(*rows, strict=True)
    data: dict[str, Any] = {"symbol": list(symbols), "ts": list(ts)}
    for i, c in enumerate(columns):
        data[c] = [v[i] for v in values]
    return pl.DataFrame(data, schema={"symbol": pl.String, "ts": pl.Int64, **dict.fromkeys(columns, pl.Float64)}
                        ).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))

"""The offline tier end to end, on real files: storage format, ingest, incremental backfill, reads, knowledge time."""

from __future__ import annotations

import csv
import sqlite3
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow.parquet as pq
import pytest

import pitstore
import pitstore.sources.segments
from pitstore import (
    FeatureSet,
    InvalidInputError,
    Store,
    atr,
    bollinger,
    ema,
    expr,
    log_ret,
    macd,
    mom,
    ret,
    rsi,
    sma,
    standard_features,
    talib,
    vol,
    vwap,
    zscore,
)
from pitstore.testing import synthetic_bars

BAR_COLUMNS = ["symbol", "ts", "open", "high", "low", "close", "volume"]
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Reads back the stored bars through the public API: each output is one bar column, unchanged. Its timeframe
# is the finest there is, so that bars of any timeframe pass its spacing check.
ECHO = FeatureSet("echo", [expr(c, pl.col(c)) for c in BAR_COLUMNS[2:]], timeframe="1s")


def all_features() -> FeatureSet:
    """Every built-in (the recursive ones included) and a few TA-Lib functions."""
    return FeatureSet("everything", [
        ret(1), ret(5), log_ret(1), vol(20), mom(20), sma(10), ema(10), rsi(14), macd(12, 26, 9),
        bollinger(20, 2.0), atr(14), vwap(20), zscore(20),
        talib("KAMA", timeperiod=10), talib("ADX", timeperiod=14), talib("OBV"), talib("STOCHRSI"),
    ])


def assert_bitwise_equal(got: pl.DataFrame, expected: pl.DataFrame, label: str = "") -> None:
    """Same keys in the same order, same null masks, and float values equal bit for bit."""
    assert got.columns == expected.columns, f"{label}: columns {got.columns} != {expected.columns}"
    assert got.height == expected.height, f"{label}: {got.height} rows != {expected.height}"
    assert got["symbol"].to_list() == expected["symbol"].to_list(), f"{label}: symbols differ"
    assert got["ts"].to_list() == expected["ts"].to_list(), f"{label}: timestamps differ"
    for col in got.columns[2:]:
        g, e = got[col], expected[col]
        assert g.dtype == e.dtype == pl.Float64, f"{label}: {col} dtypes {g.dtype}, {e.dtype}"
        nulls = g.is_null().to_numpy()
        diff = np.flatnonzero(nulls != e.is_null().to_numpy())
        assert diff.size == 0, f"{label}: {col} null masks differ at rows {diff[:10].tolist()}"
        gb = g.fill_null(0.0).to_numpy().view(np.int64)
        eb = e.fill_null(0.0).to_numpy().view(np.int64)
        diff = np.flatnonzero(gb != eb)
        assert diff.size == 0, (
            f"{label}: {col} differs at {diff.size} rows, first at {got.row(int(diff[0]))[:2]}: "
            f"{g[int(diff[0])]!r} != {e[int(diff[0])]!r}"
        )


def stored_bars(store: Store) -> pl.DataFrame:
    """The store's bars, read back through a backfilled identity feature set."""
    store.backfill(ECHO)
    return store.read("echo")


def files(root: Path) -> set[Path]:
    """Every data file under ``root`` (the catalog's own files and lock files excluded: a read takes its
    version's lease, pitstore.catalog.versions)."""
    return {p for p in root.rglob("*") if p.is_file() and not p.name.startswith("catalog.sqlite")
            and ".locks" not in p.relative_to(root).parts}


def from_us(us: int) -> datetime:
    return EPOCH + timedelta(microseconds=us)


def restate_closes(bars: pl.DataFrame, symbol: str, rows: list[int]) -> pl.DataFrame:
    """``symbol``'s bars with the closes at ``rows`` (positions within the symbol) moved by different amounts,
    high/low widened to stay valid. Non-uniform on purpose: returns and indicators change too."""
    part = bars.filter(pl.col("symbol") == symbol).with_row_index("i")
    factor = pl.lit(1.0)
    for k, i in enumerate(rows):
        factor = pl.when(pl.col("i") == i).then(pl.lit(1.0 + 0.03 * (k + 1) * (-1) ** k)).otherwise(factor)
    return part.with_columns((pl.col("close") * factor).alias("close")).with_columns(
        pl.max_horizontal("high", "close").alias("high"), pl.min_horizontal("low", "close").alias("low")
    ).drop("i")


# --- storage format and location -----------------------------------------------------------------------


def test_catalog_is_wal_sqlite_and_entries_are_zstd_parquet(tmp_path: Path) -> None:
    """Store.open creates catalog.sqlite in WAL mode; every Parquet entry is zstd-compressed."""
    root = tmp_path / "store"
    n_symbols = 2
    with Store.open(root) as store:
        assert (root / "catalog.sqlite").is_file()
        store.ingest(synthetic_bars(n_symbols, 50))
        store.backfill(standard_features())
    with sqlite3.connect(root / "catalog.sqlite") as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0].lower() == "wal"
    parquet = sorted(root.rglob("*.parquet"))
    assert len(parquet) == 2 * n_symbols  # per symbol: one bar snapshot, one feature entry
    for path in parquet:
        meta = pq.ParquetFile(path).metadata
        for rg in range(meta.num_row_groups):
            for c in range(meta.num_columns):
                assert meta.row_group(rg).column(c).compression == "ZSTD", (path, rg, c)


def test_root_from_environment_and_default(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """PITSTORE_ROOT, then FEATURE_STORE_PATH, then ./pitstore-data choose the root; an explicit path wins."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("PITSTORE_ROOT", raising=False)
    monkeypatch.delenv("FEATURE_STORE_PATH", raising=False)
    with Store.open() as store:
        assert store.root.resolve() == (tmp_path / "pitstore-data").resolve()
    assert (tmp_path / "pitstore-data" / "catalog.sqlite").is_file()

    monkeypatch.setenv("FEATURE_STORE_PATH", str(tmp_path / "legacy"))
    with Store.open() as store:
        assert store.root == tmp_path / "legacy"
    assert (tmp_path / "legacy" / "catalog.sqlite").is_file()

    monkeypatch.setenv("PITSTORE_ROOT", str(tmp_path / "env"))
    with Store.open() as store:
        store.ingest(synthetic_bars(1, 5))
        assert store.root == tmp_path / "env"
    assert (tmp_path / "env" / "catalog.sqlite").is_file()
    assert list((tmp_path / "env").rglob("*.parquet"))

    with Store.open(tmp_path / "explicit") as store:
        assert store.root == tmp_path / "explicit"
    assert (tmp_path / "explicit" / "catalog.sqlite").is_file()


# --- ingest ----------------------------------------------------------------------------------------------


def write_csv(path: Path, bars: pl.DataFrame, offsets: list[timedelta]) -> None:
    """CSV with exact float text and ISO timestamps, each in the row's offset ('Z' for zero)."""
    with path.open("w", newline="") as fh:
        out = csv.writer(fh)
        out.writerow(BAR_COLUMNS)
        for i, row in enumerate(bars.iter_rows()):
            offset = offsets[i % len(offsets)]
            ts = row[1].astimezone(timezone(offset)).isoformat(timespec="microseconds")
            if not offset:
                ts = ts.replace("+00:00", "Z")
            out.writerow([row[0], ts, *(repr(v) for v in row[2:])])


@pytest.mark.parametrize("source", ["polars", "pandas", "pandas_ns_new_york", "arrow", "parquet", "csv_z",
                                    "csv_offsets"])
def test_ingest_every_source_stores_the_same_bars(tmp_path: Path, source: str) -> None:
    """Bars from pandas, polars, Arrow, Parquet and CSV ('Z' or offsets) are stored exactly, in UTC."""
    bars = synthetic_bars(3, 40, timeframe="1h", seed=5).with_columns(
        pl.col("ts") + pl.duration(microseconds=pl.int_range(pl.len()) * 7)  # irregular, sub-second times
    )
    shuffled = bars.sample(fraction=1.0, shuffle=True, seed=1)  # input order must not matter
    data: Any
    if source == "polars":
        data = shuffled
    elif source == "pandas":
        data = shuffled.to_pandas()
    elif source == "pandas_ns_new_york":
        data = shuffled.to_pandas()
        data["ts"] = data["ts"].dt.tz_convert("America/New_York").astype("datetime64[ns, America/New_York]")
    elif source == "arrow":
        data = shuffled.to_arrow()
    elif source == "parquet":
        data = tmp_path / "bars.parquet"
        shuffled.write_parquet(data)
    else:
        data = tmp_path / "bars.csv"
        offsets = [timedelta(0)] if source == "csv_z" else [timedelta(hours=5, minutes=30), timedelta(hours=-4),
                                                            timedelta(0)]
        write_csv(data, shuffled, offsets)
    with Store.open(tmp_path / "store") as store:
        report = store.ingest(str(data) if source.startswith("csv") else data)
        assert report.rows == bars.height
        assert sorted(report.new_symbols) == sorted(bars["symbol"].unique())
        assert store.symbols() == sorted(bars["symbol"].unique())
        assert store.stats()["bars_live"] == bars.height
        assert_bitwise_equal(stored_bars(store), bars.sort("symbol", "ts"), source)


def test_csv_without_offset_is_rejected(tmp_path: Path) -> None:
    """A CSV whose timestamps carry no 'Z' or offset is rejected and stores nothing."""
    path = tmp_path / "naive.csv"
    path.write_text("symbol,ts,open,high,low,close,volume\nA,2024-01-02T00:00:00,1.0,2.0,0.5,1.5,10\n")
    with Store.open(tmp_path / "store") as store:
        with pytest.raises(InvalidInputError):
            store.ingest(path)
        assert store.symbols() == []
    assert not list((tmp_path / "store").rglob("*.parquet"))


def _bad_batch(kind: str, good: pl.DataFrame) -> pl.DataFrame:
    """A batch of new, appended and restated bars for several symbols with one bad bar, placed last."""
    step = good["ts"][1] - good["ts"][0]
    last = good.group_by("symbol").agg(pl.all().last())
    appended = last.with_columns(pl.col("ts") + step, pl.col("close") * 1.01)
    restated = good.group_by("symbol").agg(pl.all().first()).with_columns(pl.col("close") * 1.02,
                                                                         pl.col("high") * 1.02)
    new_symbol = synthetic_bars(1, 5).with_columns(pl.lit("AAA_NEW").alias("symbol"))
    bad = synthetic_bars(1, 2, seed=9).with_columns(pl.lit("ZZZ_BAD").alias("symbol"))
    if kind == "negative_price":
        bad = bad.with_columns(pl.when(pl.int_range(pl.len()) == 1).then(-1.0).otherwise(pl.col("low")).alias("low"))
    elif kind == "high_below_low":
        bad = bad.with_columns(pl.col("low").alias("high"), pl.col("high").alias("low"))
    elif kind == "duplicate":
        bad = pl.concat([bad, bad.tail(1)])
    elif kind == "null_close":
        bad = bad.with_columns(pl.when(pl.int_range(pl.len()) == 1).then(None).otherwise(pl.col("close"))
                               .alias("close"))
    elif kind == "bad_symbol":
        bad = bad.with_columns(pl.lit("ZZZ\x00BAD").alias("symbol"))
    batch = pl.concat([new_symbol, appended.select(BAR_COLUMNS), restated.select(BAR_COLUMNS), bad])
    if kind == "naive_ts":
        batch = batch.with_columns(pl.col("ts").dt.replace_time_zone(None))
    return batch


@pytest.mark.parametrize("kind", ["negative_price", "high_below_low", "duplicate", "null_close", "bad_symbol",
                                  "naive_ts"])
def test_invalid_batch_stores_nothing(tmp_path: Path, kind: str) -> None:
    """A batch with one invalid bar changes nothing: same stats, same files, same bars, same features."""
    good = synthetic_bars(3, 30)
    root = tmp_path / "store"
    with Store.open(root) as store:
        store.ingest(good)
        store.backfill(standard_features())
        before_bars = stored_bars(store)
        before = (store.stats(), files(root), store.symbols(), store.read("daily_core"))
        batch = _bad_batch(kind, good)
        with pytest.raises(InvalidInputError):
            store.ingest(batch)
        with pytest.raises(InvalidInputError):
            store.ingest(batch.to_pandas())
        assert store.stats() == before[0]
        assert files(root) == before[1]
        assert store.symbols() == before[2]
        assert store.backfill(standard_features()).nothing_to_do
        assert store.read("daily_core").equals(before[3])
        assert_bitwise_equal(stored_bars(store), before_bars, kind)


def test_restatement_replaces_only_its_range(tmp_path: Path) -> None:
    """With ``replace_range``, overlapping bars with changed values are reported as restated and replace that
    range only; a stored bar of the range missing from the new bars is removed and counted."""
    bars = synthetic_bars(2, 30)
    target, other = "S0000", "S0001"
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars)
        moved = [12, 15, 18]
        changed = restate_closes(bars, target, moved)
        window = changed.slice(10, 10)  # positions 10..19 of the target
        dropped_ts = window["ts"][4]  # position 14, not moved: it counts only as removed
        report = store.ingest(window.filter(pl.col("ts") != dropped_ts), replace_range=True)
        assert report.restated == {target: len(moved)} and report.removed == {target: 1}
        assert not report.new_symbols and not report.appended
        lo, hi = window["ts"][0], window["ts"][-1]
        old = bars.filter(pl.col("symbol") == target)
        expected = pl.concat([
            old.filter(pl.col("ts") < lo),
            window.filter(pl.col("ts") != dropped_ts),
            old.filter(pl.col("ts") > hi),
        ])
        got = stored_bars(store)
        assert_bitwise_equal(got.filter(pl.col("symbol") == target), expected, "restated symbol")
        assert_bitwise_equal(got.filter(pl.col("symbol") == other), bars.filter(pl.col("symbol") == other), "other")


@pytest.mark.parametrize("replace_range", [False, True], ids=["overlay", "replace_range"])
@pytest.mark.parametrize("chunk_bars", [1, 45, 2_000_000])
def test_one_batch_of_every_kind_of_change(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           chunk_bars: int, replace_range: bool) -> None:
    """One ingest holding a new symbol, an append, a restatement leaving out one stored bar, a gap fill and
    unchanged bars: each symbol is reported and stored as if ingested alone, however the symbols are chunked.
    The left-out bar is kept by an overlay and removed by ``replace_range``."""
    monkeypatch.setattr(pitstore.sources.ingest, "_CHUNK_BARS", chunk_bars)
    full = synthetic_bars(6, 40, seed=9)
    sym = sorted(full["symbol"].unique())
    part = {s: full.filter(pl.col("symbol") == s) for s in sym}
    gap_ts = part[sym[3]]["ts"][20]
    stored = pl.concat([part[sym[0]].head(30), part[sym[1]], part[sym[2]],
                        part[sym[3]].filter(pl.col("ts") != gap_ts), part[sym[4]]])
    restated = restate_closes(full, sym[1], [5, 8]).drop("i", strict=False).slice(4, 6)
    removed_ts = restated["ts"][2]  # position 6: unchanged, then left out of the overlap: removed
    batch = pl.concat([
        part[sym[0]].slice(30, 10),  # appended
        restated.filter(pl.col("ts") != removed_ts).select(BAR_COLUMNS),  # 2 changed + 1 removed
        part[sym[3]].filter(pl.col("ts") == gap_ts),  # a gap filled: not an append, nothing restated
        part[sym[4]].slice(10, 5),  # the same bars again
        part[sym[5]],  # new
    ])
    with Store.open(tmp_path / "store") as store:
        store.ingest(stored)
        report = store.ingest(batch, replace_range=replace_range)
        assert report.rows == batch.height
        assert report.new_symbols == [sym[5]]
        assert report.appended == [sym[0]]
        assert report.restated == {sym[1]: 2, sym[3]: 0}
        assert report.removed == ({sym[1]: 1} if replace_range else {})
        assert report.unchanged == [sym[4]]  # sym[2]: not in the batch, not reported
        kept = part[sym[1]].filter(pl.col("ts") != removed_ts) if replace_range else part[sym[1]]
        want_s1 = kept.update(restated.select(BAR_COLUMNS), on=["symbol", "ts"])
        want = pl.concat([part[sym[0]], want_s1, part[sym[2]], part[sym[3]], part[sym[4]], part[sym[5]]])
        assert_bitwise_equal(stored_bars(store).select(BAR_COLUMNS), want.select(BAR_COLUMNS), "stored bars")


def test_reingesting_identical_bars_changes_nothing(tmp_path: Path) -> None:
    """Re-ingesting bars already stored is reported unchanged, writes no file, and leaves backfill nothing to do."""
    bars = synthetic_bars(3, 30)
    fs = FeatureSet("same", [ret(1), ema(5)])
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars)
        store.backfill(fs)
        stats, before = store.stats(), files(store.root)
        for again in (bars, bars.to_pandas(), bars.sample(fraction=1.0, shuffle=True, seed=3)):
            report = store.ingest(again)
            assert report.unchanged == sorted(bars["symbol"].unique()), report
            assert not (report.new_symbols or report.appended or report.restated), report
        assert store.stats() == stats
        assert files(store.root) == before
        backfill = store.backfill(fs)
        assert backfill.nothing_to_do and backfill.computed_rows == 0, backfill


# --- backfill --------------------------------------------------------------------------------------------


def test_backfill_again_does_nothing(tmp_path: Path) -> None:
    """Re-running a backfill with nothing changed computes and writes nothing."""
    bars = synthetic_bars(3, 80)
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars)
        first = store.backfill(all_features())
        assert not first.nothing_to_do and first.written_rows == bars.height
        files_before = files(store.root)
        again = store.backfill(all_features())
        assert again.nothing_to_do
        assert again.written_rows == 0 and again.computed_rows == 0
        assert sorted(again.up_to_date) == ["S0000", "S0001", "S0002"]
        assert files(store.root) == files_before


WINDOW_SET = FeatureSet("windows", [ret(3), pitstore.log_ret(2), pitstore.vol(20), pitstore.mom(7), sma(30),
                                     pitstore.bollinger(10), pitstore.vwap(5), pitstore.zscore(12)])


@pytest.mark.parametrize("segments", [0, 2], ids=["whole_snapshots", "segments"])
@pytest.mark.parametrize("window_only", [False, True], ids=["all_features", "window_features"])
def test_incremental_appends_equal_full_recompute(tmp_path: Path, window_only: bool, segments: int,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Appending bars in several steps writes only the new rows, and they equal a full recompute bit for bit.
    A set of window features only computes the new rows from the lookback bars before them, not from all.
    With segments (compacted after 2), bases in row groups of 32 bars with a last group of 8 (shorter than the
    lookback): the tails are read from segments and base groups back, across a compaction, and still equal."""
    monkeypatch.setattr(pitstore.sources.segments, "_ROW_GROUP_ROWS", 32)
    monkeypatch.setattr(pitstore.sources.segments, "TAIL_ROWS", 8)
    fs = WINDOW_SET if window_only else all_features()
    lookback = max(f.lookback for f in fs.features)
    full = synthetic_bars(4, 260, gaps=0.03, seed=11)  # missing bars: irregular timestamps
    counts = full.group_by("symbol").len().sort("symbol")
    lengths = dict(zip(counts["symbol"], counts["len"], strict=True))
    # Cut points per step: some symbols get one bar, some many, one gets nothing for a while, one arrives late.
    cuts = [
        {"S0000": 40, "S0001": 40, "S0002": 3, "S0003": 0},
        {"S0000": 41, "S0001": 90, "S0002": 3, "S0003": 0},
        {"S0000": 150, "S0001": 91, "S0002": 60, "S0003": 30},
        {s: n - 1 for s, n in lengths.items()},
        dict(lengths),
    ]
    seen = {s: 0 for s in lengths}
    with Store.open(tmp_path / "store", bar_segments=segments) as store:
        for step, cut in enumerate(cuts):
            new = pl.concat([
                full.filter(pl.col("symbol") == s).slice(seen[s], cut[s] - seen[s]) for s in sorted(lengths)
            ])
            store.ingest(new)
            report = store.backfill(fs)
            grew = {s for s in lengths if cut[s] > seen[s]}
            assert report.written_rows == new.height, f"step {step}"
            assert set(report.full) | set(report.incremental) == grew, f"step {step}"
            assert set(report.full) == {s for s in grew if seen[s] == 0}, f"step {step}: only new symbols in full"
            if not window_only and step >= 2:  # S0000 had more bars than any lookback: its TA-Lib state carried
                assert "S0000" in report.resumed and set(report.resumed) <= set(report.incremental), f"step {step}"
            if window_only:
                stored = sum(seen[s] for s in report.incremental)
                assert report.computed_rows <= new.height + lookback * len(report.incremental), f"step {step}"
                assert stored == 0 or report.computed_rows < new.height + stored, f"step {step}: read all"
            seen = dict(cut)
            known = pl.concat([full.filter(pl.col("symbol") == s).head(seen[s]) for s in sorted(lengths)])
            assert_bitwise_equal(store.read(fs.name), pitstore.compute(fs, known), f"step {step}")
            assert store.backfill(fs).nothing_to_do
            if segments:  # S0000: a base at step 0, segments at 1 and 2, compacted at 3, a segment again at 4
                parts = {e.symbol: e.parts for e in store.catalog.live_bars()}["S0000"]
                assert (parts is None) == (step in (0, 3)) and (step != 2 or parts.count("_segments") == 2)
        assert store.verify().ok
    assert seen == lengths


def test_late_bar_filling_a_gap_is_recomputed(tmp_path: Path) -> None:
    """A late bar inserted between stored bars is served after backfill, and later rows equal a full recompute."""
    fs = FeatureSet("late", [ret(1), sma(3), ema(5)])
    bars = synthetic_bars(2, 30)
    late = bars.filter(pl.col("symbol") == "S0000").slice(12, 1)
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars.join(late, on=["symbol", "ts"], how="anti"))
        store.backfill(fs)
        store.ingest(late)
        store.backfill(fs)
        assert_bitwise_equal(store.read(fs.name), pitstore.compute(fs, bars), "after late bar")


def test_backfill_end_then_rest_equals_full_compute(tmp_path: Path) -> None:
    """backfill(end=...) stores rows up to end as if later bars were unknown; backfill() completes the rest."""
    fs = all_features()
    bars = synthetic_bars(3, 120, ragged=True, seed=4)
    end = bars["ts"].sort()[bars.height // 2]
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars)
        first = store.backfill(fs, end=end)
        early = bars.filter(pl.col("ts") <= end)
        assert first.written_rows == early.height
        assert_bitwise_equal(store.read(fs.name), pitstore.compute(fs, early), "up to end")
        rest = store.backfill(fs)
        assert rest.written_rows == bars.height - early.height
        assert_bitwise_equal(store.read(fs.name), pitstore.compute(fs, bars), "completed")
        assert store.backfill(fs).nothing_to_do


def test_appends_after_end_leave_a_bounded_backfill_with_nothing_to_do(tmp_path: Path) -> None:
    """After backfill(end=T), bars appended later than T give backfill(end=T) nothing to compute."""
    fs = all_features()
    bars = synthetic_bars(2, 80, seed=5)
    end = bars["ts"].sort()[bars.height // 2]
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars.filter(pl.col("ts") <= end))
        store.backfill(fs, end=end)
        store.ingest(bars)
        again = store.backfill(fs, end=end)
        assert again.nothing_to_do and again.computed_rows == 0
        assert store.backfill(fs).written_rows == bars.filter(pl.col("ts") > end).height
        assert_bitwise_equal(store.read(fs.name), pitstore.compute(fs, bars), "completed")


def test_backfill_start_then_rest_equals_full_compute(tmp_path: Path) -> None:
    """backfill(start=...) writes rows from start, warmed up on the full history; backfill() adds the rest."""
    fs = all_features()
    bars = synthetic_bars(3, 120, seed=8)
    start = bars["ts"].sort()[bars.height // 3]
    expected = pitstore.compute(fs, bars)
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars)
        first = store.backfill(fs, start=start)
        assert first.written_rows == expected.filter(pl.col("ts") >= start).height
        assert_bitwise_equal(store.read(fs.name), expected.filter(pl.col("ts") >= start), "from start")
        store.backfill(fs)
        assert_bitwise_equal(store.read(fs.name), expected, "completed")
        assert store.backfill(fs).nothing_to_do


# --- reads -----------------------------------------------------------------------------------------------


def test_range_reads_do_not_depend_on_start_and_mix_sets_and_versions(tmp_path: Path) -> None:
    """read() rows for an overlapping range are identical whatever start is; refs mix sets and versions."""
    bars = synthetic_bars(3, 200, ragged=True, seed=2)
    v1 = standard_features()
    v2 = FeatureSet("daily_core", [*standard_features().features, macd(12, 26, 9), rsi(14)])
    intraday = FeatureSet("intraday", [rsi(14), ema(8), atr(14)], timeframe="1h")
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars)
        assert store.backfill(v1).version == 1
        assert store.backfill(v2).version == 2
        assert store.backfill(intraday).version == 1
        refs = ["daily_core@1:ret_5d", "daily_core@2:ret_20d", "daily_core:macd_12_26_9", "intraday:rsi_14",
                "daily_core@2:rsi_14", "intraday@1:ema_8", "daily_core@v1:vol_20d"]
        c1, c2, ci = (pitstore.compute(fs, bars) for fs in (v1, v2, intraday))
        expected = pl.concat([
            c1.select("symbol", "ts", "ret_5d", "vol_20d"),
            c2.select("ret_20d", "macd_12_26_9", pl.col("rsi_14").alias("daily_core@2:rsi_14")),
            ci.select(pl.col("rsi_14").alias("intraday@1:rsi_14"), "ema_8"),
        ], how="horizontal")
        full = store.read(refs)
        assert sorted(full.columns) == sorted(expected.columns)
        expected = expected.select(full.columns)
        assert_bitwise_equal(full, expected, "full read")
        symbols = ["S0002", "S0000"]
        ts = bars["ts"].unique().sort()
        end = ts[len(ts) - 20]
        window = expected.filter(pl.col("symbol").is_in(symbols), pl.col("ts") <= end)
        for start in [None, ts[0], ts[1], ts[13], ts[27], ts[60], ts[len(ts) // 2], end]:
            got = store.read(refs, symbols, start, end)
            want = window if start is None else window.filter(pl.col("ts") >= start)
            assert_bitwise_equal(got, want, f"start={start}")
            if start is not None:
                assert_bitwise_equal(got, store.read(refs, symbols, ts[0], end).filter(pl.col("ts") >= start),
                                     f"overlap start={start}")


# --- knowledge time --------------------------------------------------------------------------------------


def test_restatement_as_known_at_replays_old_values(tmp_path: Path) -> None:
    """After a restatement, as_known_at=T serves the values known at T; without it, the corrected ones."""
    fs = FeatureSet("kt", [ret(1), sma(5), ema(10), rsi(14)])
    bars = synthetic_bars(3, 60, seed=6)
    target = "S0001"
    moved = [20, 33, 34, 47]
    fixed = pl.concat([bars.filter(pl.col("symbol") != target), restate_closes(bars, target, moved)]).sort(
        "symbol", "ts")
    entities = bars.select("symbol", "ts").with_columns(pl.int_range(pl.len()).alias("row"))
    entities = pl.concat([entities, entities.with_columns(pl.col("ts") + timedelta(hours=5))])
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars)
        store.backfill(fs)
        t_known = datetime.now(UTC)
        before = store.get_historical(entities, "kt")
        report = store.ingest(fixed.filter(pl.col("symbol") == target))
        assert report.restated == {target: len(moved)}
        backfill = store.backfill(fs)
        assert backfill.full == [target] and sorted(backfill.up_to_date) == ["S0000", "S0002"]
        t_known_us = int((t_known - EPOCH) / timedelta(microseconds=1))
        entries = store.catalog.feature_entries(fs.name, 1)
        assert all(e.recorded_at > t_known_us for e in entries if e.symbol == target), "T must precede the fix"
        assert all(e.recorded_at <= t_known_us for e in entries if e.symbol != target), "T must follow the backfill"

        old = store.get_historical(entities, "kt", as_known_at=t_known)
        new = store.get_historical(entities, "kt")
        assert old.equals(before)
        assert set(old["status"]) == set(new["status"]) == {"ok"}
        cols = list(fs.columns)
        # Independent references: the as-of row of each look-up is the bar at the same day.
        for label, got, source in (("old", old, bars), ("new", new, fixed)):
            ref = entities.with_columns(pl.col("ts").dt.truncate("1d").alias("bar_ts")).join(
                pitstore.compute(fs, source).rename({"ts": "bar_ts"}), on=["symbol", "bar_ts"], how="left",
                maintain_order="left")
            assert_bitwise_equal(got.select("symbol", "ts", *cols), ref.select("symbol", "ts", *cols), label)
        is_target = pl.col("symbol") == target
        assert_bitwise_equal(new.filter(~is_target).drop("row", "status"), old.filter(~is_target).drop("row", "status"),
                             "other symbols")
        changed = (new.filter(is_target).select(cols).fill_null(0.0).to_numpy()
                   != old.filter(is_target).select(cols).fill_null(0.0).to_numpy())
        assert changed.any(), "the restatement must change feature values"

        range_old = store.read("kt", as_known_at=t_known)
        assert_bitwise_equal(range_old, pitstore.compute(fs, bars), "read as known at T")
        assert_bitwise_equal(store.read("kt"), pitstore.compute(fs, fixed), "read now")


def test_as_known_at_boundary_is_inclusive(tmp_path: Path) -> None:
    """An entry is visible at exactly its recorded_at and invisible one microsecond earlier."""
    fs = FeatureSet("edge", [ret(1), sma(3)])
    bars = synthetic_bars(1, 20)
    entities = bars.select("symbol", "ts")
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars)
        store.backfill(fs)
        (first,) = store.catalog.feature_entries(fs.name, 1)
        store.ingest(restate_closes(bars, "S0000", [5, 9]))
        store.backfill(fs)
        (second,) = store.catalog.feature_entries(fs.name, 1)
        assert second.recorded_at > first.recorded_at
        at_first = store.get_historical(entities, "edge", as_known_at=from_us(first.recorded_at))
        before_first = store.get_historical(entities, "edge", as_known_at=from_us(first.recorded_at - 1))
        at_second = store.get_historical(entities, "edge", as_known_at=from_us(second.recorded_at))
        just_before_second = store.get_historical(entities, "edge", as_known_at=from_us(second.recorded_at - 1))
        assert set(before_first["status"]) == {"unknown_symbol"}
        assert set(at_first["status"]) == {"ok"}
        assert just_before_second.equals(at_first)
        assert at_second.equals(store.get_historical(entities, "edge"))
        assert not at_second.equals(at_first)


def test_pandas_entities_with_restatement(tmp_path: Path) -> None:
    """as_known_at works the same for pandas entities, which come back as pandas."""
    fs = FeatureSet("pd", [ret(1)])
    bars = synthetic_bars(2, 15)
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars)
        store.backfill(fs)
        t_known = datetime.now(UTC)
        store.ingest(restate_closes(bars, "S0000", [3]))
        store.backfill(fs)
        entities = bars.select("symbol", "ts")
        old = store.get_historical(entities.to_pandas(), "pd", as_known_at=t_known)
        assert isinstance(old, pd.DataFrame)
        assert pl.from_pandas(old).equals(store.get_historical(entities, "pd", as_known_at=t_known))


def test_the_decoded_entry_cache_is_bounded_in_bytes(tmp_path: Path) -> None:
    """Decoded reads are kept up to ``entry_cache_bytes``, least recently used out first; bigger ones not kept."""
    from pitstore.offline.entries import EntryReader

    with Store.open(tmp_path / "s", entry_cache_bytes=0) as store:
        store.ingest(synthetic_bars(3, 400, seed=4))
        fs = standard_features()
        store.backfill(fs)
        paths = {e.symbol: [e.path] for e in store.catalog.feature_entries(fs.name, 1)}
        assert store.reader.max_bytes == 0
        store.get_historical(pl.DataFrame({"symbol": ["S0000"], "ts": [datetime(2016, 1, 4, tzinfo=UTC)]}),
                             fs.name)
        assert store.reader.cached_bytes == 0  # 0: nothing kept
    one = EntryReader(tmp_path / "s").read(paths["S0000"])
    assert one is not None
    size = int(one.estimated_size())
    reader = EntryReader(tmp_path / "s", max_bytes=2 * size + size // 2)  # room for two
    got = {s: reader.read(paths[s]) for s in ("S0000", "S0001", "S0000", "S0002")}  # S0001: least recent
    assert reader.cached_bytes <= reader.max_bytes
    kept = {s for s in ("S0000", "S0002", "S0001") if reader.read(paths[s]) is got[s]}  # a hit: the same frame
    assert kept == {"S0000", "S0002"}
    small = EntryReader(tmp_path / "s", max_bytes=size - 1)
    assert small.read(paths["S0001"]) is not None and small.cached_bytes == 0  # too big to keep, still read

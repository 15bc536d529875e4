"""Reads in symbol batches (``read_batch_bytes``, issue #18 item 4) answer exactly as one read of everything:
get_historical (input order, statuses, two feature sets, an availability lag and TTL, unknown symbols, extra
entity columns, as_known_at), read and iter_read (ranges, several sets, a damaged symbol), over a store with
several entries per symbol, a restatement and one compacted set; and compaction in batches of a file."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest
from polars.testing import assert_frame_equal

import pitstore
from pitstore import Store
from pitstore.offline import compact
from pitstore.offline.reads import select, symbol_batches
from pitstore.testing import synthetic_bars

DAY = timedelta(days=1)
START = datetime(2015, 1, 2, tzinfo=UTC)
N_SYMBOLS, N_BARS = 7, 90
FEATURES = ["plain:r", "plain:m", "lagged:lr", "lagged:le"]


def feature_sets() -> list[pitstore.FeatureSet]:
    return [
        pitstore.FeatureSet("plain", [pitstore.ret(2).alias("r"), pitstore.sma(3).alias("m")], timeframe="1d"),
        pitstore.FeatureSet("lagged", [pitstore.ret(1).alias("lr"), pitstore.ema(4).alias("le")], timeframe="1d",
                            ttl=timedelta(days=3), availability_lag=timedelta(hours=20)),
    ]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, datetime]]:
    """Several entries per symbol (incremental backfills), S0001 restated after ``known``, gaps (stale
    answers), "plain" compacted into one file, "lagged" not compacted (its full backfill's file per symbol, its
    incremental backfills' shared files)."""
    path = tmp_path_factory.mktemp("batched") / "store"
    bars = synthetic_bars(N_SYMBOLS, N_BARS, seed=5, gaps=0.2)
    with Store.open(path) as store:
        for cut in (30, 60, N_BARS):
            store.ingest(bars.filter(pl.col("ts") < START + cut * DAY))
            for fs in feature_sets():
                store.backfill(fs)
        known = datetime.now(UTC)
        prices = ("open", "high", "low", "close")
        restated = bars.filter(pl.col("symbol") == "S0001").with_columns(pl.col(c) * 1.1 for c in prices)
        store.ingest(restated, replace_range=True)
        for fs in feature_sets():
            store.backfill(fs)
        done = compact.compact(path, store.storage, store.catalog, feature_set="plain", min_entries=2)
        assert done.files_written, done
    return path, known


def entities(n: int, seed: int) -> pl.DataFrame:
    """Look-ups in random order over the stored symbols and one unknown, with an extra column passed through."""
    rng = np.random.default_rng(seed)
    names = np.array([f"S{i:04d}" for i in range(N_SYMBOLS)] + ["NOPE"])
    lo = int((START - 5 * DAY).timestamp() * 1e6)
    hi = int((START + (N_BARS + 5) * DAY).timestamp() * 1e6)
    return pl.DataFrame({
        "symbol": names[rng.integers(0, len(names), n)],
        "ts": pl.Series(rng.integers(lo, hi, n), dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
        "row_id": np.arange(n),
    })


def both(path: Path, call: str, **kwargs: object) -> tuple[pl.DataFrame, pl.DataFrame]:
    """The answer in one batch (the default bound is far above this store) and in one batch per symbol."""
    out = []
    for batch_bytes in (None, 1):
        with Store.open(path, **({} if batch_bytes is None else {"read_batch_bytes": batch_bytes})) as store:
            out.append(getattr(store, call)(**kwargs))
    return out[0], out[1]


@pytest.mark.parametrize("as_known_at", [False, True])
def test_batched_get_historical_answers_as_one_batch(root: tuple[Path, datetime], as_known_at: bool) -> None:
    path, known = root
    spine = entities(3_000, seed=1)
    whole, batched = both(path, "get_historical", entities=spine, features=FEATURES,
                          as_known_at=known if as_known_at else None)
    assert whole["row_id"].to_list() == spine["row_id"].to_list()  # input order
    statuses = set(whole["status"].to_list())
    assert {"ok", "stale", "unknown_symbol", "no_data_yet"} <= statuses, statuses  # every path is exercised
    assert_frame_equal(whole, batched)


@pytest.mark.parametrize(("start", "end"), [(None, None), (START + 20 * DAY, START + 50 * DAY)])
def test_batched_read_answers_as_one_batch(root: tuple[Path, datetime], start: datetime | None,
                                           end: datetime | None) -> None:
    whole, batched = both(root[0], "read", features=["plain", "lagged"], start=start, end=end)
    assert whole["symbol"].n_unique() == N_SYMBOLS
    assert_frame_equal(whole, batched)
    with Store.open(root[0], read_batch_bytes=1) as store:
        frames = list(store.iter_read(["plain", "lagged"], start=start, end=end))
    assert [f["symbol"].unique().to_list() for f in frames] == [[s] for s in sorted(whole["symbol"].unique())]
    assert_frame_equal(pl.concat(frames), whole)  # streamed: the same rows, a batch per symbol here


def test_batched_reads_of_a_damaged_symbol_answer_as_one_batch(root: tuple[Path, datetime],
                                                               tmp_path: Path) -> None:
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(root[0], path)
    with Store.open(path) as store:
        entry = store.catalog.feature_entries("lagged", 1, ["S0003"])[0]
    (path / entry.path).write_bytes(b"not parquet")
    whole, batched = both(path, "read", features=["plain", "lagged"])
    assert whole.filter(pl.col("status") == "damaged")["symbol"].to_list() == ["S0003"]
    assert_frame_equal(whole, batched)
    with Store.open(path, read_batch_bytes=1) as store:
        frames = list(store.iter_read(["plain", "lagged"]))
    assert [f["symbol"].unique().to_list() for f in frames if "status" in f.columns] == [["S0003"]]
    streamed = pl.concat(frames, how="diagonal").with_columns(pl.col("status").fill_null("ok"))
    assert_frame_equal(streamed.select(whole.columns), whole)
    spine = entities(2_000, seed=2)
    whole, batched = both(path, "get_historical", entities=spine, features=FEATURES)
    assert "damaged" in whole["status"].to_list()
    assert_frame_equal(whole, batched)


def test_symbol_batches_are_consecutive_and_bounded(root: tuple[Path, datetime]) -> None:
    with Store.open(root[0]) as store:
        sel = select(store.registry, "lagged")[0]
        entries = store.catalog.feature_entries(sel.feature_set, sel.version)
        names = sorted({e.symbol for e in entries})
        row = 24 + 8 * len(sel.columns)
        per_symbol = {s: sum(e.n_rows for e in entries if e.symbol == s) * row for s in names}
        bound = 2 * max(per_symbol.values())
        batches = symbol_batches([*reversed(names), "NOPE"], [(sel, entries, None)], bound)
    assert [s for b in batches for s in b] == sorted([*names, "NOPE"])  # every symbol once, in order
    assert len(batches) > 1
    for b in batches:
        assert sum(per_symbol.get(s, 0) for s in b) <= bound
    assert symbol_batches(names, [(sel, entries, None)], None) == [names]
    assert all(len(b) == 1 or per_symbol.get(b[0], 0) == 0 for b in symbol_batches(names, [(sel, entries, None)], 1))


def test_compaction_in_batches_of_a_file_answers_as_before(root: tuple[Path, datetime], tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """Compaction reads one file's worth of symbols at a time (MAX_FILE_ROWS); set small, several batches and
    files, and every answer is the one before."""
    import shutil

    path = tmp_path / "copy"
    shutil.copytree(root[0], path)
    spine = entities(2_000, seed=3)
    with Store.open(path) as store:
        rows_before = store.read("lagged")
        hist_before = store.get_historical(spine, ["lagged:lr", "lagged:le"])
        # Only entries outside compacted files are compacted (the incremental backfills' rows already share
        # files): a file's worth is the largest symbol's loose rows (the restated one's whole history).
        loose: dict[str, int] = {}
        for e in store.catalog.feature_entries("lagged", 1):
            if not compact.is_compacted(e.path):
                loose[e.symbol] = loose.get(e.symbol, 0) + e.n_rows
        assert len(loose) == N_SYMBOLS
        monkeypatch.setattr(compact, "MAX_FILE_ROWS", max(loose.values()))
        done = compact.compact(path, store.storage, store.catalog, feature_set="lagged", min_entries=2)
        assert len(done.files_written) >= 3, (done, loose)
        listed = store.catalog.feature_entries("lagged", 1)
        assert all(compact.is_compacted(e.path) for e in listed)
        files = {path: 0 for path in done.files_written}
        for e in listed:
            if e.path in files:
                files[e.path] += e.n_rows
        assert 0 < max(files.values()) <= compact.MAX_FILE_ROWS
    with Store.open(path) as store:
        assert_frame_equal(store.read("lagged"), rows_before)
        assert_frame_equal(store.get_historical(spine, ["lagged:lr", "lagged:le"]), hist_before)

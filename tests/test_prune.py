"""Pruned reads (pitstore.offline.prune) answer exactly as reads of every stored row: random look-up windows over
symbols with several entries (incremental backfills), superseded entries (a restatement, as_known_at), gaps
(stale answers), an availability lag, and row groups of a few rows so that row-group pruning is exercised."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

import pitstore
from pitstore import Store
from pitstore.offline import entries as offline_module
from pitstore.offline import prune
from pitstore.offline.entries import EntryReader
from pitstore.rules import to_us
from pitstore.testing import synthetic_bars

DAY = timedelta(days=1)
START = datetime(2015, 1, 2, tzinfo=UTC)
N_BARS = 120
SYMBOLS = ["S0000", "S0001", "S0002"]


def feature_sets() -> list[pitstore.FeatureSet]:
    return [
        pitstore.FeatureSet("plain", [pitstore.ret(2).alias("r"), pitstore.sma(3).alias("m")], timeframe="1d"),
        pitstore.FeatureSet("lagged", [pitstore.ret(1).alias("lr"), pitstore.ema(4).alias("le")], timeframe="1d",
                            ttl=timedelta(days=3), availability_lag=timedelta(hours=20)),
    ]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, list[int]]]:
    """A store whose symbols have several feature entries each (one per incremental backfill), one restated
    symbol (its old entries superseded), gaps in the bars; and the times between the steps (as_known_at)."""
    saved = offline_module.ROW_GROUP_ROWS
    offline_module.ROW_GROUP_ROWS = 7  # many row groups per file: their statistics are what a span prunes by
    bars = synthetic_bars(len(SYMBOLS), N_BARS, seed=11, gaps=0.15)
    known: list[int] = []
    try:
        with Store.open(tmp_path_factory.mktemp("prune") / "store") as store:
            for cut in (40, 70, 95, N_BARS):
                store.ingest(bars.filter(pl.col("ts") < START + cut * DAY))
                for fs in feature_sets():
                    store.backfill(fs)
                known.append(to_us(datetime.now(UTC)))
            hit = (pl.col("symbol") == "S0001") & (pl.col("ts") == bars["ts"][30])
            restated = bars.with_columns(pl.when(hit).then(pl.col(c) * 1.5).otherwise(pl.col(c)).alias(c)
                                         for c in ("open", "high", "low", "close"))
            store.ingest(restated.filter(pl.col("symbol") == "S0001"), replace_range=True)
            for fs in feature_sets():
                store.backfill(fs)
            entries = store.catalog.feature_entries("plain", 1, ["S0000"])
            assert len(entries) == 4, entries  # several entries per symbol: what the windows cut across
            yield store, known
    finally:
        offline_module.ROW_GROUP_ROWS = saved


def answers(store: Store, pruned: bool, entities: pl.DataFrame, known: datetime | None,
            span: tuple[datetime | None, datetime | None]) -> tuple[pl.DataFrame, pl.DataFrame]:
    store.reader = EntryReader(store.root)  # nothing cached from the other variant
    prune.ENABLED = pruned
    try:
        hist = store.get_historical(entities, ["plain:r", "plain:m", "lagged:lr", "lagged:le"], as_known_at=known)
        rows = store.read(["plain", "lagged"], start=span[0], end=span[1], as_known_at=known)
    finally:
        prune.ENABLED = True
    return hist, rows


@st.composite
def windows(draw: st.DrawFn) -> tuple[pl.DataFrame, int, tuple[int, int]]:
    first = draw(st.integers(-10, N_BARS + 10))
    width = draw(st.sampled_from([0, 1, 3, 10, 40, N_BARS + 20]))
    n = draw(st.integers(1, 25))
    symbols = draw(st.lists(st.sampled_from([*SYMBOLS, "NOPE"]), min_size=n, max_size=n))
    # Look-ups anywhere in the window, in µs: on bar times, between them, at the lag and TTL edges.
    offsets = draw(st.lists(st.integers(0, width * 86_400_000_000), min_size=n, max_size=n))
    edges = [0, 1, -1, 20 * 3_600_000_000, 4 * 86_400_000_000, 4 * 86_400_000_000 + 1]
    nudges = draw(st.lists(st.sampled_from(edges), min_size=n, max_size=n))
    base = to_us(START) + first * 86_400_000_000
    times = [base + o + e for o, e in zip(offsets, nudges, strict=True)]
    entities = pl.DataFrame({"symbol": symbols, "ts": times}, schema={"symbol": pl.String, "ts": pl.Int64}) \
        .with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")))
    return entities, draw(st.integers(-1, 4)), (base, base + width * 86_400_000_000)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(windows())
def test_pruned_reads_answer_as_full_reads(built: tuple[Store, list[int]],
                                           case: tuple[pl.DataFrame, int, tuple[int, int]]) -> None:
    store, known_times = built
    entities, known_i, (lo, hi) = case
    known = None if known_i < 0 or known_i >= len(known_times) else \
        datetime.fromtimestamp(known_times[known_i] / 1e6, UTC)
    span = (datetime.fromtimestamp(lo / 1e6, UTC), datetime.fromtimestamp(hi / 1e6, UTC))
    full_hist, full_rows = answers(store, False, entities, known, span)
    got_hist, got_rows = answers(store, True, entities, known, span)
    assert_frame_equal(got_hist, full_hist)
    assert_frame_equal(got_rows, full_rows)


def test_a_window_of_one_day_reads_only_its_rows(built: tuple[Store, list[int]]) -> None:
    """The point of it: a look-up at the end of the history decodes a few row groups, not the whole history."""
    store, _ = built
    entities = pl.DataFrame({"symbol": ["S0000"], "ts": [START + (N_BARS - 1) * DAY]}) \
        .with_columns(pl.col("ts").dt.cast_time_unit("us"))
    got = store.get_historical(entities, "plain")
    assert got["status"].to_list() == ["ok"]
    (sel,) = pitstore.offline.reads.select(store.registry, "plain")
    spans = prune.window_spans(store.catalog.feature_entries("plain", 1, ["S0000"]),
                               prune.windows_of(entities, sel.availability_lag, sel.ttl))
    assert len(spans) == 1  # only the newest entry: the older ones end before the window
    rows, _ = EntryReader(store.root).read_checked(store.catalog.feature_entries("plain", 1, ["S0000"]),
                                                   ["symbol", "ts", "r"], spans)
    assert rows is not None and 0 < rows.height <= 2 * 7  # at most the row groups overlapping the window


def test_a_stale_answer_outside_the_read_rows_is_still_stale(built: tuple[Store, list[int]]) -> None:
    """Rows older than t - ttl are not read: a look-up whose as-of row is older is stale, not no_data_yet."""
    store, _ = built
    late = START + (N_BARS + 30) * DAY  # a month after the last bar: stale for both sets
    entities = pl.DataFrame({"symbol": SYMBOLS, "ts": [late] * 3}).with_columns(pl.col("ts").dt.cast_time_unit("us"))
    got = store.get_historical(entities, ["plain", "lagged"])
    assert got["status"].to_list() == ["stale"] * 3
    assert got["r"].null_count() == 3

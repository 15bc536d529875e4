"""Point-in-time correctness of Store.get_historical against brute-force and pandas references."""

from __future__ import annotations

import tempfile
import time
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

import pitstore
from pitstore import FeatureSet, InvalidInputError, Store, ret, rsi, sma
from pitstore.rules import effective_ttl

BASE = datetime(2024, 3, 1, tzinfo=UTC)
STEP = timedelta(minutes=30)
US = timedelta(microseconds=1)
SYMBOLS = ("AAA", "BBB", "CCC", "D.D/1")
UNKNOWN = "ZZZ"
WORST = ("ok", "stale", "no_data_yet", "unknown_symbol")  # best to worst
BAR_SCHEMA = {"symbol": pl.String, "ts": pl.Datetime("us", "UTC"), "open": pl.Float64, "high": pl.Float64,
              "low": pl.Float64, "close": pl.Float64, "volume": pl.Float64}


# The bars of these sets are deliberately irregular (30-minute slots, jittered up to 17 minutes): their
# timeframe is a minute, which any two of them are more than half apart.
def base_set() -> FeatureSet:
    return FeatureSet("base", [ret(1), sma(3)], timeframe="1m")


def lagged_set(lag: timedelta, ttl: timedelta | None) -> FeatureSet:
    return FeatureSet("lagged", [ret(1).alias("lret"), sma(3).alias("lsma")], timeframe="1m", availability_lag=lag,
                      ttl=ttl)


# --- the brute-force reference -------------------------------------------------------------------------


Rows = dict[str, list[tuple[datetime, dict[str, float | None]]]]


def rows_by_symbol(computed: pl.DataFrame, columns: Sequence[str]) -> Rows:
    """symbol -> [(ts, {column: value})] from a computed feature frame, as plain Python values."""
    out: Rows = {}
    for row in computed.iter_rows(named=True):
        out.setdefault(row["symbol"], []).append((row["ts"], {c: row[c] for c in columns}))
    return out


def reference_asof(rows: Rows, lookups: Sequence[tuple[str, datetime]], columns: Sequence[str],
                   lag: timedelta, ttl: timedelta | None) -> list[tuple[dict[str, float | None], str]]:
    """DESIGN.md section 2, literally: for each look-up, scan every stored row of its symbol."""
    nulls: dict[str, float | None] = dict.fromkeys(columns)
    out = []
    for symbol, t in lookups:
        candidates = rows.get(symbol)
        if not candidates:
            out.append((nulls, "unknown_symbol"))
            continue
        best: tuple[datetime, dict[str, float | None]] | None = None
        for ts, values in candidates:
            if ts + lag <= t and (best is None or ts > best[0]):
                best = (ts, values)
        if best is None:
            out.append((nulls, "no_data_yet"))
        elif ttl is not None and best[0] < t - ttl:
            out.append((nulls, "stale"))
        else:
            out.append((best[1], "ok"))
    return out


def make_bars(series: dict[str, list[tuple[datetime, float]]]) -> pl.DataFrame:
    """Valid OHLCV bars from (ts, close) per symbol."""
    records = [
        {"symbol": s, "ts": ts, "open": c, "high": c * 1.01, "low": c * 0.99, "close": c, "volume": 1000.0}
        for s, points in series.items() for ts, c in points
    ]
    return pl.DataFrame(records, schema=BAR_SCHEMA)


def check_against_reference(store: Store, bars: pl.DataFrame, lag: timedelta, ttl: timedelta | None,
                            lookups: list[tuple[str, datetime]], compacted: bool = False) -> list[str]:
    """Backfill both sets, query them alone and together, compare with the reference; returns the statuses.
    ``compacted``: each set's entries are compacted into one file first (pitstore.offline.compact)."""
    sets = [base_set(), lagged_set(lag, ttl)]
    # Every read applies the effective TTL: a set's own, else its timeframe's default (pitstore.rules).
    rules = {"base": (timedelta(0), effective_ttl(None, "1m")), "lagged": (lag, effective_ttl(ttl, "1m", lag))}
    store.ingest(bars)
    refs: dict[str, list[tuple[dict[str, float | None], str]]] = {}
    for fs in sets:
        store.backfill(fs)
        if compacted:
            store.compact(fs.name)
        computed = pitstore.compute(fs, bars)
        stored = store.read(fs.name)
        assert stored.equals(computed), f"{fs.name}: stored rows differ from pitstore.compute"
        refs[fs.name] = reference_asof(rows_by_symbol(computed, fs.columns), lookups, fs.columns, *rules[fs.name])
    entities = pl.DataFrame(
        {"symbol": [s for s, _ in lookups], "ts": [t for _, t in lookups], "label": list(range(len(lookups))),
         "note": [f"n{i}" for i in range(len(lookups))]},
        schema={"symbol": pl.String, "ts": pl.Datetime("us", "UTC"), "label": pl.Int64, "note": pl.String},
    )
    queries: list[tuple[list[str], list[str]]] = [
        (["base"], ["base:ret_1", "base:sma_3"]),
        (["lagged"], ["lagged:lret", "lagged:lsma"]),
        (["base", "lagged"], ["lagged:lsma", "base:ret_1", "base:sma_3", "lagged:lret"]),
    ]
    for set_names, features in queries:
        got = store.get_historical(entities, features)
        assert isinstance(got, pl.DataFrame)
        cols = [f.split(":")[1] for f in features]
        per_set = [f"status_{n}" for n in dict.fromkeys(f.split(":")[0] for f in features)] if len(set_names) > 1 \
            else []
        n_status = 1 + len(per_set)
        assert got.columns[:4] == ["symbol", "ts", "label", "note"]
        assert got.columns[-n_status:] == ["status", *per_set]
        assert sorted(got.columns[4:-n_status]) == sorted(cols)
        assert got.height == len(lookups)
        assert got.select("symbol", "ts", "label", "note").equals(entities), "entity columns not passed through"
        for i, row in enumerate(got.iter_rows(named=True)):
            expected_status = max((refs[n][i][1] for n in set_names), key=WORST.index)
            assert row["status"] == expected_status, (features, lookups[i], row, expected_status)
            for n in set_names if per_set else ():  # each set's own status, not the worst of them
                assert row[f"status_{n}"] == refs[n][i][1], (n, lookups[i], row)
            for feat, col in zip(features, cols, strict=True):
                expected = refs[feat.split(":")[0]][i][0][col]
                assert row[col] == expected, (feat, lookups[i], row[col], expected)
    return [status for _, status in refs["lagged"]]


# --- the property -------------------------------------------------------------------------------------


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[pl.DataFrame, timedelta, timedelta | None, list[tuple[str, datetime]]]:
    series: dict[str, list[tuple[datetime, float]]] = {}
    for symbol in SYMBOLS:
        slots = sorted(draw(st.sets(st.integers(0, 40), max_size=10)))
        points = []
        for slot in slots:
            jitter = draw(st.sampled_from([0, 0, 0, 1, 999_999, 17 * 60 * 1_000_000]))
            close = draw(st.floats(1.0, 1000.0, allow_nan=False, allow_infinity=False))
            points.append((BASE + slot * STEP + jitter * US, close))
        series[symbol] = points
    lag = draw(st.sampled_from([timedelta(0), US, STEP, timedelta(minutes=45), timedelta(hours=2)]))
    # A TTL must exceed the lag (FeatureSet refuses one that would leave every row stale on arrival).
    ttl = draw(st.sampled_from([None] + [t for t in (US, 2 * US, timedelta(hours=1), timedelta(minutes=90),
                                                     timedelta(hours=3), timedelta(days=1)) if t > lag]))
    bar_times = sorted({ts for points in series.values() for ts, _ in points}) or [BASE]
    offsets = [timedelta(0), -US, US, lag, lag - US, lag + US, STEP, -STEP]
    for edge in {effective_ttl(ttl, "1m", lag), effective_ttl(None, "1m")}:  # the lagged and the base set's
        offsets += [edge, edge + US, edge - US, lag + edge, lag + edge + US]
    lookups = []
    for _ in range(draw(st.integers(0, 30))):
        symbol = draw(st.sampled_from([*SYMBOLS, UNKNOWN]))
        own = [ts for ts, _ in series[symbol]] if symbol in series else []
        anchor = draw(st.sampled_from(own or bar_times))
        if draw(st.booleans()):
            offset = draw(st.sampled_from(offsets))
        else:
            offset = draw(st.integers(-3 * 3600 * 10**6, 6 * 3600 * 10**6)) * US
        lookups.append((symbol, anchor + offset))
    return make_bars(series), lag, ttl, lookups


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenarios(), st.booleans())
def test_get_historical_equals_brute_force(
    scenario: tuple[pl.DataFrame, timedelta, timedelta | None, list[tuple[str, datetime]]], compacted: bool,
) -> None:
    """get_historical equals a brute-force as-of scan (lag, TTL edge, statuses, order, pass-through), on stored
    entries as written and compacted."""
    bars, lag, ttl, lookups = scenario
    with tempfile.TemporaryDirectory() as root, Store.open(root) as store:
        statuses = check_against_reference(store, bars, lag, ttl, lookups, compacted)
    for status in sorted(set(statuses)):
        event(f"lagged set served {status!r}")


def test_asof_edges_exactly(tmp_path: Any) -> None:
    """The as-of edges hold exactly: ts+lag counts, t-ttl == ts is fresh, one microsecond later is stale."""
    lag, ttl = timedelta(minutes=45), timedelta(hours=2)
    a = [(BASE + k * STEP * 12, 100.0 + k) for k in range(4)]  # 6-hour gaps: room for the TTL to expire
    b = [(ts, 50.0 - k) for k, (ts, _) in enumerate(a)]  # identical timestamps in another symbol
    bars = make_bars({"AAA": a, "BBB": b})
    lookups = []
    for symbol in ("AAA", "BBB", UNKNOWN):
        for ts, _ in a:
            lookups += [(symbol, t) for t in (ts, ts + lag - US, ts + lag, ts + ttl, ts + ttl + US, ts - US)]
    with Store.open(tmp_path / "store") as store:
        statuses = check_against_reference(store, bars, lag, ttl, lookups)
    assert set(statuses) == set(WORST), "the fixed scenario must exercise every status"
    # ts + lag is available, one microsecond earlier the previous row (or nothing) is served.
    by_lookup = dict(zip(lookups, statuses, strict=True))
    first = a[0][0]
    assert by_lookup[("AAA", first + lag - US)] == "no_data_yet"
    assert by_lookup[("AAA", first + lag)] == "ok"
    assert by_lookup[("AAA", first + ttl)] == "ok"
    assert by_lookup[("AAA", first + ttl + US)] == "stale"


# --- against pandas merge_asof at scale ----------------------------------------------------------------


@pytest.mark.slow
def test_one_million_lookups_equal_pandas_merge_asof(tmp_path: Any) -> None:
    """1M look-ups over 500 symbols x 2,520 daily bars equal pandas merge_asof row for row."""
    n_symbols, n_bars, n_lookups = 500, 2_520, 1_000_000
    rng = np.random.default_rng(7)
    bars = pitstore.testing.synthetic_bars(n_symbols, n_bars, seed=3)
    fs = FeatureSet("big", [ret(1), sma(5), rsi(14)])
    t0 = time.perf_counter()
    with Store.open(tmp_path / "store") as store:
        store.ingest(bars)
        store.backfill(fs)
        # 500 symbols: the backfill compacted them (pitstore.offline.compact.AUTO_ENTRIES); read from one file
        assert {e.path.rsplit("/", 2)[1] for e in store.catalog.feature_entries("big", 1)} == {"compacted"}
        t1 = time.perf_counter()
        known = bars["symbol"].unique().sort().to_list()
        symbols = np.array([*known, *[f"UNKNOWN{i}" for i in range(5)]])
        sym = symbols[rng.integers(0, len(symbols), n_lookups)]
        lo = int(bars["ts"].min().timestamp() * 1e6) - 30 * 86_400 * 10**6  # type: ignore[union-attr]
        hi = int(bars["ts"].max().timestamp() * 1e6) + 30 * 86_400 * 10**6  # type: ignore[union-attr]
        ts_us = rng.integers(lo, hi, n_lookups)
        exact = rng.random(n_lookups) < 0.3  # a third exactly on a bar's close time
        bar_us = bars["ts"].dt.epoch("us").to_numpy()
        ts_us[exact] = bar_us[rng.integers(0, len(bar_us), int(exact.sum()))]
        entities = pl.DataFrame({
            "symbol": sym,
            "ts": pl.Series(ts_us, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "row": np.arange(n_lookups),
        })
        t2 = time.perf_counter()
        got = store.get_historical(entities, "big")
        t3 = time.perf_counter()
    computed = pitstore.compute(fs, bars).with_columns(pl.col("ts").alias("feature_ts"))
    left = entities.to_pandas().sort_values("ts", kind="stable")
    right = computed.to_pandas().sort_values("ts", kind="stable")
    merged = pd.merge_asof(left, right, on="ts", by="symbol", direction="backward", allow_exact_matches=True)
    expected = merged.sort_values("row").reset_index(drop=True)
    t4 = time.perf_counter()

    # Compare in polars: the reference back from pandas, nulls equal, floats bit for bit.
    ttl = effective_ttl(fs.ttl, fs.timeframe)  # older rows are stale: values null
    ref = pl.from_pandas(expected).with_columns(
        pl.when(~pl.col("symbol").is_in(known)).then(pl.lit("unknown_symbol"))
        .when(pl.col("feature_ts").is_null()).then(pl.lit("no_data_yet"))
        .when(pl.col("feature_ts") < pl.col("ts") - ttl).then(pl.lit("stale"))
        .otherwise(pl.lit("ok")).alias("status")
    )
    ref = ref.with_columns(pl.when(pl.col("status") == "stale").then(None).otherwise(pl.col(c)).alias(c)
                           for c in fs.columns)
    assert got.height == ref.height == n_lookups
    assert got.select("symbol", "ts", "row").equals(entities)
    assert got.select("symbol", "ts", "row").equals(ref.select("symbol", "ts", "row"))
    for col in fs.columns:
        g, e = got[col], ref[col]
        assert g.is_null().equals(e.is_null()), f"{col}: null masks differ"
        assert g.fill_null(0.0).to_numpy().view(np.int64).tobytes() == e.fill_null(0.0).to_numpy().view(
            np.int64).tobytes(), f"{col}: values differ"
    assert got["status"].equals(ref["status"])
    assert set(ref["status"]) == {"ok", "stale", "no_data_yet", "unknown_symbol"}
    print(f"\ningest+backfill {t1 - t0:.2f}s, get_historical(1M) {t3 - t2:.2f}s, pandas merge_asof {t4 - t3:.2f}s, "
          f"total {time.perf_counter() - t0:.2f}s")


# --- entities: validation and frame types --------------------------------------------------------------


@pytest.fixture
def small_store(tmp_path: Any) -> Any:
    with Store.open(tmp_path / "store") as store:
        store.ingest(pitstore.testing.synthetic_bars(3, 30))
        store.backfill(base_set())
        yield store


def entity_frame() -> pl.DataFrame:
    return pl.DataFrame({
        "symbol": ["S0001", "S0000", UNKNOWN, "S0002"],
        "ts": [datetime(2015, 1, 20, tzinfo=UTC), datetime(2015, 1, 2, tzinfo=UTC),
               datetime(2015, 1, 9, tzinfo=UTC), datetime(2014, 6, 1, tzinfo=UTC)],
        "weight": [0.5, 1.5, 2.5, 3.5],
    })


def test_naive_entity_timestamps_rejected(small_store: Store) -> None:
    """Timezone-naive entity timestamps raise InvalidInputError (polars and pandas)."""
    naive = entity_frame().with_columns(pl.col("ts").dt.replace_time_zone(None))
    with pytest.raises(InvalidInputError):
        small_store.get_historical(naive, "base")
    with pytest.raises(InvalidInputError):
        small_store.get_historical(naive.to_pandas(), "base")
    with pytest.raises(InvalidInputError):
        small_store.get_historical(entity_frame(), "base", as_known_at=datetime(2030, 1, 1))


@pytest.mark.parametrize("column", ["symbol", "ts"])
def test_entities_missing_key_column_rejected(small_store: Store, column: str) -> None:
    """Entities without a symbol or ts column raise InvalidInputError."""
    with pytest.raises(InvalidInputError):
        small_store.get_historical(entity_frame().drop(column), "base")
    with pytest.raises(InvalidInputError):
        small_store.get_historical(entity_frame().drop(column).to_pandas(), "base")


def test_entity_frame_type_round_trips(small_store: Store) -> None:
    """pandas entities come back as pandas and Arrow as Arrow, with the same rows as polars."""
    entities = entity_frame()
    as_polars = small_store.get_historical(entities, ["base:ret_1", "base:sma_3"])
    as_pandas = small_store.get_historical(entities.to_pandas(), ["base:ret_1", "base:sma_3"])
    as_arrow = small_store.get_historical(entities.to_arrow(), ["base:ret_1", "base:sma_3"])
    assert isinstance(as_pandas, pd.DataFrame)
    assert isinstance(as_arrow, pa.Table)
    assert set(as_polars["status"]) == {"ok", "no_data_yet", "unknown_symbol"}
    assert pl.from_pandas(as_pandas).equals(as_polars)
    from_arrow = pl.from_arrow(as_arrow)
    assert isinstance(from_arrow, pl.DataFrame)
    assert from_arrow.equals(as_polars)

"""A new user's first hour: vendor bar layouts at ingest, push from a process that did not register the set,
listing commands, and synthetic bars that continue."""

from __future__ import annotations

import json
from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import polars as pl
import pytest
from clirun import run, run_json
from first_hour_workers import push_unregistered
from spawn import run_processes

from pitstore import FeatureSet, Store, expr, macd, rsi, sma, standard_features, talib, vol
from pitstore.errors import InvalidInputError
from pitstore.features.catalogue import list_features
from pitstore.features.registry import fingerprint
from pitstore.testing import synthetic_bars

ROWS = [  # date, open, high, low, close, adjusted close, volume
    ("2024-01-02", 187.15, 188.44, 183.89, 185.64, 185.15, 82488700),
    ("2024-01-03", 184.22, 185.88, 183.43, 184.25, 183.77, 58414500),
    ("2024-01-04", 182.15, 183.09, 180.88, 181.91, 181.43, 71983600),
]
# 16:00 in New York is 21:00 UTC in January (EST, UTC-5).
CLOSES_UTC = [datetime(2024, 1, d, 21, tzinfo=UTC) for d in (2, 3, 4)]


def _yahoo(path: Path) -> Path:
    lines = ["Date,Open,High,Low,Close,Adj Close,Volume"]
    lines += [",".join(str(v) for v in row) for row in ROWS]
    path.write_text("\n".join(lines) + "\n")
    return path


def _stooq(path: Path) -> Path:
    """Stooq's bulk daily layout: ticker, period, compact date, time, prices, volume, open interest."""
    lines = ["<TICKER>,<PER>,<DATE>,<TIME>,<OPEN>,<HIGH>,<LOW>,<CLOSE>,<VOL>,<OPENINT>"]
    lines += [f"AAPL.US,D,{d.replace('-', '')},000000,{o},{h},{lo},{c},{v},0" for d, o, h, lo, c, _, v in ROWS]
    path.write_text("\n".join(lines) + "\n")
    return path


def _lower(path: Path) -> Path:
    """A generic lowercase layout with naive intraday times in New York."""
    lines = ["symbol,datetime,open,high,low,close,volume"]
    lines += [f"AAPL,{d} 15:59:00,{o},{h},{lo},{c},{v}" for d, o, h, lo, c, _, v in ROWS]
    path.write_text("\n".join(lines) + "\n")
    return path


def _stored(store: Store, symbol: str = "AAPL") -> pl.DataFrame:
    return store.bars(symbol)


def test_yahoo_layout_needs_only_symbol_tz_and_close_time(tmp_path: Path) -> None:
    """Yahoo's columns match case-insensitively; each date becomes its 16:00 New York close in UTC; the mapping
    picks the adjusted close over Close."""
    path = _yahoo(tmp_path / "AAPL.csv")
    with Store.open(tmp_path / "s") as store:
        store.ingest(path, symbol="AAPL", tz="America/New_York", close_time="16:00")
        bars = _stored(store)
        assert bars["ts"].to_list() == CLOSES_UTC
        assert bars["close"].to_list() == [r[4] for r in ROWS]
        assert bars["volume"].to_list() == [float(r[6]) for r in ROWS]
    with Store.open(tmp_path / "adj") as store:
        store.ingest(path, symbol="AAPL", tz="America/New_York", close_time=time(16), columns={"Adj Close": "close"})
        assert _stored(store)["close"].to_list() == [r[5] for r in ROWS]


def test_close_time_follows_daylight_saving(tmp_path: Path) -> None:
    """16:00 in New York is 20:00 UTC in July (EDT): the zone's rules, not a fixed offset."""
    path = tmp_path / "july.csv"
    path.write_text("Date,Open,High,Low,Close,Volume\n2024-07-01,10,11,9,10.5,100\n")
    with Store.open(tmp_path / "s") as store:
        store.ingest(path, symbol="X", tz="America/New_York", close_time="16:00")
        assert _stored(store, "X")["ts"].to_list() == [datetime(2024, 7, 1, 20, tzinfo=UTC)]


def test_stooq_layout(tmp_path: Path) -> None:
    """Stooq's <TICKER>/<VOL>/<DATE> names match without a mapping, its compact dates are dates."""
    with Store.open(tmp_path / "s") as store:
        store.ingest(_stooq(tmp_path / "aapl.txt"), tz="America/New_York", close_time="16:00")
        bars = _stored(store, "AAPL.US")
        assert bars["ts"].to_list() == CLOSES_UTC
        assert bars["open"].to_list() == [r[1] for r in ROWS]


def test_generic_lowercase_layout_with_naive_times(tmp_path: Path) -> None:
    """Naive times are read in the zone given and stored in UTC; without a zone they are refused."""
    path = _lower(tmp_path / "bars.csv")
    with Store.open(tmp_path / "s") as store:
        with pytest.raises(InvalidInputError, match="timezone-naive"):
            store.ingest(path)
        assert store.symbols() == []
        store.ingest(path, tz="America/New_York")
        assert _stored(store)["ts"].to_list() == [t - timedelta(minutes=1) for t in CLOSES_UTC]


def test_date_only_ts_without_close_time_is_refused(tmp_path: Path) -> None:
    """The daily-close trap: a date-only ts is never read as midnight (the day's close would be served during
    that day); the error says what to give, and nothing is stored. A close time without a zone is refused too."""
    path = _yahoo(tmp_path / "AAPL.csv")
    with Store.open(tmp_path / "s") as store:
        for kwargs in ({}, {"tz": "America/New_York"}):
            with pytest.raises(InvalidInputError, match="close_time") as info:
                store.ingest(path, symbol="AAPL", **kwargs)  # type: ignore[arg-type]
            assert "midnight" in str(info.value)
        with pytest.raises(InvalidInputError, match="close_time needs tz"):
            store.ingest(path, symbol="AAPL", close_time="16:00")
        assert store.symbols() == []


def test_midnight_datetimes_are_dates(tmp_path: Path) -> None:
    """A frame of naive midnight datetimes (pandas read_csv(parse_dates=...)) is a date-only daily file: refused
    with a zone alone, placed at the close with close_time."""
    frame = pl.DataFrame({"Date": [datetime(2024, 1, d) for d in (2, 3, 4)], "Open": [1.0] * 3, "High": [2.0] * 3,
                          "Low": [0.5] * 3, "Close": [1.5] * 3, "Volume": [10.0] * 3})
    with Store.open(tmp_path / "s") as store:
        with pytest.raises(InvalidInputError, match="midnight"):
            store.ingest(frame, symbol="X", tz="America/New_York")
        store.ingest(frame, symbol="X", tz="America/New_York", close_time="16:00")
        assert _stored(store, "X")["ts"].to_list() == CLOSES_UTC


@pytest.mark.parametrize(("kwargs", "match"), [
    ({"columns": {"Nope": "ts"}}, "not in the source"),
    ({"columns": {"Date": "when"}}, "names no bar column"),
    ({"tz": "Mars/Olympus"}, "unknown timezone"),
    ({"close_time": "4pm", "tz": "UTC"}, "not a time of day"),
])
def test_bad_layout_options_are_named(tmp_path: Path, kwargs: dict[str, object], match: str) -> None:
    with Store.open(tmp_path / "s") as store, pytest.raises(InvalidInputError, match=match):
        store.ingest(_yahoo(tmp_path / "AAPL.csv"), symbol="AAPL", **kwargs)  # type: ignore[arg-type]


def test_ambiguous_and_conflicting_columns_are_refused(tmp_path: Path) -> None:
    """Two columns that could each be ts, or --symbol over a file that has symbols: an error, never a pick."""
    path = tmp_path / "two.csv"
    path.write_text("Date,Timestamp,Open,High,Low,Close,Volume\n2024-01-02,2024-01-02T21:00:00Z,1,2,0.5,1.5,10\n")
    with Store.open(tmp_path / "s") as store:
        with pytest.raises(InvalidInputError, match="Date, Timestamp could each be ts"):
            store.ingest(path, symbol="X")
        store.ingest(path, symbol="X", columns={"Timestamp": "ts"})
        assert _stored(store, "X")["ts"].to_list() == [CLOSES_UTC[0]]
        with pytest.raises(InvalidInputError, match="has a symbol column"):
            store.ingest(_lower(tmp_path / "l.csv"), symbol="AAPL", tz="UTC")


def test_cli_ingest_vendor_layout(tmp_path: Path) -> None:
    """The CLI takes the same options: --map (repeatable), --tz, --close-time, --symbol."""
    root = tmp_path / "s"
    path = _yahoo(tmp_path / "AAPL.csv")
    out = run("ingest", path, "--root", root, code=1)
    assert "close_time" in out and "midnight" in out
    summary = run_json("ingest", path, "--symbol", "AAPL", "--tz", "America/New_York", "--close-time", "16:00",
                       "--map", "Date=ts", "--map", "Adj Close=close", "--json", "--root", root)
    assert summary["rows"] == len(ROWS)
    with Store.open(root) as store:
        bars = _stored(store)
        assert bars["ts"].to_list() == CLOSES_UTC and bars["close"].to_list() == [r[5] for r in ROWS]
    assert "expected SOURCE=COLUMN" in run("ingest", path, "--map", "Date", "--root", root, code=1)
    assert "unknown timezone" in run("ingest", path, "--tz", "Nowhere/Else", "--root", root, code=1)


# --- push from a process that did not register the set ---------------------------------------------------

NOW_MINUTE = datetime.now(UTC).replace(second=0, microsecond=0)
LIVE_FEATURES = [sma(5), rsi(3).alias("rsi_fast"), macd(3, 10, 4), vol(5, periods_per_year=365).tagged("v2"),
                 talib("ADX"), talib("RSI", inputs={"price": "open"}).alias("rsi_open")]


def _live_set() -> FeatureSet:
    return FeatureSet("live_rebuilt", LIVE_FEATURES, timeframe="1m", ttl=timedelta(hours=12),
                      availability_lag=timedelta(seconds=5), version="t1")


def _minute_bars(n_symbols: int, n_bars: int) -> pl.DataFrame:
    bars = synthetic_bars(n_symbols, n_bars, timeframe="1m", start=datetime(2024, 1, 2, tzinfo=UTC), seed=3)
    return bars.with_columns(pl.col("ts") + (NOW_MINUTE - bars["ts"].max()))


def test_push_in_a_process_that_never_registered_the_set(tmp_path: Path) -> None:
    """Process A ingests history and backfills a set of built-in and TA-Lib features (aliases, a version tag,
    a TTL and a lag); process B, which never registers anything, pushes the next bars: its rows, and the stored
    rows after it closes, are those of a batch backfill of all the bars, bit for bit."""
    fs = _live_set()
    bars = _minute_bars(3, 120)
    cut = NOW_MINUTE - timedelta(minutes=19)
    history, recent = bars.filter(pl.col("ts") < cut), bars.filter(pl.col("ts") >= cut)
    with Store.open(tmp_path / "batch", online_url="memory://") as batch:
        batch.ingest(bars)
        batch.backfill(fs)
        want = batch.read(fs.name)
    root = tmp_path / "live"
    with Store.open(root, online_url="sqlite://") as a:
        a.ingest(history)
        a.backfill(fs)
        version = a.register(fs)
    [(kind, rows)] = run_processes(push_unregistered, [(str(root), recent)])
    assert kind == "pushed", rows
    table = f"{fs.name}@{version}"
    assert list(rows) == [table]
    assert rows[table].sort("symbol", "ts").equals(want.filter(pl.col("ts") >= cut))
    with Store.open(root, online_url="sqlite://") as a:
        assert a.read(fs.name).equals(want)
        assert a.versions(fs.name)[-1].version == version  # rebuilt, not registered as a new version


def test_rebuild_refuses_expression_and_python_features(tmp_path: Path) -> None:
    """A set with code in it cannot be rebuilt from the catalog: the error names the set and those features;
    nothing is pushed."""
    fs = FeatureSet("coded", [sma(3), expr("hl_range", pl.col("high") - pl.col("low"), lookback=0)], timeframe="1m",
                    ttl=timedelta(hours=12))
    bars = _minute_bars(1, 30)
    with Store.open(tmp_path / "s", online_url="memory://") as a:
        a.ingest(bars.head(20))
        a.backfill(fs)
    with Store.open(tmp_path / "s", online_url="memory://") as b:
        with pytest.raises(InvalidInputError, match=r"'coded' version 1 cannot be rebuilt.*hl_range") as info:
            b.push(bars.tail(10))
        assert "sma_3" not in str(info.value)
        assert b.bars("S0000").height == 20


def test_rebuilt_set_has_the_stored_fingerprint(tmp_path: Path) -> None:
    """rebuild gives the definition registered (same fingerprint) for every version asked for; a stored
    definition whose rebuilt fingerprint differs (another engine version) is refused, not pushed with."""
    with Store.open(tmp_path / "s") as store:
        v1 = store.register(_live_set())
        v2 = store.register(standard_features())
        rebuilt = store.registry.rebuild("live_rebuilt", v1)
        assert fingerprint(rebuilt) == store.registry.get("live_rebuilt", v1).fingerprint
        assert rebuilt.columns == _live_set().columns and rebuilt.ttl == timedelta(hours=12)
        assert fingerprint(store.registry.rebuild("daily_core")) == store.registry.get("daily_core", v2).fingerprint
        info = store.registry.get("daily_core")
        altered = {**info.definition, "engine_version": "0-other"}
        store.catalog.register_version("daily_core", "f" * 64, json.dumps(altered, sort_keys=True))
        with pytest.raises(InvalidInputError, match="other pitstore or library versions"):
            store.registry.rebuild("daily_core")


# --- synthetic bars continue ---------------------------------------------------------------------------


@pytest.mark.parametrize("options", [{}, {"gaps": 0.2}, {"timeframe": "1m", "seed": 5}])
def test_synthetic_bars_n_plus_one_continues_n(options: dict[str, object]) -> None:
    """synthetic_bars(k, n + 1) is synthetic_bars(k, n) plus each symbol's next bar (gaps included), and a
    symbol's series does not depend on how many symbols are drawn: the next live bar can be simulated."""
    shorter = synthetic_bars(4, 60, **options)  # type: ignore[arg-type]
    longer = synthetic_bars(4, 61, **options)  # type: ignore[arg-type]
    last = longer.group_by("symbol").agg(pl.col("ts").max())["ts"].max()
    assert longer.filter(pl.col("ts") < last).equals(shorter)
    assert longer.height > shorter.height
    more_symbols = synthetic_bars(6, 61, **options)  # type: ignore[arg-type]
    assert more_symbols.filter(pl.col("symbol").is_in(longer["symbol"].unique().to_list())).equals(longer)


def test_synthetic_bars_stay_valid_bars() -> None:
    """Still a valid OHLC walk (high >= open, close >= low; positive volume), reproducible from the seed and
    different across seeds; ragged lengths stay between half and all of n_bars."""
    bars = synthetic_bars(5, 200, seed=1)
    assert bars.equals(synthetic_bars(5, 200, seed=1)) and not bars.equals(synthetic_bars(5, 200, seed=2))
    assert bars.select((pl.col("high") >= pl.max_horizontal("open", "close")).all(),
                       (pl.col("low") <= pl.min_horizontal("open", "close")).all(),
                       (pl.col("volume") >= 1000).all()).row(0) == (True, True, True)
    lengths = synthetic_bars(20, 100, ragged=True).group_by("symbol").len()["len"]
    assert lengths.min() >= 50 and lengths.max() <= 100 and lengths.n_unique() > 1
    assert synthetic_bars(0, 10).height == 0


# --- listing commands and empty answers that say why -----------------------------------------------------


def _filled(tmp_path: Path) -> Path:
    root = tmp_path / "store"
    synthetic_bars(3, 120, seed=3).write_parquet(tmp_path / "bars.parquet")
    run("ingest", tmp_path / "bars.parquet", "--root", root)
    run("backfill", "--root", root)
    return root


def test_features_lists_the_catalogue() -> None:
    """`pitstore features` is list_features(): every feature, filtered by --kind, as a table or JSON."""
    everything = run_json("features", "--json")
    assert [m["name"] for m in everything] == [m.name for m in list_features()]
    builtin = run_json("features", "--json", "--kind", "builtin")
    assert [m["name"] for m in builtin] == [m.name for m in list_features("builtin")]
    rsi_meta = next(m for m in builtin if m["name"] == "rsi")
    assert rsi_meta["params"] == {"n": 14} and rsi_meta["outputs"] == ["rsi_14"] and rsi_meta["kind"] == "builtin"
    assert {m["kind"] for m in run_json("features", "--json", "--kind", "talib")} == {"talib"}
    text = run("features", "--kind", "builtin")
    assert "macd_12_26_9_signal" in text and f"{len(builtin)} features" in text
    run("features", "--kind", "nope", code=2)


def test_sets_lists_versions_fingerprints_and_symbols_stored(tmp_path: Path) -> None:
    """`pitstore sets`: each registered set's versions with fingerprint, registration time, columns and the
    number of symbols stored; an empty store says why it is empty."""
    root = tmp_path / "store"
    run("init", "--root", root)
    assert "no feature sets registered" in run("sets", "--root", root)
    assert run_json("sets", "--json", "--root", root) == []
    root = _filled(tmp_path)
    with Store.open(root) as store:
        store.register(FeatureSet("other", [sma(3)]))
        want = {(n, i.version): i for n in store.registry.names() for i in store.registry.versions(n)}
    rows = run_json("sets", "--json", "--root", root)
    assert {(r["name"], r["version"]) for r in rows} == set(want)
    for r in rows:
        info = want[(r["name"], r["version"])]
        assert r["fingerprint"] == info.fingerprint and r["columns"] == list(info.columns)
        assert datetime.fromisoformat(r["created_at"]) == info.created_at
        assert r["symbols"] == (3 if r["name"] == "daily_core" else 0)
    text = run("sets", "--root", root)
    assert "daily_core" in text and "other" in text and want[("daily_core", 1)].fingerprint[:12] in text


def test_get_on_an_unknown_symbol_says_why(tmp_path: Path) -> None:
    """A range read with no rows for a symbol names it and says why: no bars stored, or bars but no rows."""
    root = _filled(tmp_path)
    out = run("get", "daily_core", "--symbols", "NOPE,S0000", "--root", root)
    assert "no bars stored for NOPE" in out and "S0000" not in out.split("note:")[1]
    out = run("get", "daily_core", "--symbols", "S0001", "--start", "2030-01-01T00:00:00Z", "--root", root)
    assert "no feature rows for S0001 in this range" in out
    assert "note:" not in run("get", "daily_core", "--symbols", "S0001", "--root", root)


def test_warm_top_without_request_history_says_why(tmp_path: Path) -> None:
    """`warm --top N` before any look-up was served loads nothing and says there is no request history; after
    a look-up it loads that symbol."""
    root = _filled(tmp_path)
    out = run("warm", "--top", "5", "--root", root)
    assert "warm: 0 rows" in out and "no request history yet" in out
    with Store.open(root) as store:
        store.get_online(["S0001"], "daily_core")
    out = run("warm", "--top", "5", "--root", root)
    assert "warm: 1 rows" in out and "request history" not in out

"""A new user's first hour: vendor bar layouts at ingest, push from a process that did not register the set,
listing commands, and synthetic bars that continue."""

from __future__ import annotations

from datetime import UTC, datetime, time, timedelta
from pathlib import Path

import polars as pl
import pytest
from clirun import run, run_json

from pitstore import Store
from pitstore.errors import InvalidInputError

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

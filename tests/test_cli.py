"""The ``pitstore`` command line: each command against a real store in tmp_path, compared with the Store API."""

from __future__ import annotations

import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from clirun import run, run_json
from polars.testing import assert_frame_equal

import pitstore

FEATURES = ["daily_core:ret_5d", "daily_core:vol_20d", "daily_core:mom_60d"]


@pytest.fixture
def bars() -> pl.DataFrame:
    return pitstore.testing.synthetic_bars(3, 120, seed=3)


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def filled(tmp_path: Path, root: Path, bars: pl.DataFrame) -> Path:
    """A store with the bars ingested (two symbols from Parquet, one from CSV) and the standard seven backfilled."""
    bars.filter(pl.col("symbol") != "S0002").write_parquet(tmp_path / "a.parquet")
    bars.filter(pl.col("symbol") == "S0002").write_csv(tmp_path / "b.csv")
    run("ingest", tmp_path / "a.parquet", tmp_path / "b.csv", "--root", root)
    run("backfill", "--root", root)
    return root


def entities() -> pl.DataFrame:
    """Look-ups with an extra column: inside the data, before it, between bars and for an unknown symbol."""
    return pl.DataFrame({
        "symbol": ["S0000", "S0001", "S0002", "NOPE", "S0000"],
        "ts": [datetime(2015, 3, 20, 12, tzinfo=UTC), datetime(2014, 6, 1, tzinfo=UTC),
               datetime(2015, 4, 1, tzinfo=UTC), datetime(2015, 3, 1, tzinfo=UTC),
               datetime(2015, 1, 3, tzinfo=UTC)],
        "label": [1, 2, 3, 4, 5],
    }).with_columns(pl.col("ts").dt.cast_time_unit("us"))


@pytest.mark.slow  # two fresh `pitstore` processes
def test_help_runs_as_a_real_process() -> None:
    """The installed console script and `python -m pitstore` both start and list every command."""
    script = Path(sys.executable).parent / "pitstore"
    for cmd in ([str(script), "--help"], [sys.executable, "-m", "pitstore", "--help"]):
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
        assert proc.returncode == 0, proc.stderr
        for command in ("init", "ingest", "backfill", "get", "stats", "demo"):
            assert command in proc.stdout


def test_init_creates_the_catalog_once(root: Path) -> None:
    """init creates the catalog and says where; a second init reports the existing store."""
    out = run("init", "--root", root)
    assert (root / "catalog.sqlite").is_file()
    assert "created store at" in out and str(root.resolve()) in out
    assert "already exists" in run("init", "--root", root)


def test_global_root_option_is_used_by_commands(root: Path) -> None:
    """`pitstore --root X cmd` works like `pitstore cmd --root X`."""
    run("--root", root, "init")
    stats = run_json("--root", root, "stats", "--json")
    assert isinstance(stats, dict) and stats["root"] == str(root.resolve())


def test_ingest_parquet_and_csv(tmp_path: Path, root: Path, bars: pl.DataFrame) -> None:
    """Parquet and CSV files are ingested; the summary counts rows and new symbols, as text and as JSON."""
    bars.filter(pl.col("symbol") != "S0002").write_parquet(tmp_path / "a.parquet")
    bars.filter(pl.col("symbol") == "S0002").write_csv(tmp_path / "b.csv")
    summary = run_json("ingest", tmp_path / "a.parquet", "--json", "--root", root)
    assert isinstance(summary, dict)
    assert summary["rows"] == 240 and summary["new_symbols"] == ["S0000", "S0001"]
    out = run("ingest", tmp_path / "b.csv", "--root", root)
    assert "ingested 120 rows from 1 file" in out and "new symbols: 1" in out
    with pitstore.Store.open(root) as store:
        assert store.symbols() == ["S0000", "S0001", "S0002"]
        assert store.stats()["bars_live"] == bars.height


def test_ingest_bad_input_is_one_clean_line(tmp_path: Path, root: Path, bars: pl.DataFrame) -> None:
    """Naive CSV timestamps and missing files fail with exit code 1 and one error line, storing nothing."""
    bars.with_columns(pl.col("ts").dt.replace_time_zone(None)).write_csv(tmp_path / "naive.csv")
    out = run("ingest", tmp_path / "naive.csv", "--root", root, code=1)
    assert out.startswith("error: ") and out.count("\n") == 1 and "naive" in out
    assert "no such file" in run("ingest", tmp_path / "missing.parquet", "--root", root, code=1)
    with pitstore.Store.open(root) as store:
        assert store.symbols() == []


def test_backfill_computes_then_has_nothing_to_do(filled: Path) -> None:
    """A second backfill computes nothing and says so; --json gives the parsed report."""
    assert "nothing to do: 3 symbols up to date (daily_core@1)" in run("backfill", "--root", filled)
    report = run_json("backfill", "--json", "--root", filled)
    assert isinstance(report, dict)
    assert report["nothing_to_do"] is True and report["computed_rows"] == 0
    assert sorted(report["up_to_date"]) == ["S0000", "S0001", "S0002"]


def test_backfill_first_run_reports_what_it_computed(tmp_path: Path, root: Path, bars: pl.DataFrame) -> None:
    """The first backfill of a symbol subset computes those symbols in full, as text and as JSON."""
    bars.write_parquet(tmp_path / "bars.parquet")
    run("ingest", tmp_path / "bars.parquet", "--root", root)
    out = run("backfill", "--symbols", "S0000", "--root", root)
    assert "backfilled daily_core@1: 1 symbol (1 in full, 0 incremental), 120 rows written" in out
    report = run_json("backfill", "--json", "--symbols", "S0001,S0002,ZZZ", "--root", root)
    assert isinstance(report, dict)
    assert sorted(report["full"]) == ["S0001", "S0002"] and report["written_rows"] == 240
    assert report["unknown_symbols"] == ["ZZZ"] and report["nothing_to_do"] is False


def test_backfill_imports_a_feature_set(tmp_path: Path, root: Path, bars: pl.DataFrame,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """--features module:attr imports a FeatureSet from the working directory and backfills it."""
    (tmp_path / "cli_test_defs.py").write_text(
        "import pitstore\nfast = pitstore.FeatureSet('fast', [pitstore.ret(1).alias('r1')], timeframe='1d')\n"
    )
    monkeypatch.chdir(tmp_path)
    bars.write_parquet(tmp_path / "bars.parquet")
    run("ingest", "bars.parquet", "--root", root)
    assert "backfilled fast@1: 3 symbols" in run("backfill", "--features", "cli_test_defs:fast", "--root", root)
    with pitstore.Store.open(root) as store:
        want = pitstore.compute(pitstore.FeatureSet("fast", [pitstore.ret(1).alias("r1")], timeframe="1d"), bars)
        assert_frame_equal(store.read("fast"), want)
    assert "not a pitstore.FeatureSet" in run("backfill", "--features", "pitstore:ret", "--root", root, code=1)
    assert "cannot import" in run("backfill", "--features", "no_such_mod:x", "--root", root, code=1)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_get_entities_equals_get_historical(tmp_path: Path, filled: Path, suffix: str) -> None:
    """get --entities (CSV or Parquet) --out writes exactly Store.get_historical, extra columns included."""
    ents = entities()
    path = tmp_path / f"entities{suffix}"
    ents.write_csv(path) if suffix == ".csv" else ents.write_parquet(path)
    out_file = tmp_path / "out.parquet"
    out = run("get", *FEATURES, "--entities", path, "--out", out_file, "--root", filled)
    assert "wrote 5 rows x 7 columns" in out
    with pitstore.Store.open(filled) as store:
        want = store.get_historical(ents, FEATURES)
    assert_frame_equal(pl.read_parquet(out_file), want)
    assert want["status"].to_list() == ["ok", "no_data_yet", "ok", "unknown_symbol", "ok"]
    table = run("get", *FEATURES, "--entities", path, "--root", filled)
    assert "unknown_symbol" in table and "5 rows x 7 columns" in table


def test_get_symbols_range_equals_read(tmp_path: Path, filled: Path) -> None:
    """get --symbols --start --end --out writes exactly Store.read for that range; --json gives the same rows."""
    start, end = "2015-02-01T00:00:00Z", "2015-03-01T01:00:00+01:00"
    out_file = tmp_path / "range.parquet"
    run("get", "daily_core", "--symbols", "S0000,S0002", "--start", start, "--end", end, "--out", out_file,
        "--root", filled)
    with pitstore.Store.open(filled) as store:
        want = store.read("daily_core", ["S0000", "S0002"], datetime.fromisoformat(start),
                          datetime.fromisoformat(end))
    assert want.height == 2 * 29
    assert_frame_equal(pl.read_parquet(out_file), want)
    records = run_json("get", "daily_core", "--symbols", "S0000,S0002", "--start", start, "--end", end, "--json",
                       "--root", filled)
    assert isinstance(records, list) and len(records) == want.height
    assert records[0]["ts"] == "2015-02-01T00:00:00+00:00" and records[0]["ret_5d"] == want["ret_5d"][0]
    csv_file = tmp_path / "range.csv"
    run("get", "daily_core", "--symbols", "S0000,S0002", "--start", start, "--end", end, "--out", csv_file,
        "--root", filled)
    assert pl.read_csv(csv_file).height == want.height


def test_get_table_shows_first_rows(filled: Path) -> None:
    """Without --out or --json, get prints a table of the first --limit rows and the total."""
    out = run("get", "daily_core:ret_5d", "--symbols", "S0001", "-n", "4", "--root", filled)
    assert "120 rows x 3 columns; first 4 shown" in out
    assert out.count("S0001") == 4


def test_stats_json(filled: Path) -> None:
    """stats --json reports the store's symbols, bars, feature sets and feature rows."""
    stats = run_json("stats", "--json", "--root", filled)
    assert isinstance(stats, dict)
    assert stats["symbols"] == 3 and stats["bars_live"] == 360 and stats["feature_rows_live"] == 360
    assert stats["feature_sets"] == ["daily_core"] and stats["bytes_on_disk"] > 0
    assert "bars_live" in run("stats", "--root", filled)


def test_naive_start_is_a_clean_error(filled: Path) -> None:
    """A timestamp without a timezone exits with code 1 and one clear red line, no traceback."""
    for cmd in (["get", "daily_core", "--symbols", "S0000"], ["backfill"]):
        out = run(*cmd, "--start", "2015-02-01T00:00:00", "--root", filled, code=1)
        assert out == ("error: --start '2015-02-01T00:00:00' has no timezone; give a timezone-aware timestamp "
                       "such as 2020-01-01T00:00:00Z or 2020-01-01T09:30:00-05:00\n")
    assert "not an ISO 8601 timestamp" in run("get", "daily_core", "--symbols", "S0000", "--as-known-at", "soon",
                                              "--root", filled, code=1)


def test_pitstore_errors_are_one_line(tmp_path: Path, filled: Path) -> None:
    """Unknown feature sets, a missing store and a bad --out type are one error line with exit code 1."""
    assert run("get", "nope", "--symbols", "S0000", "--root", filled, code=1) == (
        "error: no feature set named 'nope'; known: daily_core\n"
    )
    assert "no store at" in run("stats", "--root", tmp_path / "empty", code=1)
    assert not (tmp_path / "empty").exists()
    assert "unsupported file type '.txt'" in run("get", "daily_core", "--symbols", "S0000", "--out",
                                                 tmp_path / "x.txt", "--root", filled, code=1)
    assert "give --entities FILE" in run("get", "daily_core", "--root", filled, code=1)


def test_demo_runs_and_second_pass_recomputes_nothing(tmp_path: Path) -> None:
    """demo ingests, backfills, joins and then proves the second pass computes nothing, also when re-run."""
    root = tmp_path / "demo"
    out = run("demo", "--root", root, "--symbols", "5", "--years", "1", "--lookups", "2000")
    assert "5 new, 0 appended, 0 restated, 0 unchanged symbols" in out
    assert "2,000 look-ups joined" in out and "unknown_symbol" in out
    assert "second pass: nothing recomputed" in out
    again = run("demo", "--root", root, "--symbols", "5", "--years", "1", "--lookups", "2000")
    assert "nothing to do, 5 symbols up to date (0 rows computed)" in again
    assert "second pass: nothing recomputed" in again

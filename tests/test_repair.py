"""verify --repair: broken feature entries recomputed from the bars, broken bar snapshots replaced by an older
intact one, what cannot be rebuilt dropped, and each said in the report; afterwards verify is clean."""

from __future__ import annotations

import json
import sqlite3
from contextlib import closing
from datetime import UTC, datetime
from pathlib import Path

import polars as pl
import pytest
from clirun import runner
from polars.testing import assert_frame_equal

import pitstore
from pitstore import Store
from pitstore.cli import app
from pitstore.testing import synthetic_bars

FS_SPEC = "test_repair:feature_set"


def feature_set() -> pitstore.FeatureSet:
    return pitstore.FeatureSet("fs", [pitstore.ret(2).alias("r"), pitstore.ema(5).alias("e")], timeframe="1d")


def entities() -> pl.DataFrame:
    return pl.DataFrame({"symbol": ["S0000", "S0001", "S0000"],
                         "ts": [datetime(2015, 3, 1, tzinfo=UTC), datetime(2015, 3, 1, tzinfo=UTC),
                                datetime(2015, 2, 1, tzinfo=UTC)]}).with_columns(pl.col("ts").dt.cast_time_unit("us"))


def damage(path: Path, how: str) -> None:
    data = bytearray(path.read_bytes())
    if how == "missing":
        path.unlink()
    elif how == "truncated":
        path.write_bytes(bytes(data[: len(data) // 2]))
    else:
        data[len(data) // 2] ^= 0x55
        path.write_bytes(bytes(data))


def two_segments(root: Path) -> tuple[pl.DataFrame, pl.DataFrame]:
    """S0000 and S0001 with a full and an incremental entry each; the answers before any damage."""
    bars = synthetic_bars(2, 80, seed=5)
    first = bars.filter(pl.int_range(pl.len()).over("symbol") < 60)
    with Store.open(root) as store:
        store.ingest(first)
        store.backfill(feature_set())
        store.ingest(bars)
        store.backfill(feature_set())
        assert len(store.catalog.feature_entries("fs", 1, ["S0000"])) == 2
        return store.get_historical(entities(), "fs"), store.read("fs")


@pytest.mark.parametrize("how", ["missing", "truncated", "flipped"])
def test_repair_recomputes_broken_feature_entries(tmp_path: Path, how: str) -> None:
    root = tmp_path / "store"
    before, rows = two_segments(root)
    with Store.open(root) as store:
        damaged = {e.path for e in store.catalog.feature_entries("fs", 1, ["S0000"])}
        for path in damaged:  # both segments: the full one and the incremental one
            damage(root / path, how)
        # The incremental backfill wrote both symbols' new rows into one shared file: S0001's entry in it is
        # damaged too.
        entries = [e for e in store.catalog.feature_entries("fs", 1) if e.path in damaged]
        assert {e.symbol for e in entries} == {"S0000", "S0001"}
        found = store.verify()
        assert not found.ok and sorted(p["path"] for p in found.problems) == sorted(e.path for e in entries)
    with Store.open(root) as store:  # a new process: the definition is passed in
        report = store.verify(repair=True, feature_sets=[feature_set()])
        assert report.ok and report.problems == [] and report.dropped == []
        assert sorted(r["path"] for r in report.repaired) == sorted(e.path for e in entries)
        assert store.verify().ok
        assert_frame_equal(store.get_historical(entities(), "fs"), before)
        assert_frame_equal(store.read("fs"), rows)
        # as_known_at replays are unchanged: the entries keep their recorded_at
        after = [e for e in store.catalog.feature_entries("fs", 1) if e.id in {d.id for d in entries}]
        assert [(e.id, e.recorded_at, e.n_rows) for e in after] == [(e.id, e.recorded_at, e.n_rows) for e in entries]


def test_repair_drops_an_entry_whose_definition_is_not_available(tmp_path: Path) -> None:
    root = tmp_path / "store"
    before, _ = two_segments(root)
    with Store.open(root) as store:
        latest = store.catalog.feature_entries("fs", 1, ["S0001"])[-1]
        # The incremental backfill wrote both symbols' new rows into this one file: both entries go.
        sharing = [e for e in store.catalog.feature_entries("fs", 1) if e.path == latest.path]
        assert {e.symbol for e in sharing} == {"S0000", "S0001"}
        damage(root / latest.path, "truncated")
        report = store.verify(repair=True)  # nothing registered in this process
        assert [d["path"] for d in report.dropped] == [latest.path] * len(sharing) and report.repaired == []
        assert all("definition" in d["action"] for d in report.dropped)
        assert report.ok and store.verify().ok and not (root / latest.path).exists()
        got = store.get_historical(entities(), "fs")  # reads work; the older segments still answer Feb
        feb = pl.col("ts") < datetime(2015, 3, 1, tzinfo=UTC)
        assert_frame_equal(got.filter(feb), before.filter(feb))
        # Backfill with the definition brings the dropped rows back.
        store.backfill(feature_set())
        assert_frame_equal(store.get_historical(entities(), "fs"), before)


def test_repair_falls_back_to_the_newest_older_intact_bar_snapshot(tmp_path: Path) -> None:
    root = tmp_path / "store"
    bars = synthetic_bars(1, 80, seed=6)
    with Store.open(root) as store:
        store.ingest(bars.head(50))
        store.ingest(bars.head(60))
        store.ingest(bars)
        store.backfill(feature_set())
        snaps = store.catalog.bar_history("S0000", 0)
        assert len(snaps) == 3
        damage(root / snaps[1].path, "flipped")  # a superseded one
        damage(root / snaps[2].path, "missing")  # the live one
        report = store.verify(repair=True)
        assert report.ok and store.verify().ok, report.problems
        assert {r["path"] for r in report.repaired} == {snaps[2].path}
        assert {d["path"] for d in report.dropped} == {snaps[1].path}
        assert "lost" in report.repaired[0]["action"]
        assert_frame_equal(store.bars("S0000"), bars.head(50))  # snapshot 2 is broken: back to snapshot 1
        # The features computed from the lost bars stay readable; the next backfill recomputes in full.
        assert store.backfill(feature_set()).full == ["S0000"]
        assert_frame_equal(store.read("fs"), pitstore.compute(feature_set(), bars.head(50)))
        store.ingest(bars)  # re-ingesting the lost bars works
        assert_frame_equal(store.bars("S0000"), bars)


def test_repair_drops_a_bar_snapshot_with_no_older_one_and_says_the_symbol_is_lost(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with Store.open(root) as store:
        store.ingest(synthetic_bars(2, 40, seed=7))
        (snap,) = store.catalog.live_bars(["S0001"])
        damage(root / snap.path, "truncated")
        report = store.verify(repair=True)
        assert report.ok and [d["path"] for d in report.dropped] == [snap.path]
        assert "lost" in report.dropped[0]["action"] and report.dropped[0]["symbol"] == "S0001"
        assert store.symbols() == ["S0000"] and store.verify().ok


def test_cli_verify_repair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "store"
    before, _ = two_segments(root)
    with Store.open(root) as store:
        entry = store.catalog.feature_entries("fs", 1, ["S0001"])[0]
    damage(root / entry.path, "flipped")
    monkeypatch.syspath_prepend(str(Path(__file__).parent))
    result = runner.invoke(app, ["verify", "--root", str(root)])
    assert result.exit_code == 1 and entry.path in result.output
    report_file = tmp_path / "repair.json"
    result = runner.invoke(app, ["verify", "--repair", "--features", FS_SPEC, "--json", str(report_file),
                                 "--root", str(root)])
    assert result.exit_code == 0, result.output
    report = json.loads(report_file.read_text())
    assert report["ok"] and [r["path"] for r in report["repaired"]] == [entry.path]
    result = runner.invoke(app, ["verify", "--root", str(root)])
    assert result.exit_code == 0 and "ok" in result.output
    with Store.open(root) as store:
        assert_frame_equal(store.get_historical(entities(), "fs"), before)


def test_catalog_of_an_older_version_gains_size_and_hash_and_is_still_verified(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with Store.open(root) as store:
        store.ingest(synthetic_bars(1, 40, seed=8))
        store.backfill(feature_set())
    with closing(sqlite3.connect(root / "catalog.sqlite")) as conn, conn:  # as an older pitstore created it
        conn.execute("ALTER TABLE feature_entries DROP COLUMN size")
        conn.execute("ALTER TABLE feature_entries DROP COLUMN file_hash")
    with Store.open(root) as store:
        (old,) = store.catalog.all_feature_entries()
        assert old.size is None and old.file_hash is None
        assert store.verify().ok
        damage(root / old.path, "truncated")
        assert [p["path"] for p in store.verify().problems] == [old.path]
        assert store.verify(repair=True, feature_sets=[feature_set()]).ok
        (new,) = store.catalog.all_feature_entries()
        assert new.size == (root / new.path).stat().st_size and new.file_hash is not None

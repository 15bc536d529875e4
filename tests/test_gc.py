"""gc and verify, through the library and the ``pitstore`` command line, on a real store with every kind of
leftover: orphan files, stale cache entries, rows whose file is gone, versions beyond --max-versions, a key
held by another process."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from cache_workers import Child, make_raw, slow_summary, starts, summarise
from polars.testing import assert_frame_equal
from typer.testing import CliRunner

import pitstore
from pitstore import InvalidInputError, Store
from pitstore.cache import cache_key
from pitstore.cli import app
from pitstore.testing import synthetic_bars

runner = CliRunner()
SYMBOLS = ["S0000", "S0001"]
WEEK_US = 7 * 86_400 * 1_000_000


def run(*args: str | Path, code: int = 0) -> str:
    result = runner.invoke(app, [str(a) for a in args])
    assert result.exit_code == code, result.output
    assert "Traceback" not in result.output
    return result.output


def feature_set(n: int) -> pitstore.FeatureSet:
    return pitstore.FeatureSet("fs", [pitstore.ret(n).alias("r"), pitstore.sma(n + 2).alias("m")], timeframe="1d")


def entities() -> pl.DataFrame:
    return pl.DataFrame({
        "symbol": ["S0000", "S0001", "S0000"],
        "ts": [datetime(2015, 2, 10, tzinfo=UTC), datetime(2015, 3, 1, tzinfo=UTC), datetime(2015, 1, 20, tzinfo=UTC)],
    }).with_columns(pl.col("ts").dt.cast_time_unit("us"))


def snapshot(root: Path) -> tuple[dict[str, tuple[int, int]], dict[str, list[tuple[Any, ...]]]]:
    """Every file under root (size, mtime) and every catalog row."""
    files = {str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
             for p in sorted(root.rglob("*")) if p.is_file() and p.name != "catalog.sqlite-shm"}
    with closing(sqlite3.connect(f"file:{root / 'catalog.sqlite'}?mode=ro", uri=True)) as conn:
        tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'"
                                             " AND name NOT LIKE 'sqlite_%' ORDER BY name")]
        rows = {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in tables}
    return files, rows


def set_last_access(root: Path, key: str, weeks_ago: float) -> None:
    """Through the catalog's own SQL: pretend the entry was last read ``weeks_ago`` weeks ago."""
    with closing(sqlite3.connect(root / "catalog.sqlite", timeout=30)) as conn, conn:
        t = time.time_ns() // 1000 - int(weeks_ago * WEEK_US)
        assert conn.execute("UPDATE cache_entries SET last_access = ? WHERE key = ?", (t, key)).rowcount == 1


@dataclass
class Filled:
    """A store with bars, three backfilled versions of ``fs``, cache entries and every kind of leftover."""

    root: Path
    log: Path
    fresh: dict[str, Any]  # configs of cache entries that must survive
    stale_key: str
    stale_path: str
    missing_cache_path: str
    missing_feature_path: str
    retired_paths: list[str]  # files of version 1 that gc deletes (max_versions=2)
    orphans: list[str]
    before_v3: pl.DataFrame
    before_v2: pl.DataFrame


def make_filled(tmp_path: Path, *, orphans: bool = True) -> Filled:
    root = tmp_path / "store"
    log = tmp_path / "log"
    log.mkdir()
    with Store.open(root) as store:
        store.ingest(synthetic_bars(2, 90, seed=11))
        for n in (1, 2, 3):
            store.backfill(feature_set(n))
        assert [v.version for v in store.versions("fs")] == [1, 2, 3]
        fresh = {"log": str(log), "name": "fresh", "k": 1}
        stale = {"log": str(log), "name": "stale", "k": 2}
        gone = {"log": str(log), "name": "gone", "k": 3}
        for symbol in SYMBOLS:
            store.get_or_compute(symbol, make_raw(symbol), fresh, slow_summary)
        store.get_or_compute("S0001", make_raw("S0001"), stale, slow_summary)
        store.get_or_compute("S0000", make_raw("S0000"), gone, slow_summary)
        stale_key = cache_key("S0001", make_raw("S0001"), stale, slow_summary).key
        gone_entry = store.catalog.cache_get(cache_key("S0000", make_raw("S0000"), gone, slow_summary).key)
        assert gone_entry is not None
        stale_entry = store.catalog.cache_get(stale_key)
        assert stale_entry is not None
        v1 = [e for e in store.catalog.all_feature_entries() if e.version == 1]
        assert len(v1) == 2
        before_v3 = store.get_historical(entities(), "fs")
        before_v2 = store.get_historical(entities(), "fs@2")
    assert before_v3["status"].to_list() == ["ok"] * 3
    set_last_access(root, stale_key, weeks_ago=10)
    (root / gone_entry.path).unlink()  # a cache row whose file is gone
    (root / v1[0].path).unlink()  # a feature row whose file is gone
    stray: list[str] = []
    if orphans:
        fake = "f" * 64
        for rel, data in [
            (f"cache/s_S0000/{fake}.parquet", b"PAR1 not really"),  # published, never committed
            (f"cache/s_S0001/.{fake}.parquet.0badc0de.tmp", b"half written"),  # a crashed writer's temporary
            ("features/fs/v3/s_S0000/0123456789abcdef0123456789abcdef.parquet", b"orphan"),
            ("features/fs/v3/s_S0001/.0123.parquet.deadbeef.tmp", b"tmp"),
            ("bars/s_S0000/.abc.parquet.12345678.tmp", b"tmp"),
        ]:
            p = root / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)
            stray.append(rel)
    return Filled(root, log, fresh, stale_key, stale_entry.path, gone_entry.path, v1[0].path, [v1[1].path], stray,
                  before_v3, before_v2)


@pytest.fixture
def filled(tmp_path: Path) -> Filled:
    return make_filled(tmp_path)


def check_after_gc(f: Filled, report: Any) -> None:
    """What gc must have done to ``filled`` with retention 4 weeks, max_versions 2, no grace."""
    root = f.root
    assert report.dry_run is False and report.vacuumed
    assert report.stale_entries == [f.stale_path]
    assert sorted(report.missing_files) == sorted([f.missing_cache_path, f.missing_feature_path])
    assert report.old_versions == f.retired_paths
    assert sorted(report.orphan_files) == sorted(f.orphans)
    assert report.busy == []
    assert report.bytes_freed >= sum(len(b) for b in (b"PAR1 not really", b"half written", b"orphan", b"tmp", b"tmp"))
    for rel in [*f.orphans, f.stale_path, *f.retired_paths]:
        assert not (root / rel).exists(), rel
    assert not list((root / "cache" / ".locks").glob("*.lock")), "unused lock files left"
    with Store.open(root) as store:
        assert store.verify().ok, store.verify().problems
        referenced = store.catalog.referenced_paths()
        assert f.stale_path not in referenced and f.missing_cache_path not in referenced
        assert f.missing_feature_path not in referenced and not set(f.retired_paths) & referenced
        assert {e.version for e in store.catalog.all_feature_entries()} == {2, 3}
        on_disk = {str(p.relative_to(root)) for p in root.rglob("*.parquet")}
        assert on_disk == referenced, "a file without a row or a row without a file survived gc"
        assert not list(root.rglob("*.tmp"))
        # live data still reads, unchanged
        assert_frame_equal(store.get_historical(entities(), "fs"), f.before_v3)
        assert_frame_equal(store.get_historical(entities(), "fs@2"), f.before_v2)
        # cached results that were not stale still hit; the collected ones are computed again
        n = starts(f.log, "fresh")
        for symbol in SYMBOLS:
            got = store.get_or_compute(symbol, make_raw(symbol), f.fresh, slow_summary)
            assert_frame_equal(got, summarise(make_raw(symbol), f.fresh))
        assert starts(f.log, "fresh") == n
        stale = {"log": str(f.log), "name": "stale", "k": 2}
        assert_frame_equal(store.get_or_compute("S0001", make_raw("S0001"), stale, slow_summary),
                           summarise(make_raw("S0001"), stale))
        assert starts(f.log, "stale") == 2
        again = store.gc(retention_weeks=4, max_versions=2, orphan_grace_seconds=0)
        assert again.files_deleted == 0 and again.missing_files == [] and again.bytes_freed == 0


# --- library -------------------------------------------------------------------------------------------------


def test_verify_finds_missing_files_before_gc(filled: Filled) -> None:
    with Store.open(filled.root) as store:
        report = store.verify()
    assert not report.ok
    assert sorted(p["path"] for p in report.problems) == sorted([filled.missing_cache_path,
                                                                 filled.missing_feature_path])
    assert report.checked == 4 + 2 + 6  # cache entries, bar snapshots, feature entries


def test_gc_dry_run_changes_nothing(filled: Filled) -> None:
    """gc --dry-run reports exactly what the real gc then deletes, and changes no file and no catalog row."""
    before = snapshot(filled.root)
    with Store.open(filled.root) as store:
        dry = store.gc(retention_weeks=4, max_versions=2, dry_run=True, orphan_grace_seconds=0)
    after = snapshot(filled.root)
    assert after[1] == before[1], "a dry run changed catalog rows"
    assert after[0] == before[0], f"a dry run changed files: {set(after[0].items()) ^ set(before[0].items())}"
    assert dry.dry_run and not dry.vacuumed and dry.lock_files == 0
    with Store.open(filled.root) as store:
        real = store.gc(retention_weeks=4, max_versions=2, orphan_grace_seconds=0)
    for name in ("stale_entries", "old_versions", "missing_files", "orphan_files", "busy"):
        assert sorted(getattr(dry, name)) == sorted(getattr(real, name)), name
    assert dry.bytes_freed == real.bytes_freed > 0
    check_after_gc(filled, real)


def test_gc_removes_every_kind_of_leftover(filled: Filled) -> None:
    with Store.open(filled.root) as store:
        report = store.gc(retention_weeks=4, max_versions=2, orphan_grace_seconds=0)
    check_after_gc(filled, report)


def test_gc_with_zero_retention_drops_every_unheld_entry(filled: Filled) -> None:
    with Store.open(filled.root) as store:
        report = store.gc(retention_weeks=0, orphan_grace_seconds=0)
        assert len(report.stale_entries) == 3 and report.old_versions == []
        assert store.catalog.cache_entries() == []
        assert store.verify().ok
        assert {e.version for e in store.catalog.all_feature_entries()} == {1, 2, 3}
        assert_frame_equal(store.get_historical(entities(), "fs"), filled.before_v3)


def test_gc_grace_period_protects_young_offline_files(filled: Filled) -> None:
    """An unreferenced features/ or bars/ file younger than the grace period may be one being committed right now:
    left alone; once older, deleted. Cache files need no grace (their key's lock says whether they are busy)."""
    root = filled.root
    offline = [rel for rel in filled.orphans if not rel.startswith("cache/")]
    with Store.open(root) as store:
        report = store.gc(retention_weeks=4)  # default grace: one hour
        assert sorted(report.orphan_files) == sorted(rel for rel in filled.orphans if rel.startswith("cache/"))
        for rel in offline:
            assert (root / rel).exists()
        old = time.time() - 2 * 3600
        for rel in offline:
            os.utime(root / rel, (old, old))
        report = store.gc(retention_weeks=4)
        assert sorted(report.orphan_files) == sorted(offline)
    assert not list(root.rglob("*.tmp"))


def test_gc_leaves_a_key_held_by_another_process_alone(filled: Filled) -> None:
    """While another process holds a key (computing or publishing it), gc neither deletes its entry nor its
    temporary file nor its lock file; once released, the next gc does."""
    root = filled.root
    tmp = f"cache/s_S0001/.{filled.stale_key}.parquet.1234abcd.tmp"
    (root / tmp).write_bytes(b"being written")
    lock_file = root / "cache" / ".locks" / f"{filled.stale_key}.lock"
    with Child() as child:
        child.expect("ready")
        child.send({"op": "hold", "root": str(root), "key": filled.stale_key})
        child.expect("held")
        with Store.open(root) as store:
            report = store.gc(retention_weeks=4, max_versions=2, orphan_grace_seconds=0)
            assert sorted(report.busy) == sorted([filled.stale_path, tmp])
            assert filled.stale_path not in report.stale_entries and tmp not in report.orphan_files
            assert (root / filled.stale_path).is_file() and (root / tmp).is_file() and lock_file.exists()
            assert store.catalog.cache_get(filled.stale_key) is not None
            assert store.verify().ok
            assert sorted(report.orphan_files) == sorted(filled.orphans)  # the rest was collected
            child.send("release")
            child.expect("released")
            assert child.finish() == 0, child.stderr
            report = store.gc(retention_weeks=4, orphan_grace_seconds=0)
            assert report.stale_entries == [filled.stale_path] and report.orphan_files == [tmp]
            assert report.busy == []
            assert store.catalog.cache_get(filled.stale_key) is None and not (root / tmp).exists()
            assert not lock_file.exists()
            assert store.verify().ok


def test_gc_rejects_bad_arguments(filled: Filled) -> None:
    with Store.open(filled.root) as store:
        with pytest.raises(InvalidInputError, match="retention"):
            store.gc(retention_weeks=-1)
        with pytest.raises(InvalidInputError, match="max versions"):
            store.gc(max_versions=0)
    assert all((filled.root / rel).exists() for rel in filled.orphans)


def test_gc_on_an_empty_store(tmp_path: Path) -> None:
    with Store.open(tmp_path / "empty") as store:
        report = store.gc(retention_weeks=0, max_versions=1, orphan_grace_seconds=0)
        assert report.files_deleted == 0 and report.missing_files == [] and report.vacuumed
        assert store.verify().ok and store.verify().checked == 0


# --- command line ------------------------------------------------------------------------------------------------


def test_cli_gc_dry_run(filled: Filled) -> None:
    before = snapshot(filled.root)
    out = run("gc", "--dry-run", "--max-versions", "2", "--grace-minutes", "0", "--root", filled.root)
    assert "gc would delete:" in out
    assert "1 cached results not accessed for 4 weeks" in out
    assert "1 files of versions beyond the newest 2" in out
    assert "5 orphan files" in out and "2 catalog rows whose file is missing" in out
    assert "(would be)" in out and "vacuumed" not in out
    assert snapshot(filled.root) == before


def test_cli_gc_json_file(filled: Filled, tmp_path: Path) -> None:
    """--json FILE writes the report; the store ends up as after the library's gc."""
    path = tmp_path / "gc.json"
    out = run("gc", "--json", path, "--max-versions", "2", "--grace-minutes", "0", "--root", filled.root)
    assert "gc deleted:" in out
    data = json.loads(path.read_text())
    assert data["dry_run"] is False and data["vacuumed"] is True
    assert data["stale_entries"] == [filled.stale_path] and data["old_versions"] == filled.retired_paths
    assert sorted(data["orphan_files"]) == sorted(filled.orphans)
    assert sorted(data["missing_files"]) == sorted([filled.missing_cache_path, filled.missing_feature_path])
    assert data["files_deleted"] == 1 + 1 + 5 and data["bytes_freed"] > 0
    result = runner.invoke(app, ["gc", "--json", "-", "--root", str(filled.root)])
    assert result.exit_code == 0, result.output
    again = json.loads(result.stdout)
    assert again["files_deleted"] == 0 and again["missing_files"] == []
    with Store.open(filled.root) as store:
        assert store.verify().ok
        assert_frame_equal(store.get_historical(entities(), "fs"), filled.before_v3)


@pytest.mark.slow  # CLI processes
def test_cli_verify(filled: Filled, tmp_path: Path) -> None:
    """Exit 1 naming each broken path (missing files, then a corrupted cache entry); exit 0 once repaired."""
    out = run("verify", "--root", filled.root, code=1)
    assert filled.missing_cache_path in out and filled.missing_feature_path in out and "2 broken" in out
    run("gc", "--grace-minutes", "0", "--root", filled.root)
    assert "verify: 9 entries checked, ok" in run("verify", "--root", filled.root)  # 2 cached, 2 bars, 5 features
    with Store.open(filled.root) as store:
        entry = store.catalog.cache_entries("S0000")[0]
    path = filled.root / entry.path
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x55
    path.write_bytes(bytes(data))
    out = run("verify", "--root", filled.root, code=1)
    assert entry.path in out and "1 broken" in out
    report_file = tmp_path / "verify.json"
    run("verify", "--json", report_file, "--root", filled.root, code=1)
    report = json.loads(report_file.read_text())
    assert report["ok"] is False and [p["path"] for p in report["problems"]] == [entry.path]
    # as a real process too: the exit code a cron job sees
    proc = subprocess.run([sys.executable, "-m", "pitstore", "verify", "--root", str(filled.root)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 1 and entry.path in proc.stderr + proc.stdout
    with Store.open(filled.root) as store:  # the next use repairs it
        raw = make_raw("S0000")
        config = {"log": str(filled.log), "name": "fresh", "k": 1}
        assert_frame_equal(store.get_or_compute("S0000", raw, config, slow_summary), summarise(raw, config))
    assert "entries checked, ok" in run("verify", "--root", filled.root)


def test_cli_cache_warm_clear_cleanup_and_stats(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """cache warm computes every symbol x config once (a second run computes nothing); stats --json shows it;
    cache cleanup and cache clear delete what they say."""
    root = tmp_path / "store"
    log = tmp_path / "log"
    log.mkdir()
    bars = synthetic_bars(3, 60, seed=2)
    with Store.open(root) as store:
        store.ingest(bars)
    (tmp_path / "warm_user_code.py").write_text("from cache_workers import slow_summary as compute\n")
    monkeypatch.chdir(tmp_path)
    configs = json.dumps([{"log": str(log), "name": "warm", "k": k} for k in (1, 2)])
    out = run("cache", "warm", "--compute", "warm_user_code:compute", "--configs", configs, "--root", root)
    assert "cache warm: 6 computed, 0 already stored, 0 failed symbols" in out
    assert starts(log, "warm") == 6
    (tmp_path / "configs.json").write_text(configs)
    out = run("cache", "warm", "--compute", "warm_user_code:compute", "--configs", "configs.json", "--root", root)
    assert "cache warm: 0 computed, 6 already stored, 0 failed symbols" in out
    assert starts(log, "warm") == 6
    out = run("cache", "warm", "--compute", "warm_user_code:compute", "--configs", configs, "--symbols",
              "S0001,NOPE", "--root", root, code=1)
    assert "0 computed, 2 already stored, 1 failed symbols" in out and "failed NOPE" in out
    assert "not valid JSON" in run("cache", "warm", "--compute", "warm_user_code:compute", "--configs", "[{",
                                   "--root", root, code=1)
    assert "cannot import" in run("cache", "warm", "--compute", "no_such_module:f", "--configs", "[]",
                                  "--root", root, code=1)

    with Store.open(root) as store:  # the library hits what the command line warmed
        for symbol in ("S0000", "S0002"):
            got = store.get_or_compute(symbol, store.bars(symbol), json.loads(configs)[1], slow_summary)
            assert_frame_equal(got, summarise(store.bars(symbol), json.loads(configs)[1]))
        assert starts(log, "warm") == 6
        want = store.stats()["cache"]
    result = runner.invoke(app, ["stats", "--json", "--root", str(root)])
    assert result.exit_code == 0, result.output
    cache = json.loads(result.stdout)["cache"]
    assert cache["hash_method"] == "xxh3-128"
    assert (cache["entries"], cache["misses"], cache["hits"]) == (6, 6, 2)
    assert cache["hit_rate"] == pytest.approx(0.25)
    assert set(cache["per_symbol"]) == {"S0000", "S0001", "S0002"}
    assert cache["per_symbol"]["S0001"]["entries"] == 2 and cache["per_symbol"]["S0000"]["hits"] == 1
    for name in ("entries", "bytes", "hits", "misses", "hash_bytes"):
        assert cache[name] == want[name], name
    assert "compute cache" in run("stats", "--root", root)

    with Store.open(root) as store:
        key = store.catalog.cache_entries("S0002")[0].key
    set_last_access(root, key, weeks_ago=2)
    assert "cache cleanup: 1 results deleted" in run("cache", "cleanup", "--days", "7", "--root", root)
    assert "cache clear: 2 results deleted" in run("cache", "clear", "--symbol", "S0000", "--root", root)
    with Store.open(root) as store:
        assert sorted(e.symbol for e in store.catalog.cache_entries()) == ["S0001", "S0001", "S0002"]
    assert "cache clear: 3 results deleted" in run("cache", "clear", "--root", root)
    with Store.open(root) as store:
        assert store.catalog.cache_entries() == [] and store.verify().ok
        assert not [p for p in (root / "cache").rglob("*.parquet")]
    out = run("cache", "warm", "--compute", "warm_user_code:compute", "--configs", configs, "--root", root)
    assert "cache warm: 6 computed" in out


# --- retired versions ----------------------------------------------------------------------------------------------


def test_a_version_gc_retired_is_gone_from_reads_and_listings(filled: Filled) -> None:
    """After gc --max-versions 2 deleted version 1's entries, version 1 is retired: store.read, get_historical,
    get_features and resolve raise VersionNotFoundError (never an empty answer that looks live), versions() and
    stats() list only 2 and 3, and the latest version is unchanged."""
    at = datetime(2015, 2, 10, tzinfo=UTC)
    with Store.open(filled.root) as store:
        assert store.stats()["versions"] == ["fs@1", "fs@2", "fs@3"]
        report = store.gc(max_versions=2, orphan_grace_seconds=0)
        assert report.retired_versions == ["fs@1"]
        assert [v.version for v in store.versions("fs")] == [2, 3]
        assert store.stats()["versions"] == ["fs@2", "fs@3"] and store.stats()["feature_sets"] == ["fs"]
        for read in (lambda: store.read("fs@1"), lambda: store.read("fs@1:r", symbols=SYMBOLS),
                     lambda: store.get_historical(entities(), "fs@1"),
                     lambda: store.get_historical(entities(), ["fs@1:r", "fs@2:r"]),
                     lambda: store.get_features("S0000", at, "fs@1"), lambda: store.resolve("fs@1:r")):
            with pytest.raises(pitstore.VersionNotFoundError, match="no version 1; versions: 2, 3"):
                read()
        assert store.resolve("fs").version == 3
        assert_frame_equal(store.get_historical(entities(), "fs@2"), filled.before_v2)
        assert store.gc(max_versions=2, orphan_grace_seconds=0).retired_versions == []


def test_gc_dry_run_names_the_versions_it_would_retire_and_retires_none(filled: Filled) -> None:
    with Store.open(filled.root) as store:
        assert store.gc(max_versions=1, dry_run=True, orphan_grace_seconds=0).retired_versions == ["fs@1", "fs@2"]
        assert [v.version for v in store.versions("fs")] == [1, 2, 3]
        assert store.get_features("S0000", datetime(2015, 2, 10, tzinfo=UTC), "fs@2").status == "ok"


def test_registering_a_retired_definition_again_brings_its_number_back(filled: Filled) -> None:
    """Version numbers are write-once: the retired definition, registered again, is version 1 again (readable once
    backfilled), and a new definition still gets a new number."""
    with Store.open(filled.root) as store:
        store.gc(max_versions=2, orphan_grace_seconds=0)
        assert store.backfill(feature_set(1)).version == 1
        assert [v.version for v in store.versions("fs")] == [1, 2, 3]
        got = store.get_historical(entities(), "fs@1")
        assert got["status"].to_list() == ["ok"] * 3 and got["r"].null_count() == 0
        assert store.register(feature_set(4)) == 4


def test_cli_reading_a_retired_version_fails_cleanly(filled: Filled, tmp_path: Path) -> None:
    """pitstore get of a retired version: exit 1 and one line naming it; gc says what it retired; stats lists the
    readable versions only."""
    out = run("gc", "--max-versions", "2", "--grace-minutes", "0", "--root", filled.root)
    assert "1 files of versions beyond the newest 2 (retired: fs@1)" in out
    result = runner.invoke(app, ["get", "fs@1:r", "--symbols", "S0000", "--root", str(filled.root)])
    assert result.exit_code == 1 and "Traceback" not in result.output
    assert "feature set 'fs' has no version 1; versions: 2, 3" in " ".join(result.output.split())
    path = tmp_path / "lookups.parquet"
    entities().write_parquet(path)
    result = runner.invoke(app, ["get", "fs@1", "--entities", str(path), "--root", str(filled.root)])
    assert result.exit_code == 1 and "has no version 1" in result.output
    stats = json.loads(run("stats", "--json", "--root", filled.root))
    assert stats["versions"] == ["fs@2", "fs@3"]

"""``pitstore migrate``: an embedded store moved to team mode (the real PostgreSQL, one schema per test; data on a
real S3-compatible server process) and back answers exactly as before: every entry, live and superseded, the
versions, the compute cache and its statistics, history archives and the retention horizon. Broken source files
are reported and not copied, a target holding another store is refused, and a migration SIGKILLed midway
completes when run again."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from cache_workers import make_raw, slow_summary, starts
from clirun import run
from s3_server import S3Server, s3_server, s3_url  # noqa: F401  (fixtures)
from servers import drop_schema

from pitstore import Store, standard_features
from pitstore.catalog.base import TABLES
from pitstore.config import Settings
from pitstore.errors import ConfigError, ConflictError
from pitstore.offline.entries import put_entry
from pitstore.ops.migrate import MARKER, migrate
from pitstore.testing import synthetic_bars

SYMBOLS = ["S0000", "S0001", "S0002"]


@pytest.fixture
def catalog_url(postgres_url: str, namespace: str) -> Iterator[str]:
    yield f"{postgres_url}?schema={namespace}"
    drop_schema(postgres_url, namespace)


def _team(tmp_path: Path, catalog_url: str, s3_url: str, server: S3Server) -> Settings:  # noqa: F811
    return Settings.load(root=tmp_path / "team-local", catalog_url=catalog_url, data_url=s3_url,
                         data_options=server.options)


def _fill(store: Store, log_dir: Path) -> datetime:
    """A store with something in every table: two versions, a restatement (superseded entries), a cache entry with
    a hit, a history archive and sync marks, online request counts, a retention horizon. Returns a time before the
    restatement."""
    bars = synthetic_bars(len(SYMBOLS), 240, seed=5)
    store.ingest(bars.filter(pl.col("ts") < pl.col("ts").max() - pl.duration(days=30)))
    store.backfill(standard_features())
    store.backfill(standard_features(periods_per_year=250))  # v2 of daily_core
    known = datetime.now(UTC)
    time.sleep(0.002)  # the restatement is recorded after `known`
    restated = bars.with_columns(pl.when(pl.int_range(pl.len()) == 200).then(pl.col(c) * 1.02)
                                 .otherwise(pl.col(c)).alias(c) for c in ("open", "high", "low", "close"))
    store.ingest(restated)
    store.backfill(standard_features())
    more = synthetic_bars(len(SYMBOLS), 250, seed=5)  # the same series, ten bars longer
    store.ingest(more.filter(pl.col("ts") > bars["ts"].max()))  # pure appends: each snapshot gains a segment
    store.backfill(standard_features())
    assert store.compact().entries > 0  # entries of a version sharing one file
    assert any(e.parts is not None for e in store.catalog.all_bar_entries())
    config = {"log": str(log_dir), "name": "mig", "k": 3}
    store.get_or_compute("AAA", make_raw("AAA"), config, slow_summary)
    store.get_or_compute("AAA", make_raw("AAA"), config, slow_summary)  # a hit: statistics to carry over
    rows = pl.DataFrame({"symbol": ["S0000"], "ts": [1], "recorded_at": [2], "x": [1.5]})
    path, size, digest = put_entry(store.storage, "history/daily_core@1", rows)
    from pitstore.catalog.base import HistoryArchive

    store.catalog.commit_history_archive(HistoryArchive(0, "daily_core@1", path, 1, 1, 1, 2, size, digest, 0))
    first = store.catalog.all_feature_entries()[0]
    store.catalog.mark_history_synced("daily_core@1", {first.id: first.first_ts})
    store.catalog.add_requests({"S0000": 3, "S0001": 1})
    store.catalog.drop_superseded(1)  # nothing that old: only records the replay horizon
    return known


def _answers(store: Store, known: datetime, log_dir: Path) -> dict[str, Any]:
    """What users see, and every catalog row (ids and times included: the same store, moved)."""
    rng = np.random.default_rng(1)
    ts = store.bars("S0000")["ts"].dt.epoch("us").to_numpy()
    entities = pl.DataFrame({"symbol": rng.choice([*SYMBOLS, "NOPE"], 500),
                             "ts": pl.Series(rng.integers(ts.min(), ts.max() + 86_400_000_000, 500))
                             .cast(pl.Datetime("us", "UTC"))})
    before = starts(log_dir, "mig")
    hit = store.get_or_compute("AAA", make_raw("AAA"), {"log": str(log_dir), "name": "mig", "k": 3}, slow_summary)
    assert starts(log_dir, "mig") == before, "the compute cache missed"
    out: dict[str, Any] = {
        "historical": store.get_historical(entities, "daily_core").to_dicts(),
        "historical_v1_then": store.get_historical(entities, "daily_core@1", as_known_at=known).to_dicts(),
        "read": store.read("daily_core@1", SYMBOLS).to_dicts(),
        "read_v2": store.read("daily_core@2").to_dicts(),
        "versions": [(v.version, v.fingerprint, v.entries, v.live_entries, v.rows) for v in
                     store.versions("daily_core")],
        "hit": hit.to_dicts(),
        "replay_from": store.catalog.replay_from(),
        "store_id": store.catalog.store_id(),
    }
    for table in TABLES:
        rows = store.catalog.dump_rows(table)
        # The hit above counts (recorded in the background): those counters move. The migration itself compares
        # every column (report.ok).
        if table == "cache_entries":
            rows = [r[:11] for r in rows]
        elif table == "cache_stats":
            rows = [(r[0], r[2]) for r in rows]
        out[table] = sorted(r for r in rows if not (table == "store_meta" and r[0] == MARKER))
    return out


def test_embedded_to_team_and_back_answers_the_same(tmp_path: Path, catalog_url: str, s3_url: str,  # noqa: F811
                                                    s3_server: S3Server) -> None:  # noqa: F811
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    with Store.open(tmp_path / "embedded") as store:
        known = _fill(store, log_dir)
        counts = {t: len(store.catalog.dump_rows(t)) for t in TABLES}
    team = _team(tmp_path, catalog_url, s3_url, s3_server)
    report = migrate(Settings.load(root=tmp_path / "embedded"), team)
    assert report.ok and not report.resumed, report.to_dict()
    assert report.copied == {"bars": counts["bar_entries"], "features": counts["feature_entries"], "cache": 1,
                             "history": 1}
    assert report.bytes_copied > 0 and report.checked == report.entries
    assert {t: report.rows[t] for t in TABLES if t != "store_meta"} == {t: n for t, n in counts.items()
                                                                       if t != "store_meta"}
    again = migrate(Settings.load(root=tmp_path / "embedded"), team)  # a finished target: checked again only
    assert again.ok and again.copied == {} and not again.resumed
    with Store.open(tmp_path / "embedded") as store:
        want = _answers(store, known, log_dir)
    with Store(team) as store:
        assert store.storage.url.startswith("s3://") and store.verify().ok
        got = _answers(store, known, log_dir)
        assert got.keys() == want.keys()
        for key in want:
            assert got[key] == want[key], key
        assert any(e.superseded_at is not None for e in store.catalog.all_feature_entries())
        store.ingest(synthetic_bars(1, 10, seed=8).with_columns(pl.lit("NEW").alias("symbol")))  # new ids are new
        assert len({e.id for e in store.catalog.all_bar_entries()}) == counts["bar_entries"] + 1
    # Back, through the command line: a summary, then an embedded store that answers the same.
    out = run("migrate", "--from-catalog", catalog_url, "--from-data", s3_url, "--from-data-options",
              s3_server.options_json, "--to", tmp_path / "back")
    assert "files copied" in out and "every table identical" in out and "bytes copied" in out
    with Store.open(tmp_path / "back") as store:
        assert store.storage.url == str(tmp_path / "back") and store.verify().ok
        back = _answers(store, known, log_dir)
    for key in want:
        if key not in ("bar_entries", "read", "historical"):  # the NEW symbol's ingest is part of the store now
            assert back[key] == want[key], key
    assert [r for r in back["bar_entries"] if r[1] != "NEW"] == want["bar_entries"]


def test_a_target_holding_another_store_is_refused(tmp_path: Path, catalog_url: str) -> None:
    with Store.open(tmp_path / "a") as a:
        a.ingest(synthetic_bars(1, 20))
    with Store.open(tmp_path / "b") as b:
        b.ingest(synthetic_bars(1, 20, seed=2))
    with pytest.raises(ConflictError, match="already holds a store"):
        migrate(Settings.load(root=tmp_path / "a"), Settings.load(root=tmp_path / "b"))
    with Store.open(tmp_path / "team", catalog_url=catalog_url) as team:
        team.ingest(synthetic_bars(1, 20, seed=3))
    with pytest.raises(ConflictError, match="already holds a store"):
        migrate(Settings.load(root=tmp_path / "a"), Settings.load(root=tmp_path / "t2", catalog_url=catalog_url))
    # The command line refuses a side it cannot place (a team catalog alone: its data would go to a temporary root).
    assert "--to-data" in run("migrate", "--from", tmp_path / "a", "--to-catalog", catalog_url, code=1)
    assert "give the source" in run("migrate", "--to", tmp_path / "d", code=1)
    assert "--from-data" in run("migrate", "--from-catalog", catalog_url, "--to", tmp_path / "d", code=1)
    with pytest.raises(ConfigError, match="same catalog"):
        migrate(Settings.load(root=tmp_path / "a"), Settings.load(root=tmp_path / "a"))
    # A finished migration's target written since is not overwritten by a second run either.
    assert migrate(Settings.load(root=tmp_path / "a"), Settings.load(root=tmp_path / "c")).ok
    with Store.open(tmp_path / "c") as c:
        c.ingest(synthetic_bars(1, 20, seed=4).with_columns(pl.lit("ZZZ").alias("symbol")))
    with pytest.raises(ConflictError, match="written after the migration finished"):
        migrate(Settings.load(root=tmp_path / "a"), Settings.load(root=tmp_path / "c"))
    with pytest.raises(ConflictError, match="holds store"):  # a migrated target of another source
        migrate(Settings.load(root=tmp_path / "b"), Settings.load(root=tmp_path / "c"))


def test_a_corrupted_source_file_is_reported_not_copied(tmp_path: Path) -> None:
    fs = standard_features()
    with Store.open(tmp_path / "src") as store:
        store.ingest(synthetic_bars(2, 120))
        store.backfill(fs)
        broken = store.catalog.feature_entries("daily_core", 1, ["S0001"])[0]
    target = tmp_path / "src" / broken.path
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    report = migrate(Settings.load(root=tmp_path / "src"), Settings.load(root=tmp_path / "dst"))
    assert not report.ok
    assert report.corrupt == [{"kind": "features", "path": broken.path,
                               "problem": "source file: content does not match its hash"}]
    assert not (tmp_path / "dst" / broken.path).exists()
    with Store.open(tmp_path / "dst") as dst:
        assert broken.id not in {e.id for e in dst.catalog.all_feature_entries()}
        assert dst.verify().ok  # what was copied is intact
    # Repaired at the source, the rerun copies the rebuilt entry and finishes.
    with Store.open(tmp_path / "src") as store:
        assert store.verify(repair=True, feature_sets=[fs]).ok
    again = migrate(Settings.load(root=tmp_path / "src"), Settings.load(root=tmp_path / "dst"))
    assert again.ok and again.resumed and again.copied.get("features") == 1, again.to_dict()
    with Store.open(tmp_path / "src") as a, Store.open(tmp_path / "dst") as b:
        assert a.read("daily_core").equals(b.read("daily_core"))


_CHILD = """
import sys, pitstore.ops.migrate as m
from pitstore.config import Settings
m._BATCH_ROWS = 2  # many commits, so the kill lands between some of them
src, catalog_url, data_url, options = sys.argv[1:5]
def say(kind, done, total):
    print(kind, done, total, flush=True)
r = m.migrate(Settings.load(root=src), Settings.load(root=src + "-local", catalog_url=catalog_url, data_url=data_url,
                                                     data_options=options), progress=say)
print("finished", r.ok, flush=True)
"""


@pytest.mark.slow  # a real process SIGKILLed midway, then a full rerun
def test_a_migration_killed_midway_completes_when_run_again(tmp_path: Path, catalog_url: str,
                                                            s3_url: str, s3_server: S3Server) -> None:  # noqa: F811
    log_dir = tmp_path / "log"
    log_dir.mkdir()
    with Store.open(tmp_path / "embedded") as store:
        known = _fill(store, log_dir)
        want = _answers(store, known, log_dir)
    seed = random.SystemRandom().randrange(2**32)
    lines = random.Random(seed).randrange(1, 12)  # progress lines before the kill (about 22 in all)
    child = subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path / "embedded"), catalog_url, s3_url,
                              s3_server.options_json], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert child.stdout is not None
    seen = [child.stdout.readline() for _ in range(lines)]
    assert all(seen) and not any(s.startswith("finished") for s in seen), (seed, seen, child.stderr)
    child.send_signal(signal.SIGKILL)
    assert child.wait(timeout=30) == -signal.SIGKILL
    team = _team(tmp_path, catalog_url, s3_url, s3_server)
    report = migrate(Settings.load(root=tmp_path / "embedded"), team)
    assert report.ok and report.resumed, (seed, report.to_dict())
    assert sum(report.kept.values()) > 0, seed  # the killed run's committed rows were kept, not copied again
    with Store(team) as store:
        assert store.verify().ok
        got = _answers(store, known, log_dir)
    for key in want:
        assert got[key] == want[key], (seed, key)  # no duplicates, nothing missing


def test_files_left_in_place_on_a_shared_disk_are_checked_not_copied(tmp_path: Path, catalog_url: str) -> None:
    """Only the catalog moves (--to-data is the source's own directory): no byte is copied, every file is still
    checked, and the team store reads the same files."""
    with Store.open(tmp_path / "shared") as store:
        store.ingest(synthetic_bars(2, 90))
        store.backfill(standard_features())
        want = store.read("daily_core")
    report = migrate(Settings.load(root=tmp_path / "shared"),
                     Settings.load(root=tmp_path / "local", catalog_url=catalog_url, data_url=str(tmp_path / "shared")))
    assert report.ok and report.bytes_copied == 0 and report.copied == {"bars": 2, "features": 2}
    with Store.open(tmp_path / "local", catalog_url=catalog_url, data_url=str(tmp_path / "shared")) as team:
        assert team.read("daily_core").equals(want) and team.verify().ok


def test_the_history_tier_rows_stay_the_migrated_stores(tmp_path: Path, catalog_url: str, postgres_url: str,
                                                        namespace: str) -> None:
    """The store id moves with the catalog, so the team store reads the rows the embedded one materialized into the
    PostgreSQL history tier (they are keyed by store id), without copying them; a different store does not."""
    from test_history_tier import DAYS, _bars, _delete_tables, _sets

    core, _ = _sets(namespace)
    tier = {"online_url": "memory://", "postgres_url": postgres_url, "history_days": DAYS}
    try:
        with Store.open(tmp_path / "embedded", **tier) as store:
            store.ingest(_bars())
            store.backfill(core)
            assert store.materialize(core) == 4
            assert store.serving.history is not None
            want = store.serving.history.db.scan(f"{core.name}@1", all_versions=True)
        assert want.num_rows > 0
        assert migrate(Settings.load(root=tmp_path / "embedded"),
                       Settings.load(root=tmp_path / "team", catalog_url=catalog_url,
                                     data_url=str(tmp_path / "team-data"))).ok
        with Store.open(tmp_path / "team", catalog_url=catalog_url, data_url=str(tmp_path / "team-data"),
                        **tier) as team, Store.open(tmp_path / "other", **tier) as other:
            other.register(core)
            assert team.serving.history is not None and other.serving.history is not None
            assert team.serving.history.db.scan(f"{core.name}@1", all_versions=True).equals(want)
            assert other.serving.history.db.scan(f"{core.name}@1", all_versions=True).num_rows == 0
    finally:
        _delete_tables(postgres_url, namespace + "_")

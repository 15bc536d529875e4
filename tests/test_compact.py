"""Compaction (pitstore.offline.compact) changes no answer: a compacted store answers every get_historical, read and
as_known_at question exactly as its uncompacted twin (restatements, superseded entries, a symbol whose entries
are split between a compacted file and its own files); gc, retention and repair treat the shared file as shared;
team stores (PostgreSQL catalog, S3 data) compact too."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from polars.testing import assert_frame_equal
from s3_server import S3Server, s3_server, s3_url  # noqa: F401  (fixtures)
from servers import drop_schema
from test_prune import DAY, N_BARS, START, SYMBOLS, feature_sets, windows

from pitstore import Store
from pitstore.catalog.base import FeatureEntry
from pitstore.offline import entries as offline_module
from pitstore.offline.entries import EntryReader, is_compacted, put_entry
from pitstore.ops import housekeeping
from pitstore.rules import to_us
from pitstore.testing import synthetic_bars

FEATURES = ["plain:r", "plain:m", "lagged:lr", "lagged:le"]


def _facts(entries: list[FeatureEntry]) -> list[tuple[Any, ...]]:
    """What compaction must not change of an entry: all but where its rows are."""
    return sorted((e.id, e.feature_set, e.version, e.symbol, e.n_rows, e.first_ts, e.last_ts, e.bars_entry_id,
                   e.recorded_at, e.superseded_at) for e in entries)


def _build(root: Path) -> list[int]:
    """test_prune's store: several entries per symbol, one restatement, gaps; the times between the steps."""
    bars = synthetic_bars(len(SYMBOLS), N_BARS, seed=11, gaps=0.15)
    known: list[int] = []
    with Store.open(root) as store:
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
    return known


@pytest.fixture(scope="module")
def twins(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Store, Store, list[int]]]:
    """(uncompacted, compacted) copies of one store, and the as_known_at times between its steps. In the
    compacted one, S0000's newest entry of each set is back in its own file (as if written after compaction)."""
    saved = offline_module.ROW_GROUP_ROWS
    offline_module.ROW_GROUP_ROWS = 7  # many row groups per symbol: what a pruned read of a compacted file skips
    try:
        base = tmp_path_factory.mktemp("compact")
        known = _build(base / "plain")
        shutil.copytree(base / "plain", base / "packed")
        with Store.open(base / "plain") as plain, Store.open(base / "packed") as packed:
            before = {n: packed.catalog.feature_entries(n, 1) for n in ("plain", "lagged")}
            report = packed.compact()
            assert sorted(report.versions) == ["lagged@1", "plain@1"] and not report.left_for_gc
            assert report.files_deleted and all(not (packed.root / p).exists() for p in report.files_deleted)
            for name, old in before.items():
                now = packed.catalog.feature_entries(name, 1)
                assert _facts(now) == _facts(old)
                # Incremental backfills wrote their new rows into shared (compacted) files already: those stay,
                # the loose entries (full backfills) all went into one new file.
                shared = {e.path for e in old if is_compacted(e.path)}
                assert shared and len({e.path for e in old}) > len(shared) + 1
                assert len({e.path for e in now} - shared) == 1 and all(is_compacted(e.path) for e in now)
                last = now[[e.symbol for e in now].index("S0001") - 1]  # S0000's newest
                columns = ["symbol", "ts", *{fs.name: fs for fs in feature_sets()}[name].columns]
                rows = EntryReader(packed.root, 0).read_of([last], columns)
                assert rows is not None and rows.height == last.n_rows
                own, size, digest = put_entry(packed.storage, f"features/{name}/v1/s_S0000", rows)
                assert packed.catalog.repoint_features([(last.id, last.path, own, size, digest)]) == 1
            superseded = [e for e in packed.catalog.all_feature_entries() if e.superseded_at is not None]
            where = {e.id: e.path for e in plain.catalog.all_feature_entries()}
            assert superseded and all(e.path == where[e.id] for e in superseded)  # only live ones move
            assert packed.verify().ok
            yield plain, packed, known
    finally:
        offline_module.ROW_GROUP_ROWS = saved


def _answers(store: Store, entities: pl.DataFrame, known: datetime | None,
             span: tuple[datetime, datetime]) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    store.reader = EntryReader(store.root)  # nothing cached from an earlier example
    hist = store.get_historical(entities, FEATURES, as_known_at=known)
    rows = store.read(["plain", "lagged"], start=span[0], end=span[1], as_known_at=known)
    every = store.read(["plain", "lagged"], symbols=SYMBOLS[:2], as_known_at=known)
    return hist, rows, every


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                 HealthCheck.function_scoped_fixture])
@given(windows())
def test_compacted_store_answers_as_uncompacted(twins: tuple[Store, Store, list[int]],
                                                case: tuple[pl.DataFrame, int, tuple[int, int]]) -> None:
    plain, packed, known_times = twins
    entities, known_i, (lo, hi) = case
    known = None if known_i < 0 or known_i >= len(known_times) else \
        datetime.fromtimestamp(known_times[known_i] / 1e6, UTC)
    span = (datetime.fromtimestamp(lo / 1e6, UTC), datetime.fromtimestamp(hi / 1e6, UTC))
    for want, got in zip(_answers(plain, entities, known, span), _answers(packed, entities, known, span),
                         strict=True):
        assert_frame_equal(got, want)


def test_point_reads_and_entry_reads_of_compacted_entries(twins: tuple[Store, Store, list[int]]) -> None:
    """get_features (the router's as-of path) and reads of single entries (history sync, latest rows)."""
    plain, packed, _ = twins
    for symbol in SYMBOLS:
        for day in (0, 39, 41, 80, N_BARS + 2):
            at = START + day * DAY
            assert packed.get_features(symbol, at, FEATURES) == plain.get_features(symbol, at, FEATURES)
        for name in ("plain", "lagged"):
            cols = ["symbol", "ts", *(c.split(":")[1] for c in FEATURES if c.startswith(f"{name}:"))]
            mine = {e.id: e for e in packed.catalog.feature_entries(name, 1, [symbol])}
            for e in plain.catalog.feature_entries(name, 1, [symbol]):
                want = EntryReader(plain.root).read_of([e], cols)
                got = EntryReader(packed.root).read_of([mine[e.id]], cols)
                assert want is not None and got is not None
                assert_frame_equal(got, want)


def test_gc_retention_and_repair_keep_the_shared_file(tmp_path: Path) -> None:
    """Dropping superseded entries and rebuilding a damaged compacted file never costs another entry its rows."""
    _build(tmp_path / "s")
    with Store.open(tmp_path / "s") as store:
        ents = pl.DataFrame({"symbol": SYMBOLS * 40, "ts": [START + (i // 3) * 3 * DAY for i in range(120)]}) \
            .with_columns(pl.col("ts").dt.cast_time_unit("us"))
        store.compact()
        # A restatement after compaction supersedes S0002's entries, which are in the compacted file.
        bars = synthetic_bars(len(SYMBOLS), N_BARS, seed=11, gaps=0.15).filter(pl.col("symbol") == "S0002")
        store.ingest(bars.with_columns(pl.col("volume") * 2), replace_range=True)
        for fs in feature_sets():
            store.backfill(fs)
        want = store.get_historical(ents, FEATURES)
        want_rows = store.read(["plain", "lagged"])
        shared = {e.path for e in store.catalog.all_feature_entries() if e.superseded_at is not None
                  and is_compacted(e.path)}
        assert shared
        report = housekeeping.gc(store.root, store.catalog, store.cache, orphan_grace_seconds=0,
                                 superseded_before=to_us(datetime.now(UTC)))
        assert report.superseded and not shared & set(report.superseded)
        assert shared <= store.catalog.referenced_paths() and all((store.root / p).exists() for p in shared)
        assert store.verify().ok
        store.reader = EntryReader(store.root)
        assert_frame_equal(store.get_historical(ents, FEATURES), want)
        # Damage the compacted file of "plain": every entry in it reads damaged, repair rebuilds each.
        compacted = [e for e in store.catalog.feature_entries("plain", 1) if is_compacted(e.path)]
        path = compacted[0].path  # the file compact() wrote: S0000's first entry was a full backfill's
        inside = [e for e in compacted if e.path == path]
        assert len(inside) > 1
        (store.root / path).write_bytes(b"garbage")
        store.reader = EntryReader(store.root)
        damaged = store.get_historical(ents, "plain")
        assert set(damaged.filter(pl.col("symbol") != "S0002")["status"]) == {"damaged"}
        problems = store.verify().problems
        assert {p["path"] for p in problems} == {path} and len(problems) == len(inside)
        fixed = store.verify(repair=True, feature_sets=feature_sets())
        assert fixed.ok, fixed.problems
        assert len(fixed.repaired) == len(inside) and not (store.root / path).exists()
        store.reader = EntryReader(store.root)
        assert_frame_equal(store.get_historical(ents, FEATURES), want)
        assert_frame_equal(store.read(["plain", "lagged"]), want_rows)


@pytest.fixture
def team(postgres_url: str, namespace: str, s3_url: str, s3_server: S3Server,  # noqa: F811
         tmp_path: Path) -> Iterator[dict[str, Any]]:
    yield {"root": str(tmp_path / "local"), "catalog_url": f"{postgres_url}?schema={namespace}",
           "data_url": s3_url, "data_options": s3_server.options}
    drop_schema(postgres_url, namespace)


def test_team_store_compacts_on_postgres_and_s3(team: dict[str, Any]) -> None:
    """Answers before and after compaction are the same (as_known_at included); verify and gc agree."""
    args = dict(team)
    bars = synthetic_bars(4, 90, seed=5)
    with Store.open(args.pop("root"), **args) as store:
        known = []
        for cut in (30, 60, 90):
            store.ingest(bars.filter(pl.col("ts") < START + cut * DAY))
            for fs in feature_sets():
                store.backfill(fs)
            known.append(datetime.now(UTC))
        ents = bars.select("symbol", "ts").sample(150, seed=2, shuffle=True)
        queries = [None, *known[:2]]
        want = [(store.get_historical(ents, FEATURES, as_known_at=k), store.read(["plain", "lagged"], as_known_at=k))
                for k in queries]
        old = {n: _facts(store.catalog.feature_entries(n, 1)) for n in ("plain", "lagged")}
        # The first backfill's entries are loose (a file each); the two incremental ones wrote one shared file each.
        shared = {e.path for e in store.catalog.all_feature_entries() if is_compacted(e.path)}
        assert len(shared) == 2 * 2
        report = store.compact()
        assert report.entries == 2 * 4 and len(report.files_written) == 2
        for n in ("plain", "lagged"):
            now = store.catalog.feature_entries(n, 1)
            assert _facts(now) == old[n] and len({e.path for e in now} - shared) == 1
        store.reader = EntryReader(store.root, storage=store.storage)
        for k, (hist, rows) in zip(queries, want, strict=True):
            assert_frame_equal(store.get_historical(ents, FEATURES, as_known_at=k), hist)
            assert_frame_equal(store.read(["plain", "lagged"], as_known_at=k), rows)
        assert store.verify().ok
        gc = store.gc(orphan_grace_seconds=0)
        assert gc.orphan_files == [] and gc.missing_files == []  # compaction deleted the old objects itself
        referenced = store.catalog.referenced_paths()
        assert {o.path for o in store.storage.list("features")} == {p for p in referenced if p.startswith("features")}


def test_a_second_compaction_writes_only_the_entries_added_since(tmp_path: Path) -> None:
    """Files already compacted are never rewritten: a compaction costs the rows added since the last one."""
    bars = synthetic_bars(len(SYMBOLS) + 2, N_BARS, seed=3)
    late = bars["symbol"].unique().sort().to_list()[-2:]
    with Store.open(tmp_path) as store:
        # The last two symbols come later: their first backfill is a full one (loose entries; the other symbols'
        # new rows go into a shared file, compacted already).
        store.ingest(bars.filter((pl.col("ts") < START + 60 * DAY) & ~pl.col("symbol").is_in(late)))
        for fs in feature_sets():
            store.backfill(fs)
        first = store.compact()
        packed = {e.id: e.path for e in store.catalog.all_feature_entries() if is_compacted(e.path)}
        assert first.files_written and packed
        store.ingest(bars)
        for fs in feature_sets():
            store.backfill(fs)
        new = [e for e in store.catalog.all_feature_entries() if e.superseded_at is None and e.id not in packed
               and not is_compacted(e.path)]
        assert sorted(e.symbol for e in new) == sorted(late * 2)
        second = store.compact()
        assert second.entries == len(new) and second.rows == sum(e.n_rows for e in new)
        assert not set(second.files_written) & set(first.files_written)
        now = {e.id: e.path for e in store.catalog.all_feature_entries()}
        assert all(now[i] == path for i, path in packed.items() if i in now)  # the earlier files stay as they were
        assert all((store.root / p).exists() for p in set(packed.values()))
        assert store.verify().ok
        want = store.read(["plain", "lagged"])
    with Store.open(tmp_path) as fresh:
        assert fresh.read(["plain", "lagged"]).equals(want)

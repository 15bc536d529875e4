"""Tiering of the PostgreSQL history tier into Parquet archives, against the real server: what moves and what
stays, every version bit-exact, dry runs, re-runs, real SIGKILLs between the steps, gc and the command line."""

from __future__ import annotations

import json
import math
import signal
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa
import pytest
from clirun import run, run_json
from servers import drop_schema

from pitstore import InvalidInputError, Store
from pitstore.catalog.sqlite import now_us
from pitstore.errors import BackendError
from pitstore.history import PostgresHistory
from pitstore.history.recent import catalog_scope
from pitstore.history.tiering import TierReport, archive_dir, latest_versions, read_archive, tier

DAY = 86_400_000_000
NOW = 1_700_000_000_000_000  # 2023-11-14, µs: the clock of the in-process runs
CUTOFF = NOW - 30 * DAY  # the default window
REC1, REC2 = NOW - 200 * DAY, NOW - 1_000_000  # first versions, then restatements
FS, WEIRD, EMPTY = "fs@1", "we/ird..@3", "empty@1"
SPECIAL = [math.nan, None, -0.0, 0.0, math.inf, -math.inf, 5e-324, 1 / 3, -1e308, 2.5]



@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    with Store.open(tmp_path / "store") as s:
        yield s


@pytest.fixture
def store_history(store: Store, postgres_url: str, namespace: str) -> Iterator[PostgresHistory]:
    """The history tier as the store itself (e.g. ``pitstore tier``) sees it: the tables of its store id and of
    its versions' fingerprints, so the tables are registered as versions in its catalog first."""
    for table_id in (FS, WEIRD, EMPTY):
        name, _, version = table_id.rpartition("@")
        for i in range(int(version)):
            store.catalog.register_version(name, f"{name}-{i}", "{}")
    h = PostgresHistory(postgres_url, schema=namespace, scope=catalog_scope(store.catalog))
    h.migrate()
    yield h
    h.close()
    drop_schema(postgres_url, namespace)


# --- data -------------------------------------------------------------------------------------------------


def _rows(symbols: Sequence[str], ts: Sequence[int], **cols: Sequence[float | None]) -> pa.Table:
    return pa.table({"symbol": pa.array(symbols, pa.string()), "ts": pa.array(ts, pa.int64()),
                     **{k: pa.array(v, pa.float64()) for k, v in cols.items()}})


def fill(history: PostgresHistory, now: int, *, boundary: bool = True) -> None:
    """Three tables: ``fs@1`` with 60 days of two symbols around the 30-day window, restatements on both sides
    of it and (``boundary``) rows at cutoff - 1 µs and at the cutoff; a table with old rows only; an empty one.
    Half-day offsets keep the rows far from a cutoff computed from a slightly later clock (subprocess runs)."""
    symbols, ts = [], []
    for symbol in ("AAPL", "EUR/USD"):
        for d in range(60):
            symbols.append(symbol)
            ts.append(now - d * DAY - DAY // 2)
    n = len(ts)
    a = [SPECIAL[i % len(SPECIAL)] for i in range(n)]
    b = [None if i % 7 == 0 else float(i) for i in range(n)]
    history.write(FS, ["a", "b"], _rows(symbols, ts, a=a, b=b), recorded_at=REC1)
    # Restatements (later versions) of days 3-5 (stay) and 40-45 (move): NaN and null swapped, signs flipped.
    picked = [i for i in range(n) if i % 60 in (3, 4, 5, 40, 41, 42, 43, 44, 45)]
    history.write(FS, ["a", "b"], _rows([symbols[i] for i in picked], [ts[i] for i in picked],
                                        a=[_restated(a[i]) for i in picked], b=[-0.0] * len(picked)),
                  recorded_at=REC2)
    if boundary:
        cutoff = now - 30 * DAY
        history.write(FS, ["a", "b"], _rows(["BND", "BND"], [cutoff - 1, cutoff], a=[1.0, 2.0], b=[math.nan, None]),
                      recorded_at=REC1)
    history.write(WEIRD, ["x"], _rows(["../x", "../x"], [now - 90 * DAY, now - 31 * DAY], x=[None, math.nan]),
                  recorded_at=REC1)
    history.write(EMPTY, ["e"], _rows([], [], e=[]))


def _restated(value: float | None) -> float | None:
    if value is None:
        return math.nan
    return None if math.isnan(value) else -value


def pg_all(history: PostgresHistory, table_id: str) -> pl.DataFrame:
    return pl.DataFrame(history.scan(table_id, all_versions=True))


def _bits(value: Any) -> Any:
    """Comparable form that tells NaN from null and -0.0 from 0.0."""
    if isinstance(value, float):
        return "nan" if math.isnan(value) else struct.pack("<d", value)
    return value


def canon(df: pl.DataFrame) -> list[tuple[Any, ...]]:
    """Rows in key order with floats bit-exact, for equality that NaN, null and -0.0 cannot fool."""
    return [tuple(_bits(v) for v in row) for row in df.sort("symbol", "ts", "recorded_at").rows()]


def old(df: pl.DataFrame, cutoff: int) -> pl.DataFrame:
    return df.filter(pl.col("ts").dt.epoch("us") < cutoff)


def new(df: pl.DataFrame, cutoff: int) -> pl.DataFrame:
    return df.filter(pl.col("ts").dt.epoch("us") >= cutoff)


def snapshot(history: PostgresHistory, root: Path) -> tuple[Any, ...]:
    """Every version in PostgreSQL, every file under the root with its bytes, every archive row."""
    files = {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*"))
             if p.is_file() and not p.name.startswith("catalog.sqlite")}
    with Store.open(root) as s:
        archives = s.catalog.history_archives()
    return {t: canon(pg_all(history, t)) for t in history.tables()}, files, archives


def by_table(report: TierReport) -> dict[str, dict[str, Any]]:
    return {t.table_id: {k: v for k, v in vars(t).items() if k not in ("table_id", "path")} for t in report.tables}


def counts(rows_old: int, archived: int, already: int, deleted: int, files: int) -> dict[str, int]:
    return {"rows_old": rows_old, "rows_archived": archived, "rows_already_archived": already,
            "rows_deleted": deleted, "files": files}


# --- the library ------------------------------------------------------------------------------------------


def test_old_versions_move_bit_exact_and_new_rows_stay(history: PostgresHistory, store: Store) -> None:
    fill(history, NOW)
    before = {t: pg_all(history, t) for t in (FS, WEIRD)}
    n_fs, n_weird = old(before[FS], CUTOFF).height, old(before[WEIRD], CUTOFF).height
    assert n_fs == 2 * 30 + 2 * 6 + 1 and n_weird == 2  # 30 old days, 6 restated ones, the row at cutoff - 1

    report = tier(store.root, store.catalog, history, now_us=NOW)

    assert report.cutoff == CUTOFF and not report.dry_run
    assert by_table(report) == {EMPTY: counts(0, 0, 0, 0, 0), FS: counts(n_fs, n_fs, 0, n_fs, 1),
                                WEIRD: counts(n_weird, n_weird, 0, n_weird, 1)}
    for table_id, rows in before.items():
        # PostgreSQL keeps exactly the rows at or after the cutoff (the one at the cutoff included)...
        assert canon(pg_all(history, table_id)) == canon(new(rows, CUTOFF))
        # ...and the archive holds every version of the older ones, NaN, null, -0.0 and infinities intact.
        archived = read_archive(store.root, store.catalog, table_id)
        assert archived.schema == rows.schema
        assert canon(archived) == canon(old(rows, CUTOFF))
    fs_archive = read_archive(store.root, store.catalog, FS)
    assert fs_archive.filter(pl.struct("symbol", "ts").is_duplicated()).height == 2 * 6 * 2  # both versions
    assert history.window_start(FS) == CUTOFF

    archives = store.catalog.history_archives()
    assert [(a.table_id, a.n_rows, a.cutoff) for a in archives] == [(FS, n_fs, CUTOFF), (WEIRD, n_weird, CUTOFF)]
    assert archives[1].path.startswith("history/we%2Fird..+d59f3d347f6bbcc5/v3/")
    assert archives[1].path.endswith(".parquet")
    for a in archives:
        assert (store.root / a.path).stat().st_size == a.size
        assert a.first_ts == old(before[a.table_id], CUTOFF)["ts"].dt.epoch("us").min()
        assert a.last_ts == old(before[a.table_id], CUTOFF)["ts"].dt.epoch("us").max()
    assert not list(store.root.rglob("*.tmp"))


def test_archives_answer_range_symbol_and_as_known_at_reads(history: PostgresHistory, store: Store) -> None:
    fill(history, NOW)
    known = REC1 + 1  # before the restatements
    expected_then = pl.DataFrame(history.scan(FS, end=CUTOFF - 1, as_known_at=known))
    expected_now = pl.DataFrame(history.scan(FS, end=CUTOFF - 1))
    start, end = NOW - 44 * DAY, NOW - 41 * DAY
    expected_range = pl.DataFrame(history.scan(FS, symbols=["EUR/USD"], start=start, end=end, all_versions=True))
    tier(store.root, store.catalog, history, now_us=NOW)

    archived = read_archive(store.root, store.catalog, FS)
    assert canon(latest_versions(archived)) == canon(expected_now)
    assert canon(latest_versions(archived, as_known_at=known)) == canon(expected_then)
    ranged = read_archive(store.root, store.catalog, FS, symbols=["EUR/USD"], start=start, end=end)
    assert ranged.height == 3 + 3 and canon(ranged) == canon(expected_range)  # 3 days restated: 2 versions each
    assert read_archive(store.root, store.catalog, FS, symbols=[]).height == 0
    assert read_archive(store.root, store.catalog, "never@1").columns == ["symbol", "ts", "recorded_at", "tombstone"]
    with pytest.raises(InvalidInputError):
        read_archive(store.root, store.catalog, FS, symbols="AAPL")


def _day(d: int, now: int = NOW) -> int:
    """ts of row ``d`` of a symbol in :func:`fill` (day 0 is the newest)."""
    return now - d * DAY - DAY // 2


def _asof_ts(history: PostgresHistory, symbol: str, t: int, as_known_at: int | None = None) -> int | None:
    row = history.asof(FS, symbol, t, as_known_at=as_known_at)
    return None if row is None else row[0]


def test_tombstones_move_with_their_rows_and_keep_them_dead(history: PostgresHistory, store: Store) -> None:
    """Rows removed by a restatement (tombstones recorded at REC3) on both sides of the cutoff: the old ones move
    with their tombstones, and the archive gives the answers the history tier gave, now and as known before."""
    fill(history, NOW)
    rec3 = REC2 + 1
    # AAPL days 47 (one version), 43 (restated, so two) and 4 (stays in PostgreSQL); EUR/USD day 31 removed and
    # then given a new version (alive again); BND at cutoff - 1 µs, its only row.
    for symbol, d in (("AAPL", 47), ("AAPL", 43), ("AAPL", 4), ("EUR/USD", 31)):
        history.write(FS, ["a", "b"], _rows([], [], a=[], b=[]), recorded_at=rec3,
                      replaces=[(symbol, _day(d), _day(d))])
    history.write(FS, ["a", "b"], _rows(["EUR/USD"], [_day(31)], a=[31.5], b=[None]), recorded_at=rec3 + 1)
    history.write(FS, ["a", "b"], _rows([], [], a=[], b=[]), recorded_at=rec3, replaces=[("BND", 0, CUTOFF - 1)])
    before = pg_all(history, FS)
    assert before.filter(pl.col("tombstone")).select("symbol", pl.col("ts").dt.epoch("us")).rows() == [
        ("AAPL", _day(47)), ("AAPL", _day(43)), ("AAPL", _day(4)), ("BND", CUTOFF - 1), ("EUR/USD", _day(31))]
    now_rows = pl.DataFrame(history.scan(FS, end=CUTOFF - 1))
    then_rows = pl.DataFrame(history.scan(FS, end=CUTOFF - 1, as_known_at=REC2))
    assert {("AAPL", _day(47)), ("AAPL", _day(43))} <= set(then_rows.select("symbol", pl.col("ts").dt.epoch("us"))
                                                          .rows())
    n_old = old(before, CUTOFF).height
    assert n_old == 2 * 30 + 2 * 6 + 1 + 5  # fill's old versions, 4 tombstones and EUR/USD's new version

    report = tier(store.root, store.catalog, history, now_us=NOW)

    assert by_table(report)[FS] == counts(n_old, n_old, 0, n_old, 1)
    archived = read_archive(store.root, store.catalog, FS)
    assert canon(archived) == canon(old(before, CUTOFF))  # every version, tombstones flagged
    assert archived.filter(pl.col("tombstone")).height == 4
    assert canon(latest_versions(archived)) == canon(now_rows)
    assert canon(latest_versions(archived, as_known_at=REC2)) == canon(then_rows)
    gone = latest_versions(archived).filter(pl.col("symbol") == "AAPL")["ts"].dt.epoch("us").to_list()
    assert _day(47) not in gone and _day(43) not in gone and _day(46) in gone
    assert latest_versions(archived).filter(pl.col("symbol") == "EUR/USD", pl.col("ts").dt.epoch("us") == _day(31))[
        "a"].to_list() == [31.5]
    assert latest_versions(archived).filter(pl.col("symbol") == "BND").is_empty()
    # The newer tombstone stays in PostgreSQL and still hides its row there.
    assert canon(pg_all(history, FS)) == canon(new(before, CUTOFF))
    assert _asof_ts(history, "AAPL", _day(4)) == _day(5)
    assert _asof_ts(history, "AAPL", _day(4), as_known_at=REC2) == _day(4)
    assert history.window_start(FS) == CUTOFF
    assert tier(store.root, store.catalog, history, now_us=NOW).rows_archived == 0


def test_archives_written_before_tombstones_read_as_live_versions(history: PostgresHistory, store: Store) -> None:
    """An archive file without the tombstone column (written by the previous release) reads as versions that are
    not tombstones, alone and together with a newer file that has tombstones."""
    fill(history, NOW)
    moved = old(pg_all(history, FS), CUTOFF)
    tier(store.root, store.catalog, history, now_us=NOW)
    path = store.root / store.catalog.history_archives(FS)[0].path
    pl.read_parquet(path).drop("tombstone").write_parquet(path)  # as the previous release wrote it
    legacy = read_archive(store.root, store.catalog, FS)
    assert legacy.columns[:4] == ["symbol", "ts", "recorded_at", "tombstone"] and not legacy["tombstone"].any()
    assert canon(legacy) == canon(moved)
    # A late old row, then removed: the next run archives both versions, in a file with the column.
    late = _day(50) + 1
    history.write(FS, ["a", "b"], _rows(["AAPL"], [late], a=[1.0], b=[2.0]), recorded_at=REC2)
    history.write(FS, ["a", "b"], _rows([], [], a=[], b=[]), recorded_at=NOW, replaces=[("AAPL", late, late)])
    assert by_table(tier(store.root, store.catalog, history, now_us=NOW))[FS] == counts(2, 2, 0, 2, 1)
    both = read_archive(store.root, store.catalog, FS)
    assert both.height == moved.height + 2 and both["tombstone"].sum() == 1
    assert canon(latest_versions(both)) == canon(latest_versions(legacy))  # the late row is dead
    assert late in latest_versions(both, as_known_at=NOW - 1)["ts"].dt.epoch("us").to_list()


def test_dry_run_reports_and_changes_nothing(history: PostgresHistory, store: Store) -> None:
    fill(history, NOW)
    before = snapshot(history, store.root)
    dry = tier(store.root, store.catalog, history, now_us=NOW, dry_run=True)
    assert snapshot(history, store.root) == before
    assert not (store.root / "history").exists()  # not even the lock file
    real = tier(store.root, store.catalog, history, now_us=NOW)
    assert by_table(dry) == by_table(real) and dry.dry_run and dry.rows_archived == real.rows_archived > 0
    assert all(t.path is None for t in dry.tables)


def test_rerun_is_a_no_op(history: PostgresHistory, store: Store) -> None:
    fill(history, NOW)
    first = tier(store.root, store.catalog, history, now_us=NOW)
    after_first = snapshot(history, store.root)
    second = tier(store.root, store.catalog, history, now_us=NOW)
    assert first.rows_archived > 0 and first.files == 2
    assert by_table(second) == {t: counts(0, 0, 0, 0, 0) for t in (EMPTY, FS, WEIRD)}
    assert snapshot(history, store.root) == after_first


class WriteAfterScan(PostgresHistory):
    """The real history tier, plus one write from another session right after tiering's scan: the race of a
    live writer against a tiering run, made deterministic (no sleeps)."""

    def __init__(self, url: str, schema: str, late: pa.Table, recorded_at: int) -> None:
        super().__init__(url, schema=schema)
        self.late: pa.Table | None = late
        self.recorded_at = recorded_at

    def scan(self, table_id: str, **kwargs: Any) -> pa.Table:
        out = super().scan(table_id, **kwargs)
        if table_id == FS and self.late is not None:
            with PostgresHistory(self._url, schema=self._schema) as other:
                assert other.write(FS, ["a", "b"], self.late, recorded_at=self.recorded_at) == 1
            self.late = None
        return out


def test_versions_written_after_the_scan_survive_and_go_to_the_next_archive(
    history: PostgresHistory, store: Store, postgres_url: str, namespace: str,
) -> None:
    """The delete names the versions that were read: one written between the scan and the delete, even with
    an old ts (a restatement of an old bar, recorded now), stays in PostgreSQL, and the next run archives it."""
    fill(history, NOW, boundary=False)
    old_ts = NOW - 50 * DAY - DAY // 2
    before = pg_all(history, FS)
    n_old = old(before, CUTOFF).height
    late = _rows(["AAPL"], [old_ts], a=[7.0], b=[None])
    with WriteAfterScan(postgres_url, namespace, late, NOW) as racing:
        first = tier(store.root, store.catalog, racing, now_us=NOW)
    assert by_table(first)[FS] == counts(n_old, n_old, 0, n_old, 1)
    assert old(pg_all(history, FS), CUTOFF)["a"].to_list() == [7.0]  # survived the delete

    history.write(FS, ["a", "b"], _rows(["AAPL"], [old_ts], a=[8.0], b=[math.nan]), recorded_at=NOW + 1)
    second = tier(store.root, store.catalog, history, now_us=NOW)
    assert by_table(second)[FS] == counts(2, 2, 0, 2, 1)
    assert len(store.catalog.history_archives(FS)) == 2
    assert old(pg_all(history, FS), CUTOFF).height == 0
    versions = read_archive(store.root, store.catalog, FS, symbols=["AAPL"], start=old_ts, end=old_ts)
    # Day 50 of AAPL (row 50 of fill): a = NaN, b = 50.0 as first written.
    assert [_bits(v) for v in versions["a"].to_list()] == ["nan", _bits(7.0), _bits(8.0)]
    assert [_bits(v) for v in versions["b"].to_list()] == [_bits(50.0), None, "nan"]
    assert versions["recorded_at"].dt.epoch("us").to_list() == [REC1, NOW, NOW + 1]


def test_gc_keeps_archives_and_verify_checks_them(history: PostgresHistory, store: Store) -> None:
    fill(history, NOW)
    tier(store.root, store.catalog, history, now_us=NOW)
    paths = [a.path for a in store.catalog.history_archives()]
    assert store.catalog.referenced_paths() >= set(paths)
    report = store.gc(orphan_grace_seconds=0)
    assert report.orphan_files == [] and report.missing_files == []
    assert all((store.root / p).is_file() for p in paths)
    assert store.verify().ok
    target = store.root / paths[0]
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    problems = store.verify().problems
    assert problems == [{"kind": "history", "path": paths[0], "problem": "content does not match its hash"}]


def test_bad_arguments(history: PostgresHistory, store: Store, postgres_url: str, namespace: str) -> None:
    for bad in (-1, math.nan, math.inf, True):
        with pytest.raises(InvalidInputError):
            tier(store.root, store.catalog, history, window_days=bad)
    with PostgresHistory(postgres_url, schema=namespace + "_none") as missing, pytest.raises(BackendError,
                                                                                             match="migrate"):
        tier(store.root, store.catalog, missing)
    assert archive_dir("daily_core@12") == "history/daily_core/v12"
    assert archive_dir("no version") == "history/no%20version+095e3003b3ac6f12"
    assert archive_dir("..@1") == "history/%2E.+5ec1f7e700f37c3d/v1"


# --- real processes: SIGKILL between the steps -------------------------------------------------------------


def run_cli(root: Path, url: str, schema: str, *args: str, crash_at: str | None = None
            ) -> subprocess.CompletedProcess[str]:
    args = ("tier", "--root", str(root), "--postgres-url", url, "--schema", schema, *args)
    # With crash_at, the run SIGKILLs itself at that step (tests/tier_workers.py patches the kill point in).
    cmd = [sys.executable, str(Path(__file__).with_name("tier_workers.py")), crash_at, *args] if crash_at else \
        [sys.executable, "-m", "pitstore", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("step", ["published", "committed"])
@pytest.mark.slow  # tiering processes SIGKILLed between steps
def test_sigkill_between_steps_loses_nothing_and_a_rerun_finishes(
    store_history: PostgresHistory, store: Store, postgres_url: str, namespace: str, tmp_path: Path, step: str,
) -> None:
    history = store_history  # the CLI tiers the store's own tables
    now = now_us()
    fill(history, now, boundary=False)
    cutoff = now - 30 * DAY
    before = {t: pg_all(history, t) for t in (FS, WEIRD)}
    n_old = old(before[FS], cutoff).height

    killed = run_cli(store.root, postgres_url, namespace, crash_at=step)
    assert killed.returncode == -signal.SIGKILL, killed.stderr

    # The first table ("empty@1" has no rows, so fs@1) was killed at `step`; nothing was deleted anywhere.
    for table_id, rows in before.items():
        assert canon(pg_all(history, table_id)) == canon(rows)
    archived = read_archive(store.root, store.catalog, FS)
    published = [p for p in (store.root / "history").rglob("*.parquet")]
    assert len(published) == 1  # complete under its final name
    if step == "published":
        assert archived.height == 0 and store.catalog.history_archives() == []
    else:
        assert canon(archived) == canon(old(before[FS], cutoff))

    json_file = tmp_path / "rerun.json"
    rerun = run_cli(store.root, postgres_url, namespace, "--json", str(json_file))
    assert rerun.returncode == 0, rerun.stderr
    tables = {t["table_id"]: t for t in json.loads(json_file.read_text())["tables"]}
    if step == "published":
        assert (tables[FS]["rows_archived"], tables[FS]["rows_already_archived"], tables[FS]["files"]) == (n_old, 0, 1)
    else:
        assert (tables[FS]["rows_archived"], tables[FS]["rows_already_archived"], tables[FS]["files"]) == (0, n_old, 0)
    assert tables[FS]["rows_deleted"] == n_old and tables[WEIRD]["rows_archived"] == 2

    # Every version exactly once: the new ones in PostgreSQL, the old ones in the archives.
    for table_id, rows in before.items():
        assert canon(pg_all(history, table_id)) == canon(new(rows, cutoff))
        assert canon(read_archive(store.root, store.catalog, table_id)) == canon(old(rows, cutoff))
    assert sum(a.n_rows for a in store.catalog.history_archives(FS)) == n_old
    third = run_cli(store.root, postgres_url, namespace, "--json", "-")
    assert json.loads(third.stdout)["rows_deleted"] == 0

    # gc removes only the file of the killed run that never got its catalog row.
    committed = {a.path for a in store.catalog.history_archives()}
    report = store.gc(orphan_grace_seconds=0)
    orphans = [str(p.relative_to(store.root)) for p in published if str(p.relative_to(store.root)) not in committed]
    assert report.orphan_files == orphans and len(orphans) == (step == "published")
    assert all((store.root / p).is_file() for p in committed)
    assert store.verify().ok
    for table_id, rows in before.items():
        assert canon(read_archive(store.root, store.catalog, table_id)) == canon(old(rows, cutoff))


# --- the command line --------------------------------------------------------------------------------------


@pytest.mark.slow  # CLI processes
def test_cli_dry_run_then_real_run(store_history: PostgresHistory, store: Store, postgres_url: str, namespace: str,
                                   tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    history = store_history  # the CLI tiers the store's own tables
    fill(history, now_us(), boundary=False)
    root = store.root
    before = snapshot(history, root)
    common = ["--root", root, "--schema", namespace]

    dry = run_json("tier", *common, "--postgres-url", postgres_url, "--dry-run", "--json", "-")
    assert dry["dry_run"] and dry["rows_archived"] == 2 * 30 + 2 * 6 + 2 and dry["files"] == 2
    text = run("tier", *common, "--postgres-url", postgres_url, "--dry-run")
    assert "would move" in text and FS in text and "nothing changed" in text
    assert snapshot(history, root) == before
    monkeypatch.setenv("PITSTORE_HISTORY_DAYS", "45")  # the window defaults to the store's setting
    dry = run_json("tier", *common, "--postgres-url", postgres_url, "--dry-run", "--json", "-")
    assert dry["window_days"] == 45 and dry["rows_archived"] == 2 * 15 + 2 * 1 + 1
    monkeypatch.delenv("PITSTORE_HISTORY_DAYS")

    monkeypatch.chdir(tmp_path)  # no pitstore.toml here
    monkeypatch.delenv("PITSTORE_POSTGRES_URL", raising=False)
    assert "--postgres-url" in run("tier", *common, code=1)

    monkeypatch.setenv("PITSTORE_POSTGRES_URL", postgres_url)  # the settings' URL, as in production
    report_file = tmp_path / "report.json"
    text = run("tier", *common, "--window-days", "45", "--json", report_file)
    report = json.loads(report_file.read_text())
    assert report["window_days"] == 45 and report["rows_archived"] == 2 * 15 + 2 * 1 + 1  # days 45-59, 45 restated
    assert "moved" in text and report["tables"][1]["path"] in text
    assert run_json("tier", *common, "--json", "-")["rows_archived"] == 2 * 15 + 2 * 5 + 1  # days 30-44
    assert run_json("tier", *common, "--json", "-")["rows_archived"] == 0
    assert run("verify", "--root", root).strip().endswith("ok")

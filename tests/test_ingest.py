"""Ingest: corrections overlay stored bars, one ingest is one transaction, optimistic commits retry, damaged
snapshots are never built on."""

from __future__ import annotations

import multiprocessing
import os
import signal
from datetime import UTC, datetime, timedelta
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from clirun import run, run_json
from ingest_workers import SYMBOLS, ingest_interleaved, ingest_until_commit, interleaved_bars
from spawn import run_processes

import pitstore.catalog.retention
from pitstore import FeatureSet, Store, ret
from pitstore.errors import CacheCorruptionError, ConflictError
from pitstore.offline.entries import encode_symbol, read_entries
from pitstore.sources.segments import entry_paths

T0 = datetime(2024, 1, 1, tzinfo=UTC)
COLUMNS = ["symbol", "ts", "open", "high", "low", "close", "volume"]


def make_bars(symbol: str, n: int, start: int = 0, close: float = 100.0) -> pl.DataFrame:
    days = range(start, start + n)
    return pl.DataFrame({
        "symbol": [symbol] * n, "ts": [T0 + timedelta(days=d) for d in days],
        "open": close, "high": close + 2, "low": close - 2, "close": [close + 0.01 * d for d in days], "volume": 1e3,
    })


def corrected(bars: pl.DataFrame, rows: list[int]) -> pl.DataFrame:
    """Those rows of ``bars`` with a restated close."""
    return bars[rows].with_columns(pl.col("close") + 0.5)


def bars_known_at(store: Store, symbol: str, t: datetime) -> pl.DataFrame:
    """The bars of ``symbol`` as the store knew them at ``t`` (the snapshot visible then)."""
    (entry,) = store.catalog.live_bars([symbol], as_known_at=int(t.timestamp() * 1e6))
    df = read_entries(store.root, [entry.path])
    assert df is not None
    return df


def bar_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in (root / "bars").rglob("*") if p.is_file()}


@pytest.fixture
def store(tmp_path: Path) -> Any:
    with Store.open(tmp_path / "store") as s:
        yield s


# ------------------------------------------------------------------------------ overlay and replace_range


def test_correction_overlays_only_bars_with_the_same_ts(store: Store) -> None:
    """Two corrected bars (positions 10 and 90 of 100) restate those two; the 98 between and around stay, and
    ``as_known_at`` still returns the old history, bars and features."""
    fs = FeatureSet("base", [ret(1)])
    old = make_bars("AAA", 100)
    store.ingest(old)
    store.backfill(fs)
    before = datetime.now(UTC)
    fix = corrected(old, [10, 90])
    report = store.ingest(fix)
    store.backfill(fs)

    assert report.restated == {"AAA": 2} and report.removed == {} and report.appended == []
    expected = pl.concat([old.filter(~pl.col("ts").is_in(fix["ts"].implode())), fix]).sort("ts")
    assert store.bars("AAA").equals(expected.select(COLUMNS))
    assert bars_known_at(store, "AAA", before).equals(old.select(COLUMNS))

    labels = pl.DataFrame({"symbol": ["AAA"] * 3, "ts": [T0 + timedelta(days=d) for d in (10, 50, 91)]})
    then = store.get_historical(labels, "base:ret_1", as_known_at=before)
    now = store.get_historical(labels, "base:ret_1")
    close_then, close_now = old["close"], expected["close"]
    assert then["ret_1"].to_list() == pytest.approx([close_then[d] / close_then[d - 1] - 1 for d in (10, 50, 91)])
    assert now["ret_1"].to_list() == pytest.approx([close_now[d] / close_now[d - 1] - 1 for d in (10, 50, 91)])
    assert then["ret_1"][0] != now["ret_1"][0] and then["ret_1"][2] != now["ret_1"][2]


def test_replace_range_is_explicit_and_reports_removed_bars(store: Store) -> None:
    """``replace_range=True`` replaces all stored bars between the first and last new bar: the 79 bars between
    the two corrections are removed and counted; the old history stays readable with ``as_known_at``."""
    old = make_bars("AAA", 100)
    store.ingest(pl.concat([old, make_bars("BBB", 5)]))
    before = datetime.now(UTC)
    fix = corrected(old, [10, 90])
    report = store.ingest(fix, replace_range=True)

    assert report.removed == {"AAA": 79} and report.restated == {"AAA": 2}
    expected = pl.concat([old[:10], fix, old[91:]]).sort("ts")
    assert store.bars("AAA").equals(expected.select(COLUMNS)) and store.bars("AAA").height == 21
    assert bars_known_at(store, "AAA", before).equals(old.select(COLUMNS))
    assert store.bars("BBB").height == 5


def test_cli_ingest_replace_range_prints_removed(tmp_path: Path) -> None:
    """``pitstore ingest`` overlays by default (0 removed) and ``--replace-range`` says how many were removed."""
    root = tmp_path / "store"
    old = make_bars("AAA", 100)
    old.write_parquet(tmp_path / "all.parquet")
    corrected(old, [10, 90]).write_parquet(tmp_path / "fix.parquet")
    corrected(old, [20, 30]).write_parquet(tmp_path / "fix2.parquet")
    run("ingest", tmp_path / "all.parquet", "--root", root)

    out = run("ingest", tmp_path / "fix.parquet", "--root", root)
    assert "restated:    1 (2 bars changed)" in out and "removed:     0 stored bars" in out
    summary = run_json("ingest", tmp_path / "fix2.parquet", "--replace-range", "--json", "--root", root)
    assert summary["removed"] == {"AAA": 9} and summary["restated"] == {"AAA": 2}
    with Store.open(root) as store:
        assert store.bars("AAA").height == 100 - 9


# ------------------------------------------------------------------------------------------- all or nothing


def test_write_failure_on_a_later_symbol_commits_no_symbol(store: Store) -> None:
    """The second symbol's file cannot be written (its directory name is taken by a file): the first symbol,
    written already, is not committed and its file is removed; the stored snapshots are untouched."""
    store.ingest(pl.concat([make_bars("AAA", 10), make_bars("DDD", 10)]))
    live = store.catalog.live_bars()
    files = bar_files(store.root)
    (store.root / "bars" / encode_symbol("CCC")).write_bytes(b"not a directory")

    new = pl.concat([make_bars("AAA", 5, start=10), make_bars("CCC", 5), make_bars("DDD", 5, start=10)])
    with pytest.raises(OSError):
        store.ingest(new)
    assert store.catalog.live_bars() == live
    assert bar_files(store.root) == files | {f"bars/{encode_symbol('CCC')}"}
    assert store.bars("AAA").height == 10 and store.bars("DDD").height == 10


def test_sigkill_between_file_writes_and_commit_commits_nothing(tmp_path: Path) -> None:
    """A real SIGKILL of an ingesting process once every file is written and before the commit: no symbol is
    committed; the files left are unlisted and gc removes them."""
    root = tmp_path / "store"
    with Store.open(root) as store:
        store.ingest(make_bars("AAA", 10))
        live = store.catalog.live_bars()
    files = bar_files(root)
    path = tmp_path / "new.parquet"
    pl.concat([make_bars("AAA", 5, start=10), make_bars("BBB", 5), make_bars("ZZZ", 5)]).write_parquet(path)

    ctx = multiprocessing.get_context("spawn")
    reached, tell = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=ingest_until_commit, args=(str(root), str(path), "ZZZ", tell))
    proc.start()
    try:
        wait([reached, proc.sentinel], timeout=120)  # the worker at its commit, or dead
        assert reached.poll(), f"the worker never reached the commit (exit code {proc.exitcode})"
        os.kill(proc.pid, signal.SIGKILL)  # type: ignore[arg-type]
        proc.join(timeout=60)
        assert proc.exitcode == -signal.SIGKILL
    finally:
        if proc.is_alive():
            proc.kill()

    with Store.open(root) as store:
        assert store.catalog.live_bars() == live
        assert store.bars("AAA").height == 10
        assert len(bar_files(root) - files) == 3  # one written file per symbol, none listed
        report = store.gc(orphan_grace_seconds=0)
        assert len(report.orphan_files) == 3 and bar_files(root) == files and store.verify().ok


# ---------------------------------------------------------------------------------------- optimistic commits


def test_concurrent_ingests_of_overlapping_symbols_all_succeed(tmp_path: Path) -> None:
    """8 real processes ingest interleaved bars of the same symbols at once: every ingest succeeds (commits lost
    to a concurrent one are re-merged and retried) and each final snapshot holds every process's bars."""
    root = tmp_path / "store"
    Store.open(root).close()
    n_proc, n = 8, 40
    results = run_processes(ingest_interleaved, [(str(root), i, n_proc, n) for i in range(n_proc)])
    errors = [r for _, r in results if isinstance(r, str)]
    assert errors == []
    assert sum(r for _, r in results) > 0  # they did race: at least one commit was retried

    expected = pl.concat([interleaved_bars(i, n_proc, n) for i in range(n_proc)]).sort("symbol", "ts")
    with Store.open(root) as store:
        for s in SYMBOLS:
            assert store.bars(s).equals(expected.filter(pl.col("symbol") == s))
        history = [e for e in store.catalog.all_bar_entries() if e.symbol == SYMBOLS[0]]
        assert len(history) == n_proc  # one snapshot per ingest, each superseding the one before
        assert store.verify().ok


def test_commit_lost_to_another_ingest_is_remerged(tmp_path: Path) -> None:
    """Another ingest commits the same symbol between this one's merge and commit: this one re-reads the new
    snapshot, re-merges and commits; nothing of either is lost and the retry is reported."""
    root = tmp_path / "store"
    with Store.open(root) as store, Store.open(root) as other:
        store.ingest(make_bars("AAA", 10))
        commit = store.catalog.commit_bars_batch
        calls: list[int] = []

        def racing(items: Any) -> Any:
            calls.append(len(items))
            if len(calls) == 1:
                other.ingest(make_bars("AAA", 3, start=20))
            return commit(items)

        store.catalog.commit_bars_batch = racing  # type: ignore[method-assign]
        report = store.ingest(pl.concat([make_bars("AAA", 5, start=10), make_bars("BBB", 4)]))
        assert report.retries == 1 and calls == [2, 2]
        # Re-merged onto the snapshot now live (days 0-9 and 20-22): days 10-14 fill a gap, not an append.
        assert report.restated == {"AAA": 0} and report.appended == [] and report.new_symbols == ["BBB"]
        assert store.bars("AAA").equals(make_bars("AAA", 15).vstack(make_bars("AAA", 3, start=20)))
        assert store.bars("BBB").height == 4
        assert bar_files(root) == {p for e in store.catalog.all_bar_entries() for p in entry_paths(e)}  # stale: gone


def test_real_conflict_after_bounded_retries_leaves_nothing(tmp_path: Path) -> None:
    """When every commit loses (another ingest of the symbol each time), the ingest gives up after a bounded
    number of attempts with ConflictError, commits nothing and leaves no file behind."""
    root = tmp_path / "store"
    with Store.open(root) as store, Store.open(root) as other:
        store.ingest(make_bars("AAA", 10))
        commit = store.catalog.commit_bars_batch
        calls: list[int] = []

        def always_racing(items: Any) -> Any:
            calls.append(len(items))
            other.ingest(make_bars("AAA", 1, start=100 + len(calls)))
            return commit(items)

        store.catalog.commit_bars_batch = always_racing  # type: ignore[method-assign]
        with pytest.raises(ConflictError, match="AAA"):
            store.ingest(pl.concat([make_bars("AAA", 5, start=10), make_bars("BBB", 4)]))
        assert 1 < len(calls) <= 10
        assert store.symbols() == ["AAA"] and store.bars("AAA").height == 10 + len(calls)
        assert bar_files(root) == {p for e in store.catalog.all_bar_entries() for p in entry_paths(e)}


# ------------------------------------------------------------------------------------------ damaged snapshots


def _damage_values(path: Path) -> None:
    """Rewrite the file as valid Parquet with one close changed: readable, same row count, wrong content."""
    df = pl.read_parquet(path)
    df.with_columns(pl.when(pl.int_range(pl.len()) == 3).then(999.0).otherwise(pl.col("close")).alias("close")
                    ).write_parquet(path)


def _damage_bytes(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 64] = b"\xff" * 64
    path.write_bytes(bytes(data[: len(data) - 40]))  # corrupt and truncated


@pytest.mark.parametrize("damage", [_damage_values, _damage_bytes], ids=["values", "bytes"])
def test_append_onto_damaged_snapshot_raises(tmp_path: Path, damage: Any) -> None:
    """A merge (here: an append when segments are off, or a compaction) onto a damaged snapshot raises
    CacheCorruptionError naming the symbol and the file instead of copying the damage into a new snapshot that
    would pass verify; no symbol of that ingest is committed."""
    with Store.open(tmp_path / "store", bar_segments=0) as store:
        _damaged_merge_raises(store, damage)


@pytest.mark.parametrize("damage", [_damage_values, _damage_bytes], ids=["values", "bytes"])
def test_append_segment_onto_damaged_base_keeps_the_damage_visible(tmp_path: Path, damage: Any) -> None:
    """An append as a segment does not read the stored bars (O(new)): it commits, and its snapshot lists the
    damaged base, so verify reports the live snapshot too; the compaction that would rewrite the base raises."""
    with Store.open(tmp_path / "store", bar_segments=1) as store:
        store.ingest(pl.concat([make_bars("AAA", 10), make_bars("BBB", 10)]))
        bad = next(e for e in store.catalog.live_bars() if e.symbol == "BBB")
        damage(store.root / bad.path)
        store.ingest(pl.concat([make_bars("AAA", 2, start=10), make_bars("BBB", 2, start=10)]))
        live = {e.symbol: e for e in store.catalog.live_bars()}
        assert live["BBB"].path == bad.path and live["BBB"].parts is not None
        problems = store.verify().problems
        assert {(p["kind"], p["path"]) for p in problems} == {("bars", bad.path)}
        assert len(problems) == 2  # both snapshots of BBB: the old one and the appended one
        with pytest.raises(CacheCorruptionError, match=rf"'BBB'.*{bad.path}"):  # the next append compacts
            store.ingest(pl.concat([make_bars("AAA", 2, start=12), make_bars("BBB", 2, start=12)]))
        assert {e.symbol: e for e in store.catalog.live_bars()} == live


def _damaged_merge_raises(store: Store, damage: Any) -> None:
    store.ingest(pl.concat([make_bars("AAA", 10), make_bars("BBB", 10)]))
    live = store.catalog.live_bars()
    bad = next(e for e in live if e.symbol == "BBB")
    damage(store.root / bad.path)

    with pytest.raises(CacheCorruptionError, match=rf"'BBB'.*{bad.path}"):
        store.ingest(pl.concat([make_bars("AAA", 2, start=10), make_bars("BBB", 2, start=10)]))
    assert store.catalog.live_bars() == live
    assert bar_files(store.root) == {e.path for e in live}
    assert not store.verify().ok  # the damage is still reported, not hidden behind a new snapshot


def test_ingest_report_counts_are_per_kind(store: Store) -> None:
    """New, appended, restated (with gaps filled) and unchanged symbols in one ingest."""
    store.ingest(pl.concat([make_bars("APP", 5), make_bars("GAP", 5).filter(pl.col("ts") != T0 + timedelta(days=2)),
                            make_bars("RES", 5), make_bars("SAME", 5)]))
    report = store.ingest(pl.concat([
        make_bars("APP", 2, start=5), make_bars("GAP", 1, start=2), corrected(make_bars("RES", 5), [1]),
        make_bars("SAME", 5), make_bars("NEW", 3)]))
    assert report.new_symbols == ["NEW"] and report.appended == ["APP"] and report.unchanged == ["SAME"]
    assert report.restated == {"GAP": 0, "RES": 1} and report.removed == {}
    assert report.rows == 2 + 1 + 1 + 5 + 3


def test_segments_share_files_and_gc_deletes_only_what_no_row_lists(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Appends are segments listing the same base; gc past the retention drops the superseded snapshots but keeps
    every file a live snapshot lists, and after a compaction it deletes the old base and segments."""
    monkeypatch.setattr(pitstore.catalog.retention, "GRACE", timedelta(0))  # everything superseded is past retention
    with Store.open(tmp_path / "store", bar_segments=2, retention_days=0) as store:
        store.ingest(make_bars("AAA", 10))
        for day in (10, 11):  # two appends: base + 2 segments
            report = store.ingest(pl.concat([make_bars("AAA", 1, start=day), make_bars("BBB", 1, start=day)]))
        assert report.appended == ["AAA", "BBB"]
        live = {e.symbol: e for e in store.catalog.live_bars()}
        assert live["AAA"].parts is not None and len(entry_paths(live["AAA"])) == 3
        assert len(store.catalog.all_bar_entries()) == 5  # AAA: base, +1, +2; BBB: base, +1
        store.gc(orphan_grace_seconds=0)
        assert store.catalog.all_bar_entries() == sorted(live.values(), key=lambda e: e.id)  # superseded: gone
        assert store.verify().ok
        assert bar_files(store.root) == {p for e in live.values() for p in entry_paths(e)}
        assert store.bars("AAA").equals(make_bars("AAA", 12))
        store.ingest(make_bars("AAA", 1, start=12))  # a third segment is one too many: compacted into a base
        compacted = {e.symbol: e for e in store.catalog.live_bars()}["AAA"]
        assert compacted.parts is None and compacted.n_rows == 13
        store.gc(orphan_grace_seconds=0)
        assert bar_files(store.root) == {p for e in store.catalog.live_bars() for p in entry_paths(e)}
        assert store.bars("AAA").equals(make_bars("AAA", 13)) and store.verify().ok

"""Crash safety and multi-process concurrency of the offline tier, with real processes and real SIGKILLs.

Children are fresh interpreters running ``CHILD`` (below) against a store on disk. The parent never sleeps
to wait for something: it synchronises on lines the child prints (``ready`` once imported, ``started``,
one ``progress`` per symbol committed). The only sleeps are random delays that pick a kill moment after
such a line. After every kill the store is checked from the outside (catalog rows, files on disk) and
through the public API, then the next run must finish the work and match ``pitstore.compute`` bit for bit.

Set ``PITSTORE_CRASH_SEED`` to replay the random kill schedule of a failing run (failures quote it).
"""

from __future__ import annotations

import itertools
import json
import os
import random
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow.parquet as pq
import pytest

import pitstore
from pitstore import Store, standard_features
from pitstore.offline.entries import is_compacted
from pitstore.testing import synthetic_bars

N_SYMBOLS = 40
N_BARS = 500
OLD_BARS = 450  # the incremental template's bars before the append
RESTATED_BAR = 300  # the restatement template changes each symbol's close at this bar
SEED = 7
FS = "daily_core"
SYMBOLS = [f"S{i:04d}" for i in range(N_SYMBOLS)]
BACKFILL_KILLS = 20
INGEST_KILLS = 4
CHILD_TIMEOUT_S = 60.0  # a watchdog kills a child that hangs (a failure, never a synchronisation)

pytestmark = pytest.mark.slow  # real processes: about 25 s for the whole file

RUN_SEED = int(os.environ.get("PITSTORE_CRASH_SEED", random.SystemRandom().randrange(2**32)))

# Warm children import pitstore, say "ready", then wait for their orders on stdin (mode, root, args as JSON):
# a spare is always importing while the parent checks the previous trial, and several wait at a barrier.
CHILD = r"""
import json, sys, time
from pitstore import Store, standard_features
from pitstore.testing import synthetic_bars

print("ready", flush=True)
mode, root, args = json.loads(sys.stdin.readline())
if mode == "ingest":
    bars = synthetic_bars(args["n_symbols"], args["n_bars"], seed=args["seed"])
    print("started", flush=True)
    with Store.open(root) as store:
        store.ingest(bars)
    print("done", flush=True)
else:
    print("started", flush=True)
    with Store.open(root) as store:
        t0 = time.time()
        r = store.backfill(standard_features(), args.get("symbols"), progress=lambda n: print("progress", flush=True))
        t1 = time.time()
    print("report " + json.dumps({"full": r.full, "incremental": r.incremental, "up_to_date": r.up_to_date,
                                  "lost_race": r.lost_race, "t0": t0, "t1": t1}), flush=True)
"""


# --- data and expected states -------------------------------------------------------------------------


def first_bars(bars: pl.DataFrame, n: int) -> pl.DataFrame:
    return bars.filter(pl.int_range(pl.len()).over("symbol") < n)


def restate(bars: pl.DataFrame) -> pl.DataFrame:
    """Every symbol's close at bar RESTATED_BAR moved by 1% (high follows so the bar stays valid)."""
    at = pl.int_range(pl.len()).over("symbol") == RESTATED_BAR
    out = bars.with_columns(pl.when(at).then(pl.col("close") * 1.01).otherwise(pl.col("close")).alias("close"))
    return out.with_columns(pl.max_horizontal("high", "close").alias("high"))


def by_symbol(df: pl.DataFrame) -> dict[str, pl.DataFrame]:
    return {k[0]: v for k, v in df.partition_by("symbol", as_dict=True, maintain_order=True).items()}


@dataclass
class Template:
    """A store on disk to copy per trial, and what each symbol's visible rows may be while work is pending."""

    name: str
    root: Path
    final_bars: pl.DataFrame
    new: dict[str, pl.DataFrame]  # the rows a finished backfill leaves
    old: dict[str, pl.DataFrame]  # the rows before it (a symbol missing here has none)
    calibration: dict[str, float] = field(default_factory=dict)

    def state(self, symbol: str, rows: pl.DataFrame | None) -> str:
        if rows is None:
            return "old" if symbol not in self.old else "BAD"
        if rows.equals(self.new[symbol]):
            return "new"
        if symbol in self.old and rows.equals(self.old[symbol]):
            return "old"
        return "BAD"


@pytest.fixture(scope="module")
def templates(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Template]:
    base = tmp_path_factory.mktemp("templates")
    bars = synthetic_bars(N_SYMBOLS, N_BARS, seed=SEED)
    feats = standard_features()
    computed = pitstore.compute(feats, bars)
    out: dict[str, Template] = {}

    root = base / "full"  # bars stored, nothing computed yet: every symbol is a full backfill
    with Store.open(root) as store:
        store.ingest(bars)
        store.register(feats)
    out["full"] = Template("full", root, bars, by_symbol(computed), {})

    root = base / "incremental"  # 450 bars backfilled, then 50 appended: incremental entries
    with Store.open(root) as store:
        store.ingest(first_bars(bars, OLD_BARS))
        store.backfill(feats)
        store.ingest(bars)
    out["incremental"] = Template("incremental", root, bars, by_symbol(computed),
                                  by_symbol(first_bars(computed, OLD_BARS)))

    root = base / "restated"  # all backfilled, then restated: full recomputes superseding the old entries
    restated = restate(bars)
    with Store.open(root) as store:
        store.ingest(bars)
        store.backfill(feats)
        assert len(store.ingest(restated).restated) == N_SYMBOLS
    out["restated"] = Template("restated", root, restated, by_symbol(pitstore.compute(feats, restated)),
                               by_symbol(computed))
    return out


# --- children -----------------------------------------------------------------------------------------


class Child:
    """A child process running CHILD; lines are read as they come, each with the time it was read."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )
        self.watchdog = threading.Timer(CHILD_TIMEOUT_S, self.proc.kill)
        self.watchdog.start()
        self.lines: list[tuple[str, float]] = []
        self.result: tuple[int, str] | None = None

    def order(self, mode: str, root: Path, **args: Any) -> Child:
        """Wait until the child has imported everything, then tell it what to do."""
        self.expect("ready")
        self.send(json.dumps([mode, str(root), args]))
        return self

    def readline(self) -> str:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().rstrip("\n")
        self.lines.append((line, time.perf_counter()))
        return line

    def expect(self, wanted: str) -> None:
        line = self.readline()
        if line != wanted:
            raise AssertionError(f"child said {line!r}, expected {wanted!r}; stderr: {self.finish()[1][-2000:]}")

    def send(self, line: str) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line + "\n")
        self.proc.stdin.flush()

    def kill(self) -> int:
        self.proc.send_signal(signal.SIGKILL)
        return self.finish()[0]

    def finish(self) -> tuple[int, str]:
        """Wait for exit; returns (returncode, stderr). Unread stdout lines are kept in ``lines``."""
        if self.result is None:
            out, err = self.proc.communicate()
            self.watchdog.cancel()
            now = time.perf_counter()
            self.lines.extend((line, now) for line in out.splitlines())
            self.result = (self.proc.returncode, err)
        return self.result

    def count(self, word: str) -> int:
        return sum(1 for line, _ in self.lines if line == word)

    def report(self) -> dict[str, Any]:
        reports: list[dict[str, Any]] = [
            json.loads(line[len("report "):]) for line, _ in self.lines if line.startswith("report ")
        ]
        assert len(reports) == 1, self.lines
        return reports[0]


class Pool:
    """Hands out children that are already importing; keeps one spare started."""

    def __init__(self) -> None:
        self.spare: Child | None = None

    def take(self) -> Child:
        child = self.spare or Child()
        self.spare = Child()
        return child

    def close(self) -> None:
        if self.spare is not None:
            self.spare.proc.kill()
            self.spare.finish()


@pytest.fixture(scope="module")
def pool() -> Iterator[Pool]:
    p = Pool()
    yield p
    p.close()


@contextmanager
def reaped(*children: Child) -> Iterator[None]:
    """Never leave a child running, whatever the test does."""
    try:
        yield
    finally:
        for c in children:
            if c.proc.poll() is None:
                c.proc.kill()
            c.finish()


@contextmanager
def context(where: str) -> Iterator[None]:
    """Add the trial's coordinates (seed, kill moment) to a failing check's message."""
    try:
        yield
    except AssertionError as exc:
        raise AssertionError(f"{exc} [{where}]") from exc


def copy_store(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


# --- checks -------------------------------------------------------------------------------------------


@dataclass
class DiskState:
    tmp_files: int
    orphans: int  # complete Parquet files on disk that the catalog does not list (never read)


# Entry files are immutable and uniquely named (a uuid): one already checked in an earlier store copy or an
# earlier check of the same trial is not decoded again if its size is unchanged.
_verified: set[tuple[str, int]] = set()


def check_disk(root: Path) -> DiskState:
    """Every entry the catalog lists (live or superseded) is a complete, readable file matching its row."""
    with closing(sqlite3.connect(root / "catalog.sqlite")) as conn:
        rows = [("bars", *r) for r in conn.execute("SELECT symbol, path, n_rows, first_ts, last_ts FROM bar_entries")]
        rows += [("features", *r) for r in conn.execute(
            "SELECT symbol, path, n_rows, first_ts, last_ts FROM feature_entries")]
    listed = set()
    for kind, symbol, rel, n_rows, first_ts, last_ts in rows:
        path = root / rel
        assert not path.name.startswith(".") and path.suffix == ".parquet", f"catalog lists a temporary file {rel}"
        assert path.is_file(), f"{kind} entry of {symbol} points to a missing file {rel}"
        listed.add(path)
        key = (f"{rel}:{n_rows}:{first_ts}:{last_ts}", path.stat().st_size)
        if key in _verified:
            continue
        try:
            footer_rows = pq.ParquetFile(path).metadata.num_rows
            df = pl.read_parquet(path)  # decodes every page: a truncated or torn file fails here
        except Exception as exc:
            raise AssertionError(f"{kind} entry of {symbol} lists a partial or unreadable file {rel}: {exc}") from exc
        if is_compacted(rel):  # a shared file (an incremental run's new rows of many symbols): this entry's rows
            epochs = pl.col("ts").dt.epoch("us")
            df = df.filter((pl.col("symbol") == symbol) & (epochs >= first_ts) & (epochs <= last_ts))
        else:
            assert footer_rows == n_rows, f"{rel}: footer row count != catalog n_rows"
        assert df.height == n_rows, f"{rel}: {df.height} rows, catalog says {n_rows}"
        assert df["symbol"].unique().to_list() == [symbol], f"{rel}: rows of another symbol"
        ts = df["ts"].dt.epoch("us")
        assert ts.is_sorted() and ts.n_unique() == n_rows, f"{rel}: ts not strictly increasing"
        assert (int(ts[0]), int(ts[-1])) == (first_ts, last_ts), f"{rel}: ts range != catalog's"
        _verified.add(key)
    files = [p for p in root.rglob("*") if p.is_file() and p.parent != root]
    tmp = [p for p in files if p.name.endswith(".tmp")]
    orphans = [p for p in files if p.suffix == ".parquet" and p not in listed]
    return DiskState(len(tmp), len(orphans))


def check_api(template: Template, root: Path) -> dict[str, str]:
    """The store opens and serves; every symbol shows exactly the old or the new rows. Returns the states."""
    with Store.open(root) as store:
        rows = store.read(FS)
        assert not rows.select("symbol", "ts").is_duplicated().any(), "duplicated (symbol, ts) rows"
        parts = by_symbol(rows)
        states = {s: template.state(s, parts.get(s)) for s in SYMBOLS}
        bad = [s for s, st in states.items() if st == "BAD"]
        assert not bad, f"rows of {bad[:5]} are neither the complete old nor the complete new rows"
        last_ts = [parts[s]["ts"][-1] if s in parts else template.final_bars["ts"][-1] for s in SYMBOLS]
        entities = pl.DataFrame({"symbol": SYMBOLS, "ts": last_ts})
        hist = store.get_historical(entities, FS)
        assert hist.height == N_SYMBOLS and hist["symbol"].to_list() == SYMBOLS
        for s, row in zip(SYMBOLS, hist.iter_rows(named=True), strict=True):
            if s in parts:
                assert row["status"] == "ok" and row == {**parts[s].row(-1, named=True), "status": "ok"}, s
            else:
                assert row["status"] != "ok" and row["mom_60d"] is None, s
    return states


def finish_and_compare(template: Template, root: Path) -> None:
    """The next backfill completes the work: stored rows equal pitstore.compute on all bars."""
    with Store.open(root) as store:
        store.backfill(standard_features())
        got = store.read(FS)
        assert store.stats()["feature_entries_live"] >= N_SYMBOLS
    want = pitstore.compute(standard_features(), template.final_bars)
    assert got.equals(want), "stored rows differ from pitstore.compute after the completing backfill"


# --- crash safety ---------------------------------------------------------------------------------------


def calibrate(pool: Pool, template: Template, tmp: Path) -> None:
    """One uninterrupted child: when progress lines come (to spread kill moments over the real run)."""
    root = copy_store(template.root, tmp / f"calibrate-{template.name}")
    child = pool.take()
    with reaped(child):
        child.order("backfill", root)
        child.expect("started")
        while child.readline() == "progress":  # each line timed as it comes
            pass
        rc, err = child.finish()
    assert rc == 0, err
    times = [t for line, t in child.lines if line in ("started", "progress")]
    assert len(times) == N_SYMBOLS + 1, child.lines
    gaps = [b - a for a, b in itertools.pairwise(times[1:])]
    template.calibration = {"first": times[1] - times[0], "gap": statistics.median(gaps)}
    check_api(template, root)
    finish_and_compare(template, root)


def test_backfill_survives_sigkill(pool: Pool, templates: dict[str, Template], tmp_path: Path) -> None:
    """SIGKILL at random moments of a backfill never leaves a listed partial file, a torn symbol or a lost commit."""
    rng = random.Random(RUN_SEED)
    names = ["full", "incremental", "restated"]
    for name in names:
        calibrate(pool, templates[name], tmp_path)
    kills = partial = before = after = tmp_seen = orphans_seen = trial = 0
    while kills < BACKFILL_KILLS:
        trial += 1
        assert trial <= 3 * BACKFILL_KILLS, f"children kept finishing before the kill (seed {RUN_SEED})"
        t = templates[names[trial % len(names)]]
        root = copy_store(t.root, tmp_path / f"trial-{trial}")
        for _ in range(rng.choice((1, 1, 2))):  # sometimes kill the recovering backfill too
            with Store.open(root) as store:
                states = {s: t.state(s, p) for s, p in by_symbol(store.read(FS)).items()}
            todo = sorted(s for s in SYMBOLS if states.get(s, "old") != "new")
            if not todo:
                break
            # Progress lines to see before the kill (0: kill from 'started'). A batch's symbols commit together and
            # report progress after the commit: half the kills aim at the run before it.
            k = rng.randrange(len(todo)) if rng.random() < 0.5 else 0
            delay = rng.uniform(0, t.calibration["first"] if k == 0 else t.calibration["gap"])
            child = pool.take()
            with reaped(child):
                child.order("backfill", root)
                child.expect("started")
                for _ in range(k):
                    child.expect("progress")
                time.sleep(delay)  # a random kill moment within the next step, not a wait for anything
                seen = child.count("progress")
                rc = child.kill()
            where = f"seed {RUN_SEED}, trial {trial} ({t.name}), k {k}, delay {delay * 1e3:.1f} ms, rc {rc}"
            with context(where):
                disk = check_disk(root)
                states = check_api(t, root)
            done = [s for s in todo if states[s] == "new"]
            assert todo[:seen] == done[:seen], f"a symbol reported done before the kill is not committed: {where}"
            if rc == -signal.SIGKILL:
                kills += 1
                partial += 0 < len(done) < len(todo)
                before += not done
                after += len(done) == len(todo)
                tmp_seen += disk.tmp_files
                orphans_seen += disk.orphans
            else:
                assert rc == 0, where
        with context(f"seed {RUN_SEED}, trial {trial} ({t.name}), completing backfill"):
            finish_and_compare(t, root)
    print(f"\nbackfill kills: {kills} in {trial} trials (seed {RUN_SEED}), {before} before the commit, {after} after "
          f"it, {partial} mid-way; left behind: {tmp_seen} .tmp files, {orphans_seen} unlisted complete files")
    # A batch's symbols are committed in one transaction: all of them or none, never some.
    assert partial == 0, f"a kill left a backfill batch half committed (seed {RUN_SEED})"
    assert before and after, f"kills landed on one side of the commit only (seed {RUN_SEED})"


@pytest.mark.parametrize("kind", ["fresh", "append"])
def test_ingest_survives_sigkill(pool: Pool, kind: str, tmp_path: Path) -> None:
    """SIGKILL during an ingest leaves every committed bar snapshot intact; re-running the ingest completes it."""
    rng = random.Random(RUN_SEED + (kind == "append"))
    bars = synthetic_bars(N_SYMBOLS, N_BARS, seed=SEED)
    old_bars = first_bars(bars, OLD_BARS)
    new, old = by_symbol(bars), by_symbol(old_bars) if kind == "append" else {}
    template = tmp_path / "template"
    with Store.open(template) as store:
        if kind == "append":
            store.ingest(old_bars)
            store.backfill(standard_features())
        else:
            store.register(standard_features())
    args = {"n_symbols": N_SYMBOLS, "n_bars": N_BARS, "seed": SEED}

    calib = pool.take()
    with reaped(calib):
        calib.order("ingest", copy_store(template, tmp_path / "calibrate"), **args)
        calib.expect("started")
        calib.expect("done")
        rc, err = calib.finish()
    assert rc == 0, err
    duration = calib.lines[2][1] - calib.lines[1][1]

    kills = attempt = 0
    while kills < INGEST_KILLS // 2:
        attempt += 1
        assert attempt <= 10, f"children kept finishing before the kill (seed {RUN_SEED})"
        root = copy_store(template, tmp_path / f"trial-{attempt}")
        delay = rng.uniform(0, duration)
        child = pool.take()
        with reaped(child):
            child.order("ingest", root, **args)
            child.expect("started")
            time.sleep(delay)  # a random kill moment, not a wait for anything
            rc = child.kill()
        where = f"seed {RUN_SEED}, {kind} attempt {attempt}, delay {delay * 1e3:.1f} ms, rc {rc}"
        with context(where):
            check_disk(root)
        with closing(sqlite3.connect(root / "catalog.sqlite")) as conn:
            live = conn.execute("SELECT symbol, path FROM bar_entries WHERE superseded_at IS NULL").fetchall()
        assert len({s for s, _ in live}) == len(live), f"two live snapshots for one symbol: {where}"
        for symbol, rel in live:
            snap = pl.read_parquet(root / rel)
            assert snap.equals(new[symbol]) or (symbol in old and snap.equals(old[symbol])), f"{symbol}: {where}"
        assert {s for s, _ in live} >= set(old), f"a symbol lost its bars: {where}"
        kills += rc == -signal.SIGKILL
        with Store.open(root) as store:
            store.ingest(bars)
            assert store.symbols() == SYMBOLS
            assert store.stats()["bars_live"] == bars.height
            store.backfill(standard_features())
            assert store.read(FS).equals(pitstore.compute(standard_features(), bars)), where


# --- concurrency ----------------------------------------------------------------------------------------


def run_together(pool: Pool, root: Path, symbol_lists: list[list[str] | None]) -> list[dict[str, Any]]:
    """Start one backfilling child per symbol list, release them at once, return their reports."""
    children = [pool.take() for _ in symbol_lists]
    with reaped(*children):
        for c in children:
            c.expect("ready")
        for c, syms in zip(children, symbol_lists, strict=True):
            c.send(json.dumps(["backfill", str(root), {"symbols": syms}]))
        results = [c.finish() for c in children]
    for rc, err in results:
        assert rc == 0, err[-3000:]
    reports = [c.report() for c in children]
    assert max(r["t0"] for r in reports) < min(r["t1"] for r in reports), "the backfills did not overlap"
    return reports


def check_complete(root: Path, bars: pl.DataFrame) -> None:
    """Stored rows equal a full compute, one live entry per symbol, and no file the catalog does not list."""
    disk = check_disk(root)
    assert (disk.tmp_files, disk.orphans) == (0, 0), "a process left files behind without crashing"
    with Store.open(root) as store:
        got = store.read(FS)
        stats = store.stats()
    assert not got.select("symbol", "ts").is_duplicated().any(), "duplicated (symbol, ts) rows"
    assert got.equals(pitstore.compute(standard_features(), bars))
    assert stats["feature_entries_live"] == stats["feature_entries_total"] == N_SYMBOLS


def test_concurrent_backfills_of_different_symbols(pool: Pool, tmp_path: Path) -> None:
    """Two processes backfilling disjoint symbols into one store at once both succeed; the result is complete."""
    bars = synthetic_bars(N_SYMBOLS, N_BARS, seed=SEED)
    with Store.open(tmp_path) as store:
        store.ingest(bars)  # the feature set is not registered yet: both children register it concurrently
    half = N_SYMBOLS // 2
    reports = run_together(pool, tmp_path, [SYMBOLS[:half], SYMBOLS[half:]])
    assert reports[0]["full"] == SYMBOLS[:half] and reports[1]["full"] == SYMBOLS[half:]
    check_complete(tmp_path, bars)


def test_concurrent_backfills_of_the_same_symbols(pool: Pool, tmp_path: Path) -> None:
    """Two processes backfilling the same symbols at once both succeed and each symbol's rows are stored once."""
    bars = synthetic_bars(N_SYMBOLS, N_BARS, seed=SEED)
    races = 0
    for round_ in range(3):
        root = tmp_path / f"round-{round_}"
        with Store.open(root) as store:
            store.ingest(bars)
        a, b = run_together(pool, root, [None, None])
        for s in SYMBOLS:
            written = (s in a["full"]) + (s in b["full"])
            assert written == 1, f"{s} written by {written} processes"
            loser = b if s in a["full"] else a
            assert s in loser["lost_race"] or s in loser["up_to_date"], s
        races += len(a["lost_race"]) + len(b["lost_race"])
        check_complete(root, bars)
    assert races > 0, "no commit race happened: the test did not exercise concurrent commits"

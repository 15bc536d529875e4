"""SIGKILL during compaction: at least 20 real kills at random moments of a compaction run; after each, verify
is clean, every entry is there with its facts unchanged, answers equal those before, gc removes exactly the
leftovers, and a new compaction finishes the job with the same answers.

The only sleeps are random delays that pick a kill moment after the child said it started compacting.
``PITSTORE_CRASH_SEED`` replays a failing run's kill schedule."""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

import pitstore
from pitstore import Store
from pitstore.offline.entries import is_compacted
from pitstore.ops.housekeeping import DATA_DIRS
from pitstore.testing import synthetic_bars

RUN_SEED = int(os.environ.get("PITSTORE_CRASH_SEED", random.SystemRandom().randrange(2**32)))
KILLS = 20
MAX_TRIALS = 60
CHILD_TIMEOUT_S = 60.0
SRC = str(Path(__file__).resolve().parents[1] / "src")
FS = pitstore.FeatureSet("k", [pitstore.ret(1).alias("r"), pitstore.ema(5).alias("e")], timeframe="1d")

# Warm child: imports first (not part of the kill window), then compacts the store named on stdin.
CHILD = """
import sys, time
from pitstore import Store
print("ready", flush=True)
root = sys.stdin.readline().strip()
with Store.open(root) as store:
    print("started", flush=True)
    t0 = time.perf_counter()
    store.compact()
    print(f"done {time.perf_counter() - t0:.6f}", flush=True)
"""


def _objects(store: Store) -> set[str]:
    return {o.path for top in DATA_DIRS for o in store.storage.list(top)}


def _facts(store: Store) -> list[tuple[object, ...]]:
    return sorted((e.id, e.symbol, e.n_rows, e.first_ts, e.last_ts, e.recorded_at, e.superseded_at)
                  for e in store.catalog.all_feature_entries())


def _answers(store: Store) -> tuple[pl.DataFrame, pl.DataFrame]:
    ents = store.read("k").select("symbol", "ts").sample(fraction=0.3, seed=1, shuffle=True)
    return store.get_historical(ents, "k"), store.read("k")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """240 small entries in files of their own (under the backfill's own compaction threshold): 8 backfills, each
    the first (a full one) of 30 new symbols; the new rows of the symbols already there go into one shared
    (compacted) file per backfill."""
    root = tmp_path_factory.mktemp("kill") / "template"
    bars = synthetic_bars(240, 400, seed=9)
    days = pl.col("ts").rank("dense") - 1  # daily bars: the bar's day number
    number = pl.col("symbol").rank("dense") - 1
    with Store.open(root) as store:
        for k, cut in enumerate(range(50, 401, 50)):
            store.ingest(bars.filter((days < cut) & (number < 30 * (k + 1))))
            store.backfill(FS)
        assert sum(not is_compacted(e.path) for e in store.catalog.all_feature_entries()) == 240
    yield root


class Child:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": SRC})
        self.ready = False

    def line(self, word: str) -> str:
        assert self.proc.stdout is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < CHILD_TIMEOUT_S:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                pytest.fail(f"child exited before {word!r} (seed {RUN_SEED}): {err[-3000:]}")
            if line.startswith(word):
                return line
        pytest.fail(f"child did not say {word!r} in time (seed {RUN_SEED})")

    def start(self, root: Path) -> None:
        assert self.proc.stdin is not None
        if not self.ready:  # it imported pitstore while the previous trial was checked
            self.line("ready")
            self.ready = True
        self.proc.stdin.write(f"{root}\n")
        self.proc.stdin.flush()
        self.line("started")

    def kill(self) -> int | None:
        """SIGKILL; the exit code when it had finished already (too late), else None."""
        code = self.proc.poll()
        self.proc.kill()
        self.proc.wait(timeout=CHILD_TIMEOUT_S)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code


def test_compaction_survives_sigkill(template: Path, tmp_path: Path) -> None:
    rng = random.Random(RUN_SEED)
    with Store.open(template) as store:
        want, facts = _answers(store), _facts(store)
    # One uninterrupted run: how long compaction takes here, to aim the kills inside it.
    clean = Child()
    shutil.copytree(template, tmp_path / "clean")
    clean.start(tmp_path / "clean")
    took = float(clean.line("done").split()[1])
    clean.kill()
    kills = trials = before = after = 0
    child = Child()
    while kills < KILLS:
        trials += 1
        assert trials <= MAX_TRIALS, f"children kept finishing before the kill (seed {RUN_SEED})"
        root = tmp_path / f"t{trials}"
        shutil.copytree(template, root)
        child.start(root)
        delay = rng.uniform(0, took * 1.2)
        time.sleep(delay)  # a random kill moment, not a wait for anything
        code = child.kill()
        child = Child()  # the next one warms up while this trial is checked
        where = f"trial {trials}, kill after {delay:.3f} s of {took:.3f} s (seed {RUN_SEED})"
        with Store.open(root) as store:
            assert store.verify().ok, where
            assert _facts(store) == facts, f"{where}: entries lost or changed"
            for w, g in zip(want, _answers(store), strict=True):
                assert_frame_equal(g, w)
            packed = all(is_compacted(e.path) for e in store.catalog.all_feature_entries())
            leftover = _objects(store) - store.catalog.referenced_paths()
            if code is None:
                kills += 1
                before += not packed
                after += packed
            gc = store.gc(orphan_grace_seconds=0)
            assert set(gc.orphan_files) == leftover and gc.missing_files == [], where
            assert _objects(store) == store.catalog.referenced_paths(), where
            store.compact()
            assert {is_compacted(e.path) for e in store.catalog.all_feature_entries()} == {True}, where
            assert store.verify().ok and _facts(store) == facts, where
            for w, g in zip(want, _answers(store), strict=True):
                assert_frame_equal(g, w)
        shutil.rmtree(root)
    child.kill()
    print(f"\ncompaction kills: {kills} in {trials} trials (seed {RUN_SEED}; run {took:.3f} s): {before} before the"
          f" commit, {after} after it")
    assert before and after, f"kills landed on one side of the commit only (seed {RUN_SEED})"

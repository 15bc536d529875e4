"""SIGKILL during appended-segment writes and compactions (pitstore.sources.segments), with real processes.

A child appends a few bars per symbol per ingest to a store that keeps at most 2 segments (so every third
append compacts), backfilling the standard features after each, and prints ``step N`` after each committed
step. The parent kills it at a random moment inside a calibrated run, then checks from outside and through the
public API: ``verify`` is clean, every live snapshot is a whole prefix of the bars (base + segments read back
equal the bars of some committed-or-pending step, never a torn mix), nothing committed is lost; ``gc`` removes
only unlisted leftovers; finishing the appends gives bars and features equal to a store never killed.
The parent synchronises on the child's lines only; the one sleep picks the kill moment.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import polars as pl
import pytest

import pitstore
from pitstore import Store, standard_features
from pitstore.testing import synthetic_bars

pytestmark = pytest.mark.slow

N_SYMBOLS = 8
OLD_BARS = 200
STEPS = 9
STEP_BARS = 3
SEED = 13
KILLS = 20  # SIGKILLs that must land before the child finished
MAX_TRIALS = 60
TIMEOUT_S = 120.0
RUN_SEED = int(os.environ.get("PITSTORE_CRASH_SEED", random.SystemRandom().randrange(2**32)))

CHILD = r"""
import json, sys
from pitstore import Store, standard_features
from pitstore.testing import synthetic_bars
print("ready", flush=True)
root, n_symbols, old, steps, k, seed = json.loads(sys.stdin.readline())
bars = synthetic_bars(n_symbols, old + steps * k, seed=seed)
import polars as pl
pos = pl.int_range(pl.len()).over("symbol")
with Store.open(root, bar_segments=2) as store:
    print("started", flush=True)
    for i in range(steps):
        store.ingest(bars.filter((pos >= old + i * k) & (pos < old + (i + 1) * k)))
        store.backfill(standard_features())
        print(f"step {i}", flush=True)
print("done", flush=True)
"""


def prefix(bars: pl.DataFrame, n: int) -> pl.DataFrame:
    return bars.filter(pl.int_range(pl.len()).over("symbol") < n)


class Child:
    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        self.watchdog = threading.Timer(TIMEOUT_S, self.proc.kill)  # a hang fails, never synchronises
        self.watchdog.start()

    def line(self) -> str:
        assert self.proc.stdout is not None
        return self.proc.stdout.readline().rstrip("\n")

    def start(self, root: Path) -> None:
        assert self.line() == "ready"
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([str(root), N_SYMBOLS, OLD_BARS, STEPS, STEP_BARS, SEED]) + "\n")
        self.proc.stdin.flush()
        assert self.line() == "started"

    def finish(self) -> tuple[int, str, str]:
        out, err = self.proc.communicate()
        self.watchdog.cancel()
        return self.proc.returncode, out, err


def check(root: Path, bars: pl.DataFrame, where: str) -> int:
    """Verify clean, every live snapshot a whole committed prefix; returns the fewest bars a symbol has."""
    with Store.open(root, bar_segments=2) as store:
        report = store.verify()
        assert report.ok, f"{where}: {report.problems[:3]}"
        live = store.catalog.live_bars()
        assert sorted(e.symbol for e in live) == sorted(bars["symbol"].unique().to_list()), where
        fewest = min(e.n_rows for e in live)
        for e in live:
            got = store.bars(e.symbol)
            n = got.height
            assert n == e.n_rows and (n - OLD_BARS) % STEP_BARS == 0, f"{where}: {e.symbol} has {n} bars"
            assert got.equals(prefix(bars.filter(pl.col("symbol") == e.symbol), n)), f"{where}: {e.symbol}"
        feats = store.read("daily_core")
        assert not feats.select("symbol", "ts").is_duplicated().any(), where
        known = pl.concat([store.bars(e.symbol) for e in sorted(live, key=lambda e: e.symbol)])
        want = pitstore.compute(standard_features(), known).join(feats.select("symbol", "ts"), on=["symbol", "ts"],
                                                                 how="semi")
        assert feats.equals(want), f"{where}: stored features differ from a compute over the stored bars"
        return fewest


def test_segment_appends_and_compactions_survive_sigkill(tmp_path: Path) -> None:
    rng = random.Random(RUN_SEED)
    bars = synthetic_bars(N_SYMBOLS, OLD_BARS + STEPS * STEP_BARS, seed=SEED)
    template = tmp_path / "template"
    with Store.open(template, bar_segments=2) as store:
        store.ingest(prefix(bars, OLD_BARS))
        store.backfill(standard_features())

    calib = Child()
    calib.start(shutil.copytree(template, tmp_path / "calibrate"))
    t0 = time.perf_counter()
    rc, out, err = calib.finish()
    duration = time.perf_counter() - t0
    assert rc == 0 and out.splitlines()[-1] == "done", err[-3000:]
    with Store.open(tmp_path / "calibrate") as store:
        expected_bars = pl.concat([store.bars(s) for s in store.symbols()])
        expected_features = store.read("daily_core")
    assert expected_bars.equals(bars) and expected_features.equals(pitstore.compute(standard_features(), bars))

    kills = trials = mid_compaction = 0
    spare = Child()
    while kills < KILLS:
        trials += 1
        assert trials <= MAX_TRIALS, f"only {kills} kills landed in {trials - 1} trials (seed {RUN_SEED})"
        root = shutil.copytree(template, tmp_path / f"trial-{trials}")
        child, spare = spare, Child()  # the next one imports while this one runs
        child.start(root)
        delay = rng.uniform(0, duration)
        time.sleep(delay)  # a random kill moment, not a wait for anything
        child.proc.send_signal(signal.SIGKILL)
        rc, out, _ = child.finish()
        where = f"seed {RUN_SEED}, trial {trials}, delay {delay * 1e3:.0f} ms, rc {rc}"
        steps_done = sum(1 for line in out.splitlines() if line.startswith("step "))
        fewest = check(root, bars, where)
        assert fewest >= OLD_BARS + steps_done * STEP_BARS, f"{where}: a committed step was lost"
        if rc == -signal.SIGKILL:
            kills += 1
            mid_compaction += steps_done % 3 == 2  # the step being run was a compaction
        with Store.open(root, bar_segments=2) as store:
            store.gc()
            assert store.verify().ok, where  # gc removed only what no row lists
            store.ingest(bars)  # completes what the kill interrupted: an overlay of the bars stored
            store.backfill(standard_features())
            assert pl.concat([store.bars(s) for s in store.symbols()]).equals(expected_bars), where
            assert store.read("daily_core").equals(expected_features), where
        shutil.rmtree(root)
    spare.proc.kill()
    spare.finish()
    print(f"\nsegment kills: {kills} in {trials} trials (seed {RUN_SEED}), {mid_compaction} during a compaction step")
    assert mid_compaction >= 1, f"no kill landed in a compaction step (seed {RUN_SEED})"

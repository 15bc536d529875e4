"""The compute cache across real processes: single flight, takeover of a killed peer, SIGKILL at random moments.

Children are fresh interpreters running ``cache_workers.serve`` against a store on disk; computations are
counted in per-key log files written with O_APPEND (they survive processes and kills). The parent never sleeps
to wait for something: it waits for a child's line, a log line, a file or a /proc/locks entry, each with a
deadline. The only sleeps are the random delays that pick a kill moment, and the modelled cost inside computes.

Set ``PITSTORE_CACHE_KILL_SEED`` to replay the random kill schedule of a failing run (failures quote it).
"""

from __future__ import annotations

import json
import os
import random
import signal
import sqlite3
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from cache_workers import (
    GATE_ENV,
    Child,
    blocked_on_flock,
    digest,
    heavy,
    heavy_frame,
    log_lines,
    make_raw,
    slow_summary,
    starts,
    summarise,
    wait_until,
)
from polars.testing import assert_frame_equal

from pitstore import Store
from pitstore.cache import cache_key
from pitstore.offline.entries import encode_symbol

pytestmark = pytest.mark.slow  # real processes

RUN_SEED = int(os.environ.get("PITSTORE_CACHE_KILL_SEED", random.SystemRandom().randrange(2**32)))
KILL_TRIALS = 30


@pytest.fixture
def root(tmp_path: Path) -> Path:
    return tmp_path / "store"


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    d = tmp_path / "log"
    d.mkdir()
    return d


def call(symbol: str, config: dict[str, Any], compute: str = "slow_summary", **extra: Any) -> dict[str, Any]:
    return {"symbol": symbol, "config": config, "compute": compute, **extra}


def get_order(root: Path, c: dict[str, Any]) -> dict[str, Any]:
    return {"op": "get", "root": str(root), "call": c}


def cache_leftovers(root: Path, referenced: set[str]) -> tuple[list[Path], list[Path]]:
    """Temporaries and Parquet files no catalog row refers to, under cache/."""
    files = [p for p in (root / "cache").rglob("*") if p.is_file() and ".locks" not in p.parts]
    tmp = [p for p in files if p.name.endswith(".tmp")]
    unreferenced = [p for p in files if p.suffix == ".parquet" and str(p.relative_to(root)) not in referenced]
    return tmp, unreferenced


# --- single flight -------------------------------------------------------------------------------------------


def test_single_flight_across_processes(root: Path, log_dir: Path) -> None:
    """8 processes x 50 calls over 20 overlapping keys (each compute takes 0.2 s): every key is computed exactly
    once, nobody fails, and every process gets the same result for a key as every other and as a fresh compute."""
    n_keys, n_procs, n_calls = 20, 8, 50
    configs = [{"log": str(log_dir), "name": f"k{i}", "k": i + 1, "sleep": 0.2} for i in range(n_keys)]
    symbols = [f"S{i % 4}" for i in range(n_keys)]
    with Store.open(root):
        pass  # the catalog exists before the children race to open it
    rng = random.Random(RUN_SEED)
    plans = []
    for _ in range(n_procs):
        order = list(range(n_keys))
        rng.shuffle(order)
        plans.append(([0] + order * 3)[:n_calls])  # all start on key 0 together: 8 callers of one missing key
    children = [Child() for _ in range(n_procs)]
    try:
        for child, plan in zip(children, plans, strict=True):
            child.expect("ready")
            child.send({"op": "many", "root": str(root), "calls": [call(symbols[i], configs[i]) for i in plan]})
            child.expect("waiting")
        for child in children:
            child.send("go")
        reports = [child.expect("report", timeout=120) for child in children]
        codes = [child.finish() for child in children]
    finally:
        for child in children:
            child.__exit__()
    assert codes == [0] * n_procs, [c.stderr[-2000:] for c in children]
    parsed = [json.loads(r) for r in reports]
    assert max(p["t0"] for p in parsed) < min(p["t1"] for p in parsed), "the processes did not run concurrently"
    want = {f"k{i}": digest(summarise(make_raw(symbols[i]), configs[i])) for i in range(n_keys)}
    seen: dict[str, set[str]] = {}
    for p in parsed:
        assert len(p["digests"]) == n_calls
        for name, d in p["digests"]:
            seen.setdefault(name, set()).add(d)
    assert seen == {name: {d} for name, d in want.items()}, "processes got different results for one key"
    computers = set()
    for i in range(n_keys):
        lines = log_lines(log_dir, f"k{i}")
        assert [ln.split()[0] for ln in lines] == ["start", "end"], f"key k{i} computed {starts(log_dir, f'k{i}')}x"
        computers.add(lines[0].split()[1])
    assert len(computers) > 1, "one process computed everything: the others never raced for a key"
    with Store.open(root) as store:
        s = store.stats()["cache"]
        assert (s["misses"], s["hits"], s["entries"]) == (n_keys, n_procs * n_calls - n_keys, n_keys)
        assert store.verify().ok
        for i in range(n_keys):  # and the parent hits every key
            got = store.get_or_compute(symbols[i], make_raw(symbols[i]), configs[i], slow_summary)
            assert digest(got) == want[f"k{i}"]
    assert sum(starts(log_dir, f"k{i}") for i in range(n_keys)) == n_keys


# --- takeover --------------------------------------------------------------------------------------------------


def test_waiter_takes_over_from_a_killed_peer(root: Path, log_dir: Path, tmp_path: Path) -> None:
    """A computes a key and hangs; B calls the same key and waits on its lock; SIGKILL A: B computes the key
    itself within the deadline and the result is stored for everyone."""
    gate = tmp_path / "gate-never-opened"
    config = {"log": str(log_dir), "name": "takeover", "k": 7}
    c = call("AAA", config)
    with Store.open(root):
        pass
    with Child(env={GATE_ENV: str(gate)}) as a, Child() as b:
        a.expect("ready")
        b.expect("ready")
        a.send(get_order(root, c))
        a.expect("started")
        wait_until(lambda: starts(log_dir, "takeover") == 1, 30, "A to start computing")
        b.send(get_order(root, c))
        b.expect("started")
        wait_until(lambda: blocked_on_flock(b.proc.pid), 30, "B to wait on the key's lock")
        assert starts(log_dir, "takeover") == 1, "B computed while A held the key"
        t_kill = time.monotonic()
        assert a.kill() == -signal.SIGKILL
        done = b.expect("done", timeout=20)
        took = time.monotonic() - t_kill
        assert b.finish() == 0, b.stderr
    assert took < 20
    raw = make_raw("AAA")
    assert done == digest(summarise(raw, config))
    events = [ln.split() for ln in log_lines(log_dir, "takeover")]
    assert [e[0] for e in events] == ["start", "start", "end"]
    assert events[0][1] == str(a.proc.pid) and events[1][1] == events[2][1] == str(b.proc.pid)
    with Store.open(root) as store:
        assert store.catalog.cache_get(cache_key("AAA", raw, config, slow_summary).key) is not None
        assert_frame_equal(store.get_or_compute("AAA", raw, config, slow_summary), summarise(raw, config))
        assert starts(log_dir, "takeover") == 2  # a hit: B's result was stored
        assert store.verify().ok


def test_wait_timeout_computes_beside_a_stuck_live_peer(root: Path, log_dir: Path, tmp_path: Path) -> None:
    """A peer that lives but never finishes: a caller with wait_timeout computes itself after that long; when
    the peer finally finishes, both results agree and one entry is stored."""
    gate = tmp_path / "gate"
    config = {"log": str(log_dir), "name": "stuck", "k": 3}
    with Store.open(root):
        pass
    with Child(env={GATE_ENV: str(gate)}) as a, Child() as c:
        a.expect("ready")
        c.expect("ready")
        a.send(get_order(root, call("AAA", config)))
        a.expect("started")
        wait_until(lambda: starts(log_dir, "stuck") == 1, 30, "A to start computing")
        t0 = time.monotonic()
        c.send(get_order(root, call("AAA", config, wait_timeout=1.0)))
        c.expect("started")
        done_c = c.expect("done", timeout=30)
        waited = time.monotonic() - t0
        assert starts(log_dir, "stuck") == 2
        gate.touch()
        done_a = a.expect("done", timeout=30)
        assert a.finish() == 0 and c.finish() == 0, a.stderr + c.stderr
    assert waited >= 1.0, f"C computed after {waited:.2f} s, before its wait_timeout"
    want = digest(summarise(make_raw("AAA"), config))
    assert done_a == done_c == want
    with Store.open(root) as store:
        assert len(store.catalog.cache_entries()) == 1
        assert store.verify().ok
        assert digest(store.get_or_compute("AAA", make_raw("AAA"), config, slow_summary)) == want
    assert starts(log_dir, "stuck") == 2


# --- SIGKILL at random moments -----------------------------------------------------------------------------------


class Pool:
    """Hands out children that are already importing; keeps ``spares`` started (imports overlap the trials)."""

    def __init__(self, spares: int = 2) -> None:
        self.spares: list[Child] = []
        self.n = spares

    def take(self) -> Child:
        while len(self.spares) <= self.n:
            self.spares.append(Child())
        return self.spares.pop(0)

    def close(self) -> None:
        for child in self.spares:
            child.__exit__()


@pytest.fixture
def pool() -> Iterator[Pool]:
    p = Pool()
    yield p
    p.close()


ROWS = 600_000  # ~5 MB result: encoding, writing and fsyncing it is a good part of a child's run


def heavy_config(log_dir: Path, trial: int) -> dict[str, Any]:
    return {"log": str(log_dir), "name": f"t{trial}", "trial": trial, "rows": ROWS, "sleep": 0.1}


def stage_of(store: Store, root: Path, key: str, log_dir: Path, name: str) -> str:
    """Where a killed child was: before its compute, computing, publishing (encode, write, renamed but not
    committed) or committed."""
    if store.catalog.cache_get(key) is not None:
        return "committed"
    events = [ln.split()[0] for ln in log_lines(log_dir, name)]
    if "start" not in events:
        return "before-compute"
    if "end" not in events:
        return "compute"
    d = root / "cache" / encode_symbol("AAA")
    if (d / f"{key}.parquet").exists():
        return "renamed"
    if any(d.glob(f".{key}.parquet.*.tmp")):
        return "write"
    return "encode"


def check_after_kill(store: Store, root: Path, log_dir: Path, trial: int, stage: str, where: str,
                     config: dict[str, Any] | None = None) -> None:
    """verify() is clean, gc removes every leftover, the next call returns the right result (computing it
    again exactly when the kill came before the commit), and everything is clean afterwards."""
    raw = make_raw("AAA")
    config = config or heavy_config(log_dir, trial)
    report = store.verify()
    assert report.ok, f"{report.problems} [{where}]"
    tmp, unreferenced = cache_leftovers(root, {e.path for e in store.catalog.cache_entries()})
    before = {str(p) for p in tmp + unreferenced}
    gc = store.gc(orphan_grace_seconds=0)
    referenced = {e.path for e in store.catalog.cache_entries()}
    tmp, unreferenced = cache_leftovers(root, referenced)
    assert (tmp, unreferenced) == ([], []), f"gc left {tmp + unreferenced} [{where}]"
    assert {str(root / p) for p in gc.orphan_files} == before, where
    assert gc.missing_files == [] and gc.busy == [], where
    n = starts(log_dir, f"t{trial}")
    got = store.get_or_compute("AAA", raw, config, heavy)
    assert_frame_equal(got, heavy_frame(raw, config))
    assert starts(log_dir, f"t{trial}") == n + (stage != "committed"), where
    assert store.verify().ok, where
    assert cache_leftovers(root, {e.path for e in store.catalog.cache_entries()}) == ([], []), where


def test_sigkill_at_random_moments(pool: Pool, root: Path, log_dir: Path) -> None:
    """At least 30 children killed at random moments of get_or_compute (computing, encoding, writing, renaming,
    committing): the store always verifies, gc removes what the kill left, and the next call is right."""
    rng = random.Random(RUN_SEED)
    raw = make_raw("AAA")
    with Store.open(root) as store:
        # calibration: how long an uninterrupted child takes from "started" to "done"
        child = pool.take()
        with child:
            child.expect("ready")
            child.send(get_order(root, call("AAA", heavy_config(log_dir, 0), "heavy")))
            child.expect("started")
            t0 = time.perf_counter()
            child.expect("done")
            duration = time.perf_counter() - t0
            assert child.finish() == 0, child.stderr
        check_after_kill(store, root, log_dir, 0, "committed", "calibration")
        stages: Counter[str] = Counter()
        kills = trial = 0
        while kills < KILL_TRIALS:
            trial += 1
            assert trial <= 3 * KILL_TRIALS, f"children kept finishing before the kill (seed {RUN_SEED})"
            config = heavy_config(log_dir, trial)
            key = cache_key("AAA", raw, config, heavy).key
            delay = rng.uniform(0, duration * 1.1)
            child = pool.take()
            with child:
                child.expect("ready")
                child.send(get_order(root, call("AAA", config, "heavy")))
                child.expect("started")
                time.sleep(delay)  # a random kill moment, not a wait for anything
                rc = child.kill()
            where = f"seed {RUN_SEED}, trial {trial}, delay {delay * 1e3:.0f} ms of {duration * 1e3:.0f}, rc {rc}"
            if rc == -signal.SIGKILL:
                kills += 1
                stage = stage_of(store, root, key, log_dir, f"t{trial}")
            else:
                assert rc == 0, f"{child.stderr[-2000:]} [{where}]"
                stage = "finished"
            stages[stage] += 1
            check_after_kill(store, root, log_dir, trial, stage, f"{where}, stage {stage}")
        print(f"\ncache kills: {kills} in {trial} trials (seed {RUN_SEED}), child run {duration * 1e3:.0f} ms, "
              f"stages {dict(stages)}")
        assert stages["compute"] >= 1, f"no kill landed during a compute: {dict(stages)} (seed {RUN_SEED})"
        publishing = stages["encode"] + stages["write"] + stages["renamed"]
        assert publishing >= 1, f"no kill landed while publishing: {dict(stages)} (seed {RUN_SEED})"
        assert len(store.catalog.cache_entries()) == trial + 1


def test_sigkill_between_rename_and_catalog_commit(root: Path, log_dir: Path, tmp_path: Path) -> None:
    """The narrowest window, made certain: the test holds SQLite's write lock, so the child publishes the file
    and then waits to commit its row; SIGKILL there leaves a complete but unlisted file, which nobody reads,
    verify() accepts, gc deletes, and the next call recomputes."""
    gate = tmp_path / "gate"
    raw = make_raw("AAA")
    config = heavy_config(log_dir, 1)
    key = cache_key("AAA", raw, config, heavy).key
    final = root / "cache" / encode_symbol("AAA") / f"{key}.parquet"
    with Store.open(root) as store, Child(env={GATE_ENV: str(gate)}) as child:
        child.expect("ready")
        child.send(get_order(root, call("AAA", config, "heavy")))
        child.expect("started")
        writer = sqlite3.connect(root / "catalog.sqlite", isolation_level=None, timeout=30)
        try:
            writer.execute("BEGIN IMMEDIATE")  # the child's commit will wait for this lock
            gate.touch()  # the compute blocked on the gate: no compute runs until the lock is held
            wait_until(final.exists, 30, "the child to rename its entry into place")
            assert child.kill() == -signal.SIGKILL
        finally:
            writer.execute("ROLLBACK")
            writer.close()
        assert final.is_file() and store.catalog.cache_get(key) is None
        assert [ln.split()[0] for ln in log_lines(log_dir, "t1")] == ["start", "end"]
        assert stage_of(store, root, key, log_dir, "t1") == "renamed"
        check_after_kill(store, root, log_dir, 1, "renamed", "rename-commit window")


def test_sigkill_while_writing_the_entry(root: Path, log_dir: Path) -> None:
    """Kill as soon as the temporary file appears: a .tmp is left, never read, not listed, removed by gc."""
    raw = make_raw("AAA")
    d = root / "cache" / encode_symbol("AAA")
    left_tmp = 0
    with Store.open(root) as store:
        for trial in range(1, 9):
            config = heavy_config(log_dir, trial) | {"rows": 3_000_000}
            key = cache_key("AAA", raw, config, heavy).key
            with Child() as child:
                child.expect("ready")
                child.send(get_order(root, call("AAA", config, "heavy")))
                child.expect("started")
                wait_until(lambda key=key: any(d.glob(f".{key}.parquet.*.tmp")) or child.proc.poll() is not None,
                           60, "the temporary file")
                rc = child.kill()
            tmp_left = any(d.glob(f".{key}.parquet.*.tmp"))
            left_tmp += tmp_left
            stage = stage_of(store, root, key, log_dir, f"t{trial}")
            assert rc == -signal.SIGKILL or stage == "committed", rc
            if tmp_left:
                assert stage == "write", stage
            check_after_kill(store, root, log_dir, trial, stage, f"write trial {trial}, stage {stage}",
                             config=config)
            if left_tmp >= 2:
                break
    assert left_tmp >= 2, "the kill never landed while the temporary file was being written"

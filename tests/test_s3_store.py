"""A store whose data is on a real S3-compatible server process (moto's standalone server) and whose catalog is
in the real PostgreSQL: ``gc`` removes the objects no row references (after the grace period for in-flight
writers), ``verify`` checks size and hash of every referenced object, and SIGKILLed writers (ingest, backfill)
lose nothing committed and leave only what ``gc`` removes.

Set ``PITSTORE_CRASH_SEED`` to replay the random kill schedule of a failing run (failures quote it).
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from s3_server import S3Server, s3_server, s3_url  # noqa: F401  (fixtures)
from servers import drop_schema

from pitstore import Store, standard_features
from pitstore.ops.housekeeping import DATA_DIRS
from pitstore.storage.fsspec import FsspecStorage
from pitstore.testing import synthetic_bars

RUN_SEED = int(os.environ.get("PITSTORE_CRASH_SEED", random.SystemRandom().randrange(2**32)))
KILL_TARGET = 20  # writers killed mid-work (ingests and backfills alternating)
MAX_TRIALS = 60  # a run that ends before its kill is a trial, not a kill
CHILD_TIMEOUT_S = 60.0


@pytest.fixture
def team(postgres_url: str, namespace: str, s3_url: str, s3_server: S3Server,  # noqa: F811
         tmp_path: Path) -> Iterator[dict[str, Any]]:
    """Open arguments of one team store: PostgreSQL catalog (its own schema), data in a fresh bucket."""
    yield {"root": str(tmp_path / "local"), "catalog_url": f"{postgres_url}?schema={namespace}",
           "data_url": s3_url, "data_options": s3_server.options}
    drop_schema(postgres_url, namespace)


def _open(team: dict[str, Any]) -> Store:
    args = dict(team)
    return Store.open(args.pop("root"), **args)


def _objects(store: Store) -> set[str]:
    return {o.path for top in DATA_DIRS for o in store.storage.list(top)}


def _stray(store: Store, path: str, data: bytes) -> None:
    store.storage.put(path, data)


def test_gc_removes_unreferenced_objects_after_the_grace_period(team: dict[str, Any]) -> None:
    with _open(team) as store:
        assert isinstance(store.storage, FsspecStorage)
        store.ingest(synthetic_bars(2, 120))
        store.backfill(standard_features())
        raw = pl.DataFrame({"ts": [1, 2, 3], "x": [1.0, 2.0, 3.0]})
        store.get_or_compute("S0000", raw, {"k": 1}, _double)
        kept = _objects(store)
        assert kept == store.catalog.referenced_paths()
        fake = "f" * 64
        strays = {"bars/s_S0000/0123456789abcdef0123456789abcdef.parquet": b"written, never committed",
                  "features/daily_core/v1/s_S0001/fedcba9876543210fedcba9876543210.parquet": b"orphan",
                  f"cache/s_S0000/{fake}.parquet": b"PAR1 not really"}
        for path, data in strays.items():
            _stray(store, path, data)
        young = store.gc()  # the offline orphans are younger than the grace period: perhaps being committed
        assert young.orphan_files == [f"cache/s_S0000/{fake}.parquet"]  # cache: checked under its key's lock
        assert _objects(store) == kept | set(strays) - {f"cache/s_S0000/{fake}.parquet"}
        dry = store.gc(orphan_grace_seconds=0, dry_run=True)
        assert sorted(dry.orphan_files) == sorted(set(strays) - {f"cache/s_S0000/{fake}.parquet"})
        done = store.gc(orphan_grace_seconds=0)
        assert sorted(done.orphan_files) == sorted(dry.orphan_files) and done.bytes_freed == 30
        assert _objects(store) == kept and store.verify().ok
        assert store.stats()["bytes_on_disk"] == sum(o.size for t in DATA_DIRS for o in store.storage.list(t))


def _double(raw: pl.DataFrame, config: dict[str, int]) -> pl.DataFrame:
    return raw.with_columns(pl.col("x") * config["k"] * 2)


def test_verify_checks_size_and_hash_of_every_referenced_object(team: dict[str, Any], s3_server: S3Server,  # noqa: F811
                                                                ) -> None:
    import s3fs

    other = s3fs.S3FileSystem(skip_instance_cache=True, **s3_server.options)  # a stray writer
    with _open(team) as store:
        assert isinstance(store.storage, FsspecStorage)
        store.ingest(synthetic_bars(3, 120))
        store.backfill(standard_features())
        store.get_or_compute("S0000", pl.DataFrame({"x": [1.0]}), {"k": 1}, _double)
        report = store.verify()
        assert report.ok and report.checked == 3 + 3 + 1
        feats = store.catalog.all_feature_entries()
        bars = store.catalog.all_bar_entries()
        cached = store.catalog.cache_entries()
        base = store.storage.base
        body = bytearray(other.cat_file(f"{base}/{feats[0].path}"))
        body[len(body) // 2] ^= 0xFF
        other.pipe_file(f"{base}/{feats[0].path}", bytes(body))  # same size, other bytes
        other.pipe_file(f"{base}/{cached[0].path}", other.cat_file(f"{base}/{cached[0].path}")[:-1])  # truncated
        other.rm_file(f"{base}/{bars[1].path}")
        problems = {(p["kind"], p["path"]): p["problem"] for p in store.verify().problems}
        assert problems[("features", feats[0].path)] == "content does not match its hash"
        assert "the catalog says" in problems[("cache", cached[0].path)]
        assert ("bars", bars[1].path) in problems and len(problems) == 3


# --- SIGKILL of writers -----------------------------------------------------------------------------------

CHILD = r"""
import json, sys
from pitstore import Store, standard_features
from pitstore.testing import synthetic_bars

print("ready", flush=True)
order = json.loads(sys.stdin.readline())
args = order["store"]
with Store.open(args.pop("root"), **args) as store:
    print("started", flush=True)
    if order["op"] == "ingest":
        bars = synthetic_bars(order["n_symbols"], order["n_bars"], seed=order["seed"])
        store.ingest(bars)
    else:
        store.backfill(standard_features(), progress=lambda n: print("progress", flush=True))
print("done", flush=True)
"""


class Child:
    """A warm interpreter (pitstore imported) that runs one order; the parent synchronises on its lines."""

    def __init__(self) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONPATH": _pythonpath()})
        self.expect("ready")

    def expect(self, word: str) -> None:
        assert self.proc.stdout is not None
        t0 = time.monotonic()
        while time.monotonic() - t0 < CHILD_TIMEOUT_S:
            line = self.proc.stdout.readline()
            if not line:
                err = self.proc.stderr.read() if self.proc.stderr else ""
                pytest.fail(f"child exited before {word!r} (seed {RUN_SEED}): {err[-3000:]}")
            if line.strip() == word:
                return
        pytest.fail(f"child did not say {word!r} within {CHILD_TIMEOUT_S} s (seed {RUN_SEED})")

    def send(self, order: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps(order) + "\n")
        self.proc.stdin.flush()

    def kill(self) -> int | None:
        """SIGKILL it; its exit code when it had finished already (the kill came too late), else None."""
        code = self.proc.poll()
        self.proc.kill()
        self.proc.wait(timeout=CHILD_TIMEOUT_S)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()
        return code

    def finish(self) -> int:
        code = self.proc.wait(timeout=CHILD_TIMEOUT_S)
        self.kill()
        return code


def _pythonpath() -> str:
    src = str(Path(__file__).resolve().parents[1] / "src")
    return os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)


def _batch(i: int) -> dict[str, Any]:
    """Trial ``i``'s ingest: 6 symbols, more bars each time (the last ones new, some old ones restated)."""
    return {"op": "ingest", "n_symbols": 6, "n_bars": 120 + 10 * i, "seed": i % 3}


def _check(store: Store, committed: set[str], trial: str) -> set[str]:
    """After a kill: every file committed before is still referenced and intact, verify is clean, gc removes
    every unreferenced object and nothing else; returns what is committed now."""
    referenced = store.catalog.referenced_paths()
    assert committed <= referenced, f"{trial}: committed rows lost"
    report = store.verify()
    assert report.ok, f"{trial}: {report.problems}"
    leftover = _objects(store) - referenced
    gc = store.gc(orphan_grace_seconds=0)
    assert set(gc.orphan_files) == leftover and gc.missing_files == [], trial
    assert _objects(store) == referenced, f"{trial}: gc left or removed the wrong objects"
    assert store.verify().ok
    return referenced


@pytest.mark.slow
def test_sigkilled_writers_lose_nothing_committed_and_gc_removes_their_leftovers(team: dict[str, Any]) -> None:
    """Writers (ingest and backfill alternating, on 6 symbols) SIGKILLed at random moments after they started,
    until 20 were killed mid-work; after each: verify clean, gc removes exactly the unreferenced objects, nothing
    committed lost. Then an unkilled run finishes the work: the store equals one that never crashed."""
    rng = random.Random(RUN_SEED)
    with _open(team) as store:
        store.register(standard_features())
    committed: set[str] = set()
    kills = trials = 0
    durations = {"ingest": 0.6, "backfill": 0.6}  # halved whenever a run ends before its kill
    spare = Child()
    try:
        while kills < KILL_TARGET and trials < MAX_TRIALS:
            order = _batch(trials) if trials % 2 == 0 else {"op": "backfill"}
            child, spare = spare, Child()  # the next one imports while this trial runs
            child.send({**order, "store": team})
            child.expect("started")
            time.sleep(rng.uniform(0, durations[order["op"]]))  # a random kill moment, not synchronisation
            code = child.kill()
            if code is None:
                kills += 1
            else:
                assert code == 0, f"trial {trials} failed by itself (seed {RUN_SEED})"
                durations[order["op"]] /= 2
            with _open(team) as store:
                committed = _check(store, committed, f"trial {trials} ({order['op']}, seed {RUN_SEED})")
            trials += 1
    finally:
        spare.kill()
    assert kills >= KILL_TARGET, f"only {kills} of {trials} writers were killed mid-work (seed {RUN_SEED})"
    # Finish: the last ingest and a backfill, unkilled; the result is the never-crashed one.
    last = _batch(trials)
    with _open(team) as store:
        store.ingest(synthetic_bars(last["n_symbols"], last["n_bars"], seed=last["seed"]))
        store.backfill(standard_features())
        got = store.read("daily_core")
        assert store.verify().ok
    ref_root = Path(team["root"]).parent / "reference"
    with Store.open(ref_root) as ref:
        ref.ingest(synthetic_bars(last["n_symbols"], last["n_bars"], seed=last["seed"]))
        ref.backfill(standard_features())
        assert got.equals(ref.read("daily_core"))

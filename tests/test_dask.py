"""The Dask engine (issue #15 item 4) on a real 2-worker LocalCluster (processes, 1 thread each): backfill and
get_historical equal the local engine's, bit for bit; a worker SIGKILLed mid-backfill changes nothing."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

import pitstore.scale
from pitstore import FeatureSet, MissingDependencyError, Store, feature, macd, rsi, standard_features
from pitstore.offline.backfill import BackfillReport, compute_batch, plan
from pitstore.offline.entries import EntryReader, is_compacted, read_entries
from pitstore.testing import synthetic_bars

distributed = pytest.importorskip("distributed")

FS = FeatureSet("core", [*standard_features().features, rsi(14), macd(12, 26, 9)])


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with distributed.Client(cluster) as c:
        yield c
    cluster.close()


def _store(path: Path, bars: pl.DataFrame) -> Store:
    store = Store.open(path)
    store.ingest(bars)
    return store


def _entries(store: Store, name: str) -> list[tuple[Any, ...]]:
    """The live catalog rows but their ids, times and file names (unique per write), and each file's frame."""
    version = store.registry.get(name).version
    out = []
    for e in store.catalog.feature_entries(name, version):
        frame = read_entries(store.root, [e.path])
        assert frame is not None
        # A shared file (an incremental run's new rows) holds the symbols of one task or batch, which the two
        # engines cut differently: its size and hash are the file's; the entry's rows are compared below.
        file = (None, None) if is_compacted(e.path) else (e.size, e.file_hash)
        if is_compacted(e.path):
            frame = EntryReader(store.root, 0).read_of([e], frame.columns)
            assert frame is not None and frame.height == e.n_rows
        out.append((e.feature_set, e.symbol, e.path.rsplit("/", 1)[0], e.n_rows, e.first_ts, e.last_ts,
                    e.bars_entry_id, *file, frame))
    return out


def assert_same_entries(got: Store, expected: Store, name: str) -> None:
    a, b = _entries(got, name), _entries(expected, name)
    assert [r[:-1] for r in a] == [r[:-1] for r in b]
    for x, y in zip(a, b, strict=True):
        assert x[-1].equals(y[-1], null_equal=True), x[1]  # equals compares floats bit for bit (NaN too)


def test_backfill_equals_local_full_incremental_restated(tmp_path: Path, client: Any) -> None:
    bars = synthetic_bars(9, 700, ragged=True, seed=3)
    head = bars.filter(pl.col("ts") < pl.col("ts").max() - pl.duration(days=60))
    local, dask = _store(tmp_path / "local", head), _store(tmp_path / "dask", head)
    # 9 symbols in tasks of ~1,500 bars: several tasks per worker, symbols never split.
    r_local = local.backfill(FS)
    r_dask = dask.backfill(FS, engine="dask", scheduler=client, partition_rows=1_500)
    assert r_dask.full == r_local.full and len(r_dask.full) == 9
    assert r_dask.written_rows == r_local.written_rows
    assert_same_entries(dask, local, "core")
    # Appended bars: incremental entries; a restated bar: that symbol recomputed in full, superseding.
    restated = bars.with_columns(
        close=pl.when((pl.col("symbol") == "S0002") & (pl.int_range(pl.len()).over("symbol") == 10))
        .then(pl.col("close") * 1.01).otherwise(pl.col("close")))
    for store in (local, dask):
        store.ingest(restated)
    r_local = local.backfill(FS)
    r_dask = dask.backfill(FS, engine="dask", scheduler=client, partition_rows=1_500)
    assert (r_dask.full, r_dask.incremental, r_dask.up_to_date) == (r_local.full, r_local.incremental,
                                                                     r_local.up_to_date)
    assert r_dask.full == ["S0002"] and r_dask.incremental  # ragged: some symbols got no new bars
    assert_same_entries(dask, local, "core")
    assert dask.read("core").equals(local.read("core"), null_equal=True)
    assert dask.backfill(FS, engine="dask", scheduler=client).nothing_to_do
    assert dask.verify().ok


def test_backfill_lost_race_is_not_committed(tmp_path: Path, client: Any) -> None:
    """Another process commits the same symbols while the workers compute: the optimistic check refuses ours
    and our files are deleted, exactly as with the local engine."""
    store = _store(tmp_path / "s", synthetic_bars(3, 300))
    other = Store.open(tmp_path / "s")

    def racing(_: int) -> None:
        if not racing.done:  # type: ignore[attr-defined]
            racing.done = True  # type: ignore[attr-defined]
            other.backfill(FS)

    racing.done = False  # type: ignore[attr-defined]
    report = store.backfill(FS, engine="dask", scheduler=client, partition_rows=1, progress=racing)
    # Tasks finish in any order: the first committed wins, the two others lost to the other process.
    assert len(report.full) == 1 and sorted(report.full + report.lost_race) == ["S0000", "S0001", "S0002"]
    assert store.verify().ok
    files = list((tmp_path / "s" / "features").rglob("*.parquet"))
    assert len(files) == len(store.catalog.feature_entries("core", 1)) == 3


def _slow_set() -> FeatureSet:
    """A Python feature that takes a while per symbol, so that a worker can be killed in the middle of a task
    (defined in a function: cloudpickle ships it by value to workers that cannot import this test module)."""

    @feature(lookback=1)
    def slow_gap(bars: pl.DataFrame) -> pl.Series:
        time.sleep(0.25)
        return bars["open"] / bars["close"].shift(1) - 1

    return FeatureSet("slow", [*FS.features, slow_gap])


@pytest.mark.slow  # its own Dask cluster and a SIGKILLed worker
def test_worker_killed_mid_backfill_is_retried_without_duplicates(tmp_path: Path) -> None:
    bars = synthetic_bars(12, 400, seed=5)
    slow = _slow_set()
    local, dask = _store(tmp_path / "local", bars), _store(tmp_path / "dask", bars)
    local.backfill(slow)
    # What a killed attempt can leave: files written, never committed (a kill between write and return).
    report = BackfillReport("slow", dask.register(slow))
    dead = plan(dask.catalog, slow, 1, None, None, None, report)[:3]
    _, left = compute_batch(dask.root, slow, 1, dead, None, None)
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["report"] = dask.backfill(slow, engine="dask", scheduler=client, partition_rows=1)
            except BaseException as exc:  # re-raised below, in the test's thread
                result["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        killed = None
        deadline = time.monotonic() + 60
        while killed is None and time.monotonic() < deadline:
            busy = [w for w, keys in client.processing().items() if any("pitstore-backfill" in str(k) for k in keys)]
            if busy and client.run(lambda: 1):  # tasks are running (0.25 s each): kill one worker in the middle
                time.sleep(0.1)
                killed = pids[busy[0]]
                os.kill(killed, signal.SIGKILL)
            time.sleep(0.02)
        thread.join(120)
        assert killed not in client.run(os.getpid).values()  # the nanny restarted the killed worker
        cluster.close()
    assert killed is not None, "no task ever ran"
    if "error" in result:
        raise result["error"]
    assert sorted(result["report"].full) == sorted(local.symbols())
    assert_same_entries(dask, local, "slow")
    assert dask.verify().ok
    gc = dask.gc(orphan_grace_seconds=0)
    assert {w.path for w in left if w is not None} <= set(gc.orphan_files)
    files = list((tmp_path / "dask" / "features").rglob("*.parquet"))
    assert len(files) == len(dask.catalog.feature_entries("slow", 1)) == 12, gc.orphan_files
    assert dask.verify().ok


def test_missing_dask_names_the_extra(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path / "s", synthetic_bars(1, 50))
    for name in [m for m in sys.modules if m.startswith("pitstore.scale.")]:
        monkeypatch.delitem(sys.modules, name)
        monkeypatch.delattr(pitstore.scale, name.rsplit(".", 1)[1], raising=False)
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    with pytest.raises(MissingDependencyError, match=r"pip install 'pitstore\[dask\]'"):
        store.backfill(FS, engine="dask")
    with pytest.raises(MissingDependencyError, match=r"pip install 'pitstore\[dask\]'"):
        store.get_historical("entities/", "core", engine="dask")


def test_engine_arguments_are_checked(tmp_path: Path) -> None:
    from pitstore import InvalidInputError

    store = _store(tmp_path / "s", synthetic_bars(1, 50))
    with pytest.raises(InvalidInputError, match="engine"):
        store.backfill(FS, engine="spark")
    with pytest.raises(InvalidInputError, match="engine='dask'"):
        store.backfill(FS, scheduler="tcp://127.0.0.1:1")


def _entities(n: int, bars: pl.DataFrame, seed: int = 7) -> pl.DataFrame:
    """``n`` look-ups in random order: stored symbols and one unknown, times before, inside and after the bars."""
    import numpy as np

    rng = np.random.default_rng(seed)
    symbols = [*bars["symbol"].unique().sort().to_list(), "NOPE"]
    lo, hi = bars["ts"].min(), bars["ts"].max()
    span = int((hi - lo).total_seconds() * 1e6)  # type: ignore[operator, union-attr]
    ts = pl.Series(rng.integers(-span // 20, span + span // 20, n), dtype=pl.Int64)
    return pl.DataFrame({
        "symbol": pl.Series(rng.choice(symbols, n), dtype=pl.String),
        "ts": (ts + int(lo.timestamp() * 1e6)).cast(pl.Datetime("us", "UTC")),  # type: ignore[union-attr]
        "weight": rng.random(n),
    })


@pytest.fixture(scope="module")
def joined_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Store]:
    bars = synthetic_bars(40, 2_500, ragged=True, seed=11)
    store = _store(tmp_path_factory.mktemp("join"), bars)
    store.backfill(FS)
    store.backfill(FeatureSet("fast", [rsi(5)], ttl=timedelta(days=3)))
    yield store
    store.close()


def test_get_historical_equals_local_on_100k_rows(tmp_path: Path, client: Any, joined_store: Store) -> None:
    import dask.dataframe as dd

    store = joined_store
    bars = pl.concat([store.bars(s) for s in store.symbols()])
    entities = _entities(100_000, bars)
    features = ["core", "fast:rsi_5"]
    expected = store.get_historical(entities, features)
    assert expected["status"].n_unique() >= 3  # ok, unknown_symbol, no_data_yet (and stale via the TTL)
    ddf = dd.from_pandas(entities.to_pandas(), npartitions=4)
    got = store.get_historical(ddf, features, engine="dask", scheduler=client, partitions=3)
    assert got.equals(expected, null_equal=True)
    # A Parquet dataset path in, a Parquet dataset out: written by the workers, each file sorted by input_row.
    src = tmp_path / "entities"
    src.mkdir()
    for i, chunk in enumerate(entities.iter_slices(30_000)):
        chunk.write_parquet(src / f"part-{i}.parquet")
    done = store.get_historical(str(src), features, engine="dask", scheduler=client, out=tmp_path / "out")
    assert done.rows == 100_000 and len(done.files) == 4
    parts = [pl.read_parquet(tmp_path / "out" / f) for f in done.files]
    assert all(p["input_row"].is_sorted() for p in parts)
    back = pl.concat(parts).sort("input_row")
    assert back["input_row"].to_list() == list(range(100_000))
    assert back.drop("input_row").equals(expected, null_equal=True)
    assert list(store.storage.list("features/_shuffle")) == []  # the split's scratch pieces are gone


def test_get_historical_as_known_at_and_refusals(tmp_path: Path, client: Any, joined_store: Store) -> None:
    import dask.dataframe as dd

    store = joined_store
    bars = pl.concat([store.bars(s) for s in store.symbols()[:3]])
    entities = _entities(2_000, bars, seed=1)
    at = datetime.now(UTC) - timedelta(days=1)  # before anything was stored, inside the retention
    expected = store.get_historical(entities, "core", as_known_at=at)
    ddf = dd.from_pandas(entities.to_pandas(), npartitions=2)
    assert store.get_historical(ddf, "core", as_known_at=at, engine="dask", scheduler=client).equals(
        expected, null_equal=True)
    assert store.get_historical(ddf, "core", engine="dask", scheduler=client, output="pandas").shape[0] == 2_000
    from pitstore import InvalidInputError

    with pytest.raises(InvalidInputError, match="Dask DataFrame or a Parquet"):
        store.get_historical(entities, "core", engine="dask", scheduler=client)
    with pytest.raises(InvalidInputError, match="input_row"):
        store.get_historical(ddf.assign(input_row=1), "core", engine="dask", scheduler=client)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(InvalidInputError, match="not empty"):
        store.get_historical(ddf, "core", engine="dask", scheduler=client, out=tmp_path / "full")
    with pytest.raises(InvalidInputError, match="engine='dask'"):
        store.get_historical(entities, "core", out=tmp_path / "o")


def test_scheduler_none_is_the_current_client_and_an_address_connects(tmp_path: Path, client: Any) -> None:
    store = _store(tmp_path / "s", synthetic_bars(4, 200))
    # The fixture's Client is this process's current one: scheduler=None runs on it.
    assert len(store.backfill(FS, engine="dask").full) == 4
    store.ingest(synthetic_bars(4, 210))
    report = store.backfill(FS, engine="dask", scheduler=client.scheduler.address)  # a Client of its own, closed
    assert len(report.incremental) == 4 and store.verify().ok
    assert client.status == "running"


def _gated(chunk: Any, gate: str | None) -> Any:
    """A partition of the entities; the one with a gate is loaded only once the test opens it."""
    if gate is not None:
        distributed.Event(gate).wait(120)
    return chunk


def _splits_held(dask_scheduler: Any) -> dict[str, list[str]]:
    """On the scheduler: each finished split task -> the workers holding its result."""
    return {str(k): [w.address for w in ts.who_has] for k, ts in dask_scheduler.tasks.items()
            if "pitstore-split" in str(k) and ts.state == "memory"}


@pytest.mark.slow  # its own Dask cluster and a SIGKILLed worker
def test_worker_killed_between_split_and_join_changes_nothing(tmp_path: Path, joined_store: Store) -> None:
    """A split is done and the joins cannot start (the last input partition waits on an Event) when a worker
    holding a split's result is SIGKILLed: the scheduler runs it again, it rewrites its scratch pieces, the answer
    is the local engine's and no scratch file is left."""
    import dask
    import dask.dataframe as dd

    store = joined_store
    bars = pl.concat([store.bars(s) for s in store.symbols()])
    entities = _entities(20_000, bars, seed=3)
    expected = store.get_historical(entities, "core")
    chunks = [c.to_pandas() for c in entities.iter_slices(5_000)]
    gate = f"pitstore-test-gate-{os.getpid()}"
    cluster = distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0")
    with distributed.Client(cluster) as client:
        pids = client.run(os.getpid)
        ddf = dd.from_delayed([dask.delayed(_gated)(c, gate if i == len(chunks) - 1 else None)
                               for i, c in enumerate(chunks)], meta=chunks[0].iloc[:0], verify_meta=False)
        result: dict[str, Any] = {}

        def run() -> None:
            try:
                result["frame"] = store.get_historical(ddf, "core", engine="dask", scheduler=client, partitions=3)
            except BaseException as exc:  # re-raised below, in the test's thread
                result["error"] = exc

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 60
        # Not all of the other splits: one may be queued on the worker that waits on the gate.
        while not (held := client.run_on_scheduler(_splits_held)):
            assert time.monotonic() < deadline and thread.is_alive(), (held, result)
            time.sleep(0.02)  # polling the scheduler's state with a deadline
        # Whichever worker holds a finished split (perhaps the one waiting on the gate: its task runs again).
        victim = next(iter(held.values()))[0]
        os.kill(pids[victim], signal.SIGKILL)
        distributed.Event(gate, client=client).set()
        thread.join(120)
        done = client.run_on_scheduler(lambda dask_scheduler: [
            str(t[0]) for t in dask_scheduler.transition_log if "pitstore-split" in str(t[0]) and t[2] == "memory"])
        cluster.close()
    if "error" in result:
        raise result["error"]
    assert len(done) > len(set(done)) == len(chunks)  # a lost split was run again
    assert result["frame"].equals(expected, null_equal=True)
    assert list(store.storage.list("features/_shuffle")) == []

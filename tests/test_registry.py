"""The registry: one integer version per distinct fingerprint, persistent, safe across processes."""

from __future__ import annotations

import multiprocessing as mp
from pathlib import Path

import pytest

import pitstore


def _fs(n: int) -> pitstore.FeatureSet:
    return pitstore.FeatureSet("daily_core", [pitstore.ret(5), pitstore.sma(n), pitstore.rsi(14)])


def test_versions_follow_fingerprints(tmp_path: Path) -> None:
    """A new fingerprint gets the next version; a known one gets its old version back."""
    with pitstore.Store.open(tmp_path) as store:
        assert store.register(_fs(10)) == 1
        assert store.register(_fs(10)) == 1
        assert store.register(_fs(20)) == 2
        assert store.register(_fs(10)) == 1
        assert store.register(_fs(30)) == 3
        assert [v.version for v in store.versions("daily_core")] == [1, 2, 3]
        assert store.versions("daily_core")[1].columns == ("ret_5", "sma_20", "rsi_14")


def test_registry_persists(tmp_path: Path) -> None:
    """Versions survive closing and reopening the store."""
    with pitstore.Store.open(tmp_path) as store:
        store.register(_fs(10))
        store.register(_fs(20))
        fps = [v.fingerprint for v in store.versions("daily_core")]
    with pitstore.Store.open(tmp_path) as store:
        assert [v.fingerprint for v in store.versions("daily_core")] == fps
        assert store.register(_fs(20)) == 2
    assert (tmp_path / "catalog.sqlite").is_file()


def test_references_resolve(tmp_path: Path) -> None:
    """'set@N:column', 'set:column' (latest), 'set@N' and 'set' resolve to concrete versions and columns."""
    with pitstore.Store.open(tmp_path) as store:
        store.register(_fs(10))
        store.register(_fs(20))
        assert store.resolve("daily_core@1:sma_10") == pitstore.FeatureRef("daily_core", 1, ("sma_10",))
        assert store.resolve("daily_core:sma_20") == pitstore.FeatureRef("daily_core", 2, ("sma_20",))
        assert store.resolve("daily_core@2").columns == ("ret_5", "sma_20", "rsi_14")
        assert store.resolve("daily_core").version == 2
        assert str(store.resolve("daily_core@1:rsi_14")) == "daily_core@1:rsi_14"


@pytest.mark.parametrize(
    ("ref", "error", "match"),
    [
        ("nope:rsi_14", pitstore.FeatureSetNotFoundError, "no feature set named 'nope'"),
        ("daily_core@7:rsi_14", pitstore.VersionNotFoundError, "no version 7"),
        ("daily_core@1:sma_20", pitstore.NotFoundError, "no column 'sma_20'"),
        ("daily core:x", pitstore.InvalidInputError, "invalid feature reference"),
        ("daily_core@x", pitstore.InvalidInputError, "invalid feature reference"),
        ("", pitstore.InvalidInputError, "invalid feature reference"),
    ],
)
def test_bad_references_raise_typed_errors(tmp_path: Path, ref: str, error: type[Exception], match: str) -> None:
    """Unknown names, versions and columns, and malformed references, raise typed errors that say which."""
    with pitstore.Store.open(tmp_path) as store:
        store.register(_fs(10))
        with pytest.raises(error, match=match):
            store.resolve(ref)


def test_unknown_feature_set_lists_known_ones(tmp_path: Path) -> None:
    """Asking for the versions of an unknown set raises FeatureSetNotFoundError naming the known sets."""
    with pitstore.Store.open(tmp_path) as store:
        store.register(_fs(10))
        with pytest.raises(pitstore.FeatureSetNotFoundError, match="known: daily_core"):
            store.versions("daily")


def _register_all(root: str, order: list[int], barrier: object, out: object) -> None:
    barrier.wait()  # type: ignore[attr-defined]
    with pitstore.Store.open(root) as store:
        got = {n: store.register(_fs(n)) for n in order}
    out.put(got)  # type: ignore[attr-defined]


def test_concurrent_registration_across_processes(tmp_path: Path) -> None:
    """Processes registering overlapping definitions at once agree on one version per fingerprint."""
    ctx = mp.get_context("spawn")
    n_procs = 4
    barrier = ctx.Barrier(n_procs)
    queue = ctx.Queue()
    windows = [5, 10, 15, 20, 25, 30]
    orders = [windows, windows[::-1], windows[2:] + windows[:2], windows[1::2] + windows[::2]]
    procs = [ctx.Process(target=_register_all, args=(str(tmp_path), o, barrier, queue)) for o in orders]
    for p in procs:
        p.start()
    results = [queue.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert all(r == results[0] for r in results)
    assert sorted(results[0].values()) == list(range(1, len(windows) + 1))
    with pitstore.Store.open(tmp_path) as store:
        assert [v.version for v in store.versions("daily_core")] == list(range(1, len(windows) + 1))

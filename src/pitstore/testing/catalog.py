"""The catalog conformance suite: what every catalog backend answers, the same way (DESIGN section 4).

A backend's test module subclasses :class:`CatalogConformance` and provides the ``opener`` fixture: a function
that opens a new catalog on one store each time it is called (a second call is another process's view of the
same store), and closes every catalog it opened at teardown. Nothing here knows the backend. Imports pytest:
for test modules only (``pitstore`` never imports this module).
"""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pitstore.catalog.base import BarEntry, CacheEntry, Catalog, FeatureEntry, HistoryArchive
from pitstore.errors import ConflictError, InvalidInputError

Opener = Callable[[], Any]


def bar(symbol: str, path: str = "", n: int = 10, first: int = 0, last: int = 9) -> BarEntry:
    return BarEntry(0, symbol, path or f"bars/{symbol}/{n}.parquet", n, first, last, f"h-{symbol}-{n}", True, 0, 0,
                    None)


def feature(symbol: str, first: int, last: int, *, fs: str = "fs", version: int = 1, bars_id: int = 1,
            path: str = "", size: int | None = 100, file_hash: str | None = "fh") -> FeatureEntry:
    return FeatureEntry(0, fs, version, symbol, path or f"features/{fs}/{version}/{symbol}/{first}.parquet",
                        last - first + 1, first, last, bars_id, 0, None, size, file_hash)


def cache_entry(key: str, symbol: str = "AAA", *, created: int = 1_000, access: int = 1_000) -> CacheEntry:
    return CacheEntry(key, symbol, f"cache/{symbol}/{key}.parquet", 123, f"x-{key}", "polars", 5, 10, 20, 0.5,
                      created, access, 0)


def archive(table_id: str, first: int, path: str = "") -> HistoryArchive:
    return HistoryArchive(0, table_id, path or f"history/{table_id}/{first}.parquet", 3, first, first + 2,
                          first + 3, 77, f"a-{first}", 0)


class CatalogConformance:
    """Every method of :class:`pitstore.catalog.base.Catalog`, conflicts and concurrency included."""

    @pytest.fixture
    def opener(self) -> Iterator[Opener]:
        raise NotImplementedError("a backend's test class provides the opener fixture")

    @pytest.fixture
    def catalog(self, opener: Opener) -> Iterator[Catalog]:
        c = opener()
        yield c
        c.close()

    # --- registry --------------------------------------------------------------------------------------

    def test_versions_follow_fingerprints(self, catalog: Catalog) -> None:
        v1 = catalog.register_version("daily", "f1", '{"a": 1}')
        assert (v1.name, v1.version, v1.fingerprint, v1.definition) == ("daily", 1, "f1", '{"a": 1}')
        assert catalog.register_version("daily", "f1", "ignored") == v1  # known fingerprint: the stored row
        v2 = catalog.register_version("daily", "f2", '{"a": 2}')
        assert v2.version == 2 and catalog.register_version("other", "f1", "{}").version == 1
        assert catalog.versions("daily") == [v1, v2] and catalog.versions("nope") == []
        assert "T" in v1.created_at and v1.created_at.endswith("+00:00")

    def test_names_are_sorted_by_code_point(self, catalog: Catalog) -> None:
        for name in ("beta", "Alpha", "alpha", "Zeta", "émile", "_x"):
            catalog.register_version(name, "f", "{}")
        assert catalog.names() == sorted(["beta", "Alpha", "alpha", "Zeta", "émile", "_x"])

    def test_retired_versions_are_hidden_and_come_back_on_registration(self, catalog: Catalog) -> None:
        for i in (1, 2, 3):
            catalog.register_version("daily", f"f{i}", "{}")
        catalog.retire_versions([("daily", 1), ("daily", 2)])
        catalog.retire_versions([("daily", 1)])  # idempotent
        catalog.retire_versions([])
        assert [v.version for v in catalog.versions("daily")] == [3]
        assert catalog.names() == ["daily"]
        assert catalog.register_version("daily", "f2", "{}").version == 2  # live again, same number
        assert [v.version for v in catalog.versions("daily")] == [2, 3]
        assert catalog.register_version("daily", "f4", "{}").version == 4  # a retired number is never reused

    def test_retiring_with_its_entries_drops_them_and_nothing_else(self, catalog: Catalog) -> None:
        for i in (1, 2):
            catalog.register_version("fs", f"f{i}", "{}")
        assert catalog.commit_features(feature("AAA", 0, 9, version=1), supersede=[], expected_live=[])
        assert catalog.commit_features(feature("AAA", 0, 9, version=2), supersede=[], expected_live=[])
        catalog.retire_versions([("fs", 1)], drop_entries=True)
        assert catalog.feature_entries("fs", 1) == []
        assert [e.version for e in catalog.feature_entries("fs", 2)] == [2]
        assert [v.version for v in catalog.versions("fs")] == [2]

    def test_concurrent_registrations_agree(self, opener: Opener) -> None:
        """Threads, each with its own catalog: one definition gets one number, distinct ones distinct numbers."""
        catalogs = [opener() for _ in range(6)]
        same: list[int] = []
        distinct: list[int] = []
        barrier = threading.Barrier(len(catalogs))

        def work(i: int, c: Catalog) -> None:
            barrier.wait()
            same.append(c.register_version("shared", "one", "{}").version)
            distinct.append(c.register_version("mine", f"fp{i}", "{}").version)

        _threads(work, catalogs)
        assert same == [1] * len(catalogs)
        assert sorted(distinct) == list(range(1, len(catalogs) + 1))
        assert len(catalogs[0].versions("mine")) == len(catalogs)

    # --- bars -----------------------------------------------------------------------------------------

    def test_first_snapshot_then_supersede(self, catalog: Catalog) -> None:
        assert catalog.live_bars() == []
        first = catalog.commit_bars(bar("AAA", n=10), None)
        assert first.id > 0 and first.recorded_at > 0 and first.superseded_at is None
        assert catalog.live_bars() == [first] and catalog.live_bars(["AAA"]) == [first]
        second = catalog.commit_bars(bar("AAA", n=12)._replace(appended_only=False, restated_rows=2), first.id)
        assert second.id > first.id and second.recorded_at >= first.recorded_at
        assert catalog.live_bars() == [second]
        assert not catalog.live_bars()[0].appended_only and catalog.live_bars()[0].restated_rows == 2
        # The old snapshot is still what was known before the second commit.
        assert catalog.live_bars(as_known_at=second.recorded_at - 1)[0].id == first.id
        assert catalog.live_bars(as_known_at=first.recorded_at - 1) == []
        old = catalog.bar_history("AAA", 0)
        assert [e.id for e in old] == [first.id, second.id] and old[0].superseded_at == second.recorded_at
        assert catalog.bar_history("AAA", first.id) == [second] and catalog.bar_history("ZZZ", 0) == []

    def test_stale_expected_id_is_a_conflict_and_writes_nothing(self, catalog: Catalog) -> None:
        first = catalog.commit_bars(bar("AAA"), None)
        with pytest.raises(ConflictError, match="AAA"):
            catalog.commit_bars(bar("AAA", n=11), None)  # not new any more
        with pytest.raises(ConflictError, match="AAA"):
            catalog.commit_bars(bar("AAA", n=11), first.id + 1000)
        assert catalog.all_bar_entries() == [first]

    def test_batch_is_all_or_nothing(self, catalog: Catalog) -> None:
        a = catalog.commit_bars(bar("A"), None)
        with pytest.raises(ConflictError, match="'B'"):
            catalog.commit_bars_batch([(bar("A", n=11), a.id), (bar("B"), 12345), (bar("C"), None)])
        assert catalog.all_bar_entries() == [a]
        assert catalog.commit_bars_batch([]) == []
        done = catalog.commit_bars_batch([(bar("C"), None), (bar("A", n=11), a.id), (bar("B/x"), None)])
        assert [e.symbol for e in done] == ["C", "A", "B/x"]
        assert len({e.recorded_at for e in done}) == 1 and len({e.id for e in done}) == 3
        assert [e.symbol for e in catalog.live_bars()] == ["A", "B/x", "C"]  # by symbol
        assert [e.symbol for e in catalog.live_bars(["C", "A", "nope"])] == ["A", "C"]
        assert catalog.live_bars([]) == []

    def test_a_batch_naming_a_symbol_twice_is_refused_and_writes_nothing(self, catalog: Catalog) -> None:
        a = catalog.commit_bars(bar("A"), None)
        with pytest.raises(InvalidInputError, match="'B' more than once"):
            catalog.commit_bars_batch([(bar("B"), None), (bar("A", n=11), a.id), (bar("B", n=12), None)])
        assert catalog.all_bar_entries() == [a]

    def test_many_conflicting_symbols_are_named_briefly(self, catalog: Catalog) -> None:
        with pytest.raises(ConflictError, match="and 3 more"):
            catalog.commit_bars_batch([(bar(f"S{i}"), 99) for i in range(8)])

    def test_another_instance_sees_commits_and_conflicts(self, opener: Opener) -> None:
        one, two = opener(), opener()
        try:
            a = one.commit_bars(bar("AAA"), None)
            assert two.live_bars() == [a]
            b = two.commit_bars(bar("AAA", n=11), a.id)
            with pytest.raises(ConflictError):
                one.commit_bars(bar("AAA", n=12), a.id)  # one's view is stale
            assert one.live_bars() == [b]
        finally:
            one.close()
            two.close()

    def test_racing_ingests_leave_one_live_snapshot_per_symbol(self, opener: Opener) -> None:
        """Threads with their own catalogs commit overlapping symbols optimistically (re-read and retry on
        ConflictError): every commit that returned is in the chain, each supersedes the one before it."""
        catalogs = [opener() for _ in range(4)]
        per = 6
        barrier = threading.Barrier(len(catalogs))
        won: list[BarEntry] = []

        def work(i: int, c: Catalog) -> None:
            barrier.wait()
            for k in range(per):
                while True:
                    live = {e.symbol: e.id for e in c.live_bars(["X", "Y"])}
                    try:
                        won.extend(c.commit_bars_batch([(bar(s, path=f"{s}/{i}-{k}"), live.get(s))
                                                        for s in ("X", "Y")]))
                        break
                    except ConflictError:
                        continue

        _threads(work, catalogs)
        entries = catalogs[0].all_bar_entries()
        assert len(entries) == len(won) == 2 * len(catalogs) * per
        for s in ("X", "Y"):
            chain = [e for e in entries if e.symbol == s]
            assert [e.superseded_at is None for e in chain].count(True) == 1 and chain[-1].superseded_at is None
            for older, newer in itertools.pairwise(chain):
                assert older.superseded_at == newer.recorded_at

    @pytest.mark.parametrize("clock", ["running", "standing still"])
    def test_commits_never_share_a_time(self, opener: Opener, clock: str, monkeypatch: pytest.MonkeyPatch) -> None:
        """pitstore.rules.commit_time: commits in a row, by one catalog or by two, get strictly increasing
        times, so each one's ``as_known_at = t - 1`` is exactly the state before it, however fast they come
        (a clock standing still, as a coarse or stepped-back one does; a server's own clock is not stopped)."""
        one, two = opener(), opener()
        if clock == "standing still":
            stopped = time.time_ns()
            monkeypatch.setattr(time, "time_ns", lambda: stopped)
        try:
            entries: list[BarEntry] = []
            for i in range(40):
                c = (one, two)[i % 2]
                entries.append(c.commit_bars(bar("AAA", n=10 + i), entries[-1].id if entries else None))
            archived = one.commit_history_archive(archive("t@1", 0))
            assert one.commit_features(feature("AAA", 0, 9), supersede=[], expected_live=[])
            times = [e.recorded_at for e in entries] + [archived.recorded_at,
                                                        one.feature_entries("fs", 1)[0].recorded_at]
            assert times == sorted(times) and len(set(times)) == len(times), times
            for before, after in itertools.pairwise(entries):
                assert [e.id for e in two.live_bars(["AAA"], as_known_at=after.recorded_at - 1)] == [before.id]
        finally:
            one.close()
            two.close()

    # --- feature entries ------------------------------------------------------------------------------

    def test_feature_entries_commit_supersede_and_replay(self, catalog: Catalog) -> None:
        assert catalog.commit_features(feature("AAA", 0, 9), supersede=[], expected_live=[])
        assert catalog.commit_features(feature("AAA", 10, 19), supersede=[], expected_live=[1])
        assert catalog.commit_features(feature("BBB", 0, 9, size=None, file_hash=None), supersede=[],
                                       expected_live=[])
        live = catalog.feature_entries("fs", 1)
        assert [(e.symbol, e.first_ts) for e in live] == [("AAA", 0), ("AAA", 10), ("BBB", 0)]
        assert live[2].size is None and live[2].file_hash is None and live[0].size == 100
        a0, a10, _ = live
        # Expected live entries changed meanwhile: refused, nothing written.
        assert not catalog.commit_features(feature("AAA", 0, 19), supersede=[a0.id], expected_live=[a0.id])
        assert len(catalog.all_feature_entries()) == 3
        assert catalog.commit_features(feature("AAA", 0, 19), supersede=[a0.id, a10.id],
                                       expected_live=[a10.id, a0.id])  # any order
        now = catalog.feature_entries("fs", 1, ["AAA"])
        assert [(e.first_ts, e.last_ts) for e in now] == [(0, 19)]
        before = catalog.feature_entries("fs", 1, ["AAA"], as_known_at=now[0].recorded_at - 1)
        assert [e.id for e in before] == [a0.id, a10.id]
        assert [e.symbol for e in catalog.feature_entries("fs", 1, ["BBB", "AAA"])] == ["AAA", "BBB"]
        assert catalog.feature_entries("fs", 2) == [] and catalog.feature_entries("other", 1) == []
        assert catalog.feature_entries("fs", 1, []) == []
        old = [e for e in catalog.all_feature_entries() if e.id in (a0.id, a10.id)]
        assert all(e.superseded_at == now[0].recorded_at for e in old)

    def test_feature_entries_commit_batch(self, catalog: Catalog) -> None:
        ids = catalog.commit_features_batch([(feature("AAA", 0, 9), [], []), (feature("BBB", 0, 9), [], [])])
        a0, b0 = catalog.feature_entries("fs", 1)
        assert ids == [a0.id, b0.id]
        assert a0.recorded_at == b0.recorded_at  # one transaction, one commit time
        # BBB's expected live entries are stale: it alone is refused, AAA and CCC are published.
        shared = "features/fs/1/compacted/x.parquet"
        done = catalog.commit_features_batch([
            (feature("AAA", 10, 10, path=shared), [], [a0.id]),
            (feature("BBB", 0, 10, path=shared), [b0.id], []),
            (feature("CCC", 0, 0, path=shared), [], []),
        ])
        live = catalog.feature_entries("fs", 1)
        assert done == [live[1].id, None, live[3].id]
        assert [(e.symbol, e.first_ts, e.last_ts) for e in live] == [("AAA", 0, 9), ("AAA", 10, 10), ("BBB", 0, 9),
                                                                     ("CCC", 0, 0)]
        assert [e.path for e in live].count(shared) == 2
        # A full recompute in a batch supersedes what it replaces.
        a_ids = [e.id for e in live if e.symbol == "AAA"]
        (new,) = catalog.commit_features_batch([(feature("AAA", 0, 10), a_ids, a_ids)])
        assert [(e.id, e.first_ts, e.last_ts) for e in catalog.feature_entries("fs", 1, ["AAA"])] == [(new, 0, 10)]

    def test_drop_superseded_keeps_the_restatement_chain_and_records_the_horizon(self, catalog: Catalog) -> None:
        first = catalog.commit_bars(bar("AAA", n=10), None)
        restated = catalog.commit_bars(bar("AAA", n=11)._replace(appended_only=False, restated_rows=1), first.id)
        live = catalog.commit_bars(bar("AAA", n=12), restated.id)  # appended to the restated snapshot
        other = catalog.commit_bars(bar("BBB", n=5), None)
        assert catalog.commit_features(feature("AAA", 0, 9), supersede=[], expected_live=[])
        (f0,) = catalog.feature_entries("fs", 1, ["AAA"])
        assert catalog.commit_features(feature("AAA", 0, 11), supersede=[f0.id], expected_live=[f0.id])
        assert catalog.replay_from() is None
        cut = max([b.superseded_at or 0 for b in catalog.all_bar_entries()]
                  + [f.superseded_at or 0 for f in catalog.all_feature_entries()])
        bars, features = catalog.drop_superseded(cut)
        assert {b.id for b in bars} == {first.id, restated.id} and [f.id for f in features] == [f0.id]
        kept = {b.id: b for b in catalog.all_bar_entries()}
        assert set(kept) == {live.id, other.id}
        assert not kept[live.id].appended_only  # the restatement it followed is on record in its place
        assert kept[other.id].appended_only
        assert [f.first_ts for f in catalog.all_feature_entries()] == [0]
        assert catalog.replay_from() == cut
        assert catalog.drop_superseded(cut - 10) == ([], [])
        assert catalog.replay_from() == cut  # never moves back

    def test_versions_and_feature_sets_keep_their_entries_apart(self, catalog: Catalog) -> None:
        assert catalog.commit_features(feature("AAA", 0, 9, version=1), supersede=[], expected_live=[])
        assert catalog.commit_features(feature("AAA", 0, 9, version=2), supersede=[], expected_live=[])
        assert catalog.commit_features(feature("AAA", 0, 9, fs="g"), supersede=[], expected_live=[])
        assert [len(catalog.feature_entries(f, v)) for f, v in (("fs", 1), ("fs", 2), ("g", 1))] == [1, 1, 1]

    def test_racing_feature_commits_never_lose_or_duplicate(self, opener: Opener) -> None:
        catalogs = [opener() for _ in range(4)]
        barrier = threading.Barrier(len(catalogs))
        wins: list[int] = []

        def work(i: int, c: Catalog) -> None:
            barrier.wait()
            for k in range(5):
                while True:
                    live = [e.id for e in c.feature_entries("fs", 1, ["AAA"])]
                    if c.commit_features(feature("AAA", 0, 10 * k + i, path=f"p{i}-{k}"), supersede=live,
                                         expected_live=live):
                        wins.append(i)
                        break

        _threads(work, catalogs)
        entries = catalogs[0].all_feature_entries()
        assert len(entries) == len(wins) == 20
        assert sum(e.superseded_at is None for e in entries) == 1

    def test_counts(self, catalog: Catalog) -> None:
        assert catalog.counts() == {"bar_entries_live": 0, "bar_entries_total": 0, "bars_live": 0,
                                    "feature_entries_live": 0, "feature_entries_total": 0, "feature_rows_live": 0}
        a = catalog.commit_bars(bar("A", n=10), None)
        catalog.commit_bars(bar("A", n=15), a.id)
        catalog.commit_bars(bar("B", n=3), None)
        catalog.commit_features(feature("A", 0, 9), supersede=[], expected_live=[])
        assert catalog.counts() == {"bar_entries_live": 2, "bar_entries_total": 3, "bars_live": 18,
                                    "feature_entries_live": 1, "feature_entries_total": 1, "feature_rows_live": 10}

    # --- compute cache ---------------------------------------------------------------------------------

    def test_cache_put_get_replace_drop(self, catalog: Catalog) -> None:
        assert catalog.cache_get("k1") is None
        e1 = cache_entry("k1")
        catalog.cache_put(e1)
        assert catalog.cache_get("k1") == e1
        replaced = e1._replace(size=999, file_hash="new", first_ts=None, last_ts=None)
        catalog.cache_put(replaced)
        assert catalog.cache_get("k1") == replaced
        catalog.cache_put(cache_entry("k2", "BBB"))
        assert catalog.cache_drop(["k1", "absent"]) == 1
        assert catalog.cache_drop([]) == 0
        assert catalog.cache_get("k1") is None and catalog.cache_get("k2") is not None

    def test_cache_entries_filter_and_order(self, catalog: Catalog) -> None:
        for key, symbol, created, access in (("k3", "BBB", 5, 50), ("k1", "AAA", 9, 10), ("k2", "AAA", 2, 99)):
            catalog.cache_put(cache_entry(key, symbol, created=created, access=access))
        assert [e.key for e in catalog.cache_entries()] == ["k2", "k1", "k3"]  # symbol, then created_at
        assert [e.key for e in catalog.cache_entries("AAA")] == ["k2", "k1"]
        assert [e.key for e in catalog.cache_entries(accessed_before=60)] == ["k1", "k3"]
        assert [e.key for e in catalog.cache_entries("AAA", accessed_before=60)] == ["k1"]
        assert catalog.cache_entries("ZZZ") == []

    def test_cache_statistics_add_up(self, catalog: Catalog) -> None:
        catalog.cache_put(cache_entry("k1", access=1_000))
        catalog.cache_record("AAA", misses=1, compute_seconds=0.5, hash_seconds=0.25, hash_bytes=100)
        catalog.cache_record("AAA", hit_key="k1", hits=1, saved_seconds=0.5, hash_seconds=0.25, hash_bytes=100)
        catalog.cache_record("BBB", corruptions=1)
        stats = {r.symbol: r for r in catalog.cache_stats()}
        assert list(stats) == ["AAA", "BBB"]
        a = stats["AAA"]
        assert (a.hits, a.misses, a.compute_seconds, a.saved_seconds, a.hash_seconds, a.hash_bytes, a.corruptions) \
            == (1, 1, 0.5, 0.5, 0.5, 200, 0)
        assert stats["BBB"].corruptions == 1 and stats["BBB"].hits == 0
        hit = catalog.cache_get("k1")
        assert hit is not None and hit.hits == 1 and hit.last_access > 1_000

    def test_concurrent_statistics_are_not_lost(self, opener: Opener) -> None:
        catalogs = [opener() for _ in range(4)]
        catalogs[0].cache_put(cache_entry("k1"))

        def work(i: int, c: Catalog) -> None:
            for _ in range(25):
                c.cache_record("AAA", hit_key="k1", hits=1, hash_bytes=1)

        _threads(work, catalogs)
        [row] = catalogs[0].cache_stats()
        entry = catalogs[0].cache_get("k1")
        assert row.hits == row.hash_bytes == 100 and entry is not None and entry.hits == 100

    # --- history archives, sync marks, online requests -------------------------------------------------

    def test_history_archives(self, catalog: Catalog) -> None:
        b = catalog.commit_history_archive(archive("t@1", 50))
        a = catalog.commit_history_archive(archive("t@1", 10))
        c = catalog.commit_history_archive(archive("s@2", 70))
        assert a.id > b.id > 0 and a.recorded_at >= b.recorded_at > 0
        assert catalog.history_archives() == [c, a, b]  # by table, then first_ts
        assert catalog.history_archives("t@1") == [a, b] and catalog.history_archives("none") == []

    def test_history_sync_marks_keep_the_earliest(self, catalog: Catalog) -> None:
        assert catalog.history_synced("t@1", []) == {} and catalog.history_synced("t@1", [1]) == {}
        catalog.mark_history_synced("t@1", {1: 100, 2: 200})
        catalog.mark_history_synced("t@1", {1: 50, 2: 300})
        catalog.mark_history_synced("t@1", {})
        catalog.mark_history_synced("t@2", {1: 7})
        assert catalog.history_synced("t@1", [1, 2, 3]) == {1: 50, 2: 200}
        assert catalog.history_synced("t@2", [1, 2]) == {1: 7}

    def test_online_requests(self, catalog: Catalog) -> None:
        catalog.add_requests({"AAA": 3, "BBB": 5})
        catalog.add_requests({"AAA": 4, "CCC": 5})
        catalog.add_requests({})
        assert catalog.top_requested(2) == ["AAA", "BBB"]  # 7, then 5 and 5 by symbol
        assert catalog.top_requested(10) == ["AAA", "BBB", "CCC"] and catalog.top_requested(0) == []

    # --- housekeeping ----------------------------------------------------------------------------------

    def test_referenced_paths_and_drop_rows(self, catalog: Catalog) -> None:
        a = catalog.commit_bars(bar("A", path="bars/a1"), None)
        a2 = catalog.commit_bars(bar("A", path="bars/a2"), a.id)
        catalog.commit_features(feature("A", 0, 9, path="feat/a"), supersede=[], expected_live=[])
        catalog.cache_put(cache_entry("k"))
        catalog.commit_history_archive(archive("t@1", 0, path="hist/a"))
        assert catalog.referenced_paths() == {"bars/a1", "bars/a2", "feat/a", "cache/AAA/k.parquet", "hist/a"}
        [f] = catalog.all_feature_entries()
        assert catalog.drop_rows("bar_entries", [a.id]) == 1
        assert catalog.drop_rows("feature_entries", [f.id]) == 1
        assert catalog.drop_rows("bar_entries", []) == 0
        assert catalog.all_bar_entries() == [a2] and catalog.all_feature_entries() == []
        assert "bars/a1" not in catalog.referenced_paths()
        with pytest.raises(ValueError, match="not an entry table"):
            catalog.drop_rows("cache_entries", [1])

    def test_repairs_rewrite_one_row(self, catalog: Catalog) -> None:
        a = catalog.commit_bars(bar("A"), None)
        catalog.commit_features(feature("A", 0, 9), supersede=[], expected_live=[])
        [f] = catalog.all_feature_entries()
        catalog.replace_feature_file(f.id, "feat/rebuilt", 555, "rehash")
        [g] = catalog.all_feature_entries()
        assert g == f._replace(path="feat/rebuilt", size=555, file_hash="rehash")
        catalog.mark_bars_restated(a.id)
        [b] = catalog.all_bar_entries()
        assert b == a._replace(appended_only=False) and not b.appended_only

    def test_repoint_moves_only_entries_still_at_their_path(self, catalog: Catalog) -> None:
        catalog.commit_bars(bar("A"), None)
        catalog.commit_features(feature("A", 0, 9), supersede=[], expected_live=[])
        catalog.commit_features(feature("B", 0, 9), supersede=[], expected_live=[])
        f, g = catalog.all_feature_entries()
        moved = catalog.repoint_features([(f.id, f.path, "feat/compacted/1", 900, "h1"),
                                          (g.id, "feat/elsewhere", "feat/compacted/1", 900, "h1"),
                                          (10_000_000, "feat/none", "feat/compacted/1", 900, "h1")])
        assert moved == 1
        assert catalog.all_feature_entries() == [f._replace(path="feat/compacted/1", size=900, file_hash="h1"), g]

    def test_vacuum_and_store_id(self, opener: Opener, catalog: Catalog) -> None:
        catalog.commit_bars(bar("A"), None)
        catalog.vacuum()
        sid = catalog.store_id()
        assert len(sid) == 32 and catalog.store_id() == sid
        other = opener()
        try:
            assert other.store_id() == sid and other.live_bars() == catalog.live_bars()
        finally:
            other.close()
        assert catalog.mode == "rw"

    def test_concurrent_first_store_id_has_one_winner(self, opener: Opener) -> None:
        catalogs = [opener() for _ in range(4)]
        ids: list[str] = []
        barrier = threading.Barrier(len(catalogs))

        def work(i: int, c: Catalog) -> None:
            barrier.wait()
            ids.append(c.store_id())

        _threads(work, catalogs)
        assert len(set(ids)) == 1

    def test_bar_parts_round_trip_and_keep_their_files_referenced(self, catalog: Catalog) -> None:
        """A snapshot of a base plus segments (pitstore.sources.segments) reads back as committed; every file it lists
        is referenced, while the row exists, superseded or not."""
        base = catalog.commit_bars(bar("AAA", "bars/AAA/base.parquet"), None)
        parts = '[["bars/AAA/base.parquet",-1,10,"h"],["bars/_segments/s1.parquet",3,2,"g"]]'
        appended = catalog.commit_bars(bar("AAA", "bars/AAA/base.parquet", n=12, last=11)._replace(parts=parts),
                                       base.id)
        assert catalog.live_bars(["AAA"]) == [appended] and appended.parts == parts
        assert catalog.bar_history("AAA", base.id) == [appended]
        assert {"bars/AAA/base.parquet", "bars/_segments/s1.parquet"} <= catalog.referenced_paths()
        assert catalog.live_bars(["AAA"], as_known_at=base.recorded_at)[0].parts is None  # as known then
        catalog.drop_rows("bar_entries", [appended.id])
        assert "bars/_segments/s1.parquet" not in catalog.referenced_paths()


def _threads(work: Callable[[int, Any], None], catalogs: list[Any]) -> None:
    """Run ``work(i, catalog)`` in one thread per catalog; re-raise the first failure (the opener closes them)."""
    errors: list[BaseException] = []

    def run(i: int, c: Any) -> None:
        try:
            work(i, c)
        except BaseException as exc:  # reported to the test below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, c)) for i, c in enumerate(catalogs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    if errors:
        raise errors[0]

"""FeatureCache in memory and shared through the real Redis (the same tests for both): TTL expiry by an
injectable clock, entry and byte bounds with LRU eviction, pattern invalidation, threads and tasks; and online
reads through the client: served from the cache, never past the vector's own freshness."""

from __future__ import annotations

import asyncio
import signal
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from client_fixtures import SYMBOLS, make_store
from server_proc import Server

from pitstore import Store
from pitstore.client import Client, FeatureCache
from pitstore.errors import NotFoundError
from pitstore.online.serving import FeatureVector


class Clock:
    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(params=["memory", "redis"])
def make_cache(request: pytest.FixtureRequest, namespace: str) -> Iterator[Any]:
    made: list[FeatureCache] = []

    def make(**kw: Any) -> FeatureCache:
        if request.param == "redis":
            kw.update(url=request.getfixturevalue("redis_url"), prefix=f"{namespace}:{len(made)}:")
        made.append(FeatureCache(**kw))
        return made[-1]

    yield make
    for c in made:
        c.clear()


def test_ttl_expiry_per_entry(make_cache: Any) -> None:
    clock = Clock()
    cache = make_cache(ttl=10.0, clock=clock)
    vec = FeatureVector("AAA", datetime(2024, 1, 2, tzinfo=UTC), "ok", {"x": 1.5, "y": None})
    cache.set("a", vec)
    cache.set("b", {"n": 1}, ttl=2.0)
    assert not cache.set("c", 1, ttl=0)  # nothing stored for no time
    assert cache.get("a") == vec and cache.get("b") == {"n": 1}
    clock.now += 2.0
    assert cache.get("b") is None and cache.get("a") == vec  # b's own TTL, not the cache's
    clock.now += 8.0
    assert cache.get("a") is None
    s = cache.stats()
    assert (s["hits"], s["misses"], s["evictions"], s["entries"]) == (3, 2, 0, 0)
    assert s["hit_rate"] == pytest.approx(3 / 5)


def test_lru_bounds_by_entries_and_bytes(make_cache: Any) -> None:
    cache = make_cache(max_entries=3)
    for k in "abc":
        cache.set(k, k * 10)
    assert cache.get("a") == "a" * 10  # a is now the most recently used
    cache.set("d", "d")
    assert cache.get("b") is None and [cache.get(k) is not None for k in "acd"] == [True] * 3
    assert cache.stats()["evictions"] == 1 and cache.stats()["entries"] == 3
    one = len(b'"' + b"x" * 100 + b'"')
    small = make_cache(max_bytes=3 * one)
    for k in "abcd":
        small.set(k, "x" * 100)
    assert small.get("a") is None and small.stats()["bytes"] == 3 * one and small.stats()["evictions"] == 1
    assert not small.set("big", "x" * (3 * one))  # larger than the whole bound: not stored, nothing evicted
    assert small.stats()["entries"] == 3


def test_invalidate_and_patterns(make_cache: Any) -> None:
    cache = make_cache()
    for set_name in ("daily_core", "intraday"):
        for s in ("AAA", "BBB", "C*D"):
            cache.set(f"online:{set_name}:{s}", 1)
    assert cache.invalidate("online:intraday:AAA") and not cache.invalidate("online:intraday:AAA")
    assert cache.invalidate_pattern("online:daily_core:*") == 3
    assert cache.invalidate_pattern("online:*:C[*]D") == 1  # glob special characters matched literally
    assert cache.get("online:intraday:BBB") == 1 and cache.stats()["entries"] == 1
    cache.clear()
    assert cache.stats()["entries"] == 0 and cache.get("online:intraday:BBB") is None


def test_threads_and_tasks_lose_no_update(make_cache: Any) -> None:
    cache = make_cache(max_entries=100_000)
    per = 200

    def work(t: int) -> None:
        for i in range(per):
            cache.set(f"t{t}:{i}", [t, i])
            assert cache.get(f"t{t}:{i}") == [t, i]

    threads = [threading.Thread(target=work, args=(t,)) for t in range(6)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()

    async def task(t: int) -> None:
        for i in range(per):
            cache.set(f"a{t}:{i}", i)
            await asyncio.sleep(0)  # interleave the tasks between each set and get
            assert cache.get(f"a{t}:{i}") == i

    async def main() -> None:
        await asyncio.gather(*(task(t) for t in range(6)))

    asyncio.run(main())
    s = cache.stats()
    assert s["entries"] == 12 * per and s["hits"] == 12 * per and s["misses"] == 0


def test_a_redis_cache_is_shared(redis_url: str, namespace: str) -> None:
    clock = Clock()
    one = FeatureCache(url=redis_url, prefix=namespace + ":", clock=clock, max_entries=2)
    two = FeatureCache(url=redis_url, prefix=namespace + ":", clock=clock, max_entries=2)
    try:
        one.set("a", 1)
        two.set("b", 2)
        assert two.get("a") == 1
        one.set("c", 3)  # the bound is over both: the least recently used (b: a was read since) goes
        assert two.get("b") is None and one.get("a") == 1 and one.stats()["evictions"] == 1
        clock.now += 2  # past the default TTL (1 s) by the cache's clock, whatever Redis' PX says
        assert two.get("c") is None
    finally:
        one.clear()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Path]]:
    root = make_store(tmp_path_factory.mktemp("cached"))
    server = Server(root)
    yield server, root
    code, out = server.stop()
    assert code in (0, -signal.SIGTERM), out


def _online_requests(url: str) -> float:
    return sum(float(x.rsplit(" ", 1)[1]) for x in httpx.get(url + "/metrics").text.splitlines()
               if x.startswith("pitstore_http_requests_total{") and 'endpoint="/v1/online"' in x)


def test_online_reads_through_the_cache_never_past_freshness(served: tuple[Server, Path]) -> None:
    server, root = served
    with Store.open(root) as store:
        want = store.get_online(SYMBOLS, "daily_core")
    ts = want[0].ts
    assert ts is not None and all(v.status == "ok" for v in want)
    clock = Clock()
    clock.now = ts.timestamp() + 100.0  # the vectors are fresh until ts + 200 s by the TTL given below
    cache = FeatureCache(ttl=1000.0, clock=clock)
    with Client(server.url, cache=cache, feature_ttls={"daily_core": 200.0}) as fs:
        before = _online_requests(server.url)
        assert fs.get_online(SYMBOLS, "daily_core") == want
        assert fs.get_online(SYMBOLS[:2], "daily_core") == want[:2]  # hits: the service is not asked
        assert _online_requests(server.url) == before + 1
        assert cache.stats()["hits"] == 2 and fs.metrics()["calls"]["get_online"] == 2
        clock.now = ts.timestamp() + 200.0  # the vectors' own freshness ends (the cache's TTL would not)
        assert fs.get_online(SYMBOLS[:1], "daily_core") == want[:1]
        assert _online_requests(server.url) == before + 2  # asked again: not served stale from the cache
        clock.now = ts.timestamp() + 500.0  # past freshness at fetch time: not cached at all
        fs.get_online(SYMBOLS[:1], "daily_core")
        fs.get_online(SYMBOLS[:1], "daily_core")
        assert _online_requests(server.url) == before + 4
        assert fs.metrics()["cache"]["hits"] == 2
    with Client(server.url, cache=FeatureCache(ttl=1000.0, clock=clock)) as fs:
        clock.now = ts.timestamp() + 100.0
        published = httpx.get(server.url + "/v1/feature-sets").json()["feature_sets"]
        ttl = next(s["online_ttl_seconds"] for s in published if s["name"] == "daily_core")
        before = _online_requests(server.url)
        assert fs.get_online(SYMBOLS, "daily_core") == want  # the TTL the service publishes, asked once
        assert fs.get_online(SYMBOLS, "daily_core") == want
        assert _online_requests(server.url) == before + 1 and fs.metrics()["calls"]["feature_sets"] == 1
        clock.now = ts.timestamp() + ttl  # stale by the published TTL: asked again, never served from cache
        fs.get_online(SYMBOLS, "daily_core")
        assert _online_requests(server.url) == before + 2 and fs.metrics()["calls"]["feature_sets"] == 1
    with Client(server.url, cache=FeatureCache()) as fs, pytest.raises(NotFoundError):
        fs.get_online(SYMBOLS, "no_such_set")  # neither a TTL nor values: the service says so
    with Store.open(root) as local, Client(server.url, cache=FeatureCache(), fallback=local) as fs:
        assert fs.get_online(SYMBOLS, "daily_core") == want  # the TTL read from the local registry

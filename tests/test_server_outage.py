"""The HTTP service while a tier is down, against private redis-server and PostgreSQL instances this test kills
and restarts: no 5xx while any tier can answer (``fallback``), /readyz names the tier that is down, and answers
recover when it is back."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
from server_proc import Server
from servers import PrivatePostgres, RedisServer, private_postgres, wait_for

from pitstore import FeatureSet, Store, standard_features
from pitstore.testing import synthetic_bars

# Minute bars with a 1 h TTL: the last rows are fresh ("ok") however slow the machine is.
FS = FeatureSet("minute_core", standard_features().features, timeframe="1m", ttl=timedelta(hours=1))
SYMBOLS = [f"S{i:04d}" for i in range(4)]


def _store(root: Path, **urls: str) -> None:
    end = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=5)
    bars = synthetic_bars(len(SYMBOLS), 150, timeframe="1m", start=datetime(2024, 1, 2, tzinfo=UTC))
    with Store.open(root, **urls) as store:
        store.ingest(bars.with_columns(pl.col("ts") + (end - bars["ts"].max())))
        store.backfill(FS)
        store.materialize(FS)


class _Load:
    """Threads requesting ``path`` without pause until stopped; every status code is counted."""

    def __init__(self, url: str, params: dict[str, str], threads: int = 3) -> None:
        self.codes: Counter[int] = Counter()
        self.statuses: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, args=(url, params)) for _ in range(threads)]
        for t in self._threads:
            t.start()

    def _run(self, url: str, params: dict[str, str]) -> None:
        with httpx.Client(timeout=30) as client:
            while not self._stop.is_set():
                r = client.get(url, params=params)
                body = r.json()
                rows = body.get("rows", [body]) if r.status_code == 200 else []
                with self._lock:
                    self.codes[r.status_code] += 1
                    self.statuses.update(row["status"] for row in rows)

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(60)


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    if server.alive():
        server.kill()


@pytest.mark.slow  # a private Redis killed under load
def test_redis_down_under_load_falls_back_without_5xx_and_recovers(redis_server: RedisServer,
                                                                  tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store(root, online_url=redis_server.url)
    server = Server(root, "--online-url", redis_server.url)
    q = {"symbols": ",".join(SYMBOLS), "features": "minute_core"}
    try:
        load = _Load(server.url + "/v1/online", q)
        wait_for(lambda: load.statuses["ok"] >= 40, 30, "ok answers before the outage")
        redis_server.kill()
        wait_for(lambda: load.statuses["fallback"] >= 40, 30, "fallback answers while Redis is down")
        ready = httpx.get(server.url + "/readyz").json()
        assert ready["tiers"]["online"]["up"] is False and "error" in ready["tiers"]["online"]
        assert ready["tiers"]["catalog"]["up"] is True
        redis_server.start()  # same port
        ok_before = load.statuses["ok"]
        wait_for(lambda: load.statuses["ok"] >= ok_before + 40, 30, "ok answers once Redis is back")
        load.stop()
        assert set(load.codes) == {200}, load.codes
        assert httpx.get(server.url + "/readyz").json()["tiers"]["online"]["up"] is True
        metrics = httpx.get(server.url + "/metrics").text
        assert 'pitstore_online_reads_total{path="online",status="fallback"}' in metrics
    finally:
        server.stop()


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    yield from private_postgres()


@pytest.mark.slow  # a private PostgreSQL stopped and restarted
def test_postgres_down_lookups_fall_back_to_the_offline_tier_without_5xx(private_pg: PrivatePostgres,
                                                                        tmp_path: Path) -> None:
    if not private_pg.running():
        private_pg.start()
    root = tmp_path / "store"
    _store(root, postgres_url=private_pg.url)
    server = Server(root, "--postgres-url", private_pg.url)
    with Store.open(root) as store:
        as_of = store.bars("S0001")["ts"][-20] + timedelta(seconds=30)
        want = store.get_features("S0001", as_of, "minute_core")
    q = {"as_of": as_of.isoformat(), "features": "minute_core"}
    try:
        load = _Load(server.url + "/v1/features/S0001", q)
        wait_for(lambda: sum(load.codes.values()) >= 40, 30, "answers before the outage")
        private_pg.stop()
        n = sum(load.codes.values())
        wait_for(lambda: sum(load.codes.values()) >= n + 40, 30, "answers while PostgreSQL is down")
        ready = httpx.get(server.url + "/readyz").json()
        assert ready["tiers"]["history"]["up"] is False and ready["ready"] is True
        got = httpx.get(server.url + "/v1/features/S0001", params=q).json()
        assert got["status"] == want.status == "ok" and got["values"] == want.values
        private_pg.start()
        wait_for(lambda: httpx.get(server.url + "/readyz").json()["tiers"]["history"]["up"], 30,
                 "the history tier back in /readyz")
        load.stop()
        assert set(load.codes) == {200}, load.codes
        assert set(load.statuses) == {"ok"}
    finally:
        server.stop()

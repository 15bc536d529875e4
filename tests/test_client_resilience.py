"""The client when the service fails: retries (503/429 with Retry-After, connection errors) on reads only, the
circuit breaker, fail-fast and fallback through a SIGKILL of a real `pitstore serve`, and recovery after a
restart on the same port. No mocked transport: real sockets, a tiny stdlib HTTP server for scripted answers."""

from __future__ import annotations

import json
import signal
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import suppress
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import polars as pl
import pytest
from client_fixtures import SYMBOLS, make_store
from server_proc import Server, free_port

from pitstore import Store
from pitstore.client import SOURCE_COLUMN, CircuitBreaker, Client, Resilience
from pitstore.errors import BackendUnavailableError, InvalidInputError
from pitstore.online.serving import FeatureVector

FAST = Resilience(timeout=2.0, retries=3, backoff=0.01, max_backoff=0.02, jitter=0.0)


class Scripted:
    """A real HTTP server on loopback answering each request with the next scripted (status, headers), then
    200 ``{}``; it records the paths asked."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script, self.seen = list(script), []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                outer.seen.append(self.path)
                length = int(self.headers.get("content-length") or 0)
                self.rfile.read(length)
                status, headers = outer.script.pop(0) if outer.script else (200, {})
                body = json.dumps({} if status == 200 else {"error": "BackendUnavailableError" if status == 503
                                   else "InvalidInputError", "message": f"scripted {status}",
                                   "request_id": "r1"}).encode()
                self.send_response(status)
                for k, v in {"Content-Type": "application/json", "Content-Length": str(len(body)), **headers}.items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args: Any) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted() -> Iterator[Any]:
    made: list[Scripted] = []

    def make(script: list[tuple[int, dict[str, str]]]) -> Scripted:
        made.append(Scripted(script))
        return made[-1]

    yield make
    for s in made:
        s.close()


def test_503_with_retry_after_is_retried_as_the_server_says(scripted: Any) -> None:
    # Backoff of 10 s: only by honouring Retry-After: 0 can three retries finish inside the 2 s budget.
    stub = scripted([(503, {"Retry-After": "0"}), (503, {"Retry-After": "0"}), (429, {"Retry-After": "0"})])
    cfg = Resilience(timeout=2.0, retries=3, backoff=10.0, max_backoff=10.0)
    with Client(stub.url, resilience=cfg) as fs:
        started = time.monotonic()
        assert fs.stats() == {}
        assert time.monotonic() - started < 2.0
        assert len(stub.seen) == 4
        m = fs.metrics()
        assert m["retries"] == {"stats": 3} and m["errors"] == {} and m["calls"] == {"stats": 1}


def test_a_retry_after_beyond_the_budget_fails_at_once_and_retries_are_bounded(scripted: Any) -> None:
    stub = scripted([(503, {"Retry-After": "30"})])
    with Client(stub.url, resilience=FAST) as fs:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError, match="scripted 503"):
            fs.stats()
        assert time.monotonic() - started < 1.0 and len(stub.seen) == 1  # no 30 s wait inside a 2 s budget
    stub = scripted([(503, {})] * 10)
    with Client(stub.url, resilience=FAST) as fs, pytest.raises(BackendUnavailableError):
        fs.stats()
    assert len(stub.seen) == 1 + FAST.retries


def test_422_and_writes_are_not_retried(scripted: Any) -> None:
    stub = scripted([(422, {}), (503, {"Retry-After": "0"})])
    with Client(stub.url, resilience=FAST) as fs:
        with pytest.raises(InvalidInputError, match="scripted 422"):
            fs.stats()
        with pytest.raises(BackendUnavailableError):  # push: a write, one attempt whatever the status
            fs.push(pl.DataFrame({"symbol": ["AAA"], "ts": ["2030-01-01T00:00:00Z"]}))
        assert stub.seen == ["/v1/stats", "/v1/push"]
        assert fs.metrics()["retries"] == {}


def test_connection_errors_are_retried_then_raised() -> None:
    with Client(f"http://127.0.0.1:{free_port()}", resilience=FAST) as fs:
        with pytest.raises(BackendUnavailableError, match="cannot be reached"):
            fs.get_online(["AAA"], "daily_core")
        assert fs.metrics()["retries"] == {"get_online": FAST.retries}


def test_the_breaker_opens_fails_fast_half_opens_and_closes() -> None:
    now = [0.0]
    changes: list[tuple[str, str]] = []
    b = CircuitBreaker(3, 10.0, clock=lambda: now[0], on_change=lambda a, z: changes.append((a, z)))
    for _ in range(2):
        b.before()
        b.failure()
    b.before()
    b.success()  # a success resets the count: failures must be consecutive
    for _ in range(3):
        b.before()
        b.failure()
    assert b.state == "open"
    with pytest.raises(BackendUnavailableError, match="circuit open"):
        b.before()
    now[0] = 10.0
    b.before()  # the one trial call
    assert b.state == "half_open"
    with pytest.raises(BackendUnavailableError, match="trial"):
        b.before()  # a second caller while the trial is in flight
    b.failure()
    assert b.state == "open"
    now[0] = 20.0
    b.before()
    b.success()
    assert b.state == "closed"
    b.before()
    assert changes == [("closed", "open"), ("open", "half_open"), ("half_open", "open"), ("open", "half_open"),
                       ("half_open", "closed")]


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_store(tmp_path_factory.mktemp("resilience"))


def _plain(v: FeatureVector) -> tuple[Any, ...]:
    return v.symbol, v.ts, v.values


def _loop(fs: Client, server: Server, n: int, kill_at: int, timeout: float) -> tuple[list[Any], list[float]]:
    outcomes: list[Any] = []
    durations: list[float] = []
    for i in range(n):
        if i == kill_at:
            server.stop(signal.SIGKILL)
        started = time.monotonic()
        try:
            outcomes.append(fs.get_online(SYMBOLS, "daily_core"))
        except BackendUnavailableError as exc:
            outcomes.append(exc)
        durations.append(time.monotonic() - started)
    return outcomes, durations


@pytest.mark.slow  # a server process SIGKILLed and restarted
def test_sigkill_fail_fast_then_recovery_on_the_same_port(root: Path) -> None:
    cfg = Resilience(timeout=1.0, retries=2, backoff=0.01, max_backoff=0.05, breaker_failures=3,
                     breaker_cooldown=0.3)
    server = Server(root)
    with Store.open(root) as store:
        want = [_plain(v) for v in store.get_online(SYMBOLS, "daily_core")]
    fs = Client(server.url, resilience=cfg)
    try:
        n, kill_at = 300, 100
        outcomes, durations = _loop(fs, server, n, kill_at, cfg.timeout)
        assert max(durations) < cfg.timeout + 0.2  # no call waits longer than the timeout
        served = [o for o in outcomes if not isinstance(o, Exception)]
        failed = [o for o in outcomes if isinstance(o, Exception)]
        assert all([_plain(v) for v in o] == want for o in served)  # only what the server sent
        assert len(served) == kill_at and len(failed) == n - kill_at
        fast = [d for d, o in zip(durations, outcomes, strict=True) if "circuit" in str(o)]
        # Once open: the breaker answers (its message), no connection attempted. Timed by the median: one
        # call in hundreds may lose the CPU for tens of ms on a busy machine, which says nothing of the client.
        assert len(fast) > 100 and statistics.median(fast) < 0.002 and max(fast) < cfg.timeout / 2
        m = fs.metrics()
        assert m["calls"] == {"get_online": n} and m["errors"] == {"BackendUnavailableError": len(failed)}
        assert m["breaker"]["state"] == "open" and m["breaker"]["changes"]["closed->open"] == 1
        server = Server(root, port=server.port)  # the service comes back where the client points
        deadline = time.monotonic() + 10
        while fs.breaker_state != "closed" and time.monotonic() < deadline:
            with suppress(BackendUnavailableError):  # polling the breaker's cool-down: then the trial goes
                fs.get_online(SYMBOLS, "daily_core")
        assert fs.breaker_state == "closed"
        assert [_plain(v) for v in fs.get_online(SYMBOLS, "daily_core")] == want
        changes = fs.metrics()["breaker"]["changes"]
        assert changes["open->half_open"] >= 1 and changes["half_open->closed"] == 1
    finally:
        fs.close()
        server.stop()


@pytest.mark.slow  # its own server process, stopped midway
def test_with_a_fallback_store_the_same_answers_come_from_it(root: Path) -> None:
    cfg = Resilience(timeout=1.0, retries=1, backoff=0.01, breaker_failures=2, breaker_cooldown=30)
    server = Server(root)
    with Store.open(root) as local, Client(server.url, resilience=cfg, fallback=local) as fs:
        n, kill_at = 60, 20
        ohlcv_before = fs.get_ohlcv("AAA")
        hist_entities = pl.DataFrame({"symbol": ["AAA", "BBB"], "ts": [ohlcv_before["ts"][50]] * 2})
        hist_before = fs.get_historical(hist_entities, "daily_core")
        outcomes, durations = _loop(fs, server, n, kill_at, cfg.timeout)
        assert max(durations) < cfg.timeout + 0.2
        from_server, from_local = outcomes[:kill_at], outcomes[kill_at:]
        assert all(not isinstance(o, Exception) for o in outcomes)
        assert all(v.status == "ok" for o in from_server for v in o)
        assert all(v.status == "fallback" for o in from_local for v in o)  # says where it came from
        assert all([_plain(v) for v in o] == [_plain(v) for v in from_server[0]] for o in from_local)
        ohlcv = fs.get_ohlcv("AAA")
        assert ohlcv[SOURCE_COLUMN].unique().to_list() == ["fallback"]
        assert ohlcv.drop(SOURCE_COLUMN).equals(ohlcv_before)
        assert fs.get_historical(hist_entities, "daily_core").drop(SOURCE_COLUMN).equals(hist_before)
        with pytest.raises(BackendUnavailableError):
            fs.stats()  # the service's own statistics: no local answer stands in for them
        m = fs.metrics()
        assert m["fallbacks"] == {"get_online": n - kill_at, "get_ohlcv": 1, "get_historical": 1}
        assert m["errors"] == {"BackendUnavailableError": 1}
    server.stop()

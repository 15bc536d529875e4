"""GET /v1/online answers from the worker's kept fragments exactly what a fresh read answers: a write by another
process is seen on the next request, and a row turns stale exactly at its TTL edge. Real server processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pytest
from server_proc import Server, free_port

from pitstore import Store, standard_features
from pitstore.rules import micros
from pitstore.testing import synthetic_bars

SYMBOLS = ["S0000", "S0001"]
TESTS = Path(__file__).resolve().parent


def _store(root: Path, n_later: int) -> pl.DataFrame:
    """Daily bars up to today, the last ``n_later`` per symbol left out (returned: they arrive later)."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    bars = synthetic_bars(len(SYMBOLS), 160, start=today - timedelta(days=159), seed=11)
    cut = bars["ts"].unique().sort()[-n_later]
    with Store.open(root) as store:
        store.ingest(bars.filter(pl.col("ts") < cut))
        store.backfill(standard_features())
        store.materialize("daily_core")
    return bars.filter(pl.col("ts") >= cut)


def _rows(url: str, symbols: list[str] = SYMBOLS, times: int = 2) -> list[dict[str, object]]:
    """The answer, asked ``times`` times (the later ones come from kept fragments); all must agree."""
    answers = []
    for _ in range(times):
        r = httpx.get(url + "/v1/online", params={"symbols": ",".join(symbols), "features": "daily_core"})
        assert r.status_code == 200, r.text
        answers.append(r.json()["rows"])
    assert all(a == answers[0] for a in answers), answers
    return answers[0]


def _vec(v: object) -> dict[str, object]:
    return {"symbol": v.symbol, "ts": None if v.ts is None else v.ts.isoformat(),  # type: ignore[attr-defined]
            "status": v.status, "values": v.values}  # type: ignore[attr-defined]


def _bar(bars: pl.DataFrame, symbol: str, k: int) -> pl.DataFrame:
    return bars.filter(pl.col("symbol") == symbol).sort("ts")[k:k + 1]


@pytest.fixture
def live_root(tmp_path: Path) -> tuple[Path, pl.DataFrame]:
    root = tmp_path / "store"
    return root, _store(root, 2)


def test_push_materialize_and_invalidate_by_another_process_are_seen_next_request(
        live_root: tuple[Path, pl.DataFrame]) -> None:
    root, later = live_root
    server = Server(root)  # SQLite online tier, shared with this process
    try:
        with Store.open(root) as store:
            before = _rows(server.url)
            assert before == [_vec(v) for v in store.get_online(SYMBOLS, "daily_core")]
            assert {r["status"] for r in before} == {"ok"}
            pushed = _bar(later, "S0000", 0)
            store.push(pushed)  # this process writes the online row
            after_push = _rows(server.url)
            assert after_push == [_vec(v) for v in store.get_online(SYMBOLS, "daily_core")]
            assert after_push[0]["ts"] == pushed["ts"][0].isoformat() and after_push[0] != before[0]
            assert after_push[1] == before[1]
            # A backfill alone writes no online row: the answer stays; materialize writes it: seen at once.
            store.ingest(_bar(later, "S0001", 0))
            store.backfill(standard_features(), symbols=["S0001"])
            assert _rows(server.url) == after_push
            store.materialize("daily_core", ["S0001"])
            materialized = _rows(server.url)
            assert materialized[1]["ts"] == later["ts"].min().isoformat() and materialized[1] != before[1]
            assert materialized == [_vec(v) for v in store.get_online(SYMBOLS, "daily_core")]
            # Invalidate drops the pushed row: the server refills from the offline tier (the stored bar).
            store.invalidate("daily_core", ["S0000"])
            invalidated = _rows(server.url)
            assert invalidated[0] == before[0] and invalidated[1] == materialized[1]
    finally:
        code, out = server.stop()
    assert code in (0, -signal.SIGTERM), out


def test_memory_tier_push_and_invalidate_through_the_server(live_root: tuple[Path, pl.DataFrame]) -> None:
    root, later = live_root
    server = Server(root, "--online-url", "memory://")
    try:
        before = _rows(server.url)
        pushed = _bar(later, "S0001", 0)
        resp = httpx.post(server.url + "/v1/push", json={"bars": [
            {**r, "ts": r["ts"].isoformat()} for r in pushed.iter_rows(named=True)]})
        assert resp.status_code == 200, resp.text
        after = _rows(server.url)
        assert after[1]["ts"] == pushed["ts"][0].isoformat() and after[0] == before[0]
        row = next(r for r in resp.json()["rows"]["daily_core@1"] if r["symbol"] == "S0001")
        assert after[1]["values"]["ret_5d"] == row["ret_5d"]
        dropped = httpx.post(server.url + "/v1/invalidate", json={"feature_set": "daily_core", "symbols": ["S0001"]})
        assert dropped.status_code == 200 and dropped.json()["online_rows"] == 1
        assert _rows(server.url)[1]["ts"] != pushed["ts"][0].isoformat()
    finally:
        server.stop()


class _ClockServer(Server):
    """uvicorn on ``tests/clock_app.py``: the store's clock is the µs in ``clock``."""

    def __init__(self, root: Path, clock: Path, online: str) -> None:  # not super().__init__: pitstore serve
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        env = {**os.environ, "PITSTORE_ROOT": str(root), "CLOCK_FILE": str(clock), "PITSTORE_ONLINE_URL": online}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "clock_app:app", "--factory", "--app-dir", str(TESTS), "--port",
             str(self.port), "--log-level", "warning"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            text=True)
        self._wait_ready()


@pytest.fixture(params=["memory://", "sqlite://"])
def clocked(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[_ClockServer, Path, Store]]:
    """memory://: the server's tier is written only by its own fills, so every later answer is a kept one;
    sqlite://: as served by default (its access records, written each second, change the token now and then)."""
    root = tmp_path / "store"
    _store(root, 1)
    clock = tmp_path / "clock"
    clock.write_text(str(micros(datetime.now(UTC) - datetime(1970, 1, 1, tzinfo=UTC))))
    server = _ClockServer(root, clock, request.param)
    store = Store.open(root)
    try:
        yield server, clock, store
    finally:
        store.close()
        server.stop()


def test_a_row_turns_stale_exactly_at_its_ttl_edge(clocked: tuple[_ClockServer, Path, Store]) -> None:
    server, clock, store = clocked
    table = store.serving.tables("daily_core")[0]
    newest = max(v.ts for v in store.get_online(SYMBOLS, "daily_core"))
    edge = micros(newest - datetime(1970, 1, 1, tzinfo=UTC)) + table.ttl_us  # fresh at edge, stale after

    def at(t: int) -> list[dict[str, object]]:
        clock.write_text(str(t))
        got = _rows(server.url, times=3)
        assert got == [_vec(v) for v in store.serving.get_online(SYMBOLS, "daily_core", now_us=t)], t
        return got

    assert {r["status"] for r in at(edge - 1)} == {"ok"}
    assert {r["status"] for r in at(edge)} == {"ok"}  # equality is still fresh
    stale = at(edge + 1)
    assert {r["status"] for r in stale} == {"stale"}  # both symbols' newest rows have the same ts
    assert all(v is None for r in stale for v in r["values"].values())  # type: ignore[attr-defined]
    assert {r["status"] for r in at(edge - 1)} == {"ok"}  # a clock set back: read again, not the kept answer

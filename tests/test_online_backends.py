"""The online tier backends: one conformance suite over memory, SQLite and Redis (the shared server), then Redis
under memory pressure and outages, against private redis-server processes these tests start, kill and restart."""

from __future__ import annotations

import math
import multiprocessing as mp
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from servers import RedisServer, wait_for

from pitstore.errors import BackendUnavailableError, ConfigError, InvalidInputError, SchemaMismatchError
from pitstore.online import OnlineRow, OnlineStore, open_online
from pitstore.online.redis import RedisOnlineStore
from pitstore.online.sqlite import SqliteOnlineStore

TABLE = "daily_core@1"
COLS = ["ret_5d", "ret_20d", "vol_20d"]
TS = 1_700_000_000_000_000  # 2023-11-14, microseconds
WEIRD_SYMBOLS = ["EUR/USD", "../x", "a b", "é", "x" * 64, "ES=F", "a:b", "*", "[x]?", "日本", "BRK.B"]

MakeStore = Callable[..., OnlineStore]


def delete_namespace(url: str, namespace: str) -> None:
    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{namespace}:*", count=1000))
    if keys:
        client.delete(*keys)
    client.close()


def store_url(kind: str, request: pytest.FixtureRequest) -> str:
    if kind == "redis":
        return str(request.getfixturevalue("redis_url"))
    return {"memory": "memory://", "sqlite": "sqlite://"}[kind]


@pytest.fixture(params=["memory", "sqlite", "redis"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def make_store(kind: str, request: pytest.FixtureRequest, tmp_path: Path, namespace: str) -> Iterator[MakeStore]:
    """Opens stores of the parametrized backend (Redis keys under this test's namespace, deleted afterwards)."""
    url = store_url(kind, request)
    opened: list[OnlineStore] = []

    def make(**options: Any) -> OnlineStore:
        if kind == "redis":
            options.setdefault("namespace", namespace)
        store = open_online(url, root=tmp_path, **options)
        opened.append(store)
        return store

    yield make
    for store in opened:
        store.close()
    if kind == "redis":
        delete_namespace(url, namespace)


@pytest.fixture
def store(make_store: MakeStore) -> OnlineStore:
    return make_store()


# --- conformance: every backend -----------------------------------------------------------------------------


def test_round_trip_null_nan_inf(store: OnlineStore) -> None:
    """None stays None, NaN stays NaN, infinities and -0.0 keep their value and sign; ints come back as floats."""
    cols = ["a", "b", "c", "d", "e", "f", "g", "h", "i"]
    values = [None, math.nan, math.inf, -math.inf, -0.0, 5e-324, 1.0, 42, None]
    assert store.put_latest(TABLE, cols, [("AAPL", TS, values), ("MSFT", -TS, [1.5] * 9)]) == 2
    [row, other] = store.get_latest(TABLE, ["AAPL", "MSFT"])
    assert row is not None and other is not None
    assert row.ts == TS and isinstance(row, OnlineRow)
    got = row.values
    assert got[0] is None and got[8] is None
    assert isinstance(got[1], float) and math.isnan(got[1])
    assert got[2:4] == (math.inf, -math.inf)
    assert got[4] == 0.0 and math.copysign(1.0, got[4]) == -1.0  # type: ignore[arg-type]
    assert got[5:8] == (5e-324, 1.0, 42.0) and isinstance(got[7], float)
    assert other == OnlineRow(-TS, (1.5,) * 9)
    assert store.put_latest(TABLE, cols, [("X", 2**53, [None] * 9)]) == 1
    assert store.get_latest(TABLE, ["X"]) == [OnlineRow(2**53, (None,) * 9)]


def test_batch_keeps_input_order_with_missing_symbols(store: OnlineStore) -> None:
    """One call for many symbols: input order, None where missing, repeats allowed, batches past 512 symbols."""
    symbols = [f"S{i:04d}" for i in range(700)]
    rows = [(s, TS + i, [float(i), None, -float(i)]) for i, s in enumerate(symbols)]
    assert store.put_latest(TABLE, COLS, rows) == 700
    asked = ["S0003", "nope", "S0001", "S0003", "also-missing"]
    got = store.get_latest(TABLE, asked)
    assert got == [OnlineRow(TS + 3, (3.0, None, -3.0)), None, OnlineRow(TS + 1, (1.0, None, -1.0)),
                   OnlineRow(TS + 3, (3.0, None, -3.0)), None]
    many = [*reversed(symbols), "missing"]
    got = store.get_latest(TABLE, many)
    assert [r.ts if r else None for r in got] == [TS + 699 - i for i in range(700)] + [None]
    assert store.get_latest(TABLE, []) == []
    assert store.get_latest("other@1", ["S0001"]) == [None]


def test_older_ts_never_overwrites(store: OnlineStore) -> None:
    """Only a row with ts >= the stored one replaces it (equal ts: the later write wins, as for a restated bar)."""
    assert store.put_latest(TABLE, COLS, [("A", TS, [1.0, 1.0, 1.0])]) == 1
    assert store.put_latest(TABLE, COLS, [("A", TS - 1, [2.0, 2.0, 2.0])]) == 0
    assert store.get_latest(TABLE, ["A"]) == [OnlineRow(TS, (1.0, 1.0, 1.0))]
    assert store.put_latest(TABLE, COLS, [("A", TS, [3.0, 3.0, 3.0])]) == 1
    assert store.get_latest(TABLE, ["A"]) == [OnlineRow(TS, (3.0, 3.0, 3.0))]
    # Within one call too, whatever the order: the greatest ts of each symbol is what gets stored.
    batch = [("A", TS + 5, [5.0] * 3), ("B", TS, [1.0] * 3), ("A", TS + 9, [9.0] * 3), ("A", TS + 7, [7.0] * 3),
             ("B", TS - 3, [0.0] * 3)]
    assert store.put_latest(TABLE, COLS, batch) == 2
    assert store.get_latest(TABLE, ["A", "B"]) == [OnlineRow(TS + 9, (9.0,) * 3), OnlineRow(TS, (1.0,) * 3)]
    # A mixed batch writes the newer rows and skips the older ones.
    assert store.put_latest(TABLE, COLS, [("A", TS + 1, [0.0] * 3), ("B", TS + 1, [2.0] * 3)]) == 1
    assert store.get_latest(TABLE, ["A", "B"]) == [OnlineRow(TS + 9, (9.0,) * 3), OnlineRow(TS + 1, (2.0,) * 3)]


def test_columns_are_fixed_per_table(store: OnlineStore) -> None:
    """A different column list for a table raises SchemaMismatchError naming both; other tables are independent."""
    assert store.columns(TABLE) is None
    assert store.put_latest(TABLE, COLS, []) == 0  # an empty write still fixes the columns
    assert store.columns(TABLE) == tuple(COLS)
    with pytest.raises(SchemaMismatchError, match=r"ret_5d.*rsi_14"):
        store.put_latest(TABLE, ["ret_5d", "rsi_14", "vol_20d"], [("A", TS, [1.0, 2.0, 3.0])])
    with pytest.raises(SchemaMismatchError):
        store.put_latest(TABLE, [*COLS, "extra"], [])
    assert store.get_latest(TABLE, ["A"]) == [None]
    assert store.put_latest("daily_core@2", ["x"], [("A", TS, [1.0])]) == 1
    assert store.columns("daily_core@2") == ("x",)
    assert store.columns(TABLE) == tuple(COLS)


def test_weird_symbols_and_table_names_stay_apart(store: OnlineStore) -> None:
    """Slashes, dots, spaces, colons, glob characters and unicode are plain data, never key syntax."""
    rows = [(s, TS + i, [float(i), 0.0, 0.0]) for i, s in enumerate(WEIRD_SYMBOLS)]
    assert store.put_latest(TABLE, COLS, rows) == len(WEIRD_SYMBOLS)
    # Tables whose names are prefixes of each other do not see each other's rows.
    assert store.put_latest("t@1", ["v"], [("0:x", TS, [1.0])]) == 1
    assert store.put_latest("t@10", ["v"], [(":x", TS, [10.0])]) == 1
    got = store.get_latest(TABLE, WEIRD_SYMBOLS)
    assert [r.values[0] if r else None for r in got] == [float(i) for i in range(len(WEIRD_SYMBOLS))]
    assert store.get_latest("t@1", ["0:x", ":x"]) == [OnlineRow(TS, (1.0,)), None]
    assert store.get_latest("t@10", [":x", "0:x"]) == [OnlineRow(TS, (10.0,)), None]
    assert store.get_latest(TABLE, ["x", "../", "a", "EUR"]) == [None] * 4
    assert store.delete(TABLE, ["*"]) == 1
    assert store.get_latest(TABLE, ["*", "[x]?"]) == [None, OnlineRow(TS + 8, (8.0, 0.0, 0.0))]


@pytest.mark.parametrize(
    ("row", "match"),
    [
        (("", TS, [1.0, 2.0, 3.0]), "symbol is empty"),
        (("x" * 65, TS, [1.0, 2.0, 3.0]), "longer than 64"),
        (("a\nb", TS, [1.0, 2.0, 3.0]), "control"),
        (("A", 1.5, [1.0, 2.0, 3.0]), "integer microseconds"),
        (("A", True, [1.0, 2.0, 3.0]), "integer microseconds"),
        (("A", 2**53 + 1, [1.0, 2.0, 3.0]), "within"),
        (("A", TS, [1.0, 2.0]), "3 values"),
        (("A", TS, "abc"), "3 values"),
        (("A", TS, [1.0, "2", 3.0]), "real numbers"),
        (("A", TS), "symbol, ts, values"),
    ],
)
def test_invalid_rows_are_rejected(store: OnlineStore, row: Any, match: str) -> None:
    with pytest.raises(InvalidInputError, match=match):
        store.put_latest(TABLE, COLS, [("OK", TS, [1.0, 2.0, 3.0]), row])
    assert store.get_latest(TABLE, ["OK"]) == [None]  # nothing of a rejected call is written


def test_invalid_arguments_are_rejected(store: OnlineStore) -> None:
    for table_id in ["", "a:b", "a b", "x" * 201]:
        with pytest.raises(InvalidInputError, match="table_id"):
            store.put_latest(table_id, COLS, [])
    for columns in [[], ["a", "a"], ["a", ""]]:
        with pytest.raises(InvalidInputError, match="column"):
            store.put_latest(TABLE, columns, [])
    for expire in [0, -1.0, math.inf, "1"]:
        with pytest.raises(InvalidInputError, match="expire_seconds"):
            store.put_latest(TABLE, COLS, [], expire_seconds=expire)  # type: ignore[arg-type]


def test_delete(store: OnlineStore) -> None:
    """Deleting symbols counts rows actually deleted; deleting a table also frees its column list."""
    rows = [(s, TS, [1.0, 2.0, 3.0]) for s in ["A", "B", "C", "D"]]
    store.put_latest(TABLE, COLS, rows)
    store.put_latest("keep@1", COLS, rows)
    assert store.delete(TABLE, ["A", "missing", "A"]) == 1
    assert store.get_latest(TABLE, ["A", "B"]) == [None, OnlineRow(TS, (1.0, 2.0, 3.0))]
    assert store.delete(TABLE) == 3
    assert store.get_latest(TABLE, ["B", "C", "D"]) == [None] * 3
    assert store.columns(TABLE) is None
    assert store.put_latest(TABLE, ["other"], [("A", TS, [9.0])]) == 1  # the table can start over
    assert store.get_latest("keep@1", ["A", "D"]) == [OnlineRow(TS, (1.0, 2.0, 3.0))] * 2
    assert store.delete("never@1") == 0
    # Glob characters in a table name match only themselves.
    store.put_latest("k*@1", COLS, rows)
    assert store.delete("k*@1") == 4
    assert store.get_latest("keep@1", ["A"]) == [OnlineRow(TS, (1.0, 2.0, 3.0))]


def test_ping_and_persistence(kind: str, make_store: MakeStore) -> None:
    """ping succeeds on a reachable backend; SQLite and Redis rows outlive the store object that wrote them."""
    first = make_store()
    first.ping()
    first.put_latest(TABLE, COLS, [("A", TS, [1.0, None, 3.0])])
    first.close()
    second = make_store()
    expected = None if kind == "memory" else OnlineRow(TS, (1.0, None, 3.0))
    assert second.get_latest(TABLE, ["A"]) == [expected]


# --- several processes writing the same symbols ---------------------------------------------------------------


def _write_interleaved(url: str, root: str, options: dict[str, Any], timestamps: list[int], barrier: Any) -> None:
    store = open_online(url, root=Path(root), **options)
    rng = random.Random(timestamps[0])
    order = [(s, ts) for s in ["A", "B", "C/D", "é"] for ts in timestamps]
    rng.shuffle(order)  # newer rows arrive before older ones, in this process and across processes
    barrier.wait()
    for symbol, ts in order:
        store.put_latest(TABLE, COLS, [(symbol, ts, [float(ts), float(os.getpid()), None])])
    store.close()


@pytest.mark.parametrize("kind", ["sqlite", "redis"])
def test_concurrent_writers_keep_the_greatest_ts(kind: str, request: pytest.FixtureRequest, tmp_path: Path,
                                                 namespace: str) -> None:
    """Processes writing interleaved timestamps of the same symbols at once: the greatest ts always wins."""
    url = store_url(kind, request)
    options = {"namespace": namespace} if kind == "redis" else {}
    n_procs, per_proc = 3, 40
    ctx = mp.get_context("spawn")
    barrier = ctx.Barrier(n_procs)
    # Process k writes TS + k, TS + k + n_procs, ...: every ts is unique, the greatest belongs to one process.
    procs = [
        ctx.Process(target=_write_interleaved,
                    args=(url, str(tmp_path), options, [TS + k + n_procs * i for i in range(per_proc)], barrier))
        for k in range(n_procs)
    ]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.join(timeout=120)
            assert p.exitcode == 0
        store = open_online(url, root=tmp_path, **options)
        top = TS + n_procs * per_proc - 1
        rows = store.get_latest(TABLE, ["A", "B", "C/D", "é"])
        assert [(r.ts, r.values[0]) if r else None for r in rows] == [(top, float(top))] * 4
        store.close()
    finally:
        for p in procs:
            p.kill()
        if kind == "redis":
            delete_namespace(url, namespace)


# --- bounds: LRU eviction (embedded), access recording (SQLite), expiry (Redis) ---------------------------------


@pytest.mark.parametrize("kind", ["memory", "sqlite"])
def test_lru_eviction_keeps_recently_used_rows(kind: str, tmp_path: Path) -> None:
    """Over the bound, the least recently read or written rows go first, across tables."""
    option = {"memory": "max_items", "sqlite": "max_rows"}[kind]
    store = open_online(f"{kind}://", root=tmp_path, **{option: 3})
    for symbol in ["A", "B"]:
        store.put_latest(TABLE, COLS, [(symbol, TS, [1.0, 2.0, 3.0])])
    store.put_latest("other@1", ["x"], [("C", TS, [1.0])])
    assert store.get_latest(TABLE, ["A"]) != [None]  # A is now more recent than B and C
    assert store.put_latest(TABLE, COLS, [("D", TS, [1.0, 2.0, 3.0])]) == 1
    assert [r is not None for r in store.get_latest(TABLE, ["A", "B", "D"])] == [True, False, True]
    assert store.get_latest("other@1", ["C"]) != [None]
    # A batch larger than the bound leaves the bound's worth of rows.
    store.put_latest(TABLE, COLS, [(f"N{i}", TS, [1.0, 2.0, 3.0]) for i in range(10)])
    everything = ["A", "B", "D", *(f"N{i}" for i in range(10))]
    left = store.get_latest(TABLE, everything) + store.get_latest("other@1", ["C"])
    assert sum(r is not None for r in left) == 3
    store.close()


def test_sqlite_records_reads_in_memory_then_flushes_about_once_per_second(tmp_path: Path) -> None:
    """A read never writes; a background thread writes the access times of read rows within about a second."""
    store = SqliteOnlineStore(tmp_path / "online.sqlite")
    store.put_latest(TABLE, COLS, [("A", TS, [1.0, 2.0, 3.0]), ("B", TS, [1.0, 2.0, 3.0])])
    peek = sqlite3.connect(tmp_path / "online.sqlite")

    def accessed() -> dict[str, int]:
        return dict(peek.execute("SELECT symbol, accessed FROM online").fetchall())

    before = accessed()
    t0 = time.monotonic()
    for _ in range(200):
        store.get_latest(TABLE, ["A"])
    if time.monotonic() - t0 < 0.5:  # well inside the flush interval: no write may have happened yet
        assert accessed() == before
    assert wait_for(lambda: accessed()["A"] > before["A"], 3.0, "the access flush") < 2.0
    assert accessed()["B"] == before["B"]
    peek.close()
    store.close()


def test_redis_expiry(redis_url: str, namespace: str) -> None:
    """expire_seconds sets a key expiry: the row reads as None once it passes; no expiry means none is set."""
    store = RedisOnlineStore(redis_url, namespace=namespace)
    try:
        store.put_latest(TABLE, COLS, [("A", TS, [1.0, 2.0, 3.0])], expire_seconds=0.05)
        store.put_latest(TABLE, COLS, [("B", TS, [1.0, 2.0, 3.0])])
        wait_for(lambda: store.get_latest(TABLE, ["A"]) == [None], 5.0, "row A to expire")
        raw = redis.Redis.from_url(redis_url)
        assert raw.pttl(f"{namespace}:r:{TABLE}:B") == -1
        assert store.get_latest(TABLE, ["B"]) != [None]
        raw.close()
    finally:
        store.close()
        delete_namespace(redis_url, namespace)


@pytest.mark.parametrize("garbage", [b"", b"x", b"\x07" * 41, b"\x09" + bytes(33)],
                         ids=["empty", "short", "bad-length", "bad-version"])
def test_redis_undecodable_value_is_a_counted_miss_and_the_next_write_replaces_it(
        redis_url: str, namespace: str, garbage: bytes) -> None:
    """A corrupt value never fails the batch it is in: it reads as a miss (counted), the other symbols are served,
    and a write replaces it whatever the ts it seems to hold (a fill from the lower tiers)."""
    store = RedisOnlineStore(redis_url, namespace=namespace)
    raw = redis.Redis.from_url(redis_url)
    try:
        store.put_latest(TABLE, COLS, [("A", TS, [1.0, 2.0, 3.0]), ("B", TS, [4.0, None, 6.0])])
        raw.set(f"{namespace}:r:{TABLE}:B", garbage)
        assert store.get_latest(TABLE, ["A", "B"]) == [(TS, (1.0, 2.0, 3.0)), None]
        assert store.get_latest(TABLE, ["B"]) == [None]
        assert store.corrupt == 2
        assert store.put_latest(TABLE, COLS, [("B", 1, [7.0, 8.0, 9.0])]) == 1  # ts 1: older than anything
        assert store.get_latest(TABLE, ["A", "B"]) == [(TS, (1.0, 2.0, 3.0)), (1, (7.0, 8.0, 9.0))]
        assert store.put_latest(TABLE, COLS, [("B", 0, [0.0, 0.0, 0.0])]) == 0  # a valid row again: older loses
        assert store.corrupt == 2
    finally:
        raw.close()
        store.close()
        delete_namespace(redis_url, namespace)


# --- private redis-server processes -------------------------------------------------------------------------------


@pytest.fixture
def make_server() -> Iterator[Callable[..., RedisServer]]:
    servers: list[RedisServer] = []

    def make(*extra: str) -> RedisServer:
        server = RedisServer(*extra)
        server.start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        if server.alive():
            server.kill()


def test_redis_allkeys_lru(make_server: Callable[..., RedisServer]) -> None:
    """Under maxmemory with allkeys-lru, writing far more than fits raises nothing; reads give rows or None."""
    server = make_server("--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru")
    store = RedisOnlineStore(server.url)
    symbols = [f"SYM{i:06d}" for i in range(40_000)]  # about 8 MB of keys and values
    cols = [f"f{i}" for i in range(7)]
    for start in range(0, len(symbols), 500):
        store.put_latest(TABLE, cols, [(s, TS + start, [float(start)] * 7) for s in symbols[start:start + 500]])
    rows = store.get_latest(TABLE, symbols)
    kept = [(i, r) for i, r in enumerate(rows) if r is not None]
    assert 0 < len(kept) < len(symbols) // 2
    assert all(r.ts == TS + i // 500 * 500 and r.values == (float(i // 500 * 500),) * 7 for i, r in kept)
    store.close()


def test_redis_down_reads_fail_fast_and_recover(make_server: Callable[..., RedisServer]) -> None:
    """Killed or frozen Redis: reads raise BackendUnavailableError within the socket timeout, then at once while
    the breaker is open; they reach Redis again within a second of it coming back."""
    server = make_server()
    store = RedisOnlineStore(server.url, socket_timeout=0.2, breaker_seconds=0.25)
    store.put_latest(TABLE, COLS, [("A", TS, [1.0, 2.0, 3.0])])

    server.freeze(True)  # accepts connections, never answers: only the socket timeout can end the call
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="unreachable"):
        store.get_latest(TABLE, ["A"])
    assert time.monotonic() - t0 < 1.0
    with pytest.raises(BackendUnavailableError, match="next attempt in"):
        store.get_latest(TABLE, ["A"])
    server.freeze(False)
    wait_for(lambda: _reads(store), 2.0, "reads to recover after SIGCONT")
    assert store.get_latest(TABLE, ["A"]) == [OnlineRow(TS, (1.0, 2.0, 3.0))]

    server.kill()
    t0 = time.monotonic()
    with pytest.raises(BackendUnavailableError):
        store.get_latest(TABLE, ["A"])
    with pytest.raises(BackendUnavailableError):
        store.ping()
    assert time.monotonic() - t0 < 1.0
    server.start()
    back = wait_for(lambda: _reads(store), 5.0, "reads to recover after a restart")
    assert back < 1.0
    assert store.get_latest(TABLE, ["A"]) == [None]  # the restarted server has no data (no persistence)
    store.ping()
    store.close()


def _reads(store: OnlineStore) -> bool:
    try:
        store.get_latest(TABLE, ["A"])
    except BackendUnavailableError:
        return False
    return True


def test_redis_down_writes_are_queued_then_flushed_in_order(make_server: Callable[..., RedisServer]) -> None:
    """Writes while Redis is down return 0 and wait in a queue; the next call that reaches Redis replays them
    through the conditional script: nothing is lost and an older queued row never beats a newer one."""
    server = make_server()
    store = RedisOnlineStore(server.url)
    symbols = [f"S{i}" for i in range(50)]
    store.put_latest(TABLE, COLS, [(s, TS, [0.0, 0.0, 0.0]) for s in symbols])
    server.kill()
    expected: dict[str, int] = {}
    queued = 0
    for step in range(1, 201):
        batch = [(s, TS + step, [float(step), None, math.nan]) for s in symbols[step % 10::10]]
        batch += [(symbols[0], TS + 1000 - step, [float(1000 - step), None, math.nan])]  # older and older
        assert store.put_latest(TABLE, COLS, batch) == 0
        queued += len({s for s, _, _ in batch})  # a call keeps one row per symbol
        for s, ts, _ in batch:
            expected[s] = max(expected.get(s, 0), ts)
    assert store.pending() == queued
    server.start()
    wait_for(lambda: _reads(store), 5.0, "the flush after the restart")
    assert store.pending() == 0
    rows = store.get_latest(TABLE, symbols)
    assert {s: r.ts for s, r in zip(symbols, rows, strict=True) if r is not None} == expected
    assert all(r is not None and r.values[0] == float(r.ts - TS) and r.values[1] is None and math.isnan(r.values[2])
               for r in rows)
    assert store.columns(TABLE) == tuple(COLS)
    store.close()


def test_redis_write_queue_is_bounded(make_server: Callable[..., RedisServer]) -> None:
    """Past max_pending rows, put_latest raises naming how many rows it did not accept; the rest still flush.
    close() with rows still queued raises rather than dropping them silently."""
    server = make_server()
    store = RedisOnlineStore(server.url, max_pending=10)
    store.put_latest(TABLE, COLS, [("A", TS, [1.0, 2.0, 3.0])])
    server.kill()
    assert store.put_latest(TABLE, COLS, [(f"S{i}", TS, [1.0, 2.0, 3.0]) for i in range(8)]) == 0
    with pytest.raises(BackendUnavailableError, match="3 of 5 rows were not accepted"):
        store.put_latest(TABLE, COLS, [(f"T{i}", TS, [1.0, 2.0, 3.0]) for i in range(5)])
    assert store.pending() == 10
    with pytest.raises(SchemaMismatchError):  # the known column list is checked even while Redis is down
        store.put_latest(TABLE, ["other"], [("A", TS, [1.0])])
    server.start()
    store.ping()
    assert store.pending() == 0
    got = store.get_latest(TABLE, [*(f"S{i}" for i in range(8)), "T0", "T1", "T2"])
    assert [r is not None for r in got] == [True] * 10 + [False]
    server.kill()
    store.put_latest(TABLE, COLS, [("late", TS, [1.0, 2.0, 3.0])])
    with pytest.raises(BackendUnavailableError, match="closed with 1 queued rows not written"):
        store.close()


def test_redis_queued_rows_of_a_recreated_table_are_dropped_loudly(make_server: Callable[..., RedisServer]) -> None:
    """Rows queued for a table that another writer recreated with other columns meanwhile: reads go on, the next
    write raises SchemaMismatchError saying how many queued rows were dropped."""
    server = make_server()
    store = RedisOnlineStore(server.url)
    store.put_latest(TABLE, COLS, [("A", TS, [1.0, 2.0, 3.0])])
    server.kill()
    assert store.put_latest(TABLE, COLS, [("A", TS + 1, [1.0, 2.0, 3.0]), ("B", TS, [1.0, 2.0, 3.0])]) == 0
    server.start()  # empty: another writer now creates the table with a different column list
    other = RedisOnlineStore(server.url)
    assert other.put_latest(TABLE, ["x"], [("A", TS, [9.0])]) == 1
    assert wait_for(lambda: _reads(store), 5.0, "reads after the restart") < 1.0
    assert store.get_latest(TABLE, ["A"]) == [OnlineRow(TS, (9.0,))]
    assert store.pending() == 2
    with pytest.raises(SchemaMismatchError, match="2 queued rows were dropped"):
        store.put_latest(TABLE, ["x"], [("C", TS, [1.0])])
    assert store.pending() == 0
    assert store.put_latest(TABLE, ["x"], [("C", TS, [1.0])]) == 1
    other.close()
    store.close()


# --- opening -----------------------------------------------------------------------------------------------------


def test_open_online_urls(tmp_path: Path) -> None:
    default = open_online("sqlite://", root=tmp_path)
    assert isinstance(default, SqliteOnlineStore)
    default.close()
    assert (tmp_path / "online.sqlite").is_file()
    custom = tmp_path / "sub" / "mine.sqlite"
    open_online(f"sqlite://{custom}", root=tmp_path, max_rows=10).close()
    assert custom.is_file()
    for url in ["http://x", "sqlite://relative.sqlite", "memory://x", "memory:", "", "redis"]:
        with pytest.raises(ConfigError, match="unsupported online store URL"):
            open_online(url, root=tmp_path)
    with pytest.raises(ConfigError, match=r"unknown option.*max_rows"):
        open_online("memory://", root=tmp_path, max_rows=3)
    with pytest.raises(ConfigError, match="max_items"):
        open_online("memory://", root=tmp_path, max_items=0)
    with pytest.raises(ConfigError, match="namespace"):
        open_online("redis://127.0.0.1:1/0", root=tmp_path, namespace="")

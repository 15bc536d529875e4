"""The PostgreSQL history tier against real servers: the conformance suite (:mod:`pitstore.testing.history`) and
what only PostgreSQL has (migrations, plans, processes, forks, outages), on the shared server on 5432 and a private
one these tests start, stop and restart themselves (never the shared one)."""

from __future__ import annotations

import multiprocessing
import socket
import time
from collections.abc import Callable, Iterator
from typing import Any

import psycopg
import pyarrow as pa
import pytest
from psycopg import sql
from servers import PrivatePostgres, drop_schema, private_postgres
from spawn import run_processes

from pitstore.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
)
from pitstore.history import SCHEMA_VERSION, PostgresHistory, postgres
from pitstore.history.postgres import _ASOF_ROWS as ASOF_ROWS  # white-box: the as-of query's own row bound
from pitstore.history.postgres import StoreScope
from pitstore.testing.history import (  # the suite's own helpers, not a copy
    SEEK_ROWS,
    HistoryConformance,
    Opener,
    _rows,
    scope,
)

TS = pa.timestamp("us", tz="UTC")
DAY = 86_400_000_000
T0 = 1_700_000_000_000_000  # 2023-11-14, µs


def _sql(url: str, query: str, schema: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    """Run ``query`` with ``{s}`` standing for the schema; its rows (none for a statement)."""
    with psycopg.connect(url, autocommit=True) as conn:
        cur = conn.execute(sql.SQL(query).format(s=sql.Identifier(schema)), params)
        return cur.fetchall() if cur.description else []


class TestPostgresHistory(HistoryConformance):
    @pytest.fixture
    def opener(self, postgres_url: str, namespace: str) -> Iterator[Opener]:
        opened: list[PostgresHistory] = []

        def open_one(scope: StoreScope | None = None) -> PostgresHistory:
            opened.append(PostgresHistory(postgres_url, schema=namespace, scope=scope))
            return opened[-1]

        yield open_one
        for h in opened:
            h.close()
        drop_schema(postgres_url, namespace)


def test_the_suite_reaches_the_second_lookup() -> None:
    """The suite's runs of tombstones are sized by what one seek reads here."""
    assert SEEK_ROWS == ASOF_ROWS


def test_each_store_and_definition_is_a_row_of_its_own(history: PostgresHistory, postgres_url: str,
                                                       namespace: str) -> None:
    with PostgresHistory(postgres_url, schema=namespace, scope=scope("store-a", {"fs@1": "fp-a"})) as a, \
            PostgresHistory(postgres_url, schema=namespace, scope=scope("store-b", {"fs@1": "fp-b"})) as b:
        a.write("fs@1", ["x"], _rows(["S"], [10], x=[1.0]), recorded_at=1)
        b.write("fs@1", ["y"], _rows(["S"], [10], y=[1.0]), recorded_at=1)
    keys = _sql(postgres_url, "SELECT table_id, store_id, fingerprint FROM {s}.history_tables ORDER BY 2, 3", namespace)
    assert keys == [("fs@1", "store-a", "fp-a"), ("fs@1", "store-b", "fp-b")]


# --- schema -----------------------------------------------------------------------------------------------


def test_migrate_twice_keeps_one_version(history: PostgresHistory, postgres_url: str, namespace: str) -> None:
    history.migrate()
    assert _sql(postgres_url, "SELECT component, version FROM {s}.schema_version ORDER BY version", namespace) == [
        ("history", v) for v in range(1, SCHEMA_VERSION + 1)]  # one row per step
    tables = _sql(postgres_url, "SELECT tablename FROM pg_tables WHERE schemaname = %s", namespace, (namespace,))
    assert {t[0] for t in tables} == {"schema_version", "history_tables", "history_rows"}


def _migrate_worker(url: str, schema: str, barrier: Any, results: Any) -> None:
    try:
        h = PostgresHistory(url, schema=schema)
        h.ping()  # connect first, so the barrier lines up the migrations themselves
        barrier.wait(timeout=60)
        h.migrate()
        h.close()
        results.put("ok")
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_migrate_concurrently_from_four_processes(postgres_url: str, namespace: str) -> None:
    try:
        out = run_processes(_migrate_worker, [(postgres_url, namespace)] * 4)
        assert out == ["ok"] * 4
        assert _sql(postgres_url, "SELECT component, version FROM {s}.schema_version ORDER BY version",
                    namespace) == [("history", v) for v in range(1, SCHEMA_VERSION + 1)]
    finally:
        drop_schema(postgres_url, namespace)


def test_not_migrated_and_bad_arguments_raise_pitstore_errors(postgres_url: str, namespace: str) -> None:
    h = PostgresHistory(postgres_url, schema=namespace)
    with pytest.raises(BackendError, match=r"migrate\(\)"):
        h.asof("fs@1", "A", 0)
    with pytest.raises(ConfigError):
        PostgresHistory("postgresql://host:notaport:x/db?nonsense=1")
    with pytest.raises(ConfigError):
        PostgresHistory(postgres_url, schema="")
    h.close()
    with pytest.raises(BackendError, match="closed"):
        h.ping()


# --- writes -----------------------------------------------------------------------------------------------


# --- reads ------------------------------------------------------------------------------------------------


def _plan_nodes(node: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield node
    for child in node.get("Plans", []):
        yield from _plan_nodes(child)


def test_explain_asof_is_one_backward_index_seek(history: PostgresHistory, postgres_url: str,
                                                  namespace: str) -> None:
    syms = [f"S{i:03d}" for i in range(50)]
    history.write("fs@1", ["x", "y"], _rows([s for s in syms for _ in range(100)], [i * 60 for _ in syms
                                                                                      for i in range(100)],
                                              x=[1.0] * 5000, y=[2.0] * 5000), recorded_at=1)
    history.write("other@1", ["x"], _rows(syms, [0] * 50, x=[0.0] * 50), recorded_at=1)
    for analyzed in (False, True):
        if analyzed:  # the plan must hold on a fresh table and after statistics exist
            _sql(postgres_url, "ANALYZE {s}.history_rows", namespace)
        for generic in (False, True):
            for known in (None, 10):
                root = history.explain_asof("fs@1", "S007", 3000, lag=60, as_known_at=known, generic=generic)
                nodes = list(_plan_nodes(root))
                assert [n["Node Type"] for n in nodes] == ["Limit", "Index Scan"], nodes
                assert nodes[1]["Index Name"] == "history_rows_pkey"
                assert nodes[1]["Scan Direction"] == "Backward"
                assert "Filter" not in nodes[1]  # every condition is checked inside the index
                assert root["Plan Rows"] <= ASOF_ROWS  # a few versions, to step over tombstones
    # asof_many (and asof below a run of tombstones): DISTINCT ON streams the same backward scan, no sort.
    key = _sql(postgres_url, "SELECT table_key FROM {s}.history_tables WHERE table_id = 'fs@1'", namespace)[0][0]
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        for mode in ("force_custom_plan", "force_generic_plan"):
            conn.execute(sql.SQL("SET plan_cache_mode = {}").format(sql.Literal(mode)))
            cur = conn.cursor(binary=True)
            # White-box: the plan of the tier's own query text is what this test is about.
            plan = cur.execute(b"EXPLAIN (FORMAT JSON) " + history._q.asof_many,
                               (["S007", "S008"], [3000, 60], key, 2**63 - 1)).fetchone()[0]
            nodes = list(_plan_nodes(plan[0]["Plan"]))
            assert "Sort" not in [n["Node Type"] for n in nodes], nodes
            scans = [n for n in nodes if n["Node Type"] == "Index Scan"]
            assert [(n["Index Name"], n["Scan Direction"]) for n in scans] == [("history_rows_pkey", "Backward")]
            assert [n["Node Type"] for n in nodes][-2:] == ["Unique", "Index Scan"]


# --- tombstones -------------------------------------------------------------------------------------------


def _old_schema(url: str, schema: str, monkeypatch: pytest.MonkeyPatch, version: int) -> None:
    """A schema as the release of history schema ``version`` made it."""
    with monkeypatch.context() as m:
        m.setattr(postgres, "_MIGRATIONS", postgres._MIGRATIONS[:version])
        m.setattr(postgres, "SCHEMA_VERSION", version)
        with PostgresHistory(url, schema=schema) as old:
            old.migrate()


def _old_write(url: str, schema: str, table_id: str, columns: list[str],
               rows: list[tuple[str, int, int, list[float | None] | None]]) -> None:
    """Rows (symbol, ts, recorded_at, vals) written as releases before store ids did: tables keyed by table_id."""
    if not _sql(url, "SELECT 1 FROM {s}.history_tables WHERE table_id = %s", schema, (table_id,)):
        _sql(url, "INSERT INTO {s}.history_tables (table_id, columns) VALUES (%s, %s)", schema, (table_id, columns))
    for symbol, ts, rec, vals in rows:
        _sql(url, "INSERT INTO {s}.history_rows SELECT table_key, %s, %s, %s, %s FROM {s}.history_tables"
                  " WHERE table_id = %s", schema, (symbol, ts, rec, vals, table_id))


def test_migrating_a_schema_of_the_previous_version(postgres_url: str, namespace: str,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A schema made by the previous release (migration 1 only, vals NOT NULL, rows in it) is upgraded in place:
    its rows stay, tombstones can be written, the view shows them."""
    try:
        _old_schema(postgres_url, namespace, monkeypatch, 1)
        _old_write(postgres_url, namespace, "fs@1", ["x"], [("A", 10, 1, [1.0]), ("A", 20, 1, [None])])
        nullable = ("SELECT is_nullable FROM information_schema.columns WHERE table_schema = %s"
                    " AND table_name = 'history_rows' AND column_name = 'vals'")
        assert _sql(postgres_url, nullable, namespace, (namespace,)) == [("NO",)]
        assert _sql(postgres_url, "SELECT version FROM {s}.schema_version", namespace) == [(1,)]

        with PostgresHistory(postgres_url, schema=namespace) as new:
            new.migrate()
            assert _sql(postgres_url, nullable, namespace, (namespace,)) == [("YES",)]
            assert _sql(postgres_url, "SELECT version FROM {s}.schema_version ORDER BY version", namespace) == [
                (v,) for v in range(1, SCHEMA_VERSION + 1)]
            assert new.scan("fs@1")["x"].to_pylist() == [1.0, None]
            assert new.write("fs@1", ["x"], _rows([], [], x=[]), recorded_at=2, replaces=[("A", 15, 25)]) == 1
            assert new.latest("fs@1", ["A"]) == [(10, (1.0,))]
            new.migrate()  # again: nothing to do
        view = _sql(postgres_url, "SELECT extract(epoch FROM ts) * 1000000, vals, tombstone FROM {s}.history_view"
                                  " ORDER BY ts, recorded_at", namespace)
        assert [(int(t), v, dead) for t, v, dead in view] == [(10, [1.0], False), (20, [None], False),
                                                               (20, None, True)]
    finally:
        drop_schema(postgres_url, namespace)


def _scope(store_id: str, fingerprints: dict[str, str], adopt: bool = False) -> StoreScope:
    return StoreScope(store_id, fingerprints.get, lambda _table_id: adopt)


def test_tables_of_the_previous_layout_are_adopted_only_by_a_store_that_claims_them(
        postgres_url: str, namespace: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """A schema of version 2 with rows: after migration 3 they are unscoped, invisible to a store that does not
    claim them (a new store on the same server) and readable without a scope; the first claiming store adopts
    them (rows kept, readable, writable), after which no one else can."""
    try:
        _old_schema(postgres_url, namespace, monkeypatch, 2)
        _old_write(postgres_url, namespace, "fs@1", ["x"], [("S", 10, 1, [1.0]), ("S", 20, 1, [2.0])])
        stranger = PostgresHistory(postgres_url, schema=namespace, scope=_scope("new", {"fs@1": "fp-new"}))
        owner = PostgresHistory(postgres_url, schema=namespace, scope=_scope("old", {"fs@1": "fp-old"}, adopt=True))
        late = PostgresHistory(postgres_url, schema=namespace, scope=_scope("late", {"fs@1": "fp-old"}, adopt=True))
        unscoped = PostgresHistory(postgres_url, schema=namespace)
        with stranger, owner, late, unscoped:
            stranger.migrate()
            assert stranger.asof("fs@1", "S", 30) is None and stranger.tables() == []
            assert unscoped.asof("fs@1", "S", 30) == (20, (2.0,))
            assert owner.tables() == []  # tables() lists, it does not adopt
            assert owner.asof("fs@1", "S", 15) == (10, (1.0,))
            assert owner.write("fs@1", ["x"], _rows(["S"], [30], x=[3.0]), recorded_at=2) == 1
            assert owner.latest("fs@1", ["S"]) == [(30, (3.0,))] and owner.tables() == ["fs@1"]
            assert late.asof("fs@1", "S", 30) is None
            with PostgresHistory(postgres_url, schema=namespace) as fresh:  # (one that resolved it before keeps it)
                assert fresh.asof("fs@1", "S", 30) is None
            assert stranger.write("fs@1", ["x"], _rows(["S"], [40], x=[4.0])) == 1  # a table of its own
            assert owner.latest("fs@1", ["S"]) == [(30, (3.0,))]
        assert _sql(postgres_url, "SELECT store_id, fingerprint FROM {s}.history_tables ORDER BY 1", namespace) == [
            ("new", "fp-new"), ("old", "fp-old")]
    finally:
        drop_schema(postgres_url, namespace)



# --- the as-of rule, against a brute-force reading of DESIGN section 2 ------------------------------------


# --- concurrency ------------------------------------------------------------------------------------------

WRITERS, BATCHES, OWN_SYMBOLS, PER_SYMBOL = 3, 12, 5, 10


def _writer(url: str, schema: str, p: int, barrier: Any, results: Any) -> None:
    """Writes its own symbols (server clock) and a shared set that every writer writes identically."""
    try:
        h = PostgresHistory(url, schema=schema)
        h.ping()
        barrier.wait(timeout=60)
        shared = 0
        for b in range(BATCHES):
            ts = [b * PER_SYMBOL + k for k in range(PER_SYMBOL)]
            own = [f"P{p}S{j}" for j in range(OWN_SYMBOLS)]
            h.write("fs@1", ["x"], _rows([s for s in own for _ in ts], ts * OWN_SYMBOLS,
                                         x=[float(p)] * len(ts) * OWN_SYMBOLS))
            common = [f"SH{j}" for j in range(OWN_SYMBOLS)]
            shared += h.write("fs@1", ["x"], _rows([s for s in common for _ in ts], ts * OWN_SYMBOLS,
                                                   x=[float(t) for _ in common for t in ts]), recorded_at=42)
        h.close()
        results.put(shared)
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


@pytest.mark.slow
def test_concurrent_writers_from_processes(history: PostgresHistory, postgres_url: str, namespace: str) -> None:
    history.write("fs@1", ["x"], _rows(["SEED"], [0], x=[0.0]))  # registered up front, as a deployment would
    out = run_processes(_writer, [(postgres_url, namespace, p) for p in range(WRITERS)])
    assert all(isinstance(o, int) for o in out), out
    per_writer = BATCHES * OWN_SYMBOLS * PER_SYMBOL
    assert sum(out) == per_writer  # each shared row stored exactly once, by whichever writer came first
    count, distinct = _sql(postgres_url, "SELECT count(*), count(DISTINCT (symbol, ts, recorded_at))"
                                         " FROM {s}.history_rows", namespace)[0]
    assert count == distinct == 1 + WRITERS * per_writer + per_writer
    scanned = history.scan("fs@1")
    assert scanned.num_rows == 1 + WRITERS * per_writer + per_writer
    assert history.latest("fs@1", ["P2S4", "SH0"]) == [(BATCHES * PER_SYMBOL - 1, (2.0,)),
                                                       (BATCHES * PER_SYMBOL - 1, (BATCHES * PER_SYMBOL - 1.0,))]


def _backend_pid(h: PostgresHistory) -> int:
    """The server process serving ``h`` (white-box: there is no public handle on the connection)."""
    assert h._conn is not None
    return h._conn.info.backend_pid


def _forked_lookup(h: PostgresHistory, results: Any) -> None:
    try:
        results.put((h.asof("fs@1", "A", 10), _backend_pid(h)))
    except Exception as exc:
        results.put(f"{type(exc).__name__}: {exc}")


def test_forked_child_gets_its_own_connection(history: PostgresHistory) -> None:
    history.write("fs@1", ["x"], _rows(["A"], [10], x=[1.0]))  # the parent's connection is open
    parent = _backend_pid(history)
    ctx = multiprocessing.get_context("fork")
    results = ctx.Queue()
    child = ctx.Process(target=_forked_lookup, args=(history, results))
    child.start()
    try:
        row, child_pid = results.get(timeout=60)
        child.join(timeout=60)
    finally:
        if child.is_alive():
            child.kill()
    assert child.exitcode == 0 and row == (10, (1.0,))
    assert child_pid != parent  # its own session, not the parent's socket
    assert history.asof("fs@1", "A", 10) == (10, (1.0,))
    assert _backend_pid(history) == parent  # the parent's session survived the child


# --- failures: a private server that the test stops and starts --------------------------------------------


@pytest.fixture(scope="module")
def private_pg() -> Iterator[PrivatePostgres]:
    yield from private_postgres()


def _poll(fn: Callable[[], object], seconds: float) -> None:
    """Call ``fn`` until it stops raising BackendUnavailableError, for at most ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            fn()
            return
        except BackendUnavailableError:
            if time.monotonic() > deadline:
                raise


@pytest.mark.slow
def test_server_down_raises_unavailable_fast_and_the_same_instance_recovers(private_pg: PrivatePostgres) -> None:
    timeout = 2.0
    h = PostgresHistory(private_pg.url, connect_timeout=timeout)
    idle = PostgresHistory(private_pg.url, connect_timeout=timeout)  # holds a connection across the restart
    h.migrate()
    h.write("fs@1", ["x"], _rows(["A"], [10], x=[1.0]), recorded_at=1)
    assert idle.asof("fs@1", "A", 10) == (10, (1.0,))

    private_pg.stop()
    calls: list[Callable[[], object]] = [
        lambda: h.asof("fs@1", "A", 10),  # the stale connection fails, the reconnect is refused
        h.ping,
        lambda: h.write("fs@1", ["x"], _rows(["A"], [20], x=[2.0])),
        lambda: h.scan("fs@1"),
        PostgresHistory(private_pg.url, connect_timeout=timeout).ping,  # never connected
    ]
    for call in calls:
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailableError) as info:
            call()
        assert time.monotonic() - t0 < timeout + 1.0
        assert not isinstance(info.value, psycopg.Error)
        message = str(info.value)
        assert f"127.0.0.1:{private_pg.port}" in message and "refused" in message.lower(), message

    private_pg.start()
    _poll(h.ping, 30)
    assert h.asof("fs@1", "A", 10) == (10, (1.0,))  # the same object, not recreated
    assert h.write("fs@1", ["x"], _rows(["A"], [20], x=[2.0]), recorded_at=2) == 1
    assert idle.asof("fs@1", "A", 30) == (20, (2.0,))  # a connection lost while idle is replaced silently
    h.close()
    idle.close()


def test_connect_timeout_against_a_silent_server() -> None:
    """A server that accepts TCP but never answers: BackendUnavailableError after connect_timeout."""
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        port = silent.getsockname()[1]
        h = PostgresHistory(f"postgresql://postgres@127.0.0.1:{port}/db?sslmode=disable", connect_timeout=2)
        t0 = time.monotonic()
        with pytest.raises(BackendUnavailableError, match=f"127.0.0.1:{port}") as info:
            h.ping()
        elapsed = time.monotonic() - t0
        assert 1.5 < elapsed < 3.5, elapsed
        assert "timeout" in str(info.value).lower()

"""Stores sharing one PostgreSQL history tier and one Redis (the real servers): each serves its own rows only,
whatever the names and versions of their feature sets; a corrupt Redis value is a miss, never a failed batch.

The Store's history tier uses the schema ``pitstore``: each test isolates itself by unique feature-set names and
deletes its tables afterwards; Redis keys go under namespaces deleted afterwards.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import psycopg
import pytest
import redis

import pitstore
from pitstore import FeatureSet, Store
from pitstore.testing import synthetic_bars

NOW_HOUR = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
US = timedelta(microseconds=1)


def _bars(seed: int) -> pl.DataFrame:
    """Two symbols of hourly bars ending at the current hour (inside the history window)."""
    bars = synthetic_bars(2, 24 * 10, timeframe="1h", start=datetime(2024, 1, 1, tzinfo=UTC), seed=seed)
    return bars.with_columns(pl.col("ts") + (NOW_HOUR - bars["ts"].max()))


def _us(t: datetime) -> int:
    return (t - datetime(1970, 1, 1, tzinfo=UTC)) // US


@pytest.fixture
def open_store(postgres_url: str, redis_url: str, namespace: str) -> Iterator[Callable[..., Store]]:
    """Opens stores (closed at the end; their history tables and Redis keys deleted)."""
    opened: list[Store] = []
    ids: set[str] = set()

    def open_(root: Path, **options: Any) -> Store:
        store = Store.open(root, **{"online_url": "memory://", "postgres_url": postgres_url, **options})
        opened.append(store)
        ids.add(store.catalog.store_id())
        return store

    yield open_
    for store in reversed(opened):
        store.close()
    with psycopg.connect(postgres_url, autocommit=True) as conn:
        keys = "SELECT table_key FROM pitstore.history_tables WHERE starts_with(table_id, %s)"
        conn.execute(f"DELETE FROM pitstore.history_rows WHERE table_key IN ({keys})", (namespace,))
        conn.execute("DELETE FROM pitstore.history_tables WHERE starts_with(table_id, %s)", (namespace,))
    client = redis.Redis.from_url(redis_url)
    for ns in [namespace, *(f"pitstore-{i}" for i in ids)]:
        keys = list(client.scan_iter(match=f"{ns}:*", count=1000))
        if keys:
            client.delete(*keys)
    client.close()


def _fs(namespace: str, *features: Any) -> FeatureSet:
    return FeatureSet(f"{namespace}_shared", list(features) or [pitstore.ema(5), pitstore.sma(4)], timeframe="1h",
                      ttl=timedelta(days=2))  # the last bar may be an hour old: still fresh


def _history_answer(store: Store, fs: FeatureSet, symbol: str, as_of: datetime) -> dict[str, float | None]:
    """The feature values the history tier itself holds for the look-up (so the test knows it answered)."""
    history = store.serving.history
    assert history is not None
    row = history.asof(f"{fs.name}@1", symbol, _us(as_of), 0)
    assert row is not None, "the history tier has no row: the look-up would not go through it"
    columns = store.registry.get(fs.name, 1).columns
    return dict(zip(columns, row[1], strict=True))


def _offline(store: Store, fs: FeatureSet, symbol: str, as_of: datetime) -> dict[str, float | None]:
    rows = store.read(fs.name).filter((pl.col("symbol") == symbol) & (pl.col("ts") <= as_of))
    last = rows.row(-1, named=True)
    return {c: last[c] for c in store.registry.get(fs.name, 1).columns}


def test_two_stores_on_one_postgres_serve_their_own_history_rows(open_store: Callable[..., Store], namespace: str,
                                                                 tmp_path: Path) -> None:
    """Two roots, one postgres_url, a feature set of the same name (and version 1) in each: the same definition
    over different bars, then two different definitions. get_features of each store gives its own values."""
    as_of = NOW_HOUR - timedelta(hours=30, minutes=30)
    for case, defs in {"same": (_fs(namespace), _fs(namespace)),
                       "other": (_fs(namespace + "x"), _fs(namespace + "x", pitstore.rsi(3), pitstore.ret(2)))}.items():
        a = open_store(tmp_path / case / "a")
        b = open_store(tmp_path / case / "b")
        for store, fs, seed in ((a, defs[0], 1), (b, defs[1], 2)):
            store.ingest(_bars(seed))
            assert store.register(fs) == 1
            store.backfill(fs)
            store.materialize(fs)
        for store, fs in ((a, defs[0]), (b, defs[1])):
            for symbol in ("S0000", "S0001"):
                own = _offline(store, fs, symbol, as_of)
                assert _history_answer(store, fs, symbol, as_of) == own
                assert store.get_features(symbol, as_of, fs.name).values == own
        assert _offline(a, defs[0], "S0000", as_of) != _offline(b, defs[1], "S0000", as_of)


def test_a_copied_root_keeps_its_definitions_apart_by_fingerprint(open_store: Callable[..., Store], namespace: str,
                                                                  tmp_path: Path) -> None:
    """A root copied before any feature set was registered keeps the store id: the two copies' version 1 of one
    name are two definitions, and each is served only its own rows."""
    a = open_store(tmp_path / "a")
    a.ingest(_bars(1))
    a.close()
    shutil.copytree(tmp_path / "a", tmp_path / "c")
    a, c = open_store(tmp_path / "a"), open_store(tmp_path / "c")
    assert a.catalog.store_id() == c.catalog.store_id()
    defs = (_fs(namespace, pitstore.ema(5)), _fs(namespace, pitstore.ema(7)))
    as_of = NOW_HOUR - timedelta(hours=20)
    for store, fs in zip((a, c), defs, strict=True):
        assert store.register(fs) == 1
        store.backfill(fs)
        store.materialize(fs)
    for store, fs in zip((a, c), defs, strict=True):
        own = _offline(store, fs, "S0001", as_of)
        assert _history_answer(store, fs, "S0001", as_of) == own
        assert store.get_features("S0001", as_of, fs.name).values == own


def test_two_stores_on_one_redis_keep_their_own_online_rows(open_store: Callable[..., Store], namespace: str,
                                                            redis_url: str, tmp_path: Path) -> None:
    """By default each store's Redis keys are its own (namespace from its store id); an explicit namespace is
    used as given."""
    fs = _fs(namespace)
    a = open_store(tmp_path / "a", online_url=redis_url, postgres_url=None)
    b = open_store(tmp_path / "b", online_url=redis_url, postgres_url=None)
    for store, seed in ((a, 1), (b, 2)):
        store.ingest(_bars(seed))
        store.register(fs)
        store.backfill(fs)
        store.materialize(fs)
    for store in (a, b):
        got = store.get_online(["S0000", "S0001"], fs.name)
        assert [v.status for v in got] == ["ok", "ok"]
        assert [v.values for v in got] == [_offline(store, fs, s, NOW_HOUR) for s in ("S0000", "S0001")]
    assert a.settings.online_namespace is None
    client = redis.Redis.from_url(redis_url)
    try:
        assert client.exists(f"pitstore-{a.catalog.store_id()}:r:{fs.name}@1:S0000")
        explicit = open_store(tmp_path / "e", online_url=redis_url, postgres_url=None, online_namespace=namespace)
        explicit.ingest(_bars(3))
        explicit.register(fs)
        explicit.backfill(fs)
        explicit.materialize(fs)
        assert client.exists(f"{namespace}:r:{fs.name}@1:S0000")
    finally:
        client.close()


def test_a_corrupt_redis_value_is_refilled_not_a_failed_batch(open_store: Callable[..., Store], namespace: str,
                                                              redis_url: str, tmp_path: Path) -> None:
    """One undecodable value in a batch: every symbol is served, the bad one refilled from the offline tier."""
    fs = _fs(namespace)
    store = open_store(tmp_path / "a", online_url=redis_url, online_namespace=namespace, postgres_url=None)
    store.ingest(_bars(1))
    store.register(fs)
    store.backfill(fs)
    store.materialize(fs)
    client = redis.Redis.from_url(redis_url)
    try:
        client.set(f"{namespace}:r:{fs.name}@1:S0001", b"garbage")
        got = store.get_online(["S0000", "S0001"], fs.name)
        assert [v.status for v in got] == ["ok", "ok"]
        assert [v.values for v in got] == [_offline(store, fs, s, NOW_HOUR) for s in ("S0000", "S0001")]
        online = store.serving.online
        # Read twice: by the batch, then again under the fill lock before the fill replaces it.
        assert getattr(online, "corrupt", None) == 2 and store.serving.fills == 1
        assert store.get_online(["S0001"], fs.name)[0].values == got[1].values
        assert getattr(online, "corrupt", None) == 2  # refilled: a valid row now
    finally:
        client.close()

"""Serving through the Store: materialize, get_online (statuses, TTL, fallback), get_features across tiers, warm."""

from __future__ import annotations

import random
import socket
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from pitstore import FeatureSet, Store, standard_features
from pitstore.features.library import ret
from pitstore.testing import synthetic_bars

NOW = datetime.now(UTC)


def _recent_bars(n_symbols: int = 6, n_bars: int = 120) -> pl.DataFrame:
    """Daily bars whose last bar closed an hour ago (fresh under the 24 h default TTL)."""
    bars = synthetic_bars(n_symbols, n_bars, start=datetime(2020, 1, 1, tzinfo=UTC))
    return bars.with_columns(pl.col("ts") + (NOW - timedelta(hours=1) - bars["ts"].max()))


@pytest.fixture(params=["memory", "sqlite", "redis"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind = request.param
    options: dict[str, str] = {}
    if kind == "redis":
        options = {"online_url": request.getfixturevalue("redis_url"),
                   "online_namespace": request.getfixturevalue("namespace")}
    else:
        options = {"online_url": f"{kind}://"}
    with Store.open(tmp_path / "store", **options) as s:
        s.ingest(_recent_bars())
        s.backfill(standard_features())
        yield s
        if kind == "redis":
            s.serving.online.delete("daily_core@1")


def test_materialize_then_get_online_returns_the_last_stored_row(store: Store) -> None:
    assert store.materialize(standard_features()) == 6
    offline = store.read("daily_core").group_by("symbol", maintain_order=True).last()
    vectors = store.get_online(["S0003", "NOPE", "S0001"], "daily_core")
    assert [v.symbol for v in vectors] == ["S0003", "NOPE", "S0001"]
    assert [v.status for v in vectors] == ["ok", "missing", "ok"]
    for v in (vectors[0], vectors[2]):
        want = offline.filter(pl.col("symbol") == v.symbol).row(0, named=True)
        assert v.ts == want["ts"]
        assert v.values == {k: want[k] for k in v.values}
    assert vectors[1].values == dict.fromkeys(vectors[0].values)


def test_get_online_selects_columns_and_returns_a_frame_when_asked(store: Store) -> None:
    store.materialize("daily_core")
    df = store.get_online(["S0001", "S0002"], ["daily_core:ret_5d", "daily_core:vol_20d"], output="polars")
    assert df.columns == ["symbol", "ts", "ret_5d", "vol_20d", "status"]
    assert df["status"].to_list() == ["ok", "ok"]
    want = store.read(["daily_core:ret_5d"], symbols=["S0002"])["ret_5d"][-1]
    assert df["ret_5d"][1] == want


def test_values_older_than_the_ttl_are_stale_never_fresh(tmp_path: Path) -> None:
    with Store.open(tmp_path, online_url="memory://") as s:
        bars = _recent_bars().with_columns(pl.col("ts") - timedelta(hours=30))  # last bar 31 h ago
        s.ingest(bars)
        fs = FeatureSet("short_ttl", [ret(5)], timeframe="1d", ttl=timedelta(hours=48))
        s.backfill(standard_features())
        s.backfill(fs)
        s.materialize(standard_features())
        s.materialize(fs)
        daily = s.get_online(["S0001"], "daily_core")[0]  # default daily TTL: 24 h
        assert daily.status == "stale" and all(v is None for v in daily.values.values())
        assert daily.ts is not None
        assert s.get_online(["S0001"], "short_ttl")[0].status == "ok"  # its own TTL: 48 h
        both = s.get_online(["S0001"], ["short_ttl:ret_5", "daily_core:ret_20d"])[0]
        assert both.status == "stale"  # the worse of the two wins


def test_get_features_is_the_same_whichever_tier_answers(store: Store) -> None:
    """The online tier answers at or after the newest row, the offline tier before; both follow the as-of
    rule, so asking the offline tier directly gives the same answer at every time."""
    store.materialize("daily_core")
    rows = store.read("daily_core", symbols=["S0002"])
    times = rows["ts"].to_list()
    rng = random.Random(3)
    probes = [times[-1], times[-1] + timedelta(minutes=30), times[0] - timedelta(days=1)]
    probes += [t + timedelta(seconds=rng.choice([0, -1, 1])) for t in rng.sample(times, 25)]
    table = store.serving.tables("daily_core")[0]
    for t in probes:
        got = store.get_features("S0002", t, "daily_core")
        want = store.serving._offline_asof(table, "S0002", t)
        assert (got.status, got.ts, got.values) == (want.status, want.ts, want.values), t
        expected = rows.filter(pl.col("ts") <= t)
        if expected.is_empty():
            assert got.status == "missing"
        else:
            assert got.ts == expected["ts"][-1]


def test_online_row_older_than_stored_rows_is_not_served_as_latest(tmp_path: Path) -> None:
    """Bars appended and backfilled but not materialized: get_features must not answer from the old online row."""
    with Store.open(tmp_path, online_url="memory://") as s:
        bars = _recent_bars()
        s.ingest(bars.filter(pl.col("ts") < bars["ts"].max()))
        s.backfill(standard_features())
        s.materialize("daily_core")
        s.ingest(bars)
        s.backfill(standard_features())
        got = s.get_features("S0001", NOW, "daily_core")
        assert got.ts == bars["ts"].max()


def test_warm_loads_the_most_requested_symbols(tmp_path: Path) -> None:
    root = tmp_path / "store"
    with Store.open(root, online_url="sqlite://") as s:
        s.ingest(_recent_bars())
        s.backfill(standard_features())
        for _ in range(3):
            s.get_online(["S0004", "S0002"], "daily_core")
        s.get_online(["S0005"], "daily_core")
    (root / "online.sqlite").unlink()  # a fresh online tier, as on a new machine at market open
    with Store.open(root, online_url="sqlite://") as s:
        assert s.warm(top=2) == 2
        got = {v.symbol: v.status for v in s.get_online(["S0004", "S0002", "S0005"], "daily_core")}
        # Warmed symbols are online already; a miss is filled from the offline tier on first read.
        assert got == {"S0004": "ok", "S0002": "ok", "S0005": "ok"}
        assert s.serving.fills == 1
        assert s.warm() == 6


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_online_tier_falls_back_to_the_offline_tier(tmp_path: Path) -> None:
    """No Redis listening: reads are answered from the offline tier with status fallback, not an error."""
    with Store.open(tmp_path, online_url=f"redis://127.0.0.1:{_closed_port()}/0") as s:
        s.ingest(_recent_bars())
        s.backfill(standard_features())
        vectors = s.get_online(["S0001", "NOPE"], "daily_core")
        assert [v.status for v in vectors] == ["fallback", "missing"]
        want = s.read("daily_core", symbols=["S0001"]).row(-1, named=True)
        assert vectors[0].values == {k: want[k] for k in vectors[0].values}
        assert s.get_features("S0001", NOW, "daily_core").values == vectors[0].values

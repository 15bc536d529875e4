"""pitstore.client against a real `pitstore serve` on loopback: every method answers what the library answers
on the same store (pandas, polars, Arrow), arguments are refused before any request, errors come back typed."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pandas as pd
import polars as pl
import pyarrow as pa
import pytest
from client_fixtures import SYMBOLS, bars, make_store
from server_proc import Server, free_port, run_cli

from pitstore import Store, standard_features
from pitstore.client import AsyncClient, Client, Resilience
from pitstore.errors import (
    ConfigError,
    DefinitionError,
    FeatureSetNotFoundError,
    InvalidInputError,
    NotFoundError,
    VersionNotFoundError,
)
from pitstore.features.catalogue import feature_metadata, list_features
from pitstore.frames import from_polars

KINDS = ["polars", "pandas", "arrow"]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Store]]:
    root = make_store(tmp_path_factory.mktemp("client"))
    server = Server(root)
    store = Store.open(root)
    try:
        yield server, store
    finally:
        store.close()
        code, out = server.stop()
        assert code in (0, -signal.SIGTERM), out


def _same(got: Any, want: Any, kind: str) -> None:
    if kind == "pandas":
        pd.testing.assert_frame_equal(got, want)
    elif kind == "arrow":
        assert isinstance(got, pa.Table) and got.equals(want)
    else:
        assert isinstance(got, pl.DataFrame) and got.equals(want)


def _entities() -> pl.DataFrame:
    ts = bars()["ts"].unique().sort()
    return pl.DataFrame({"symbol": ["BBB", "AAA", "ZZZ", "AAA"], "ts": [ts[90], ts[120], ts[5], ts[0]],
                         "tag": [1, 2, 3, 4]})


@pytest.mark.parametrize("kind", KINDS)
def test_every_method_equals_the_library(served: tuple[Server, Store], kind: str) -> None:
    server, store = served
    b = store.bars("BBB")
    start, end = b["ts"][60], b["ts"][80]
    with Client(server.url) as fs:
        symbols = [*SYMBOLS, "NOPE"]
        assert fs.get_online(symbols, "daily_core") == store.get_online(symbols, "daily_core")
        _same(fs.get_online(symbols, "daily_core", output=kind), store.get_online(symbols, "daily_core", output=kind),
              kind)
        for symbol, as_of in [("AAA", b["ts"][100]), ("CCC", b["ts"][0])]:
            assert fs.get_features(symbol, as_of, "daily_core") == store.get_features(symbol, as_of, "daily_core")
        entities = from_polars(_entities(), kind)  # type: ignore[arg-type]
        _same(fs.get_historical(entities, "daily_core"), store.get_historical(entities, "daily_core"), kind)
        _same(fs.get_ohlcv("BBB", start, end, output=kind),
              from_polars(b.filter((pl.col("ts") >= start) & (pl.col("ts") <= end)), kind),  # type: ignore[arg-type]
              kind)
        names = ["sma_50", "rsi_14", "macd_12_26_9"]
        _same(fs.get_indicators("BBB", start, end, indicators=names, output=kind),
              store.get_indicators("BBB", names, start, end, output=kind), kind)  # type: ignore[arg-type]
        _same(fs.compute_feature("rsi", "BBB", start, end, parameters={"n": 21}, output=kind),
              store.compute_feature("rsi", "BBB", start, end, params={"n": 21}, output=kind),  # type: ignore[arg-type]
              kind)
        _same(fs.get_ohlcv("BBB", timeframe="1w", output=kind),
              from_polars(store.bars("BBB", timeframe="1w"), kind), kind)  # type: ignore[arg-type]
        _same(fs.get_indicators("BBB", indicators="sma_3", timeframe="1w", output=kind),
              store.get_indicators("BBB", "sma_3", timeframe="1w", output=kind), kind)  # type: ignore[arg-type]
    if kind == "polars":  # the calls without frames: once
        with Client(server.url) as fs:
            assert fs.get_available_indicators() == list_features()
            assert fs.get_indicator_metadata("macd") == feature_metadata("macd")
            got, want = fs.stats(), store.stats()
            assert {k: got[k] for k in ("feature_sets", "versions", "bars_live")} == {
                k: want[k] for k in ("feature_sets", "versions", "bars_live")}
            assert fs.metrics()["calls"]["stats"] == 1


def test_the_async_client_answers_what_the_sync_one_does(served: tuple[Server, Store]) -> None:
    server, store = served
    b = store.bars("CCC")
    start, end = b["ts"][100], b["ts"][110]

    async def main() -> list[Any]:
        async with AsyncClient(server.url) as fs:
            return list(await asyncio.gather(
                fs.get_online(SYMBOLS, ["daily_core:ret_5d", "daily_core:vol_20d"]),
                fs.get_features("CCC", b["ts"][120], "daily_core"),
                fs.get_historical(_entities().to_arrow(), "daily_core"),
                fs.get_ohlcv("CCC", start, end),
                fs.get_indicators("CCC", start, end, indicators="sma_20"),
                fs.compute_feature("ema", "CCC", start, parameters={"n": 5}),
                fs.get_indicator_metadata("rsi")))

    online, vec, hist, ohlcv, ind, comp, meta = asyncio.run(main())
    assert online == store.get_online(SYMBOLS, ["daily_core:ret_5d", "daily_core:vol_20d"])
    assert vec == store.get_features("CCC", b["ts"][120], "daily_core")
    assert hist.equals(store.get_historical(_entities().to_arrow(), "daily_core"))
    assert ohlcv.equals(b.filter((pl.col("ts") >= start) & (pl.col("ts") <= end)))
    assert ind.equals(store.get_indicators("CCC", "sma_20", start, end))
    assert comp.equals(store.compute_feature("ema", "CCC", start, params={"n": 5}))
    assert meta == feature_metadata("rsi")


def _online_requests(url: str) -> float:
    import httpx

    return sum(float(x.rsplit(" ", 1)[1]) for x in httpx.get(url + "/metrics").text.splitlines()
               if x.startswith("pitstore_http_requests_total{") and 'endpoint="/v1/online"' in x)


@pytest.mark.parametrize("coalesce", [True, False])
def test_concurrent_online_calls_share_one_request(served: tuple[Server, Store], coalesce: bool) -> None:
    server, store = served
    asks = [[SYMBOLS[i % len(SYMBOLS)]] for i in range(50)] + [SYMBOLS[::-1], [SYMBOLS[0], SYMBOLS[0], "NOPE"]]

    async def main() -> tuple[list[Any], BaseException | None, list[BaseException | Any]]:
        async with AsyncClient(server.url, resilience=Resilience(coalesce=coalesce)) as fs:
            got = await asyncio.gather(*(fs.get_online(a, "daily_core") for a in asks))
            cancelled = None
            if coalesce:  # a call cancelled after joining a batch: the others still get their answer
                doomed = asyncio.ensure_future(fs.get_online(SYMBOLS[:1], "daily_core"))
                kept = asyncio.ensure_future(fs.get_online(SYMBOLS[1:2], "daily_core"))
                await asyncio.sleep(0)  # one loop turn (not a wait): both tasks run up to their shared request
                doomed.cancel()
                try:
                    await doomed
                except asyncio.CancelledError as exc:
                    cancelled = exc
                assert (await kept) == store.get_online(SYMBOLS[1:2], "daily_core")
            bad = await asyncio.gather(*(fs.get_online([s], "no_such_set") for s in SYMBOLS),
                                       return_exceptions=True)
            assert fs.metrics()["calls"]["get_online"] == len(asks) + 2 * coalesce + len(SYMBOLS)
            return got, cancelled, bad

    before = _online_requests(server.url)
    got, cancelled, bad = asyncio.run(main())
    assert got == [store.get_online(a, "daily_core") for a in asks]  # each call its own symbols, in its order
    assert (cancelled is not None) == coalesce
    assert all(isinstance(e, NotFoundError) for e in bad)  # the batch's error reaches every call
    made = _online_requests(server.url) - before
    assert made == (3 if coalesce else len(asks) + len(SYMBOLS))


def test_arguments_are_refused_before_any_request(served: tuple[Server, Store]) -> None:
    from datetime import datetime

    server, _ = served
    # Nothing listens here: any request would fail with BackendUnavailableError, not the error asked for.
    with Client(f"http://127.0.0.1:{free_port()}", resilience=Resilience(retries=0, timeout=1)) as dead:
        bad: list[tuple[Any, type[Exception]]] = [
            (lambda: dead.get_online([], "daily_core"), InvalidInputError),
            (lambda: dead.get_online(["AAA"], []), InvalidInputError),
            (lambda: dead.get_online(["A\x07B"], "daily_core"), InvalidInputError),
            (lambda: dead.get_online(["AAA"], "daily_core", output="excel"), InvalidInputError),
            (lambda: dead.get_features("AAA", datetime(2024, 1, 2), "daily_core"), InvalidInputError),  # naive
            (lambda: dead.get_features("AAA", "yesterday", "daily_core"), InvalidInputError),
            (lambda: dead.get_ohlcv("AAA", "2024-01-02T00:00:00"), InvalidInputError),
            (lambda: dead.get_historical(pl.DataFrame({"symbol": ["AAA"]}), "daily_core"), InvalidInputError),
            (lambda: dead.get_historical([1, 2], "daily_core"), InvalidInputError),
            (lambda: dead.get_indicators("AAA", indicators=[]), InvalidInputError),
            (lambda: dead.compute_feature("rsi", "AAA", parameters=[1]), InvalidInputError),  # type: ignore[arg-type]
            (lambda: dead.push(pl.DataFrame({"x": [1]})), InvalidInputError),
        ]
        for call, error in bad:
            with pytest.raises(error):
                call()
        assert dead.metrics()["calls"] == {}
    with Client(server.url) as fs, pytest.raises(InvalidInputError):
        fs.get_indicators("AAA", indicators="sma_x")  # before the catalogue is known, the service refuses it ...
    with Client(server.url) as fs:
        fs.get_available_indicators()
        before = fs.metrics()["calls"]
        with pytest.raises(InvalidInputError, match="sma_x"):  # ... then refused without a request
            fs.get_indicators("AAA", indicators=["sma_50", "sma_x"])
        with pytest.raises(NotFoundError, match="no_such"):
            fs.compute_feature("no_such", "AAA")
        with pytest.raises(NotFoundError):
            fs.get_indicator_metadata("no_such")
        assert fs.compute_feature("talib.RSI", "AAA").height == 150  # TA-Lib names pass
        assert fs.metrics()["calls"] == {**before, "compute_feature": 1}


def test_service_errors_come_back_as_the_library_classes(served: tuple[Server, Store]) -> None:
    server, _ = served
    with Client(server.url) as fs:
        cases: list[tuple[Any, type[Exception]]] = [
            (lambda: fs.get_online(["AAA"], "no_such_set"), FeatureSetNotFoundError),
            (lambda: fs.get_online(["AAA"], "daily_core@9"), VersionNotFoundError),
            (lambda: fs.get_ohlcv("NOPE"), NotFoundError),
            (lambda: fs.compute_feature("rsi", "BBB", parameters={"n": 0}), DefinitionError),
            (lambda: fs.get_indicators("BBB", indicators="sma_x"), InvalidInputError),
        ]
        for call, error in cases:
            with pytest.raises(error) as info:
                call()
            assert any("request id" in n for n in info.value.__notes__)
        m = fs.metrics()
        assert m["errors"] == {"FeatureSetNotFoundError": 1, "VersionNotFoundError": 1, "NotFoundError": 1,
                               "DefinitionError": 1, "InvalidInputError": 1}
        assert m["retries"] == {} and m["breaker"]["state"] == "closed"  # 4xx: never retried, the service is up


def test_push_with_keys_by_scope(tmp_path: Path) -> None:
    from datetime import UTC, datetime, timedelta

    from pitstore.testing import synthetic_bars

    root = tmp_path / "live"
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    all_bars = synthetic_bars(2, 160, start=today - timedelta(days=159), seed=5)
    cut = all_bars["ts"].unique().sort()[-1]
    with Store.open(root) as store:
        store.ingest(all_bars.filter(pl.col("ts") < cut))
        store.backfill(standard_features())
    read = run_cli(["keys", "create", "--scope", "read", "--root", str(root)]).stdout.strip()
    write = run_cli(["keys", "create", "--scope", "write", "--root", str(root)]).stdout.strip()
    server = Server(root)
    try:
        last = all_bars.filter(pl.col("ts") == cut)
        with Client(server.url, api_key=read) as fs:
            with pytest.raises(ConfigError, match="scope"):  # 403: the key's scope is a setting to fix
                fs.push(last)
            assert fs.metrics()["retries"] == {}
        with Client(server.url) as anonymous, pytest.raises(ConfigError, match="API key"):
            anonymous.stats()
        with Client(server.url, api_key=write) as fs:
            report = fs.push(last.to_pandas())
            assert report.bars == 2 and report.duplicates == 0
            rows = report.rows["daily_core@1"]
            online = fs.get_online(["S0000", "S0001"], "daily_core")
            assert [v.ts for v in online] == [cut, cut] and [v.status for v in online] == ["ok", "ok"]
            assert [v.values["ret_5d"] for v in online] == rows.sort("symbol")["ret_5d"].to_list()
            assert rows["ts"].to_list() == [cut, cut]
    finally:
        code, out = server.stop()
    assert code in (0, -signal.SIGTERM), out


def test_metrics_as_a_dict_and_for_prometheus(served: tuple[Server, Store]) -> None:
    import json

    from prometheus_client import CollectorRegistry, generate_latest

    from pitstore.client import FeatureCache

    server, _ = served
    with Client(server.url, cache=FeatureCache(), feature_ttls={"daily_core": 3600 * 24 * 4}) as fs:
        for _ in range(3):
            fs.get_online(["AAA"], "daily_core")
        with pytest.raises(NotFoundError):
            fs.get_ohlcv("NOPE")
        m = fs.metrics()
        json.dumps(m)  # plain values
        assert m["calls"] == {"get_online": 3, "get_ohlcv": 1} and m["errors"] == {"NotFoundError": 1}
        assert m["latency"]["get_online"]["count"] == 3 and sum(m["latency"]["get_online"]["buckets"].values()) == 3
        assert (m["cache"]["hits"], m["cache"]["misses"]) == (2, 1)
        registry = CollectorRegistry()
        registry.register(fs.metrics_collector())
        text = generate_latest(registry).decode()
    assert 'pitstore_client_calls_total{method="get_online"} 3.0' in text
    assert 'pitstore_client_errors_total{type="NotFoundError"} 1.0' in text
    assert 'pitstore_client_latency_seconds_count{method="get_online"} 3.0' in text
    assert "pitstore_client_cache_hit_rate 0.666" in text and "pitstore_client_breaker_open 0.0" in text

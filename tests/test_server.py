"""The HTTP service against a real `pitstore serve` process on loopback: every endpoint answers what the Store
answers for the same call (JSON and Arrow), errors are typed and never 5xx, keys are enforced by scope."""

from __future__ import annotations

import io
import json
import signal
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import polars as pl
import pyarrow as pa
import pytest
from server_proc import Server, run_cli

from pitstore import Store, standard_features
from pitstore.testing import synthetic_bars

ARROW = "application/vnd.apache.arrow.stream"
SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]
N_BARS = 150


def _bars() -> pl.DataFrame:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    bars = synthetic_bars(len(SYMBOLS), N_BARS, start=today - timedelta(days=N_BARS - 1), seed=3)
    names = {f"S{i:04d}": s for i, s in enumerate(SYMBOLS)}
    return bars.with_columns(pl.col("symbol").replace(names))


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("served")
    with Store.open(root) as store:
        store.ingest(_bars())
        fs = standard_features()
        store.backfill(fs)
        store.materialize(fs, SYMBOLS[:2])  # the others are filled from the offline tier on first read
    return root


@pytest.fixture(scope="module", params=["sqlite://", "memory://", "redis"])
def served(request: pytest.FixtureRequest, root: Path, redis_url: str) -> Iterator[tuple[Server, Store]]:
    online = redis_url if request.param == "redis" else request.param
    server = Server(root, "--online-url", online)
    store = Store.open(root, online_url=online)
    try:
        yield server, store
    finally:
        store.close()
        code, out = server.stop()
        assert code in (0, -signal.SIGTERM), out


def _arrow(resp: httpx.Response) -> pl.DataFrame:
    assert resp.status_code == 200, resp.text
    assert resp.headers["content-type"] == ARROW
    return pl.from_arrow(pa.ipc.open_stream(resp.content).read_all())  # type: ignore[return-value]


def _vec(v: object) -> dict[str, object]:
    return {"symbol": v.symbol, "ts": None if v.ts is None else v.ts.isoformat(),  # type: ignore[attr-defined]
            "status": v.status, "values": v.values}  # type: ignore[attr-defined]


def test_online_equals_the_store_in_json_and_arrow(served: tuple[Server, Store]) -> None:
    server, store = served
    symbols = [*SYMBOLS, "NOPE"]
    want = [_vec(v) for v in store.get_online(symbols, "daily_core")]
    got = httpx.get(f"{server.url}/v1/online", params={"symbols": ",".join(symbols), "features": "daily_core"})
    assert got.status_code == 200, got.text
    assert got.json()["rows"] == want
    assert {r["status"] for r in want} >= {"unknown_symbol"} and any(r["status"] in ("ok", "stale") for r in want)
    posted = httpx.post(f"{server.url}/v1/online", json={"symbols": symbols, "features": ["daily_core"]})
    assert posted.json()["rows"] == want
    arrow = _arrow(httpx.get(f"{server.url}/v1/online", headers={"Accept": ARROW},
                             params={"symbols": ",".join(symbols), "features": "daily_core"}))
    assert arrow.equals(store.get_online(symbols, "daily_core", output="polars"))


def test_point_in_time_lookups_equal_the_store(served: tuple[Server, Store]) -> None:
    server, store = served
    bars = _bars()
    for symbol, as_of in [("AAA", bars["ts"][100]), ("CCC", bars["ts"][-1] + timedelta(hours=1)),
                          ("BBB", bars["ts"][0] - timedelta(days=1))]:
        want = _vec(store.get_features(symbol, as_of, "daily_core"))
        got = httpx.get(f"{server.url}/v1/features/{symbol}",
                        params={"as_of": as_of.isoformat(), "features": "daily_core"})
        assert got.status_code == 200, got.text
        assert got.json() == want
    entities = pl.DataFrame({"symbol": ["BBB", "AAA", "ZZZ", "AAA"],
                             "ts": [bars["ts"][90], bars["ts"][120], bars["ts"][5], bars["ts"][0]],
                             "tag": [1, 2, 3, 4]})
    want_df = store.get_historical(entities, "daily_core")
    as_json = httpx.post(f"{server.url}/v1/historical", json={
        "entities": [{"symbol": s, "ts": t.isoformat(), "tag": g} for s, t, g in entities.iter_rows()],
        "features": "daily_core"})
    assert as_json.status_code == 200, as_json.text
    assert pl.DataFrame(as_json.json()).select("symbol", "tag", "status").equals(want_df.select("symbol", "tag",
                                                                                                  "status"))
    assert [r["ret_5d"] for r in as_json.json()] == want_df["ret_5d"].to_list()
    sink = io.BytesIO()
    table = entities.to_arrow()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    got_arrow = _arrow(httpx.post(f"{server.url}/v1/historical", params={"features": "daily_core"},
                                  content=sink.getvalue(), headers={"Content-Type": ARROW, "Accept": ARROW}))
    assert got_arrow.equals(want_df)
    parquet = io.BytesIO()
    entities.write_parquet(parquet)
    got_parquet = _arrow(httpx.post(f"{server.url}/v1/historical", params={"features": "daily_core"},
                                    content=parquet.getvalue(),
                                    headers={"Content-Type": "application/vnd.apache.parquet", "Accept": ARROW}))
    assert got_parquet.equals(want_df)


def test_bars_catalogue_sets_and_stats(served: tuple[Server, Store]) -> None:
    server, store = served
    bars = store.bars("DDD")
    start, end = bars["ts"][10], bars["ts"][20]
    got = _arrow(httpx.get(f"{server.url}/v1/bars/DDD", headers={"Accept": ARROW},
                           params={"start": start.isoformat(), "end": end.isoformat()}))
    assert got.equals(bars.filter((pl.col("ts") >= start) & (pl.col("ts") <= end)))
    assert got.height == 11
    as_json = httpx.get(f"{server.url}/v1/bars/DDD").json()
    assert len(as_json) == N_BARS and as_json[-1]["close"] == bars["close"][-1]
    catalog = httpx.get(f"{server.url}/v1/catalog").json()["features"]
    assert {"rsi", "macd", "talib.RSI"} <= {f["name"] for f in catalog}
    assert httpx.get(f"{server.url}/v1/catalog/macd").json()["outputs"] == [
        "macd_12_26_9", "macd_12_26_9_signal", "macd_12_26_9_hist"]
    sets = httpx.get(f"{server.url}/v1/feature-sets").json()["feature_sets"]
    assert [(s["name"], s["version"]) for s in sets] == [("daily_core", 1)]
    versions = httpx.get(f"{server.url}/v1/feature-sets/daily_core/versions").json()["versions"]
    summary = store.versions("daily_core")[0]
    assert versions[0]["fingerprint"] == summary.fingerprint
    assert (versions[0]["symbols"], versions[0]["rows"], versions[0]["bytes"]) == (
        len(SYMBOLS), summary.rows, summary.bytes) and summary.rows == len(SYMBOLS) * N_BARS
    stats = httpx.get(f"{server.url}/v1/stats").json()
    assert stats["feature_sets"] == ["daily_core"]
    assert stats["bars_live"] == store.stats()["bars_live"] == len(SYMBOLS) * N_BARS


BAD_REQUESTS = [
    # (method, path, kwargs, status, error type)
    ("GET", "/v1/features/AAA", {"params": {"as_of": "2024-01-02T00:00:00", "features": "daily_core"}}, 422,
     "InvalidInputError"),  # naive time
    ("GET", "/v1/features/AAA", {"params": {"as_of": "yesterday", "features": "daily_core"}}, 422,
     "InvalidInputError"),
    ("GET", "/v1/features/AAA", {"params": {"features": "daily_core"}}, 422, "InvalidInputError"),  # no as_of
    ("GET", "/v1/online", {"params": {"symbols": "AAA", "features": "no_such_set"}}, 404, "FeatureSetNotFoundError"),
    ("GET", "/v1/online", {"params": {"symbols": "AAA", "features": "daily_core@9"}}, 404, "VersionNotFoundError"),
    ("GET", "/v1/online", {"params": {"symbols": "A\x07B", "features": "daily_core"}}, 422, "InvalidInputError"),
    ("GET", "/v1/online", {"params": {"symbols": ",,", "features": "daily_core"}}, 422, "InvalidInputError"),
    ("GET", "/v1/online", {"params": {"symbols": ",".join(f"S{i}" for i in range(1001)), "features": "daily_core"}},
     422, "InvalidInputError"),  # over the per-request bound
    ("GET", "/v1/online", {"params": {"features": "daily_core"}}, 422, "InvalidInputError"),
    ("POST", "/v1/online", {"content": b"{not json", "headers": {"Content-Type": "application/json"}}, 422,
     "InvalidInputError"),
    ("POST", "/v1/online", {"content": b"symbols=AAA", "headers": {"Content-Type": "text/plain"}}, 422,
     "InvalidInputError"),  # wrong content type
    ("POST", "/v1/online", {"json": [1, 2]}, 422, "InvalidInputError"),
    ("GET", "/v1/bars/..%2F..%2Fetc%2Fpasswd", {}, 404, "NotFoundError"),  # path traversal: just a symbol
    ("GET", "/v1/bars/NOPE", {}, 404, "NotFoundError"),
    ("GET", "/v1/bars/AAA", {"params": {"start": "2024-13-45T00:00:00Z"}}, 422, "InvalidInputError"),
    ("POST", "/v1/historical", {"json": {"entities": [{"symbol": "AAA", "ts": "2024-01-02"}],
                                          "features": "daily_core"}}, 422, "InvalidInputError"),
    ("POST", "/v1/historical", {"json": {"entities": [], "features": "daily_core"}}, 422, "InvalidInputError"),
    ("POST", "/v1/historical", {"json": {"entities": [{"symbol": "AAA", "ts": "2024-01-02T00:00:00Z",
                                                         "status": "mine"}], "features": "daily_core"}}, 422,
     "InvalidInputError"),  # would overwrite a user column
    ("POST", "/v1/historical", {"content": b"\x00garbage", "params": {"features": "daily_core"},
                                "headers": {"Content-Type": ARROW}}, 422, "InvalidInputError"),
    ("POST", "/v1/historical", {"content": b"x" * (2 * 1024 * 1024),
                                "headers": {"Content-Type": ARROW}}, 413, "PayloadTooLarge"),
    ("GET", "/v1/catalog/no_such_feature", {}, 404, "NotFoundError"),
    ("GET", "/v1/catalog", {"params": {"kind": "weird"}}, 422, "InvalidInputError"),
    ("GET", "/v1/feature-sets/nope/versions", {}, 404, "FeatureSetNotFoundError"),
    ("GET", "/v1/nothing-here", {}, 404, "NotFoundError"),
    ("DELETE", "/v1/online", {}, 405, "MethodNotAllowed"),
]


@pytest.fixture(scope="module")
def small_body_server(root: Path) -> Iterator[Server]:
    server = Server(root, env={"PITSTORE_MAX_BODY_BYTES": str(1024 * 1024)})
    yield server
    server.stop()


@pytest.mark.parametrize(("method", "path", "kwargs", "status", "kind"), BAD_REQUESTS,
                         ids=[f"{m} {p[:30]} {s}" for m, p, _, s, _ in BAD_REQUESTS])
def test_bad_requests_get_their_documented_status(small_body_server: Server, root: Path, method: str, path: str,
                                                  kwargs: dict[str, object], status: int, kind: str) -> None:
    before = sorted((p.name, p.stat().st_size) for p in root.rglob("*.parquet"))
    resp = httpx.request(method, small_body_server.url + path, **kwargs)  # type: ignore[arg-type]
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert body["error"] == kind, body
    assert body["request_id"] == resp.headers["x-request-id"]
    assert "Traceback" not in resp.text and body["message"]
    assert sorted((p.name, p.stat().st_size) for p in root.rglob("*.parquet")) == before


def test_every_response_has_a_request_id_and_metrics_count_requests(small_body_server: Server) -> None:
    url = small_body_server.url
    mine = httpx.get(url + "/healthz", headers={"X-Request-ID": "abc-123"})
    assert mine.headers["x-request-id"] == "abc-123"
    for _ in range(3):
        r = httpx.get(url + "/v1/online", params={"symbols": "AAA", "features": "daily_core"})
        assert r.status_code == 200 and len(r.headers["x-request-id"]) == 32
    text = httpx.get(url + "/metrics").text
    line = next(x for x in text.splitlines()
                if x.startswith("pitstore_http_requests_total{") and 'endpoint="/v1/online"' in x
                and 'status="200"' in x)
    assert float(line.rsplit(" ", 1)[1]) >= 3
    assert "pitstore_cache_hits" in text and "pitstore_online_reads_total" in text
    ready = httpx.get(url + "/readyz")
    assert ready.status_code == 200 and ready.json()["tiers"]["catalog"]["up"] is True


@pytest.mark.slow  # starts its own keyed `pitstore serve` process
def test_api_keys_are_enforced_by_scope(tmp_path: Path, root: Path) -> None:
    # A copy of the catalog is not needed: keys live in their own file; use a fresh small store.
    store_root = tmp_path / "keyed"
    with Store.open(store_root) as store:
        store.ingest(_bars().filter(pl.col("symbol") == "AAA"))
        store.backfill(standard_features())
    read = run_cli(["keys", "create", "--scope", "read", "--root", str(store_root)])
    admin = run_cli(["keys", "create", "--scope", "admin", "--name", "ops", "--root", str(store_root)])
    assert read.returncode == 0 and admin.returncode == 0, read.stderr + admin.stderr
    read_key, admin_key = read.stdout.strip(), admin.stdout.strip()
    stored = json.loads((store_root / "api_keys.json").read_text())
    assert read_key not in json.dumps(stored) and len(stored) == 2
    server = Server(store_root)
    try:
        q = {"symbols": "AAA", "features": "daily_core"}
        url = server.url + "/v1/online"
        assert httpx.get(url, params=q).status_code == 401
        assert httpx.get(url, params=q, headers={"Authorization": "Bearer " + read_key[:-1] + "x"}).status_code == 401
        assert httpx.get(url, params=q, headers={"X-API-Key": "psk_" + "A" * 43}).status_code == 401
        assert httpx.get(url, params=q, headers={"Authorization": "Bearer " + read_key}).status_code == 200
        assert httpx.get(url, params=q, headers={"X-API-Key": admin_key}).status_code == 200
        denied = httpx.post(server.url + "/v1/invalidate", json={}, headers={"X-API-Key": read_key})
        assert denied.status_code == 403 and denied.json()["error"] == "Forbidden"
        assert httpx.get(server.url + "/healthz").status_code == 200  # no key needed
    finally:
        code, out = server.stop()
    assert code in (0, -signal.SIGTERM), out


@pytest.mark.slow  # server processes and a SIGTERM
def test_no_keys_refuses_a_public_address_and_sigterm_is_graceful(root: Path) -> None:
    refused = run_cli(["serve", "--root", str(root), "--host", "0.0.0.0", "--port", "1"])
    assert refused.returncode != 0 and "without API keys" in refused.stderr + refused.stdout
    server = Server(root, "--log-level", "info")
    assert httpx.get(server.url + "/v1/stats").status_code == 200
    code, out = server.stop(signal.SIGTERM)
    # uvicorn shuts down (lifespan: the store is closed, pushed rows flushed), then re-raises the signal.
    assert code in (0, -signal.SIGTERM), out
    assert "Application shutdown complete" in out and "Traceback" not in out


def test_indicators_and_compute_are_computed_once_through_the_cache(served: tuple[Server, Store]) -> None:
    server, store = served
    bars = store.bars("BBB")
    start, end = bars["ts"][60], bars["ts"][80]
    q = {"indicators": "sma_50,rsi_14,macd_12_26_9", "start": start.isoformat(), "end": end.isoformat()}
    before = store.cache.stats()
    first = _arrow(httpx.get(f"{server.url}/v1/indicators/BBB", params=q, headers={"Accept": ARROW}))
    again = httpx.get(f"{server.url}/v1/indicators/BBB", params=q)
    after = store.cache.stats()
    want = store.get_indicators("BBB", ["sma_50", "rsi_14", "macd_12_26_9"], start, end)
    assert first.equals(want) and first.height == 21
    assert first.columns == ["ts", "sma_50", "rsi_14", "macd_12_26_9", "macd_12_26_9_signal", "macd_12_26_9_hist"]
    assert [r["rsi_14"] for r in again.json()] == want["rsi_14"].to_list()
    # The three requests (two over HTTP, one here) computed once: later ones are cache hits.
    assert after["misses"] - before["misses"] <= 1 and store.cache.stats()["hits"] - before["hits"] >= 2
    computed = httpx.post(f"{server.url}/v1/compute", json={"feature": "rsi", "params": {"n": 21}, "symbol": "BBB",
                                                           "start": start.isoformat()})
    assert computed.status_code == 200, computed.text
    assert [r["rsi_21"] for r in computed.json()] == store.compute_feature(
        "rsi", "BBB", start, params={"n": 21})["rsi_21"].to_list()
    bad = httpx.post(f"{server.url}/v1/compute", json={"feature": "rsi", "params": {"n": 0}, "symbol": "BBB"})
    assert bad.status_code == 422 and bad.json()["error"] == "DefinitionError"
    unknown = httpx.get(f"{server.url}/v1/indicators/BBB", params={"indicators": "sma_x"})
    assert unknown.status_code == 422 and "indicators" in unknown.json()["message"]


def _push_store(root: Path, n_later: int) -> pl.DataFrame:
    """A store of daily bars up to today whose last ``n_later`` bars per symbol are left out (returned): they
    arrive by push."""
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    bars = synthetic_bars(2, 160, start=today - timedelta(days=159), seed=5)
    cut = bars["ts"].unique().sort()[-n_later]
    with Store.open(root) as store:
        store.ingest(bars.filter(pl.col("ts") < cut))
        store.backfill(standard_features())
    return bars.filter(pl.col("ts") >= cut)


def _bar_json(row: dict[str, object]) -> dict[str, object]:
    return {**row, "ts": row["ts"].isoformat()}  # type: ignore[attr-defined]


@pytest.mark.slow  # its own keyed server process
def test_push_and_invalidate_with_scopes(tmp_path: Path) -> None:
    root = tmp_path / "live"
    later = _push_store(root, 2)
    write = run_cli(["keys", "create", "--scope", "write", "--root", str(root)]).stdout.strip()
    admin = run_cli(["keys", "create", "--scope", "admin", "--root", str(root)]).stdout.strip()
    server = Server(root)
    try:
        first = later.filter(pl.col("ts") == later["ts"].min())
        denied = httpx.post(server.url + "/v1/invalidate", json={}, headers={"X-API-Key": write})
        assert denied.status_code == 403
        resp = httpx.post(server.url + "/v1/push", headers={"X-API-Key": write},
                          json={"bars": [_bar_json(r) for r in first.iter_rows(named=True)]})
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert body["bars"] == 2 and len(body["rows"]["daily_core@1"]) == 2
        online = httpx.get(server.url + "/v1/online", params={"symbols": "S0000", "features": "daily_core"},
                           headers={"X-API-Key": write}).json()["rows"][0]
        assert online["ts"] == first["ts"][0].isoformat() and online["status"] == "ok"
        pushed_ret = next(r["ret_5d"] for r in body["rows"]["daily_core@1"] if r["symbol"] == "S0000")
        assert online["values"]["ret_5d"] == pushed_ret
        dropped = httpx.post(server.url + "/v1/invalidate", json={"feature_set": "daily_core", "symbols": ["S0000"]},
                             headers={"Authorization": f"Bearer {admin}"})
        assert dropped.status_code == 200 and dropped.json()["online_rows"] == 1
    finally:
        code, out = server.stop()
    assert code in (0, -signal.SIGTERM), out
    with Store.open(root) as store:  # the pushed bars were flushed at shutdown
        assert store.bars("S0000")["ts"][-1] == first["ts"][0]


@pytest.mark.slow  # its own server process and a SIGTERM
def test_sigterm_during_a_push_stream_loses_no_acknowledged_bar(tmp_path: Path) -> None:
    import threading

    root = tmp_path / "stream"
    later = _push_store(root, 12)
    server = Server(root)
    acked: list[datetime] = []
    some_acked = threading.Event()

    def feed() -> None:
        with httpx.Client(base_url=server.url, timeout=10) as client:
            for ts in later["ts"].unique().sort():
                rows = later.filter(pl.col("ts") == ts)
                try:
                    r = client.post("/v1/push", json={"bars": [_bar_json(x) for x in rows.iter_rows(named=True)]})
                except httpx.TransportError:
                    return
                if r.status_code != 200:
                    return
                acked.append(ts)
                if len(acked) == 4:
                    some_acked.set()

    feeder = threading.Thread(target=feed)
    feeder.start()
    assert some_acked.wait(60)
    code, out = server.stop(signal.SIGTERM)
    feeder.join(60)
    assert code in (0, -signal.SIGTERM), out
    assert len(acked) >= 4
    with Store.open(root) as store:
        for symbol in ("S0000", "S0001"):
            stored = set(store.bars(symbol)["ts"].to_list())
            assert set(acked) <= stored, sorted(set(acked) - stored)


def test_two_workers_report_one_set_of_metrics(root: Path, tmp_path: Path) -> None:
    shared = tmp_path / "metrics"
    shared.mkdir()
    server = Server(root, "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(shared)})
    try:
        from concurrent.futures import ThreadPoolExecutor

        def one(_: int) -> int:
            return httpx.get(server.url + "/v1/online", params={"symbols": "AAA", "features": "daily_core"}).status_code

        sent = 0
        with ThreadPoolExecutor(8) as pool:
            # New connections from 8 threads at once: the kernel hands them to both workers. Until each worker
            # has answered some (one counter file per process), bounded.
            while len(list(shared.glob("counter_*.db"))) < 2 and sent < 4000:
                assert set(pool.map(one, range(200))) == {200}
                sent += 200
        assert len(list(shared.glob("counter_*.db"))) == 2
        with httpx.Client(base_url=server.url) as c:
            total = 0.0
            for line in c.get("/metrics").text.splitlines():
                if line.startswith("pitstore_http_requests_total{") and 'endpoint="/v1/online"' in line:
                    total += float(line.rsplit(" ", 1)[1])
            assert total == sent  # the sum over both workers, whichever answered the scrape
            refused = c.post("/v1/push", json={"bars": [{"symbol": "AAA", "ts": "2030-01-01T00:00:00Z"}]})
            assert refused.status_code == 409 and "single worker" in refused.json()["message"]
    finally:
        code, out = server.stop()
    assert code in (0, -signal.SIGTERM), out


def _metric(text: str, name: str) -> float:
    return float(next(x for x in text.splitlines() if x.startswith(name + " ")).split(" ")[1])


@pytest.mark.slow  # its own server process
def test_costs_and_freshness_in_metrics_and_the_miss_log(root: Path, caplog: pytest.LogCaptureFixture) -> None:
    rates = {"PITSTORE_COST_PER_COMPUTE_SECOND": "2.5", "PITSTORE_COST_PER_DATA_CALL": "0.01"}
    server = Server(root, env=rates)
    try:
        q = {"indicators": "ema_33,zscore_7"}  # asked nowhere else: one miss, then a hit
        assert httpx.get(f"{server.url}/v1/indicators/CCC", params=q).status_code == 200
        assert httpx.get(f"{server.url}/v1/indicators/CCC", params=q).status_code == 200
        text = httpx.get(server.url + "/metrics").text
        with Store.open(root, cost_per_compute_second=2.5, cost_per_data_call=0.01) as store:
            stats = store.cache.stats()
            assert stats["misses"] >= 1 and stats["hits"] >= 1
            spent = stats["misses"] * 0.01 + stats["compute_seconds"] * 2.5
            avoided = stats["hits"] * 0.01 + stats["saved_seconds"] * 2.5
            assert stats["cost"]["spent"] == pytest.approx(spent) and stats["cost"]["avoided"] == pytest.approx(avoided)
            assert _metric(text, "pitstore_cost_spent_total") == pytest.approx(spent)
            assert _metric(text, "pitstore_cost_avoided_total") == pytest.approx(avoided)
            assert _metric(text, "pitstore_cost_per_query") == pytest.approx(spent / (stats["hits"] + stats["misses"]))
            newest = store.newest_rows()["daily_core@1"]
            age = float(next(x for x in text.splitlines() if x.startswith('pitstore_feature_age_seconds{'))
                        .rsplit(" ", 1)[1])
            assert age == pytest.approx(time.time() - newest / 1e6, abs=60)
            # A batch job's miss is logged with its cost, as one structured line.
            with caplog.at_level("INFO", logger="pitstore.cache"):
                store.get_indicators("DDD", ["ema_34"])
            miss = next(r for r in caplog.records if getattr(r, "event", None) == "cache_miss")
            assert miss.symbol == "DDD"  # type: ignore[attr-defined]
            assert miss.cost == pytest.approx(0.01 + miss.compute_seconds * 2.5)  # type: ignore[attr-defined]
    finally:
        server.stop()


def test_symbols_with_a_slash_and_serving_rules_in_listings(tmp_path: Path) -> None:
    root = tmp_path / "fx"
    bars = _bars().filter(pl.col("symbol") == "AAA").with_columns(pl.lit("EUR/USD").alias("symbol"))
    with Store.open(root) as store:
        store.ingest(bars)
        store.backfill(standard_features())
        as_of = bars["ts"][-3]
        want = _vec(store.get_features("EUR/USD", as_of, "daily_core"))
    server = Server(root)
    try:
        got = httpx.get(f"{server.url}/v1/features/EUR%2FUSD", params={"as_of": as_of.isoformat(),
                                                                        "features": "daily_core"})
        assert got.status_code == 200, got.text
        assert got.json() == want and want["status"] == "ok"
        assert len(httpx.get(f"{server.url}/v1/bars/EUR/USD").json()) == N_BARS
        sets = httpx.get(f"{server.url}/v1/feature-sets").json()["feature_sets"]
        assert sets[0]["online_ttl_seconds"] == 4 * 86400 and sets[0]["availability_lag_seconds"] == 0
        assert sets[0]["timeframe"] == "1d"
    finally:
        server.stop()


def test_bars_indicators_and_compute_on_a_coarser_timeframe(served: tuple[Server, Store]) -> None:
    server, store = served
    want = store.bars("AAA", timeframe="1w")
    assert want.height < N_BARS
    got = _arrow(httpx.get(f"{server.url}/v1/bars/AAA", params={"timeframe": "1w"}, headers={"Accept": ARROW}))
    assert got.equals(want)
    rows = httpx.get(f"{server.url}/v1/bars/AAA", params={"timeframe": "1w"}).json()
    assert [r["close"] for r in rows] == want["close"].to_list()
    ind = _arrow(httpx.get(f"{server.url}/v1/indicators/AAA", headers={"Accept": ARROW},
                           params={"indicators": "sma_3", "timeframe": "1w"}))
    assert ind.equals(store.get_indicators("AAA", ["sma_3"], timeframe="1w"))
    comp = _arrow(httpx.post(f"{server.url}/v1/compute", headers={"Accept": ARROW},
                             json={"feature": "sma", "params": {"n": 3}, "symbol": "AAA", "timeframe": "1w"}))
    assert comp.equals(ind)
    for bad in ("1h", "weekly"):  # finer than the stored daily bars; not a timeframe
        r = httpx.get(f"{server.url}/v1/bars/AAA", params={"timeframe": bad})
        assert r.status_code == 422 and r.json()["error"] == "InvalidInputError", r.text


def test_a_large_historical_read_does_not_hold_up_online_answers(root: Path) -> None:
    """The heavy reads run in a worker thread: while one computes, the event loop goes on answering
    GET /v1/online. On the loop itself, an online request sent meanwhile would wait for all of it."""
    bars = _bars()
    n = 600_000
    entities = pl.DataFrame({"symbol": [SYMBOLS[i % len(SYMBOLS)] for i in range(n)],
                             "ts": bars["ts"].gather([i % N_BARS for i in range(n)])})
    sink = io.BytesIO()
    table = entities.to_arrow()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    body = sink.getvalue()
    server = Server(root)
    try:
        with httpx.Client(base_url=server.url, timeout=120) as client:
            online = {"symbols": "AAA", "features": "daily_core"}
            assert client.get("/v1/online", params=online).status_code == 200
            done: dict[str, float] = {}

            def historical() -> None:
                started = time.perf_counter()
                r = httpx.post(f"{server.url}/v1/historical", params={"features": "daily_core"}, content=body,
                               headers={"Content-Type": ARROW, "Accept": ARROW}, timeout=120)
                assert r.status_code == 200, r.text
                done["seconds"] = time.perf_counter() - started

            thread = threading.Thread(target=historical)
            thread.start()
            waits = []
            while thread.is_alive():
                t0 = time.perf_counter()
                assert client.get("/v1/online", params=online).status_code == 200
                waits.append(time.perf_counter() - t0)
            thread.join()
        assert "seconds" in done
        # Every online answer came in a small part of the historical's time, none waited for the rest of it.
        assert len(waits) >= 10, (len(waits), done)
        assert max(waits) < done["seconds"] / 4, (max(waits), done)
    finally:
        server.stop()

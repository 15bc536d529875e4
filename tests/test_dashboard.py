"""The dashboard in a real headless Chromium (Debian's chromium + chromedriver, driven by selenium) against a real
`pitstore serve` under load with a killed Redis: the tiles show what /metrics and /v1/stats report, the charts
draw and gain points, the stopped tier shows as down, the console stays clean. Also: the Grafana dashboard names
only metrics a live /metrics exports, the feed needs a key when keys are configured, and the series arithmetic.

The browser test is skipped when no browser is installed (``make test`` installs one: scripts/install-browser.sh),
and fails under CI=true. ``PITSTORE_DASHBOARD_SCREENSHOT=docs/dashboard.png`` saves a screenshot of the page.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import polars as pl
import pytest
from server_proc import Server
from servers import RedisServer

from pitstore import Store, standard_features
from pitstore.server.auth import hash_key
from pitstore.server.series import MONITORING, Ring, Sample, between, quantile
from pitstore.testing import synthetic_bars

REPO = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("PITSTORE_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("PITSTORE_CHROMEDRIVER", "/usr/bin/chromedriver")
SYMBOLS = ["AAA", "BBB", "CCC", "DDD"]
RATES = {"PITSTORE_COST_PER_COMPUTE_SECOND": "2.5", "PITSTORE_COST_PER_DATA_CALL": "0.01"}
TIMEOUT = 15.0


def _store(root: Path, **urls: str) -> None:
    today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
    bars = synthetic_bars(len(SYMBOLS), 120, start=today - timedelta(days=119), seed=5)
    bars = bars.with_columns(pl.col("symbol").replace({f"S{i:04d}": s for i, s in enumerate(SYMBOLS)}))
    with Store.open(root, **urls) as store:
        store.ingest(bars)
        store.backfill(standard_features())
        store.materialize(standard_features())


@pytest.fixture
def browser() -> Iterator[Any]:
    try:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service
    except ImportError as exc:
        _no_browser(f"selenium is not installed ({exc})")
    if not (shutil.which(CHROMIUM) and shutil.which(CHROMEDRIVER)):
        _no_browser(f"no {CHROMIUM} and {CHROMEDRIVER}: run scripts/install-browser.sh")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,900"):
        options.add_argument(arg)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    try:
        yield driver
    finally:
        driver.quit()


def _no_browser(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(why + " (CI=true: a missing browser is a failure)")
    pytest.skip(why)


def _wait(driver: Any, condition: Callable[[Any], Any], what: str) -> Any:
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, TIMEOUT, poll_frequency=0.05).until(condition, f"waiting for {what}")


def _scrape(url: str) -> dict[str, Any]:
    """The figures a tile must show, from /metrics and /v1/stats."""
    text = httpx.get(url + "/metrics").text
    stats = httpx.get(url + "/v1/stats").json()
    out: dict[str, Any] = {"requests": 0.0, "errors": {}, "online": {}, "age": {}}
    for line in text.splitlines():
        m = re.match(r'(\w+)\{(.*)\} (\S+)$', line)
        if m is None:
            continue
        name, labels, value = m[1], dict(re.findall(r'(\w+)="([^"]*)"', m[2])), float(m[3])
        if name == "pitstore_http_requests_total" and labels["endpoint"] not in MONITORING:
            out["requests"] += value
            if int(labels["status"]) >= 400:
                out["errors"][labels["status"]] = out["errors"].get(labels["status"], 0.0) + value
        elif name == "pitstore_online_reads_total" and labels["path"] == "online":
            out["online"][labels["status"]] = value
        elif name == "pitstore_feature_age_seconds":
            out["age"][labels["feature_set"]] = value
    out["stats"] = stats
    return out


def _value(driver: Any, css: str, attr: str = "value") -> float:
    # In one script, as _row: the element may be replaced between a find and a read.
    raw = driver.execute_script("const e = document.querySelector(arguments[0]);"
                                " return e ? e.getAttribute(arguments[1]) : null;", css, f"data-{attr}")
    assert raw is not None, f"no {css}"
    return float(raw)


def _row(driver: Any, css: str) -> dict[str, Any]:
    """One table row read in a single script (the page replaces its rows every update: element handles held
    across several WebDriver calls go stale): its data attributes, text and the data-value of its numbers."""
    row: dict[str, Any] = driver.execute_script(
        "const r = document.querySelector(arguments[0]); if (!r) return null;"
        " return {data: Object.assign({}, r.dataset), text: r.innerText,"
        " nums: Array.from(r.querySelectorAll('td.num')).map(td => td.dataset.value)};", css)
    assert row is not None, f"no row {css}"
    return row


def _points(driver: Any) -> dict[str, int]:
    got = driver.execute_script("return Array.from(document.querySelectorAll('svg.chart'))"
                                ".map(s => [s.dataset.chart, s.dataset.points]);")
    return {name: int(points) for name, points in got}


def test_dashboard_in_a_real_browser_shows_the_served_figures(browser: Any, tmp_path: Path) -> None:
    redis = RedisServer()
    redis.start()
    root = tmp_path / "store"
    _store(root, online_url=redis.url)
    server = Server(root, "--online-url", redis.url, env={"PITSTORE_DASHBOARD_INTERVAL": "0.5", **RATES})
    url = server.url
    try:
        with httpx.Client(base_url=url, timeout=30) as c:
            q = {"symbols": ",".join([*SYMBOLS, "NOPE"]), "features": "daily_core"}
            for _ in range(30):
                assert c.get("/v1/online", params=q).status_code == 200
            for ind in ("ema_33", "zscore_7", "ema_33"):  # two misses, one hit
                assert c.get("/v1/indicators/BBB", params={"indicators": ind}).status_code == 200
            assert c.get("/v1/features/AAA", params={"as_of": "nope", "features": "daily_core"}).status_code == 422
            assert c.get("/v1/no-such-thing").status_code == 404
            redis.kill()  # the online tier stops: reads fall back to the offline tier
            for _ in range(10):
                assert c.get("/v1/online", params=q).status_code == 200
        browser.get(url + "/dashboard")
        _wait(browser, lambda d: d.find_element("css selector", 'tr[data-tier="online"]').get_attribute("data-up")
              == "false", "the online tier shown as down")
        assert " down " in browser.find_element("css selector", 'tr[data-tier="online"]').text
        assert browser.find_element("css selector", 'tr[data-tier="offline"]').get_attribute("data-up") == "true"

        # The tiles against /metrics and /v1/stats: scraped before and after a page update that began after the
        # first scrape, so each figure lies between the two (the scrapes' own requests are the difference).
        before = _scrape(url)
        seen = int(browser.find_element("tag name", "body").get_attribute("data-updates"))
        _wait(browser, lambda d: int(d.find_element("tag name", "body").get_attribute("data-updates")) >= seen + 2,
              "two page updates")
        tiles = {name: _value(browser, f"#tile-{name} .value") for name in
                 ("fallbacks", "errors", "online-hit", "cache-hit", "avoided")}
        total = float(browser.find_element("css selector", "#tile-rps .sub").text.split()[0].replace(",", ""))
        errors = {r["status"]: float(r["value"]) for r in browser.execute_script(  # one script: rows replaced
            "return Array.from(document.querySelectorAll('#errors tr[data-status]')).map(tr =>"
            " ({status: tr.dataset.status, value: tr.querySelector('td.num').dataset.value}));")}
        cost = {k: _value(browser, f"#{k}") for k in ("cost-spent", "cost-avoided", "cost-per-query",
                                                       "price-compute", "price-call")}
        after = _scrape(url)

        assert before["requests"] <= total <= after["requests"] and total >= 45
        assert errors == before["errors"] == after["errors"] == {"404": 1.0, "422": 1.0}
        assert tiles["errors"] == 2
        online = before["online"]
        assert online == after["online"] and online["fallback"] >= 10 * len(SYMBOLS)
        assert tiles["fallbacks"] == online["fallback"]
        assert browser.find_element("css selector", "#tile-fallbacks .value").text == f"{online['fallback']:,.0f}"
        assert tiles["online-hit"] == pytest.approx(online["ok"] / sum(online.values()))
        cache = before["stats"]["cache"]
        assert cache == after["stats"]["cache"] and cache["hits"] == 1 and cache["misses"] == 2
        assert tiles["cache-hit"] == pytest.approx(cache["hit_rate"])
        assert browser.find_element("css selector", "#tile-cache-hit .value").text == f"{cache['hit_rate']:.1%}"
        assert cost["cost-spent"] == pytest.approx(cache["cost"]["spent"]) and cost["cost-spent"] > 0
        assert cost["cost-avoided"] == pytest.approx(cache["cost"]["avoided"]) == tiles["avoided"]
        assert cost["cost-per-query"] == pytest.approx(cache["cost"]["per_query"])
        assert (cost["price-compute"], cost["price-call"]) == (2.5, 0.01)

        stats = before["stats"]
        with Store.open(root) as store:
            entries = len(store.catalog.feature_entries("daily_core", 1))
        versions, n_entries, _, _ = (float(v) for v in _row(browser, '#storage tr[data-set="daily_core"]')["nums"])
        assert versions == sum(v.startswith("daily_core@") for v in stats["versions"]) == 1
        assert n_entries == entries == stats["feature_entries_live"]
        totals = browser.find_element("css selector", "#storage-totals")
        assert (float(totals.get_attribute("data-cache-entries")), float(totals.get_attribute("data-cache-bytes"))) \
            == (cache["entries"], cache["bytes"])
        fresh = _row(browser, '#freshness tr[data-set="daily_core@1"]')
        assert fresh["data"]["fresh"] == "true" and "fresh" in fresh["text"]
        age = float(fresh["nums"][0])
        assert before["age"]["daily_core@1"] - 1 <= age <= after["age"]["daily_core@1"] + 1

        # The charts have drawn the load, and gain points as samples arrive.
        drawn = _points(browser)
        assert set(drawn) == {"rps", "latency", "hits", "cost"} and min(drawn.values()) > 0, drawn
        assert browser.find_elements("css selector", 'svg[data-chart="rps"] polyline')
        _wait(browser, lambda d: _points(d)["rps"] > drawn["rps"] and _points(d)["cost"] > drawn["cost"],
              "the charts to gain points")

        shot = os.environ.get("PITSTORE_DASHBOARD_SCREENSHOT")
        if shot:
            browser.save_screenshot(str(REPO / shot))
        severe = [e for e in browser.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]
        assert severe == [], severe
    finally:
        code, out = server.stop()
        if redis.alive():
            redis.kill()
    assert code in (0, -signal.SIGTERM), out


@pytest.mark.slow  # its own server process
def test_grafana_panels_name_exported_metrics_and_the_feed_needs_a_key(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store(root)
    key = "psk_dashboard-test-key"
    server = Server(root, env={"PITSTORE_API_KEYS": f"read:{hash_key(key)}"})
    try:
        auth = {"X-API-Key": key}
        with httpx.Client(base_url=server.url, timeout=30) as c:
            assert c.get("/dashboard").status_code == 200  # the page shell holds no data
            assert c.get("/dashboard/dashboard.js").status_code == 200
            assert c.get("/v1/metrics/series").status_code == 401
            assert c.get("/v1/online", params={"symbols": "AAA,NOPE", "features": "daily_core"},
                         headers=auth).status_code == 200
            c.get("/v1/indicators/AAA", params={"indicators": "sma_5"}, headers=auth)
            c.get("/readyz")
            series = c.get("/v1/metrics/series", headers=auth)
            assert series.status_code == 200
            assert series.json()["now"]["requests"]["online"]["reads"] == 2
            text = c.get("/metrics").text
        exported = {line.split("{")[0].split(" ")[0] for line in text.splitlines() if line and line[0] != "#"}
        board = json.loads((REPO / "docs/grafana/pitstore.json").read_text())
        panels = [p for p in board["panels"] if p.get("type") != "row"]
        assert len(panels) >= 12
        named: set[str] = set()
        for panel in panels:
            exprs = [t["expr"] for t in panel["targets"]]
            assert exprs, panel["title"]
            for expr in exprs:
                names = set(re.findall(r"\bpitstore_[a-z0-9_]+", expr))
                assert names, (panel["title"], expr)
                assert names <= exported, (panel["title"], names - exported)
                named |= names
        assert {"pitstore_http_requests_total", "pitstore_http_request_seconds_bucket", "pitstore_online_reads_total",
                "pitstore_cache_hits_total", "pitstore_cost_spent_total", "pitstore_cost_avoided_total",
                "pitstore_feature_age_seconds", "pitstore_backend_up"} <= named
    finally:
        server.stop()


def test_series_quantiles_rates_and_the_ring() -> None:
    buckets = ((0.001, 0.0), (0.01, 50.0), (0.1, 100.0), (float("inf"), 100.0))
    assert quantile(0.5, buckets) == pytest.approx(0.01)
    assert quantile(0.75, buckets) == pytest.approx(0.055)
    assert quantile(0.99, ((0.1, 0.0), (float("inf"), 5.0))) == 0.1  # in +Inf: the largest finite bound
    assert quantile(0.5, ((0.1, 0.0), (float("inf"), 0.0))) is None
    a = Sample(t=100.0, requests=10, buckets=buckets, online={"ok": 8, "missing": 2}, cache_hits=1, cache_misses=1)
    b = Sample(t=110.0, requests=30, buckets=((0.001, 0.0), (0.01, 50.0), (0.1, 120.0), (float("inf"), 120.0)),
               online={"ok": 18, "missing": 2, "fallback": 10}, cache_hits=4, cache_misses=1, cost_spent=2.0)
    got = between(a, b)
    assert got["rps"] == 2.0 and got["online_hit_rate"] == 0.5 and got["cache_hit_rate"] == 1.0
    assert got["p50_ms"] == pytest.approx(1e3 * (0.01 + 0.09 * 0.5))  # the 20 new requests: all in (0.01, 0.1]
    ring = Ring(interval=1.0, window=3.0)
    for i in range(10):
        ring.add(Sample(t=float(i), requests=float(i * 5)))
    assert len(ring.samples) == 4 and [p["rps"] for p in ring.points()] == [5.0, 5.0, 5.0]
    assert ring.base(9.5, 2.0) is not None and ring.base(9.5, 2.0).t == 7.0  # type: ignore[union-attr]


def _in_a_terminal(args: list[str], done: Callable[[str], bool], env: dict[str, str] | None = None) -> tuple[int, str]:
    """Run the CLI in a pseudo-terminal until ``done(output)``, then press Ctrl-C; (exit code, output)."""
    import pty
    import select
    import sys
    import time

    pid, fd = pty.fork()
    if pid == 0:  # the child: the pty is its controlling terminal
        os.execve(sys.executable, [sys.executable, "-m", "pitstore", *args],
                  {**os.environ, "COLUMNS": "120", "LINES": "50", **(env or {})})
    out = b""
    deadline = time.monotonic() + 30
    pressed = False
    while True:
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # the child has exited and closed the terminal
                break
            if not chunk:
                break
            out += chunk
        if not pressed and done(out.decode(errors="replace")):
            os.write(fd, b"\x03")  # Ctrl-C, as typed: the terminal sends SIGINT to the command
            pressed = True
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            break
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), out.decode(errors="replace")


@pytest.mark.slow  # a real `stats --watch` process and SIGINT
def test_stats_watch_refreshes_in_place_and_exits_cleanly_on_ctrl_c(tmp_path: Path) -> None:
    root = tmp_path / "store"
    _store(root)
    code, out = _in_a_terminal(["stats", "--watch", "--root", str(root), "--interval", "0.2"],
                               lambda o: o.count("updated ") >= 2 and "fresh" in o)
    assert code == 0 and "Traceback" not in out, out
    assert "daily_core@1" in out and "offline" in out and "--url URL" in out
    server = Server(root)
    try:
        with httpx.Client(base_url=server.url) as c:
            for _ in range(7):
                c.get("/v1/online", params={"symbols": "AAA,NOPE", "features": "daily_core"})
            c.get("/v1/nothing-here")  # with the /healthz of the start: 9 requests
        code, out = _in_a_terminal(["stats", "--watch", "--url", server.url, "--interval", "0.2"],
                                   lambda o: o.count("updated ") >= 3)
        assert code == 0 and "Traceback" not in out, out
        screen = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out[out.rindex("updated "):])  # the last refresh
        assert re.search(r"total\s+9\b", screen) and "404: 1" in screen and "50.0%" in screen, screen
        assert "\x1b[" in out  # redrawn in place (cursor movement), not appended
    finally:
        server.stop()


@pytest.mark.slow  # a two-worker server process, sampled across intervals
def test_two_workers_serve_the_same_series(tmp_path: Path) -> None:
    """With --workers 2 each worker samples the shared multiprocess files: both report the totals over both."""
    from concurrent.futures import ThreadPoolExecutor

    root = tmp_path / "store"
    _store(root)
    shared = tmp_path / "metrics"
    shared.mkdir()
    server = Server(root, "--workers", "2", env={"PROMETHEUS_MULTIPROC_DIR": str(shared),
                                                 "PITSTORE_DASHBOARD_INTERVAL": "0.5"})
    try:
        def one(_: int) -> int:  # a new connection each: the kernel spreads them over both workers
            return httpx.get(server.url + "/v1/online", params={"symbols": "AAA", "features": "daily_core"}).status_code

        sent = 0
        with ThreadPoolExecutor(8) as pool:
            while len(list(shared.glob("counter_*.db"))) < 2 and sent < 4000:
                assert set(pool.map(one, range(100))) == {200}
                sent += 100
            by_worker: dict[str, dict[str, Any]] = {}
            for _ in range(50):
                for r in pool.map(lambda _: httpx.get(server.url + "/v1/metrics/series"), range(8)):
                    by_worker[r.headers["x-request-id"][:16]] = r.json()  # the id's prefix is per process
                if len(by_worker) == 2:
                    break
        assert len(by_worker) == 2
        for series in by_worker.values():
            assert series["now"]["requests"]["total"] == sent + 1  # with the /healthz of the start
            assert series["now"]["requests"]["online"]["reads"] == sent
            assert series["points"] and all(p["rps"] is not None for p in series["points"])
    finally:
        code, out = server.stop()
    assert code in (0, -signal.SIGTERM), out

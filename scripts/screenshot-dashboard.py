#!/usr/bin/env python3
"""Take docs/dashboard.png: the dashboard of a demo store under load, in headless Chromium.

Builds a demo store in a temporary directory, starts a private redis-server (the online tier) and `pitstore
serve`, drives varying load for ``--seconds`` (online reads, point-in-time look-ups, on-demand indicators with
cache misses, a few bad requests), stops Redis two thirds of the way through (fallbacks, the tier shown down),
then saves a screenshot. Needs redis-server, /usr/bin/chromium, /usr/bin/chromedriver and selenium
(``make test`` installs them). Usage: ``python scripts/screenshot-dashboard.py [--out docs/dashboard.png]``.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from pitstore import Store, standard_features
from pitstore.testing import synthetic_bars

REPO = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(check: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():  # type: ignore[operator]
                return
        except (httpx.TransportError, OSError):
            pass
        time.sleep(0.05)  # polling a readiness condition
    raise SystemExit(f"timed out waiting for {what}")


def load(url: str, symbols: list[str], stop: threading.Event, started: float, seconds: float) -> None:
    rng = random.Random(threading.get_ident())
    with httpx.Client(base_url=url, timeout=30) as c:
        while not stop.is_set():
            phase = (time.monotonic() - started) / seconds
            busy = 0.55 + 0.45 * math.sin(phase * 2 * math.pi * 2)  # two waves over the run
            pick = rng.random()
            if pick < 0.8:
                c.get("/v1/online", params={"symbols": ",".join(rng.sample(symbols, 5)) + ",NOPE",
                                            "features": "daily_core"})
            elif pick < 0.9:
                c.get(f"/v1/indicators/{rng.choice(symbols)}", params={"indicators": f"ema_{rng.randint(5, 40)}"})
            elif pick < 0.99:
                c.get(f"/v1/features/{rng.choice(symbols)}", params={"as_of": datetime.now(UTC).isoformat(),
                                                                      "features": "daily_core"})
            else:
                c.get("/v1/features/AAA", params={"as_of": "not-a-time", "features": "daily_core"})
            time.sleep(0.002 + 0.02 * (1 - busy))  # pacing the load's rate, not synchronisation


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="docs/dashboard.png")
    ap.add_argument("--seconds", type=float, default=90.0)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="pitstore-shot-") as tmp:
        root = Path(tmp) / "store"
        redis_port, port = free_port(), free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(redis_port), "--bind", "127.0.0.1", "--save", "",
                                  "--appendonly", "no"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        online = f"redis://127.0.0.1:{redis_port}/0"
        today = datetime.now(UTC).replace(hour=0, minute=0, second=0, microsecond=0)
        bars = synthetic_bars(40, 400, start=today - timedelta(days=399), seed=11)
        symbols = sorted(set(bars["symbol"].to_list()))
        wait_until(lambda: socket.create_connection(("127.0.0.1", redis_port), 1).close() is None, 10, "redis")
        with Store.open(root, online_url=online) as store:
            store.ingest(bars)
            store.backfill(standard_features())
            store.materialize(standard_features())
        env = {**os.environ, "PITSTORE_DASHBOARD_INTERVAL": "1", "PITSTORE_COST_PER_COMPUTE_SECOND": "0.05",
               "PITSTORE_COST_PER_DATA_CALL": "0.002"}
        server = subprocess.Popen([sys.executable, "-m", "pitstore", "serve", "--root", str(root), "--port", str(port),
                                   "--online-url", online, "--log-level", "warning"], env=env,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: httpx.get(url + "/healthz").status_code == 200, 60, "pitstore serve")
            stop, started = threading.Event(), time.monotonic()
            threads = [threading.Thread(target=load, args=(url, symbols, stop, started, args.seconds))
                       for _ in range(3)]
            for t in threads:
                t.start()
            stop.wait(args.seconds * 2 / 3)
            redis.kill()  # the online tier goes down: reads fall back, the tier shows down
            stop.wait(args.seconds / 3)
            shoot(url, REPO / args.out)
            stop.set()
            for t in threads:
                t.join()
        finally:
            server.send_signal(signal.SIGTERM)
            server.wait(60)
            if redis.poll() is None:
                redis.kill()
    print(f"wrote {args.out}")


def shoot(url: str, out: Path) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = "/usr/bin/chromium"
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1440,900",
                "--hide-scrollbars"):
        options.add_argument(arg)
    driver = webdriver.Chrome(options=options, service=Service("/usr/bin/chromedriver"))
    try:
        driver.get(url + "/dashboard")
        WebDriverWait(driver, 15).until(lambda d: int(d.find_element("tag name", "body")
                                                      .get_attribute("data-updates")) >= 2)
        height = driver.execute_script("return document.documentElement.scrollHeight")
        driver.set_window_size(1440, max(700, int(height) + 10))
        driver.save_screenshot(str(out))
    finally:
        driver.quit()


if __name__ == "__main__":
    main()

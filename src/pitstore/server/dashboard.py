"""``GET /dashboard`` (a page, its script and style shipped as package data: no CDN) and ``GET /v1/metrics/series``
(the page's feed: the figures of now and the last 15 minutes of samples).

The page shell holds no data and is open like ``/metrics``; its feed needs a read key when keys are configured
(the page takes it once from ``?key=`` and sends it as ``X-API-Key``). Each worker samples every
``PITSTORE_DASHBOARD_INTERVAL`` seconds (default 2) on its event loop, where its Store is used.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from importlib import resources
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import Response

from pitstore.errors import ConfigError, NotFoundError
from pitstore.server import metrics
from pitstore.server.figures import TierWatch, probe_tiers, store_figures
from pitstore.server.series import Ring, next_tick, read_metrics, request_figures

if TYPE_CHECKING:
    from pitstore.store import Store

__all__ = ["OPEN_PATHS", "Sampler", "mount"]

log = logging.getLogger("pitstore.server.dashboard")

WINDOW_S = 900.0  # the charts' span: 15 minutes
TILE_SPAN_S = 60.0  # rates and quantiles of the tiles: over the last minute
_ASSETS = {"dashboard.js": "text/javascript; charset=utf-8", "dashboard.css": "text/css; charset=utf-8"}
OPEN_PATHS = ("/dashboard", *(f"/dashboard/{name}" for name in _ASSETS))


def _interval() -> float:
    raw = os.environ.get("PITSTORE_DASHBOARD_INTERVAL", "2")
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 60:
        raise ConfigError(f"PITSTORE_DASHBOARD_INTERVAL: seconds between 0.1 and 60, got {raw!r}")
    return value


class Sampler:
    """The ring buffer of one worker, and the figures of now."""

    def __init__(self, store: Callable[[], Store], interval: float, window: float = WINDOW_S) -> None:
        self.store, self.ring, self.tiers = store, Ring(interval, window), TierWatch()

    def tick(self) -> None:
        now = time.time()
        self.ring.add(read_metrics(now, self.store().cache.stats()))
        self._probe(now)

    def _probe(self, now: float) -> dict[str, dict[str, Any]]:
        tiers = probe_tiers(self.store())
        for name, tier in tiers.items():
            metrics.backend_up(name, tier["up"])
        return self.tiers.update(tiers, now)

    def series(self) -> dict[str, Any]:
        now = time.time()
        figures = store_figures(self.store(), now)
        sample = read_metrics(now, {**figures["cache"], "cost": figures["cost"]})
        current = {"t": now, "requests": request_figures(sample, self.ring.base(now, TILE_SPAN_S)), **figures,
                   "tiers": self._probe(now)}
        return {"interval_s": self.ring.interval, "window_s": self.ring.window, "tile_span_s": TILE_SPAN_S,
                "now": current, "points": self.ring.points()}

    async def run(self) -> None:
        while True:
            await asyncio.sleep(next_tick(self.ring.interval))
            try:
                self.tick()
            except Exception:  # a failed sample must not end sampling; the next one may succeed
                log.exception("dashboard sample failed")


def _asset(name: str) -> bytes:
    return resources.files("pitstore.server").joinpath("static", name).read_bytes()


def mount(app: FastAPI, the_store: Callable[[], Store]) -> Sampler:
    """Add the dashboard's routes to ``app`` and its sampler to the app's lifespan."""
    sampler = Sampler(the_store, _interval())
    page = _asset("dashboard.html")
    assets = {name: _asset(name) for name in _ASSETS}
    no_cache = {"Cache-Control": "no-cache"}

    @app.get("/dashboard", include_in_schema=False)
    async def dashboard() -> Response:
        return Response(page, media_type="text/html; charset=utf-8", headers=no_cache)

    @app.get("/dashboard/{asset}", include_in_schema=False)
    async def dashboard_asset(asset: str) -> Response:
        if asset not in assets:
            raise NotFoundError(f"no dashboard asset {asset!r}")
        return Response(assets[asset], media_type=_ASSETS[asset], headers=no_cache)

    @app.get("/v1/metrics/series", tags=["health"],
             summary="The dashboard's feed: figures of now and samples of the last 15 minutes")
    async def metrics_series() -> Response:
        body = json.dumps(sampler.series(), allow_nan=False).encode()
        return Response(body, media_type="application/json", headers=no_cache)

    inner = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(a: Any) -> AsyncIterator[Any]:
        async with inner(a) as state:
            sampler.tick()  # the first sample: the baseline of the first point
            task = asyncio.create_task(sampler.run())
            try:
                yield state
            finally:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task

    app.router.lifespan_context = lifespan
    return sampler

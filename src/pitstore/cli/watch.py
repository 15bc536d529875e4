"""``pitstore stats --watch`` / ``--url``: the dashboard's key figures in the terminal, refreshed in place (rich).

Against a running server (``--url``) the figures are those of ``GET /v1/metrics/series`` (requests, latency, hit
rates, errors, cost, freshness, tiers, storage); against the local store only the store's own (the request
figures live in the server). Fetched with the standard library: the command needs no client extra.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from rich import box
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.table import Table
from rich.text import Text

from pitstore.cli.output import human_bytes
from pitstore.errors import BackendUnavailableError, ConfigError, PitstoreError
from pitstore.server.figures import TierWatch, probe_tiers, store_figures
from pitstore.store import Store

__all__ = ["fetch_figures", "local_figures", "render", "watch"]

Figures = dict[str, Any]


def fetch_figures(url: str, key: str | None, timeout: float = 10.0) -> Figures:
    """The ``now`` figures of a server's ``/v1/metrics/series``."""
    request = urllib.request.Request(url.rstrip("/") + "/v1/metrics/series",
                                     headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            raise ConfigError(f"{url}: a read API key is needed (--key or PITSTORE_API_KEY): HTTP {exc.code}") \
                from exc
        raise BackendUnavailableError(f"{url}: HTTP {exc.code}") from exc
    except (OSError, ValueError) as exc:
        raise BackendUnavailableError(f"{url} cannot be reached: {exc}") from exc
    figures: Figures = body["now"]
    return figures


def local_figures(store: Store, tiers: TierWatch) -> Figures:
    now = time.time()
    return {"t": now, **store_figures(store, now), "tiers": tiers.update(probe_tiers(store), now)}


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v:.1%}"


def _ms(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} ms"


def _age(s: float) -> str:
    s = max(s, 0.0)
    return f"{s:.0f} s" if s < 90 else f"{s / 60:.0f} min" if s < 5400 else f"{s / 3600:.1f} h" if s < 172800 \
        else f"{s / 86400:.1f} d"


def _money(v: float) -> str:
    return f"{v:,.2f}" if abs(v) >= 100 else f"{v:.4g}"


def _pairs(title: str, rows: list[tuple[str, str]]) -> Table:
    table = Table(title=title, title_justify="left", show_header=False, box=None, pad_edge=False)
    table.add_column(style="bold", no_wrap=True)
    table.add_column(justify="right", no_wrap=True)
    for k, v in rows:
        table.add_row(k, v)
    return table


def render(fig: Figures, source: str, *, live: bool = False) -> RenderableType:
    """The figures as rich tables: requests (from a server), cache and cost, freshness, tiers, storage."""
    now = fig["t"]
    stamp = datetime.fromtimestamp(now, UTC).strftime("%H:%M:%SZ")
    hint = "   (Ctrl-C to stop)" if live else ""
    parts: list[RenderableType] = [Text(f"pitstore {source}   updated {stamp}{hint}", style="dim")]
    top = Table.grid(padding=(0, 4))
    cache, cost = fig["cache"], fig["cost"]
    cells: list[RenderableType] = []
    req = fig.get("requests")
    if req is not None:
        errors = ", ".join(f"{k}: {v:,.0f}" for k, v in req["errors"].items()) or "none"
        cells.append(_pairs("requests", [
            ("requests/s", "-" if req["rps"] is None else f"{req['rps']:,.1f}"), ("total", f"{req['total']:,.0f}"),
            ("p50", _ms(req["p50_ms"])), ("p99", _ms(req["p99_ms"])),
            ("online hit rate", _pct(req["online"]["hit_rate"])), ("fallbacks", f"{req['online']['fallbacks']:,.0f}"),
            ("errors", f"{req['errors_total']:,.0f} ({errors})")]))
    cells.append(_pairs("compute cache and cost", [
        ("cache hit rate", _pct(cache["hit_rate"])), ("hits / misses", f"{cache['hits']:,} / {cache['misses']:,}"),
        ("cost spent", _money(cost["spent"])), ("cost avoided", _money(cost["avoided"])),
        ("cost per query", _money(cost["per_query"])),
        ("price per compute s", _money(cost["per_compute_second"])),
        ("price per data call", _money(cost["per_data_call"]))]))
    top.add_row(*cells)
    parts.append(top)
    tiers = Table(title="tiers", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("tier", "state", "since"):
        tiers.add_column(col, no_wrap=True)
    for name, t in fig["tiers"].items():
        tiers.add_row(name, Text("up", style="green") if t["up"] else Text("down", style="bold red"),
                      f"{datetime.fromtimestamp(t['since'], UTC):%H:%M:%SZ} ({_age(now - t['since'])})")
    fresh = Table(title="freshness", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("feature set", "age", "TTL", ""):
        fresh.add_column(col, justify="left" if col == "feature set" else "right", no_wrap=True)
    for f in fig["freshness"]:
        fresh.add_row(f["feature_set"], _age(f["age_s"]), _age(f["ttl_s"]),
                      Text("fresh", style="green") if f["fresh"] else Text("stale", style="red"))
    storage = Table(title="storage", title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for col in ("feature set", "versions", "entries", "rows", "bytes"):
        storage.add_column(col, justify="left" if col == "feature set" else "right", no_wrap=True)
    for s in fig["storage"]["sets"]:
        storage.add_row(f"{s['name']}@{s['latest']}", f"{s['versions']:,}", f"{s['entries']:,}", f"{s['rows']:,}",
                        human_bytes(int(s["bytes"])))
    st = fig["storage"]
    storage.caption = (f"compute cache: {st['cache_entries']:,} entries, {human_bytes(int(st['cache_bytes']))}; "
                       f"{st['bars_live']:,} bars")
    storage.caption_justify = "left"
    middle = Table.grid(padding=(0, 4))
    middle.add_row(tiers, fresh)
    parts += [middle, storage]
    if req is None:
        parts.append(Text("request figures (requests/s, latency, errors) are kept by the server: --url URL",
                          style="dim"))
    return Group(*parts)


def watch(get: Callable[[], Figures], source: str, interval: float, console: Console) -> None:
    """Refresh the figures every ``interval`` seconds in place until Ctrl-C (a clean exit). A failed fetch is
    shown, and retried at the next refresh."""
    try:
        with Live(console=console, auto_refresh=False, transient=False) as live:
            while True:
                try:
                    view: RenderableType = render(get(), source, live=True)
                except (PitstoreError, OSError) as exc:
                    if isinstance(exc, ConfigError):
                        raise
                    view = Text(f"{datetime.now(UTC):%H:%M:%SZ}  {exc} (retrying every {interval:g} s)",
                                style="red")
                live.update(view, refresh=True)
                time.sleep(interval)
    except KeyboardInterrupt:
        return

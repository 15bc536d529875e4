"""The store's own figures for the dashboard and ``pitstore stats --watch``: compute cache and costs, freshness per
feature set, tiers up or down since when, storage per set. Plain Python over a Store (no server dependency), so
the CLI can show them for a local store too; the request figures come from the metrics (:mod:`.series`)."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from pitstore.errors import PitstoreError

if TYPE_CHECKING:
    from pitstore.store import Store

__all__ = ["TierWatch", "probe_tiers", "store_figures"]


def probe_tiers(store: Store, offline: str = "offline") -> dict[str, dict[str, Any]]:
    """Each tier with ``up``, ``required`` and, when down, ``error``: the offline tier (catalog and files; named
    ``offline``, ``/readyz`` calls it ``catalog``), the online tier and, when configured, the history tier."""
    out: dict[str, dict[str, Any]] = {}

    def probe(name: str, required: bool, check: Callable[[], Any]) -> None:
        try:
            check()
            out[name] = {"up": True, "required": required}
        except (PitstoreError, OSError) as exc:
            out[name] = {"up": False, "required": required, "error": f"{type(exc).__name__}: {exc}"}

    def check_offline() -> None:
        store.catalog.counts()
        if not os.access(store.root, os.R_OK | os.X_OK):
            raise OSError(f"{store.root} is not readable")

    probe(offline, True, check_offline)
    serving = store.serving
    probe("online", False, serving.online.ping)
    if serving.history is not None:
        probe("history", False, serving.history.ping)
    return out


class TierWatch:
    """When each tier last changed state, as seen by this process (first seen: when it was first probed)."""

    def __init__(self) -> None:
        self._since: dict[str, tuple[bool, float]] = {}

    def update(self, tiers: dict[str, dict[str, Any]], now: float | None = None) -> dict[str, dict[str, Any]]:
        """``tiers`` with ``since`` (epoch seconds of the last change of ``up``) added to each."""
        now = time.time() if now is None else now
        for name, tier in tiers.items():
            seen = self._since.get(name)
            if seen is None or seen[0] != tier["up"]:
                seen = self._since[name] = (bool(tier["up"]), now)
            tier["since"] = seen[1]
        return tiers


def store_figures(store: Store, now: float | None = None) -> dict[str, Any]:
    """Compute cache, cost, freshness and storage, read from the catalog (the same figures as ``/v1/stats``
    and the store collector of ``/metrics``)."""
    now = time.time() if now is None else now
    cache = store.cache.stats()
    cost = cache["cost"]
    freshness = []
    for table, newest in sorted(store.newest_rows().items()):
        ttl = store.serving.tables(table)[0].ttl.total_seconds()
        age = now - newest / 1e6
        freshness.append({"feature_set": table, "newest": newest / 1e6, "age_s": age, "ttl_s": ttl,
                          "fresh": age <= ttl})
    sets = []
    for name in store.registry.names():
        latest = store.registry.get(name).version
        live = store.catalog.feature_entries(name, latest)
        sets.append({"name": name, "versions": len(store.catalog.versions(name)), "latest": latest,
                     "entries": len(live), "rows": sum(e.n_rows for e in live),
                     "bytes": sum(e.size or 0 for e in live)})
    counts = store.catalog.counts()
    return {
        "cache": {k: cache[k] for k in ("hits", "misses", "hit_rate", "entries", "bytes", "compute_seconds",
                                        "saved_seconds")},
        "cost": {k: cost[k] for k in ("spent", "avoided", "per_query", "per_compute_second", "per_data_call")},
        "freshness": freshness,
        "storage": {"sets": sets, "feature_entries_live": counts["feature_entries_live"],
                    "bar_entries_live": counts["bar_entries_live"], "bars_live": counts["bars_live"],
                    "cache_entries": cache["entries"], "cache_bytes": cache["bytes"]},
    }

"""Prometheus metrics of the service.

Request counters and latency histograms are per process; with several workers ``pitstore serve`` sets
``PROMETHEUS_MULTIPROC_DIR`` so that a scrape of any worker reports the sum over all of them. Compute-cache
figures come from the catalog at scrape time: they are the same whichever worker answers, and include the
hits and computations of batch jobs on the same store.
"""

from __future__ import annotations

import asyncio
import os
from bisect import bisect_left
from collections import Counter as Tally
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

from pitstore.server.figures import store_figures

if TYPE_CHECKING:
    from pitstore.store import Store

__all__ = ["backend_up", "count_online", "flush", "observe_request", "render"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)

REQUESTS = Counter("pitstore_http_requests_total", "HTTP requests by endpoint, method and status",
                   ["endpoint", "method", "status"])
LATENCY = Histogram("pitstore_http_request_seconds", "HTTP request latency by endpoint", ["endpoint"],
                    buckets=_LATENCY_BUCKETS)
ONLINE = Counter("pitstore_online_reads_total", "Feature vectors served, by path and status "
                 "(ok / stale / fallback / no_data_yet / unknown_symbol / damaged)", ["path", "status"])
BACKEND_UP = Gauge("pitstore_backend_up", "1 when the tier answered its last readiness probe", ["tier"],
                   multiprocess_mode="liveall")


# Label children bound once per label set: .labels() costs microseconds on every request otherwise.
_REQUEST_CHILDREN: dict[tuple[str, str, int], tuple[Any, Any]] = {}
_ONLINE_CHILDREN: dict[tuple[str, str], Any] = {}

# Updates are kept in plain dicts and written to the metrics in batches: a locked counter or histogram update
# costs about a microsecond each, several per request. Every reader of this process's metrics (a scrape, a
# dashboard sample) flushes first, so one process flushes at most every FLUSH_S seconds; with several workers
# (PROMETHEUS_MULTIPROC_DIR) another worker reads the shared files at any time, so each flushes at the end of
# its loop turn (a turn answers every request that is ready). Outside a running loop they are written at once.
FLUSH_S = 0.5
_PENDING_REQUESTS: dict[tuple[str, str, int], list[float]] = {}
_PENDING_ONLINE: dict[tuple[str, str], int] = {}
_scheduled: asyncio.AbstractEventLoop | None = None  # the loop a flush is scheduled on


def observe_request(endpoint: str, method: str, status: int, seconds: float) -> None:
    key = (endpoint, method, status)
    pending = _PENDING_REQUESTS.get(key)
    if pending is None:
        _PENDING_REQUESTS[key] = [seconds]
    else:
        pending.append(seconds)
    _schedule()


def count_online(statuses: Sequence[str], path: str) -> None:
    pending = _PENDING_ONLINE
    if len(statuses) == 1:  # building a Counter costs more than the rest of a one-symbol request's metrics
        key = (path, statuses[0])
        pending[key] = pending.get(key, 0) + 1
    else:
        for s, n in Tally(statuses).items():
            key = (path, s)
            pending[key] = pending.get(key, 0) + n
    _schedule()


def _schedule() -> None:
    global _scheduled
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        flush()
        return
    if _scheduled is not loop:  # (a loop closed before its flush ran, as asyncio.run's may, is replaced)
        _scheduled = loop
        if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            loop.call_soon(flush)
        else:
            loop.call_later(FLUSH_S, flush)


def flush() -> None:
    """Write the kept updates to the metrics (the exporters read these)."""
    global _scheduled
    _scheduled = None
    if _PENDING_REQUESTS:
        requests = dict(_PENDING_REQUESTS)
        _PENDING_REQUESTS.clear()
        for key, seconds in requests.items():
            children = _REQUEST_CHILDREN.get(key)
            if children is None:
                children = REQUESTS.labels(key[0], key[1], str(key[2])), LATENCY.labels(key[0])
                _REQUEST_CHILDREN[key] = children
            children[0].inc(len(seconds))
            _observe_all(children[1], seconds)
    if _PENDING_ONLINE:
        online = dict(_PENDING_ONLINE)
        _PENDING_ONLINE.clear()
        for labels, n in online.items():
            child = _ONLINE_CHILDREN.get(labels)
            if child is None:
                child = _ONLINE_CHILDREN[labels] = ONLINE.labels(*labels)
            child.inc(n)


def _observe_all(histogram: Any, seconds: list[float]) -> None:
    """``histogram.observe`` of each value, in one update per bucket where prometheus-client's layout is the
    known one (``_sum``, ``_buckets``, ``_upper_bounds``: non-cumulative bucket counts, as ``observe`` keeps)."""
    bounds = getattr(histogram, "_upper_bounds", None)
    buckets = getattr(histogram, "_buckets", None)
    total = getattr(histogram, "_sum", None)
    if bounds is None or buckets is None or total is None or len(seconds) == 1:
        for v in seconds:
            histogram.observe(v)
        return
    counts: dict[int, int] = {}
    for v in seconds:
        i = bisect_left(bounds, v)  # observe: the first bound with v <= bound
        counts[i] = counts.get(i, 0) + 1
    total.inc(sum(seconds))
    for i, n in counts.items():
        buckets[i].inc(n)


def backend_up(tier: str, up: bool) -> None:
    BACKEND_UP.labels(tier).set(1 if up else 0)


class _StoreCollector(Collector):
    """The store's own figures, read from the catalog at scrape time."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def collect(self) -> Iterator[CounterMetricFamily | GaugeMetricFamily]:
        fig = store_figures(self.store)  # the figures of the dashboard: one source for both
        cache, cost = fig["cache"], fig["cost"]
        for name, key, doc in (("hits", "hits", "compute-cache hits"), ("misses", "misses", "compute-cache misses"),
                               ("compute_seconds", "compute_seconds", "seconds spent computing cache misses"),
                               ("saved_seconds", "saved_seconds", "compute seconds saved by cache hits")):
            yield CounterMetricFamily(f"pitstore_cache_{name}", doc, value=float(cache[key]))
        yield GaugeMetricFamily("pitstore_cache_entries", "compute-cache entries stored", value=cache["entries"])
        yield GaugeMetricFamily("pitstore_cache_bytes", "bytes of compute-cache entries", value=cache["bytes"])
        yield CounterMetricFamily("pitstore_cost_spent", "cost of cache misses (data calls and compute seconds at"
                                  " the configured rates)", value=cost["spent"])
        yield CounterMetricFamily("pitstore_cost_avoided", "cost avoided by cache hits", value=cost["avoided"])
        yield GaugeMetricFamily("pitstore_cost_per_query", "cost spent per compute-cache query",
                                value=cost["per_query"])
        yield GaugeMetricFamily("pitstore_price_per_compute_second", "configured cost of one compute second",
                                value=cost["per_compute_second"])
        yield GaugeMetricFamily("pitstore_price_per_data_call", "configured cost of one upstream data call",
                                value=cost["per_data_call"])
        fresh = GaugeMetricFamily("pitstore_feature_age_seconds", "age of the newest stored row of each feature"
                                  " set's latest version", labels=["feature_set"])
        ttl = GaugeMetricFamily("pitstore_feature_ttl_seconds", "online TTL of each feature set's latest version:"
                                " older rows are served as stale", labels=["feature_set"])
        for f in fig["freshness"]:
            fresh.add_metric([f["feature_set"]], f["age_s"])
            ttl.add_metric([f["feature_set"]], f["ttl_s"])
        yield fresh
        yield ttl
        per_set = {name: GaugeMetricFamily(f"pitstore_feature_{name}", doc, labels=["feature_set"]) for name, doc in (
            ("versions", "registered versions of each feature set"),
            ("entries", "live feature entries of each feature set's latest version"),
            ("bytes", "bytes of the live feature entries of each feature set's latest version"))}
        for s in fig["storage"]["sets"]:
            for name, family in per_set.items():
                family.add_metric([s["name"]], s[name])
        yield from per_set.values()


def render(store: Store) -> tuple[bytes, str]:
    flush()
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        for metric in (REQUESTS, LATENCY, ONLINE, BACKEND_UP):
            registry.register(metric)
    registry.register(_StoreCollector(store))
    return generate_latest(registry), CONTENT_TYPE_LATEST

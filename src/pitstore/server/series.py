"""Samples of the service's counters and the ring buffer behind ``/v1/metrics/series``.

A sample reads the Prometheus metrics the way ``/metrics`` does: with ``--workers N`` from the multiprocess files,
so every sample (in whichever worker takes it) holds the totals over all workers, and each worker's buffer tells
the same story. Samples are taken at multiples of the interval on the wall clock, so the workers' buffers line
up. Rates, latency quantiles and hit rates of a point are differences between consecutive samples; the
monitoring requests themselves (the dashboard, its series, scrapes of ``/metrics``) are not counted.
"""

from __future__ import annotations

import math
import os
import time
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from itertools import pairwise
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from pitstore.server import metrics

__all__ = ["MONITORING", "Ring", "Sample", "between", "next_tick", "quantile", "read_metrics", "request_figures"]

MONITORING = frozenset({"/metrics", "/v1/metrics/series", "/dashboard", "/dashboard/{asset}"})


@dataclass(frozen=True, slots=True)
class Sample:
    """Cumulative counts at ``t`` (epoch seconds): API requests, errors by status, the latency histogram
    (``(le, cumulative count)`` ascending, ending with +Inf), online reads by status, compute-cache hits and
    misses, cost spent and avoided."""

    t: float
    requests: float = 0.0
    errors: dict[str, float] = field(default_factory=dict)
    buckets: tuple[tuple[float, float], ...] = ()
    online: dict[str, float] = field(default_factory=dict)
    cache_hits: float = 0.0
    cache_misses: float = 0.0
    cost_spent: float = 0.0
    cost_avoided: float = 0.0


def _families() -> Iterator[Any]:
    metrics.flush()
    registry = CollectorRegistry()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    else:
        for metric in (metrics.REQUESTS, metrics.LATENCY, metrics.ONLINE):
            registry.register(metric)
    yield from registry.collect()


def read_metrics(t: float, cache: dict[str, Any]) -> Sample:
    """A sample of the request metrics now, with the compute-cache figures ``cache`` (``Cache.stats()``)."""
    requests = 0.0
    errors: dict[str, float] = {}
    buckets: dict[float, float] = {}
    online: dict[str, float] = {}
    for family in _families():
        for s in family.samples:
            labels = s.labels
            if s.name == "pitstore_http_requests_total" and labels.get("endpoint") not in MONITORING:
                requests += s.value
                if int(labels.get("status", "0")) >= 400:
                    errors[labels["status"]] = errors.get(labels["status"], 0.0) + s.value
            elif s.name == "pitstore_http_request_seconds_bucket" and labels.get("endpoint") not in MONITORING:
                le = float(labels["le"])
                buckets[le] = buckets.get(le, 0.0) + s.value
            elif s.name == "pitstore_online_reads_total" and labels.get("path") == "online":
                online[labels["status"]] = online.get(labels["status"], 0.0) + s.value
    cost = cache.get("cost", {})
    return Sample(t=t, requests=requests, errors=errors, buckets=tuple(sorted(buckets.items())), online=online,
                  cache_hits=float(cache.get("hits", 0)), cache_misses=float(cache.get("misses", 0)),
                  cost_spent=float(cost.get("spent", 0.0)), cost_avoided=float(cost.get("avoided", 0.0)))


def quantile(q: float, buckets: Iterable[tuple[float, float]]) -> float | None:
    """Prometheus' ``histogram_quantile``: the q-quantile of cumulative ``(le, count)`` buckets, interpolated
    linearly inside its bucket; None without observations. A quantile in the +Inf bucket is the largest finite
    bound."""
    bs = sorted(buckets)
    if not bs or bs[-1][1] <= 0:
        return None
    rank = q * bs[-1][1]
    lower, below = 0.0, 0.0
    for le, count in bs:
        if count >= rank:
            if math.isinf(le):
                return lower
            return lower + (le - lower) * ((rank - below) / (count - below) if count > below else 1.0)
        lower, below = le, count
    return lower


def _delta(a: float, b: float) -> float:
    return max(b - a, 0.0)  # a counter never decreases; a reset counts as no change


def _rate(hits: float, total: float) -> float | None:
    return hits / total if total > 0 else None


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else seconds * 1e3


def between(a: Sample | None, b: Sample) -> dict[str, Any]:
    """The figures of the interval from ``a`` to ``b`` (since the start of the counters when ``a`` is None)."""
    a = a if a is not None else Sample(t=b.t)
    dt = b.t - a.t
    before = dict(a.buckets)
    window = [(le, _delta(before.get(le, 0.0), c)) for le, c in b.buckets]
    reads = _delta(sum(a.online.values()), sum(b.online.values()))
    queries = _delta(a.cache_hits + a.cache_misses, b.cache_hits + b.cache_misses)
    return {
        "rps": _delta(a.requests, b.requests) / dt if dt > 0 else None,
        "errors_per_s": _delta(sum(a.errors.values()), sum(b.errors.values())) / dt if dt > 0 else None,
        "p50_ms": _ms(quantile(0.5, window)), "p99_ms": _ms(quantile(0.99, window)),
        "online_hit_rate": _rate(_delta(a.online.get("ok", 0.0), b.online.get("ok", 0.0)), reads),
        "cache_hit_rate": _rate(_delta(a.cache_hits, b.cache_hits), queries),
    }


class Ring:
    """The last ``window`` seconds of samples, one every ``interval`` seconds."""

    def __init__(self, interval: float, window: float) -> None:
        self.interval, self.window = interval, window
        self.samples: deque[Sample] = deque(maxlen=max(2, math.ceil(window / interval) + 1))

    def add(self, sample: Sample) -> None:
        self.samples.append(sample)

    def points(self) -> list[dict[str, Any]]:
        """One point per sample after the first: the interval's figures, and the cumulative costs."""
        s = list(self.samples)
        return [{"t": b.t, **between(a, b), "cost_spent": b.cost_spent, "cost_avoided": b.cost_avoided}
                for a, b in pairwise(s)]

    def base(self, now: float, span: float) -> Sample | None:
        """The newest sample at least ``span`` seconds before ``now``, else the oldest one (None when empty)."""
        older = [s for s in self.samples if s.t <= now - span]
        return older[-1] if older else (self.samples[0] if self.samples else None)


def request_figures(now: Sample, base: Sample | None) -> dict[str, Any]:
    """The tiles' request figures: totals since the start, rates and quantiles over ``base`` to ``now``."""
    reads = sum(now.online.values())
    return {
        "total": now.requests, **between(base, now), "window_s": now.t - base.t if base is not None else None,
        "errors": dict(sorted(now.errors.items())), "errors_total": sum(now.errors.values()),
        "online": {"reads": reads, "ok": now.online.get("ok", 0.0), "fallbacks": now.online.get("fallback", 0.0),
                   "hit_rate": _rate(now.online.get("ok", 0.0), reads), "by_status": dict(sorted(now.online.items()))},
    }


def next_tick(interval: float, now: float | None = None) -> float:
    """Seconds until the next multiple of ``interval`` on the wall clock."""
    now = time.time() if now is None else now
    return interval - (now % interval) or interval

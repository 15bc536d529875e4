"""Client metrics: calls by method, errors by type, latency, retries, breaker state changes, fallbacks and the
client cache's hit rate; as a dict (``client.metrics()``) and as a Prometheus collector a service can register."""

from __future__ import annotations

import bisect
import threading
from collections import Counter
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

from pitstore.client._deps import need

if TYPE_CHECKING:  # prometheus_client is optional (pitstore[server]); its Collector protocol, for the signature
    from prometheus_client.registry import Collector

__all__ = ["LATENCY_BUCKETS", "ClientMetrics"]

# Seconds: from a loopback hit (~0.3 ms) to a call that ran into its timeout.
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class _Latency:
    __slots__ = ("buckets", "count", "max", "sum")

    def __init__(self) -> None:
        self.count, self.sum, self.max = 0, 0.0, 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: above every bound


class ClientMetrics:
    """Counters of one client, safe across threads and tasks (one lock, never held across an await)."""

    def __init__(self, cache_stats: Callable[[], dict[str, Any]] | None = None) -> None:
        self._lock = threading.Lock()
        self.calls: Counter[str] = Counter()
        self.errors: Counter[str] = Counter()
        self.retries: Counter[str] = Counter()
        self.fallbacks: Counter[str] = Counter()
        self.breaker_changes: Counter[str] = Counter()  # "closed->open", "open->half_open", ...
        self.breaker_state = "closed"
        self._latency: dict[str, _Latency] = {}
        self._cache_stats = cache_stats

    def call(self, method: str, seconds: float, error: BaseException | None) -> None:
        with self._lock:
            self.calls[method] += 1
            if error is not None:
                self.errors[type(error).__name__] += 1
            lat = self._latency.get(method)
            if lat is None:
                lat = self._latency[method] = _Latency()
            lat.count += 1
            lat.sum += seconds
            lat.max = max(lat.max, seconds)
            lat.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def retry(self, method: str) -> None:
        with self._lock:
            self.retries[method] += 1

    def fallback(self, method: str) -> None:
        with self._lock:
            self.fallbacks[method] += 1

    def breaker(self, old: str, new: str) -> None:
        with self._lock:
            self.breaker_changes[f"{old}->{new}"] += 1
            self.breaker_state = new

    def snapshot(self) -> dict[str, Any]:
        """Everything as plain JSON-able values."""
        with self._lock:
            latency = {m: {"count": v.count, "sum_seconds": v.sum, "max_seconds": v.max,
                           "mean_seconds": v.sum / v.count if v.count else 0.0,
                           "buckets": dict(zip([*map(str, LATENCY_BUCKETS), "+Inf"], v.buckets, strict=True))}
                       for m, v in self._latency.items()}
            out: dict[str, Any] = {
                "calls": dict(self.calls), "errors": dict(self.errors), "retries": dict(self.retries),
                "fallbacks": dict(self.fallbacks), "latency": latency,
                "breaker": {"state": self.breaker_state, "changes": dict(self.breaker_changes)}}
        out["cache"] = self._cache_stats() if self._cache_stats is not None else None
        return out

    def collector(self, prefix: str = "pitstore_client") -> Collector:
        """A prometheus_client collector of these metrics: ``REGISTRY.register(client.metrics_collector())``."""
        core = need("prometheus_client.core")
        metrics = self

        class _Collector:
            def collect(self) -> Iterator[Any]:
                snap = metrics.snapshot()
                for name, key, label, doc in (
                        ("calls", "calls", "method", "client calls by method"),
                        ("errors", "errors", "type", "failed client calls by error type"),
                        ("retries", "retries", "method", "retried attempts by method"),
                        ("fallbacks", "fallbacks", "method", "calls answered by the local fallback store"),
                        ("breaker_transitions", None, "transition", "circuit breaker state changes")):
                    fam = core.CounterMetricFamily(f"{prefix}_{name}", doc, labels=[label])
                    values = snap[key] if key is not None else snap["breaker"]["changes"]
                    for k, v in sorted(values.items()):
                        fam.add_metric([k], v)
                    yield fam
                state = core.GaugeMetricFamily(f"{prefix}_breaker_open", "1 while the circuit is not closed")
                state.add_metric([], 0.0 if snap["breaker"]["state"] == "closed" else 1.0)
                yield state
                hist = core.HistogramMetricFamily(f"{prefix}_latency_seconds", "client call latency",
                                                  labels=["method"])
                for method, lat in sorted(snap["latency"].items()):
                    cumulative, running = [], 0
                    for bound, n in lat["buckets"].items():
                        running += n
                        cumulative.append((bound, running))
                    hist.add_metric([method], cumulative, lat["sum_seconds"])
                yield hist
                cache = snap["cache"]
                if cache is not None:
                    for key in ("hits", "misses", "evictions"):
                        fam = core.CounterMetricFamily(f"{prefix}_cache_{key}", f"client cache {key}")
                        fam.add_metric([], cache[key])
                        yield fam
                    rate = core.GaugeMetricFamily(f"{prefix}_cache_hit_rate", "client cache hit rate")
                    rate.add_metric([], cache["hit_rate"])
                    yield rate

        return _Collector()

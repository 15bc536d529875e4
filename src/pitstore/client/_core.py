"""What the sync and the async client share: configuration, breaker, metrics, cache, catalogue, and the rule
for falling back to a local store."""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from datetime import timedelta
from typing import Any, TypeVar

from pitstore.client._calls import Call, Catalogue
from pitstore.client._http import Resilience
from pitstore.client._online import TtlBook
from pitstore.client.breaker import CircuitBreaker
from pitstore.client.cache import FeatureCache
from pitstore.client.metrics import ClientMetrics
from pitstore.errors import BackendError, ConfigError, PitstoreError
from pitstore.store import Store

__all__ = ["Core"]

log = logging.getLogger("pitstore.client")
R = TypeVar("R")


class Core:
    def __init__(self, url: str, *, resilience: Resilience | None, cache: FeatureCache | None,
                 feature_ttls: Mapping[str, float | timedelta] | None, fallback: Store | None) -> None:
        if not isinstance(url, str) or not url.startswith(("http://", "https://")):
            raise ConfigError(f"the service URL must start with http:// or https://, got {url!r}")
        if fallback is not None and not isinstance(fallback, Store):
            raise ConfigError(f"fallback must be a pitstore.Store, got {type(fallback).__name__}")
        self.url, self.cfg, self.cache, self.fallback = url, resilience or Resilience(), cache, fallback
        self.stats = ClientMetrics(cache.stats if cache is not None else None)
        self.breaker = CircuitBreaker(self.cfg.breaker_failures, self.cfg.breaker_cooldown,
                                      on_change=self.stats.breaker)
        self.catalogue = Catalogue()
        self.ttls = TtlBook(feature_ttls, fallback)

    def or_fallback(self, call: Call[R], exc: PitstoreError) -> R:
        """The answer of the fallback store when the service cannot answer (unreachable, breaker open, 5xx);
        otherwise ``exc`` is raised. A local answer is the library's own computation: never invented data.

        The store runs on the caller's thread (in the async client: on the event loop): a Store is not shared
        between threads, and this is the degraded path."""
        if self.fallback is None or call.local is None or not isinstance(exc, BackendError):
            raise exc
        log.warning("pitstore service unavailable (%s): %s answered by the local store", exc, call.name)
        result = call.local(self.fallback)
        self.stats.fallback(call.name)
        return result

    def record(self, name: str, started: float, error: BaseException | None) -> None:
        self.stats.call(name, time.perf_counter() - started, error)

    def invalidate_symbols(self, symbols: list[str]) -> None:
        if self.cache is not None:
            for s in symbols:
                self.cache.invalidate_pattern(f"online:*:{_glob_escape(s)}")

    def metrics(self) -> dict[str, Any]:
        return self.stats.snapshot()


def _glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)

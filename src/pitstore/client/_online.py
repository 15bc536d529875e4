"""Online reads through the client cache: hits served from it, only the misses asked of the service, and
fresh ``ok`` vectors stored until the earlier of the cache's TTL and the vector's own freshness bound
(``ts + feature set TTL``), so a vector that has gone stale is never returned as fresh."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from datetime import timedelta
from typing import Any

from pitstore.client._calls import Call, features_of, frame_of_vectors, online, output_of, symbols_of
from pitstore.client.cache import FeatureCache
from pitstore.errors import ConfigError, PitstoreError
from pitstore.frames import from_polars
from pitstore.serving import FeatureVector
from pitstore.status import OK
from pitstore.store import Store

__all__ = ["OnlineRead", "TtlBook"]


def set_name(ref: str) -> str:
    """``daily_core@2:ret_5d`` -> ``daily_core``."""
    return ref.split(":", 1)[0].split("@", 1)[0]


class TtlBook:
    """The online TTL (seconds) of each feature set, to bound cache entries: given by the user
    (``feature_ttls=``), else read from the fallback store's registry when there is one.

    The service does not publish TTLs yet; without one the client cannot know when a vector goes stale, so it
    refuses to cache it rather than guess."""

    def __init__(self, given: Mapping[str, float | timedelta] | None, store: Store | None) -> None:
        self.ttls = {k: v.total_seconds() if isinstance(v, timedelta) else float(v) for k, v in (given or {}).items()}
        self.store = store

    def ttl(self, features: Sequence[str]) -> float:
        out = []
        for ref in features:
            name = set_name(ref)
            if name not in self.ttls and self.store is not None:
                with suppress(PitstoreError):  # not in the local store: the user must say
                    self.ttls[name] = min(t.ttl.total_seconds() for t in self.store.serving.tables(name))
            if name not in self.ttls:
                raise ConfigError(f"the client cache needs the online TTL of feature set {name!r} to know when its "
                                  f"vectors go stale: pass feature_ttls={{{name!r}: seconds}} (or a fallback store "
                                  "that holds it)")
            out.append(self.ttls[name])
        return min(out)


class OnlineRead:
    def __init__(self, symbols: Sequence[str] | str, features: Sequence[str] | str, output: str | None,
                 cache: FeatureCache | None, ttls: TtlBook) -> None:
        self.symbols, self.features = symbols_of(symbols), features_of(features)
        self.output = None if output is None else output_of(output)
        self.cache = cache
        self.got: dict[str, FeatureVector] = {}
        self.prefix = "online:" + ",".join(self.features) + ":"
        if cache is not None:
            self.ttl = ttls.ttl(self.features)
            for s in dict.fromkeys(self.symbols):
                hit = cache.get(self.prefix + s)
                if hit is not None:
                    self.got[s] = hit
        missing = [s for s in dict.fromkeys(self.symbols) if s not in self.got]
        self.call: Call[list[FeatureVector]] | None = online(missing, self.features) if missing else None

    def merge(self, vectors: list[FeatureVector]) -> None:
        for v in vectors:
            self.got[v.symbol] = v
            if self.cache is not None and v.status == OK and v.ts is not None:
                fresh_for = v.ts.timestamp() + self.ttl - self.cache.clock()
                self.cache.set(self.prefix + v.symbol, v, min(self.cache.ttl, fresh_for))

    def result(self) -> Any:
        """Vectors in input order, or a frame like ``Store.get_online(output=...)``."""
        vectors = [self.got[s] for s in self.symbols]
        return vectors if self.output is None else from_polars(frame_of_vectors(vectors), self.output)

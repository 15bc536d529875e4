"""Online reads through the client cache: hits served from it, only the misses asked of the service, and
fresh ``ok`` vectors stored until the earlier of the cache's TTL and the vector's own freshness bound
(``ts + feature set TTL``), so a vector that has gone stale is never returned as fresh."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from pitstore.client._calls import Call, features_of, frame_of_vectors, output_of, symbols_of
from pitstore.client._http import Request
from pitstore.client.cache import FeatureCache
from pitstore.errors import PitstoreError
from pitstore.frames import from_polars
from pitstore.online.serving import FeatureVector
from pitstore.status import OK
from pitstore.store import Store

__all__ = ["OnlineRead", "Plan", "TtlBook"]


def set_name(ref: str) -> str:
    """``daily_core@2:ret_5d`` -> ``daily_core``."""
    return ref.split(":", 1)[0].split("@", 1)[0]


@dataclass(frozen=True)
class Plan:
    features: list[str]
    prefix: str  # of the cache keys: online:<features>:<symbol>
    ttl: float | None  # None: unknown, nothing is cached


class TtlBook:
    """The online TTL (seconds) of each feature set, to bound cache entries: given by the user
    (``feature_ttls=``), else as the service publishes it (``GET /v1/feature-sets``, asked once when a set is
    first read), else from the fallback store's registry when the service cannot answer.

    Without one the client cannot know when a vector goes stale, so it does not cache it rather than guess."""

    def __init__(self, given: Mapping[str, float | timedelta] | None, store: Store | None) -> None:
        self.ttls = {k: v.total_seconds() if isinstance(v, timedelta) else float(v) for k, v in (given or {}).items()}
        self.store = store
        self._plans: dict[Any, Plan] = {}

    def plan(self, features: Sequence[str] | str) -> Plan:
        """The checked feature references, their cache-key prefix and TTL; remembered once the TTL is known
        (the hot loop asks the same features every time: this keeps a warm-cache read to a few dict looks)."""
        key: Any = features if isinstance(features, str) else tuple(features)
        try:
            known = self._plans.get(key)
        except TypeError:  # unhashable items: features_of says what is wrong
            key, known = None, None
        if known is not None:
            return known
        feats = features_of(features)
        plan = Plan(feats, "online:" + ",".join(feats) + ":", self.ttl(feats))
        if key is not None and plan.ttl is not None and len(self._plans) < 1024:
            self._plans[key] = plan
        return plan

    def ask(self) -> Call[None]:
        """Learn every published TTL from the service (or, when it is down, from the fallback store); a TTL
        the user gave wins."""
        def parse(r: Any) -> None:
            for s in r.json()["feature_sets"]:
                self.ttls.setdefault(s["name"], float(s["online_ttl_seconds"]))

        def local(store: Store) -> None:
            for name in store.registry.names():
                with suppress(PitstoreError):
                    self.ttls.setdefault(name, min(t.ttl.total_seconds() for t in store.serving.tables(name)))

        return Call("feature_sets", Request("GET", "/v1/feature-sets", True), parse, local)

    def ttl(self, features: Sequence[str]) -> float | None:
        """The shortest TTL of the sets read, or None when one is unknown (then nothing is cached: no guess)."""
        out = []
        for ref in features:
            name = set_name(ref)
            if name not in self.ttls and self.store is not None:
                with suppress(PitstoreError):  # not in the local store either
                    self.ttls[name] = min(t.ttl.total_seconds() for t in self.store.serving.tables(name))
            if name not in self.ttls:
                return None
            out.append(self.ttls[name])
        return min(out)


class OnlineRead:
    __slots__ = ("cache", "features", "got", "missing", "output", "prefix", "symbols", "ttl")

    def __init__(self, symbols: Sequence[str] | str, plan: Plan, output: str | None,
                 cache: FeatureCache | None) -> None:
        self.symbols, self.features = symbols_of(symbols), plan.features
        self.output = None if output is None else output_of(output)
        self.cache = cache
        self.prefix, self.ttl = plan.prefix, plan.ttl
        unique = self.symbols if len(self.symbols) == 1 else list(dict.fromkeys(self.symbols))
        got: dict[str, FeatureVector] = {}
        if cache is not None and self.ttl is not None:
            get, prefix = cache.get, self.prefix
            for s in unique:
                hit = get(prefix + s)
                if hit is not None:
                    got[s] = hit
        self.got = got
        self.missing = [s for s in unique if s not in got] if got else unique  # to ask the service

    def merge(self, vectors: list[FeatureVector]) -> None:
        for v in vectors:
            self.got[v.symbol] = v
            if self.cache is not None and self.ttl is not None and v.status == OK and v.ts is not None:
                fresh_for = v.ts.timestamp() + self.ttl - self.cache.clock()
                self.cache.set(self.prefix + v.symbol, v, min(self.cache.ttl, fresh_for))

    def result(self) -> Any:
        """Vectors in input order, or a frame like ``Store.get_online(output=...)``."""
        vectors = [self.got[s] for s in self.symbols]
        return vectors if self.output is None else from_polars(frame_of_vectors(vectors), self.output)

"""Client: the pitstore HTTP service from synchronous code; the same methods as AsyncClient."""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from datetime import datetime, timedelta
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, overload

import polars as pl

from pitstore.client import _calls
from pitstore.client._calls import Call
from pitstore.client._core import Core
from pitstore.client._http import Resilience, SyncTransport
from pitstore.client._online import OnlineRead
from pitstore.client.cache import FeatureCache
from pitstore.errors import PitstoreError
from pitstore.features.catalogue import FeatureMetadata
from pitstore.frames import Frame
from pitstore.live.engine import PushReport
from pitstore.online.serving import FeatureVector
from pitstore.store import Store

if TYPE_CHECKING:  # pandas is an optional extra; pyarrow has no types (pa.Table is Any to mypy)
    import pandas as pd
    import pyarrow as pa
    from prometheus_client.registry import Collector

__all__ = ["Client"]

R = TypeVar("R")
Time = datetime | str


class Client:
    """``with Client("http://127.0.0.1:8000", api_key=...) as fs: fs.get_online([...], "daily_core")``

    One pooled keep-alive connection pool, retries with backoff on reads, a circuit breaker, and optionally a
    ``cache`` (:class:`FeatureCache`, for ``get_online``; ``feature_ttls``: online TTLs in seconds that
    override the ones the service publishes) and a ``fallback`` Store that answers reads when the service cannot. See
    :class:`Resilience` for the knobs and their defaults. Arguments are checked before any request with the
    library's errors; the service's errors come back as the same pitstore error classes.
    """

    def __init__(self, url: str, *, api_key: str | None = None, resilience: Resilience | None = None,
                 cache: FeatureCache | None = None, feature_ttls: Mapping[str, float | timedelta] | None = None,
                 fallback: Store | None = None) -> None:
        self._core = Core(url, resilience=resilience, cache=cache, feature_ttls=feature_ttls, fallback=fallback)
        self._http = SyncTransport(url, api_key, self._core.cfg, self._core.breaker, self._core.stats)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    @property
    def breaker_state(self) -> str:
        return self._core.breaker.state

    def metrics(self) -> dict[str, Any]:
        """Calls by method, errors by type, latency, retries, breaker state and changes, fallbacks, cache."""
        return self._core.metrics()

    def metrics_collector(self) -> Collector:
        """A prometheus_client collector of :meth:`metrics`, to ``REGISTRY.register``."""
        return self._core.stats.collector()

    def _run(self, call: Call[R], timeout: float | None) -> R:
        started, error = time.perf_counter(), None
        try:
            try:
                resp = self._http.send(call.request, call.name, timeout)
            except PitstoreError as exc:
                return self._core.or_fallback(call, exc)
            return call.parse(resp)
        except BaseException as exc:
            error = exc
            raise
        finally:
            self._core.record(call.name, started, error)

    @overload
    def get_online(self, symbols: Sequence[str] | str, features: Sequence[str] | str, *,
                         output: None = None, timeout: float | None = None) -> list[FeatureVector]: ...
    @overload
    def get_online(self, symbols: Sequence[str] | str, features: Sequence[str] | str, *,
                         output: Literal["polars"], timeout: float | None = None) -> pl.DataFrame: ...
    @overload
    def get_online(self, symbols: Sequence[str] | str, features: Sequence[str] | str, *,
                         output: Literal["pandas"], timeout: float | None = None) -> pd.DataFrame: ...
    @overload
    def get_online(self, symbols: Sequence[str] | str, features: Sequence[str] | str, *,
                         output: Literal["arrow"], timeout: float | None = None) -> pa.Table: ...
    @overload
    def get_online(self, symbols: Sequence[str] | str, features: Sequence[str] | str, *,
                         output: str, timeout: float | None = None) -> Frame: ...
    def get_online(self, symbols: Sequence[str] | str, features: Sequence[str] | str, *,
                         output: str | None = None, timeout: float | None = None) -> list[FeatureVector] | Frame:
        """As ``Store.get_online``: a FeatureVector per symbol in input order (status ``fallback`` when the
        fallback store served it), or a frame with ``output="polars" | "pandas" | "arrow"``."""
        started = time.perf_counter()
        plan = self._core.ttls.plan(features)
        if self._core.cache is not None and plan.ttl is None:
            self._run(self._core.ttls.ask(), timeout)
            plan = self._core.ttls.plan(features)
        read = OnlineRead(symbols, plan, output, self._core.cache)
        if read.missing:
            read.merge(self._run(_calls.online(read.missing, read.features), timeout))
        else:
            self._core.record("get_online", started, None)
        return read.result()

    def get_features(self, symbol: str, as_of: Time, features: Sequence[str] | str, *,
                           as_known_at: Time | None = None, timeout: float | None = None) -> FeatureVector:
        return self._run(_calls.features(symbol, as_of, features, as_known_at), timeout)

    # The frame family of the entities comes back (Arrow entities are Any to mypy: pyarrow has no types).
    @overload
    def get_historical(self, entities: pl.DataFrame | pl.LazyFrame, features: Sequence[str] | str,
                       as_known_at: Time | None = None,
                             *, timeout: float | None = None) -> pl.DataFrame: ...
    @overload
    def get_historical(self, entities: pd.DataFrame, features: Sequence[str] | str, as_known_at: Time | None = None,
                             *, timeout: float | None = None) -> pd.DataFrame: ...
    @overload
    def get_historical(self, entities: Any, features: Sequence[str] | str, as_known_at: Time | None = None,
                             *, timeout: float | None = None) -> Frame: ...
    def get_historical(self, entities: Any, features: Sequence[str] | str, as_known_at: Time | None = None,
                             *, timeout: float | None = None) -> Frame:
        """Features as of each entity row; the frame type follows ``entities`` (Arrow IPC on the wire)."""
        return self._run(_calls.historical(entities, features, as_known_at), timeout)

    @overload
    def get_ohlcv(self, symbol: str, start: Time | None = None, end: Time | None = None, *,
                  timeframe: str | None = None, output: Literal["polars"] = "polars",
                  timeout: float | None = None) -> pl.DataFrame: ...
    @overload
    def get_ohlcv(self, symbol: str, start: Time | None = None, end: Time | None = None, *,
                  timeframe: str | None = None, output: Literal["pandas"],
                  timeout: float | None = None) -> pd.DataFrame: ...
    @overload
    def get_ohlcv(self, symbol: str, start: Time | None = None, end: Time | None = None, *,
                  timeframe: str | None = None, output: Literal["arrow"], timeout: float | None = None) -> pa.Table: ...
    @overload
    def get_ohlcv(self, symbol: str, start: Time | None = None, end: Time | None = None, *,
                  timeframe: str | None = None, output: str, timeout: float | None = None) -> Frame: ...
    def get_ohlcv(self, symbol: str, start: Time | None = None, end: Time | None = None, *,
                  timeframe: str | None = None, output: str = "polars", timeout: float | None = None) -> Frame:
        """The stored bars of ``symbol`` in [start, end], aggregated to ``timeframe`` when given (coarser than
        the stored bars; see ``Store.bars``)."""
        return self._run(_calls.ohlcv(symbol, start, end, timeframe, output), timeout)

    @overload
    def get_indicators(self, symbol: str, start: Time | None = None, end: Time | None = None, *,
            indicators: Sequence[str] | str = ("sma_50", "sma_200", "rsi_14"), timeframe: str | None = None,
            output: Literal["polars"] = "polars", timeout: float | None = None) -> pl.DataFrame: ...
    @overload
    def get_indicators(self, symbol: str, start: Time | None = None, end: Time | None = None, *,
            indicators: Sequence[str] | str = ("sma_50", "sma_200", "rsi_14"), timeframe: str | None = None,
            output: Literal["pandas"], timeout: float | None = None) -> pd.DataFrame: ...
    @overload
    def get_indicators(self, symbol: str, start: Time | None = None, end: Time | None = None, *,
            indicators: Sequence[str] | str = ("sma_50", "sma_200", "rsi_14"), timeframe: str | None = None,
            output: Literal["arrow"], timeout: float | None = None) -> pa.Table: ...
    @overload
    def get_indicators(self, symbol: str, start: Time | None = None, end: Time | None = None, *,
            indicators: Sequence[str] | str = ("sma_50", "sma_200", "rsi_14"), timeframe: str | None = None,
            output: str, timeout: float | None = None) -> Frame: ...
    def get_indicators(self, symbol: str, start: Time | None = None, end: Time | None = None, *,
            indicators: Sequence[str] | str = ("sma_50", "sma_200", "rsi_14"), timeframe: str | None = None,
            output: str = "polars", timeout: float | None = None) -> Frame:
        call = _calls.indicators(symbol, start, end, indicators, timeframe, output, self._core.catalogue)
        return self._run(call, timeout)

    @overload
    def compute_feature(self, name: str, symbol: str, start: Time | None = None, end: Time | None = None, *,
            parameters: dict[str, Any] | None = None, timeframe: str | None = None,
                        output: Literal["polars"] = "polars",
            timeout: float | None = None) -> pl.DataFrame: ...
    @overload
    def compute_feature(self, name: str, symbol: str, start: Time | None = None, end: Time | None = None, *,
            parameters: dict[str, Any] | None = None, timeframe: str | None = None, output: Literal["pandas"],
            timeout: float | None = None) -> pd.DataFrame: ...
    @overload
    def compute_feature(self, name: str, symbol: str, start: Time | None = None, end: Time | None = None, *,
            parameters: dict[str, Any] | None = None, timeframe: str | None = None, output: Literal["arrow"],
            timeout: float | None = None) -> pa.Table: ...
    @overload
    def compute_feature(self, name: str, symbol: str, start: Time | None = None, end: Time | None = None, *,
            parameters: dict[str, Any] | None = None, timeframe: str | None = None, output: str,
            timeout: float | None = None) -> Frame: ...
    def compute_feature(self, name: str, symbol: str, start: Time | None = None, end: Time | None = None, *,
            parameters: dict[str, Any] | None = None, timeframe: str | None = None, output: str = "polars",
            timeout: float | None = None) -> Frame:
        call = _calls.compute(name, symbol, start, end, parameters, timeframe, output, self._core.catalogue)
        return self._run(call, timeout)

    def get_available_indicators(self, *, timeout: float | None = None) -> list[FeatureMetadata]:
        """The service's catalogue; from then on feature and indicator names are checked before requests."""
        return self._run(_calls.catalog(self._core.catalogue), timeout)

    def get_indicator_metadata(self, name: str, *, timeout: float | None = None) -> FeatureMetadata:
        return self._run(_calls.metadata(name, self._core.catalogue), timeout)

    def stats(self, *, timeout: float | None = None) -> dict[str, Any]:
        return self._run(_calls.stats(), timeout)

    def push(self, bars: Any, *, timeout: float | None = None) -> PushReport:
        """Live bars to the service (needs a ``write`` key); never retried, never sent to the fallback."""
        call, symbols = _calls.push(bars)
        try:
            return self._run(call, timeout)
        finally:
            self._core.invalidate_symbols(symbols)

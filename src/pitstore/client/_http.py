"""Transport: one pooled keep-alive httpx client, a deadline per call, retries (tenacity) with exponential
backoff and jitter on idempotent calls only, and the circuit breaker around every attempt."""

from __future__ import annotations

import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from pitstore.client._deps import need
from pitstore.client._errors import from_response, retry_after_of
from pitstore.client.breaker import CircuitBreaker
from pitstore.client.metrics import ClientMetrics
from pitstore.errors import BackendUnavailableError, PitstoreError

__all__ = ["AsyncTransport", "Request", "Resilience", "SyncTransport"]

httpx = need("httpx")
tenacity = need("tenacity")

try:
    _AGENT = f"pitstore-client/{version('pitstore')}"
except PackageNotFoundError:  # run from a source tree
    _AGENT = "pitstore-client"


@dataclass(frozen=True)
class Resilience:
    """How a client deals with a slow or failing service. Every field has a default:

    * ``timeout`` (5 s): the most one call may take, retries and their waits included; each attempt gets what
      is left of it. Methods take ``timeout=`` to override it for one call.
    * ``connect_timeout`` (1 s): the most one connection attempt may take (within ``timeout``).
    * ``retries`` (3): extra attempts of an idempotent call (reads; never push or invalidate) after a
      connection error, a timeout, a 503 or a 429; never after another status.
    * ``backoff`` (0.05 s), ``max_backoff`` (1 s), ``jitter`` (0.05 s): the wait before retry n is
      ``min(backoff * 2**(n-1), max_backoff)`` plus up to ``jitter``; a ``Retry-After`` header replaces it.
      No wait that would end past ``timeout`` is started: the call then fails with the last error.
    * ``breaker_failures`` (5) consecutive failures (connection errors, timeouts, 5xx) open the breaker; calls
      then fail fast with BackendUnavailableError for ``breaker_cooldown`` (5 s), then one trial call goes.
    * ``max_connections`` (100), ``max_keepalive`` (20), ``keepalive_expiry`` (30 s): the connection pool.
    * ``coalesce`` (True, AsyncClient): ``get_online`` calls for the same features made in one event-loop
      turn share one request (the union of their symbols).
    """

    timeout: float = 5.0
    connect_timeout: float = 1.0
    retries: int = 3
    backoff: float = 0.05
    max_backoff: float = 1.0
    jitter: float = 0.05
    breaker_failures: int = 5
    breaker_cooldown: float = 5.0
    max_connections: int = 100
    max_keepalive: int = 20
    keepalive_expiry: float = 30.0
    coalesce: bool = True


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    idempotent: bool
    params: dict[str, str] | None = None
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] | None = None


class _Transient(Exception):
    """An attempt that may succeed if made again: the error to raise if none does, and the server's wait."""

    def __init__(self, error: PitstoreError, retry_after: float | None = None) -> None:
        super().__init__(str(error))
        self.error, self.retry_after = error, retry_after


class _Wait:
    """Exponential backoff with jitter, or the server's ``Retry-After`` when it gave one."""

    def __init__(self, cfg: Resilience) -> None:
        self.backoff = tenacity.wait_exponential_jitter(multiplier=cfg.backoff, max=cfg.max_backoff, jitter=cfg.jitter)

    def __call__(self, state: Any) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        if isinstance(exc, _Transient) and exc.retry_after is not None:
            return exc.retry_after
        return float(self.backoff(state))


class _Base:
    def __init__(self, base_url: str, api_key: str | None, cfg: Resilience, breaker: CircuitBreaker,
                 metrics: ClientMetrics) -> None:
        self.base_url, self.cfg, self.breaker, self.metrics = base_url.rstrip("/"), cfg, breaker, metrics
        self.headers = {"User-Agent": _AGENT, **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self.limits = httpx.Limits(max_connections=cfg.max_connections, max_keepalive_connections=cfg.max_keepalive,
                                   keepalive_expiry=cfg.keepalive_expiry)
        self.wait = _Wait(cfg)

    def policy(self, req: Request, name: str, budget: float) -> dict[str, Any]:
        attempts = 1 + (self.cfg.retries if req.idempotent else 0)
        return {"stop": tenacity.stop_after_attempt(attempts) | tenacity.stop_before_delay(budget),
                "wait": self.wait, "retry": tenacity.retry_if_exception_type(_Transient), "reraise": True,
                "before_sleep": lambda _state: self.metrics.retry(name)}

    def start(self, deadline: float) -> Any:
        """Before an attempt: the breaker may refuse it (not retried); its httpx timeout is what is left."""
        self.breaker.before()
        left = deadline - time.monotonic()
        if left <= 0:
            raise BackendUnavailableError(f"pitstore service at {self.base_url}: no time left for another attempt")
        return httpx.Timeout(left, connect=min(self.cfg.connect_timeout, left))

    def failed(self, req: Request, exc: Exception) -> _Transient:
        self.breaker.failure()
        return _Transient(BackendUnavailableError(
            f"pitstore service at {self.base_url} cannot be reached ({req.method} {req.path}): "
            f"{type(exc).__name__}: {exc}"))

    def answered(self, resp: Any) -> Any:
        status = resp.status_code
        if status < 400:
            self.breaker.success()
            return resp
        if status >= 500:
            self.breaker.failure()
        else:
            self.breaker.success()  # the service is up; the request was wrong
        err = from_response(status, resp.content)
        if status in (429, 503):
            raise _Transient(err, retry_after_of(resp.headers.get("retry-after")))
        raise err


class SyncTransport(_Base):
    def __init__(self, base_url: str, api_key: str | None, cfg: Resilience, breaker: CircuitBreaker,
                 metrics: ClientMetrics) -> None:
        super().__init__(base_url, api_key, cfg, breaker, metrics)
        self.http = httpx.Client(base_url=self.base_url, headers=self.headers, limits=self.limits)

    def send(self, req: Request, name: str, timeout: float | None = None) -> Any:
        budget = self.cfg.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        try:
            for attempt in tenacity.Retrying(**self.policy(req, name, budget)):
                with attempt:
                    limit = self.start(deadline)
                    try:
                        resp = self.http.request(req.method, req.path, params=req.params, json=req.json,
                                                 content=req.content, headers=req.headers, timeout=limit)
                    except httpx.TransportError as exc:
                        raise self.failed(req, exc) from exc
                    return self.answered(resp)
        except _Transient as exc:
            raise exc.error from exc.__cause__
        raise AssertionError("tenacity neither returned nor raised")  # pragma: no cover

    def close(self) -> None:
        self.http.close()


class AsyncTransport(_Base):
    def __init__(self, base_url: str, api_key: str | None, cfg: Resilience, breaker: CircuitBreaker,
                 metrics: ClientMetrics) -> None:
        super().__init__(base_url, api_key, cfg, breaker, metrics)
        self.http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers, limits=self.limits)

    async def send(self, req: Request, name: str, timeout: float | None = None) -> Any:
        budget = self.cfg.timeout if timeout is None else timeout
        deadline = time.monotonic() + budget
        try:
            async for attempt in tenacity.AsyncRetrying(**self.policy(req, name, budget)):
                with attempt:
                    limit = self.start(deadline)
                    try:
                        resp = await self.http.request(req.method, req.path, params=req.params, json=req.json,
                                                       content=req.content, headers=req.headers, timeout=limit)
                    except httpx.TransportError as exc:
                        raise self.failed(req, exc) from exc
                    return self.answered(resp)
        except _Transient as exc:
            raise exc.error from exc.__cause__
        raise AssertionError("tenacity neither returned nor raised")  # pragma: no cover

    async def close(self) -> None:
        await self.http.aclose()

"""The ASGI app: every handler parses, calls the Store, and formats. Nothing else happens here.

Handlers are ``async`` and call the Store directly: one worker process serves one request at a time on its
event loop (the Store is not shared between threads); ``--workers N`` runs N processes on one store.
"""

from __future__ import annotations

import gc
import itertools
import json
import logging
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import asdict
from typing import Any
from urllib.parse import parse_qs

import polars as pl
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException as StarletteHTTPException

from pitstore.config import Settings
from pitstore.errors import ConflictError, InvalidInputError, PitstoreError
from pitstore.features.base import FeatureSet
from pitstore.features.catalogue import feature_metadata, list_features
from pitstore.features.library import standard_features
from pitstore.features.registry import fingerprint
from pitstore.server import dashboard, metrics, schema
from pitstore.server.auth import KeyRing
from pitstore.server.errors import RETRY_AFTER_S, status_of
from pitstore.server.figures import probe_tiers
from pitstore.server.fragments import OnlineAnswers
from pitstore.server.wire import (
    JSON,
    frame_response_body,
    parse_list,
    parse_symbols,
    parse_time,
    required_time,
    table_from_body,
    table_from_json,
    vector_dict,
    vectors_json,
    wants_arrow,
)
from pitstore.store import Store

__all__ = ["create_app"]

log = logging.getLogger("pitstore.server")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[Message]], Callable[[Message], Awaitable[None]]], Awaitable[None]]

_OPEN = ("/healthz", "/readyz", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc",
         *dashboard.OPEN_PATHS)


def _error(status: int, kind: str, message: str, request_id: str, **headers: str) -> Response:
    body = json.dumps({"error": kind, "message": message, "request_id": request_id}).encode()
    return Response(body, status_code=status, media_type=JSON, headers=headers)


def _json(data: Any) -> Response:
    return Response(json.dumps(data, allow_nan=False, default=str).encode(), media_type=JSON)


_RID_PREFIX = os.urandom(8).hex()  # request ids: unique per process, then a counter (uuid4 costs 1.5 µs)
_RID_COUNTER = itertools.count()
_HEADERS = (b"x-request-id", b"content-length", b"authorization", b"x-api-key", b"accept")

FastPath = Callable[[bytes], bytes]


class _Edge:
    """Pure ASGI middleware (cheaper than BaseHTTPMiddleware on the hot path): request ids, body bound,
    API keys by scope, request metrics. ``GET /v1/online`` in JSON is answered here directly (``fast``), without
    FastAPI's routing and parameter machinery (about 75 µs a request); its route stays declared for OpenAPI,
    and serves the Arrow answers."""

    def __init__(self, app: ASGIApp, keys: KeyRing, max_body: int, fast: FastPath) -> None:
        self.app, self.keys, self.max_body, self.fast = app, keys, max_body, fast

    async def __call__(self, scope: Scope, receive: Callable[[], Awaitable[Message]],
                       send: Callable[[Message], Awaitable[None]]) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        headers = {k: v for k, v in scope["headers"] if k in _HEADERS}
        given = headers.get(b"x-request-id", b"").decode("latin-1")
        rid = given if 0 < len(given) <= 64 and given.isprintable() else f"{_RID_PREFIX}{next(_RID_COUNTER):016x}"
        path: str = scope["path"]
        method: str = scope["method"]
        denied = self._check(path, method, headers, rid) if self.keys or b"content-length" in headers else None
        if denied is None and path == "/v1/online" and method == "GET" and b"arrow" not in headers.get(b"accept",
                                                                                                      b""):
            status = await self._fast(scope["query_string"], rid, send)
            metrics.observe_request(path, method, status, time.perf_counter() - started)
            return
        scope.setdefault("state", {})["request_id"] = rid
        status_box = [500]

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_box[0] = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", rid.encode())]
            await send(message)

        if denied is not None:
            await denied(scope, receive, send_with_id)
        else:
            await self.app(scope, self._bounded(receive), send_with_id)
        # The matched route's template (bounded label set); requests that matched no route share one label.
        endpoint = getattr(scope.get("route"), "path", None) or ("denied" if denied is not None else "unmatched")
        metrics.observe_request(endpoint, method, status_box[0], time.perf_counter() - started)

    async def _fast(self, query: bytes, rid: str, send: Callable[[Message], Awaitable[None]]) -> int:
        status, extra = 200, []
        try:
            body = self.fast(query)
        except Exception as exc:  # the same answers as the exception handlers give
            status = status_of(exc) if isinstance(exc, PitstoreError) else 500
            if status >= 500:
                log.error("request %s failed: %s: %s", rid, type(exc).__name__, exc, exc_info=status == 500)
            if status == 503:
                extra = [(b"retry-after", str(RETRY_AFTER_S).encode())]
            message = str(exc) if isinstance(exc, PitstoreError) else f"internal error (request {rid}; see the log)"
            kind = type(exc).__name__ if isinstance(exc, PitstoreError) else "InternalError"
            body = json.dumps({"error": kind, "message": message, "request_id": rid}).encode()
        await send({"type": "http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", b"%d" % len(body)),
                                (b"x-request-id", rid.encode()), *extra]})
        await send({"type": "http.response.body", "body": body})
        return status

    def _check(self, path: str, method: str, headers: dict[bytes, bytes], rid: str) -> Response | None:
        length = headers.get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_body):
            return _error(413, "PayloadTooLarge", f"request body over {self.max_body:,} bytes", rid)
        if not self.keys or path in _OPEN:
            return None
        auth = headers.get(b"authorization", b"").decode("latin-1")
        key = auth[7:].strip() if auth.lower().startswith("bearer ") else headers.get(b"x-api-key", b"").decode(
            "latin-1")
        if not key:
            return _error(401, "Unauthorized", "an API key is required: Authorization: Bearer <key> or X-API-Key",
                          rid, **{"WWW-Authenticate": "Bearer"})
        scope_ = self.keys.scope_of(key)
        if scope_ is None:
            return _error(401, "Unauthorized", "the API key is not valid", rid, **{"WWW-Authenticate": "Bearer"})
        needed = "admin" if path == "/v1/invalidate" else ("write" if path == "/v1/push" else "read")
        if not self.keys.allows(scope_, needed):
            return _error(403, "Forbidden", f"this key has scope {scope_!r}; {path} needs {needed!r}", rid)
        return None

    def _bounded(self, receive: Callable[[], Awaitable[Message]]) -> Callable[[], Awaitable[Message]]:
        seen = [0]

        async def wrapped() -> Message:
            message = await receive()
            seen[0] += len(message.get("body", b""))
            if seen[0] > self.max_body:
                raise InvalidInputError(f"request body over {self.max_body:,} bytes", column="body")
            return message

        return wrapped


def create_app(store: Store | None = None, *, settings: Settings | None = None, keys: KeyRing | None = None,
               push_sets: Sequence[FeatureSet] = (), push_enabled: bool = True) -> Any:
    """The pitstore HTTP app on ``store`` (or a store opened from ``settings`` at startup, closed at
    shutdown: pushed rows are flushed then). ``push_sets``: the feature sets ``/v1/push`` computes (registered
    at startup); Python-code sets cannot be rebuilt from the catalog, so they are given here."""
    state: dict[str, Store] = {}
    settings = store.settings if store is not None else (settings or Settings.load())

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        state["store"] = store if store is not None else Store(settings)
        for fs in push_sets or _standard_if_registered(state["store"]):
            state["store"].register(fs)
        # What startup made (modules, the store, the registry) lives as long as the process: out of the
        # collector's sight, a full collection walks only what requests allocate (shorter pauses in the tail).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if store is None:
                state["store"].close()

    app = FastAPI(title="pitstore", version="1", lifespan=lifespan,
                  description="Point-in-time features for market data: the same values as the library.")

    def the_store() -> Store:
        return state["store"]

    @app.exception_handler(PitstoreError)
    async def _pitstore_error(request: Request, exc: PitstoreError) -> Response:
        status = status_of(exc)
        rid = request.scope["state"]["request_id"]
        if status >= 500:
            log.error("request %s failed: %s: %s", rid, type(exc).__name__, exc)
        extra = {"Retry-After": str(RETRY_AFTER_S)} if status == 503 else {}
        return _error(status, type(exc).__name__, str(exc), rid, **extra)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return _error(422, "InvalidInputError", f"{where}: {first.get('msg', 'invalid request')}",
                      request.scope["state"]["request_id"])

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        kind = {404: "NotFoundError", 405: "MethodNotAllowed"}.get(exc.status_code, "HTTPError")
        headers = dict(exc.headers or {})
        if exc.status_code == 405:  # every method of the path, not only those of the first route matched
            regexes = [(getattr(r, "path_regex", None), getattr(r, "methods", ())) for r in app.routes]
            allowed = {m for rx, methods in regexes if rx is not None and rx.match(request.url.path)
                       for m in methods}
            headers["Allow"] = ", ".join(sorted(allowed))
        return _error(exc.status_code, kind, str(exc.detail), request.scope["state"]["request_id"], **headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        rid = request.scope["state"]["request_id"]
        log.exception("request %s failed", rid)
        return _error(500, "InternalError", f"internal error (request {rid}; see the server log)", rid)

    # --- health ----------------------------------------------------------------------------------------

    @app.get("/healthz", tags=["health"], summary="The process is alive")
    async def healthz() -> Response:
        return _json({"status": "ok"})

    @app.get("/readyz", tags=["health"], summary="Each tier reachable, with its state")
    async def readyz() -> Response:
        tiers = readiness(the_store())
        ready = all(t["up"] for t in tiers.values() if t["required"])
        body = json.dumps({"ready": ready, "tiers": tiers}).encode()
        return Response(body, status_code=200 if ready else 503, media_type=JSON)

    @app.get("/metrics", tags=["health"], summary="Prometheus metrics (text format)")
    async def metrics_endpoint() -> Response:
        body, content_type = metrics.render(the_store())
        return Response(body, media_type=content_type)

    # --- online and point-in-time ---------------------------------------------------------------------

    @app.get("/v1/online", tags=["features"], summary="The latest vector per symbol, many symbols in one call")
    async def online_get(request: Request, symbols: str, features: str) -> Response:
        return _online(the_store(), request, symbols, features)

    @app.post("/v1/online", tags=["features"], summary="As GET /v1/online, symbols and features in a JSON body")
    async def online_post(request: Request) -> Response:
        body = await _json_body(request)
        return _online(the_store(), request, body.get("symbols"), body.get("features"))

    @app.get("/v1/features/{symbol:path}", tags=["features"], summary="One point-in-time look-up")
    async def features_of(symbol: str, as_of: str, features: str, as_known_at: str | None = None) -> Response:
        vec = the_store().get_features(parse_symbols(symbol)[0], required_time(as_of, "as_of"),
                                       parse_list(features, "features"),
                                       as_known_at=parse_time(as_known_at, "as_known_at"))
        metrics.count_online([vec.status], "features")
        return _json(vector_dict(vec))

    @app.post("/v1/historical", tags=["features"],
              summary="Features as of each entity row (JSON rows, or an Arrow IPC / Parquet body)")
    async def historical(request: Request, features: str | None = None, as_known_at: str | None = None) -> Response:
        raw = await request.body()
        arrow = wants_arrow(request.headers.get("accept"))

        def work() -> tuple[bytes | memoryview, str]:
            entities, body = _table(raw, request.headers.get("content-type", JSON), "entities")
            names, known = body.get("features", features), body.get("as_known_at", as_known_at)
            out = the_store().get_historical(entities, parse_list(names, "features"),
                                             as_known_at=parse_time(known, "as_known_at"), output="polars")
            return frame_response_body(out, arrow)

        data, media = await run_in_threadpool(work)
        return Response(data, media_type=media)

    # --- bars and the catalogue ------------------------------------------------------------------------

    @app.get("/v1/bars/{symbol:path}", tags=["data"],
             summary="The stored OHLCV bars of a symbol in [start, end], or aggregated to a coarser timeframe")
    async def bars(request: Request, symbol: str, start: str | None = None, end: str | None = None,
                   timeframe: str | None = None) -> Response:
        arrow = wants_arrow(request.headers.get("accept"))

        def work() -> tuple[bytes | memoryview, str]:
            df = the_store().bars(parse_symbols(symbol)[0], timeframe=timeframe)
            t0, t1 = parse_time(start, "start"), parse_time(end, "end")
            if t0 is not None:
                df = df.filter(df["ts"] >= t0)
            if t1 is not None:
                df = df.filter(df["ts"] <= t1)
            return frame_response_body(df, arrow)

        data, media = await run_in_threadpool(work)
        return Response(data, media_type=media)

    @app.get("/v1/catalog", tags=["catalogue"], summary="Every feature pitstore can compute")
    async def catalog(kind: str | None = None) -> Response:
        if kind not in (None, "builtin", "talib"):
            raise InvalidInputError("must be 'builtin' or 'talib'", column="kind", value=kind)
        return _json({"features": [asdict(m) for m in list_features(kind)]})

    @app.get("/v1/catalog/{name}", tags=["catalogue"], summary="One feature's metadata")
    async def catalog_one(name: str) -> Response:
        return _json(asdict(feature_metadata(name)))

    @app.get("/v1/feature-sets", tags=["catalogue"], summary="Registered feature sets and their latest version")
    async def feature_sets() -> Response:
        reg = the_store().registry
        return _json({"feature_sets": [_version(the_store(), reg.get(n)) for n in reg.names()]})

    @app.get("/v1/feature-sets/{name}/versions", tags=["catalogue"],
             summary="Every live version of a feature set, with its entries, rows, bytes and symbols")
    async def versions(name: str) -> Response:
        store = the_store()
        return _json({"name": name, "versions": [{**_version(store, v), **v.to_dict()} for v in store.versions(name)]})

    @app.get("/v1/indicators/{symbol:path}", tags=["data"],
             summary="Indicator rows for a range by default names (sma_50, rsi_14, macd_12_26_9)")
    async def indicators(request: Request, symbol: str, indicators: str, start: str | None = None,
                         end: str | None = None, timeframe: str | None = None) -> Response:
        arrow = wants_arrow(request.headers.get("accept"))

        def work() -> tuple[bytes | memoryview, str]:
            df = the_store().get_indicators(parse_symbols(symbol)[0], parse_list(indicators, "indicators"),
                                            parse_time(start, "start"), parse_time(end, "end"), timeframe=timeframe)
            return frame_response_body(df, arrow)

        data, media = await run_in_threadpool(work)
        return Response(data, media_type=media)

    @app.post("/v1/compute", tags=["data"], summary="A catalogue feature with parameters, computed once, cached")
    async def compute(request: Request) -> Response:
        body = await _json_body(request)
        params = body.get("params") or {}
        name = body.get("feature")
        if not isinstance(name, str) or not name:
            raise InvalidInputError("is required: a catalogue feature name", column="feature")
        if not isinstance(params, dict):
            raise InvalidInputError("must be an object of parameter values", column="params")
        timeframe = body.get("timeframe")
        if timeframe is not None and not isinstance(timeframe, str):
            raise InvalidInputError("must be a timeframe such as '1h'", column="timeframe", value=timeframe)
        arrow = wants_arrow(request.headers.get("accept"))

        def work() -> tuple[bytes | memoryview, str]:
            df = the_store().compute_feature(name, parse_symbols(body.get("symbol"))[0],
                                             parse_time(body.get("start"), "start"), parse_time(body.get("end"), "end"),
                                             params=params, timeframe=timeframe)
            return frame_response_body(df, arrow)

        data, media = await run_in_threadpool(work)
        return Response(data, media_type=media)

    @app.get("/v1/stats", tags=["health"], summary="Store and compute-cache statistics")
    async def stats() -> Response:
        return _json(the_store().stats())

    @app.post("/v1/push", tags=["live"], summary="Live bars in (JSON rows or Arrow), their feature rows out")
    async def push(request: Request) -> Response:
        if not push_enabled:
            raise ConflictError("push needs a single worker: live state is kept per process (serve --workers 1)")
        bars, _ = _table(await request.body(), request.headers.get("content-type", JSON), "bars")
        report = the_store().push(bars)  # on the loop: a push is small, and its rows are seen in order
        return _json({"bars": report.bars, "duplicates": report.duplicates, "restated": report.restated,
                      "pending_offline": report.pending_offline,
                      "rows": {t: json.loads(df.write_json()) for t, df in report.rows.items()}})

    @app.post("/v1/invalidate", tags=["live"], summary="Drop online rows and/or compute-cache entries")
    async def invalidate(request: Request) -> Response:
        body = await _json_body(request)
        symbols = body.get("symbols")
        feature_set = body.get("feature_set")
        if feature_set is not None and not isinstance(feature_set, str):
            raise InvalidInputError("must be a feature set reference", column="feature_set")
        for flag in ("online", "cache"):
            if not isinstance(body.get(flag, True), bool):
                raise InvalidInputError("must be true or false", column=flag)
        done = the_store().invalidate(feature_set, None if symbols is None else parse_symbols(symbols),
                                      online=body.get("online", True), cache=body.get("cache", False))
        return _json(done)

    dashboard.mount(app, the_store)

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = schema.patch(get_openapi(title=app.title, version=app.version,
                                                          description=app.description, routes=app.routes))
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    answers: list[OnlineAnswers] = []  # made once the store is open (at startup, when it is opened here)
    parsed: dict[bytes, tuple[list[str], tuple[str, ...]]] = {}

    def fast_online(query: bytes) -> bytes:
        args = parsed.get(query)
        if args is None:
            args = _online_query(query)
            if len(query) <= _MAX_MEMO_QUERY:  # a pure function of the bytes: remembered, within a bound
                if len(parsed) >= _MAX_MEMO_QUERIES:
                    parsed.clear()
                parsed[query] = args
        if not answers:
            answers.append(OnlineAnswers(the_store().serving))
        body, statuses = answers[0].answer(*args)
        metrics.count_online(statuses, "online")
        return body

    return _Edge(app, keys if keys is not None else KeyRing(()), settings.max_body_bytes, fast_online)


_MAX_MEMO_QUERY = 8_192  # bytes: longer query strings are parsed every time
_MAX_MEMO_QUERIES = 2_048  # remembered query strings (at most ~16 MB); more: start again


def _online_query(query: bytes) -> tuple[list[str], tuple[str, ...]]:
    """``symbols`` and ``features`` of a GET /v1/online query string (the last of each, blanks kept), checked.
    What ``parse_qs`` gives, split by hand when there is nothing to unquote (a third of a request's time)."""
    text = query.decode("latin-1")
    if "%" in text or "+" in text:
        args = {k: v[-1] for k, v in parse_qs(text, keep_blank_values=True).items()}
    else:
        args = {}
        for part in text.split("&"):
            if part:
                name, _, value = part.partition("=")
                args[name] = value
    return parse_symbols(args.get("symbols")), tuple(parse_list(args.get("features"), "features"))


def _standard_if_registered(store: Store) -> list[FeatureSet]:
    """The built-in standard set, for /v1/push by default, when the store holds it with the same definition
    (registering it otherwise would add a version nobody asked for)."""
    fs = standard_features()
    if fs.name in store.registry.names() and any(v.fingerprint == fingerprint(fs) for v in store.versions(fs.name)):
        return [fs]
    return []


def _version(store: Store, v: Any) -> dict[str, Any]:
    """A version's identity and the serving rules a client needs to judge freshness itself: the online TTL
    (the set's own, or the timeframe default) and the availability lag."""
    table = store.serving.tables(f"{v.name}@{v.version}")[0]
    return {"name": v.name, "version": v.version, "fingerprint": v.fingerprint,
            "created_at": v.created_at.isoformat(), "columns": list(v.definition.get("columns", [])),
            "timeframe": v.definition.get("timeframe"), "online_ttl_seconds": table.ttl.total_seconds(),
            "availability_lag_seconds": table.lag_us / 1e6}


def _online(store: Store, request: Request, symbols: Any, features: Any) -> Response:
    syms, names = parse_symbols(symbols), parse_list(features, "features")
    if wants_arrow(request.headers.get("accept")):
        df = store.get_online(syms, names, output="polars")
        metrics.count_online(df["status"].to_list(), "online")
        data, media = frame_response_body(df, True)
        return Response(data, media_type=media)
    vectors = store.get_online(syms, names)
    metrics.count_online([v.status for v in vectors], "online")
    return Response(vectors_json(vectors), media_type=JSON)


def _table(raw: bytes, content_type: str, field: str) -> tuple[pl.DataFrame, dict[str, Any]]:
    """A table from a JSON body (``{field: [rows], ...}``, returned with the rest of the body) or from an
    Arrow / Parquet body (other arguments then come in the query)."""
    if content_type.split(";")[0].strip().lower() == JSON:
        body = _parse_json(raw)
        return table_from_json(body.get(field), field), body
    return table_from_body(raw, content_type, field), {}


async def _json_body(request: Request) -> dict[str, Any]:
    kind = request.headers.get("content-type", JSON).split(";")[0].strip().lower()
    if kind != JSON:
        raise InvalidInputError(f"send a JSON body ({JSON}), not {kind!r}", column="body")
    return _parse_json(await request.body())


def _parse_json(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInputError(f"the body is not valid JSON ({exc})", column="body") from exc
    if not isinstance(body, dict):
        raise InvalidInputError("the body must be a JSON object", column="body")
    return body


def readiness(store: Store) -> dict[str, dict[str, Any]]:
    """Each tier with ``up`` and, when down, why (:func:`pitstore.server.figures.probe_tiers`); the catalog is
    required, the online and history tiers are not (reads fall back past them). Each result is a metric too."""
    tiers = probe_tiers(store, offline="catalog")
    for name, tier in tiers.items():
        metrics.backend_up(name, tier["up"])
    return tiers


def app_from_env() -> Any:
    """The app of ``pitstore serve`` workers: settings and push sets from the environment the command exported
    (``PITSTORE_SERVE_FEATURES``: ``module:attribute`` specs, ``;``-separated; ``PITSTORE_SERVE_WORKERS``)."""
    from pitstore.cli.common import load_feature_set

    settings = Settings.load()
    specs = [s for s in os.environ.get("PITSTORE_SERVE_FEATURES", "").split(";") if s]
    return create_app(settings=settings, keys=KeyRing.load(settings.root, settings.api_keys),
                      push_sets=[load_feature_set(s) for s in specs],
                      push_enabled=os.environ.get("PITSTORE_SERVE_WORKERS", "1") == "1")

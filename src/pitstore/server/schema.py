"""The OpenAPI document: FastAPI's, with what the handlers really send declared (they return raw bytes for
speed, so FastAPI cannot see it): the error body on every operation, Arrow beside JSON for tables, the
Prometheus text format, and the JSON request bodies."""

from __future__ import annotations

from typing import Any

__all__ = ["BODIES", "TABULAR", "patch"]

_ERROR = {
    "type": "object",
    "required": ["error", "message", "request_id"],
    "properties": {"error": {"type": "string", "description": "the error type (pitstore's error tree)"},
                   "message": {"type": "string"}, "request_id": {"type": "string"}},
}
_ARROW = "application/vnd.apache.arrow.stream"
_NAMES = {"oneOf": [{"type": "string"}, {"type": "array", "items": {"type": "string"}}]}
_TIME = {"type": "string", "description": "ISO 8601 with a UTC offset (naive times are refused)"}
_ROWS = {"type": "array", "items": {"type": "object", "required": ["symbol", "ts"],
                                    "properties": {"symbol": {"type": "string"}, "ts": _TIME}}}

# Operations answering tables: JSON rows by default, an Arrow IPC stream on request.
TABULAR = ("/v1/online", "/v1/historical", "/v1/bars/{symbol}", "/v1/indicators/{symbol}", "/v1/compute")

BODIES: dict[tuple[str, str], dict[str, Any]] = {
    ("post", "/v1/online"): {"type": "object", "required": ["symbols", "features"],
                             "properties": {"symbols": _NAMES, "features": _NAMES}},
    ("post", "/v1/historical"): {"type": "object", "required": ["entities", "features"],
                                 "properties": {"entities": _ROWS, "features": _NAMES, "as_known_at": _TIME}},
    ("post", "/v1/compute"): {"type": "object", "required": ["feature", "symbol"],
                              "properties": {"feature": {"type": "string"}, "symbol": {"type": "string"},
                                             "params": {"type": "object"}, "start": _TIME, "end": _TIME}},
    ("post", "/v1/push"): {"type": "object", "required": ["bars"], "properties": {"bars": _ROWS}},
    ("post", "/v1/invalidate"): {"type": "object", "properties": {
        "feature_set": {"type": ["string", "null"], "description": "a reference; null: every set and version"},
        "symbols": {"oneOf": [*_NAMES["oneOf"], {"type": "null"}], "description": "null: all symbols"},
        "online": {"type": "boolean"}, "cache": {"type": "boolean"}}},
}


def patch(doc: dict[str, Any]) -> dict[str, Any]:
    doc.setdefault("components", {}).setdefault("schemas", {})["Error"] = _ERROR
    error = {"description": "An error: 401/403 key, 404 unknown name, 409 conflict, 413 body too large, 422 invalid"
             " input (the message names the field), 503 a tier is unavailable (Retry-After)",
             "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}
    keyed = bool(doc.get("components", {}).get("securitySchemes"))
    for path, ops in doc.get("paths", {}).items():
        for method, op in ops.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)  # FastAPI's validation body; ours is the Error body
            responses["default"] = error
            ok = responses.setdefault("200", {"description": "OK"})
            if path in TABULAR:
                ok["content"] = {"application/json": {"schema": {}}, _ARROW: {"schema": {}}}
            elif path == "/metrics":
                ok["content"] = {"text/plain": {"schema": {"type": "string"}}}
            elif path == "/readyz":
                responses["503"] = {"description": "a required tier is down", "content": ok.get("content", {})}
            body = BODIES.get((method, path))
            if body is not None:
                content = {"application/json": {"schema": body}}
                if path in ("/v1/historical", "/v1/push"):
                    content[_ARROW] = {"schema": {"type": "string", "format": "binary"}}
                    content["application/vnd.apache.parquet"] = {"schema": {"type": "string", "format": "binary"}}
                op["requestBody"] = {"required": True, "content": content}
            if keyed and not path.startswith(("/healthz", "/readyz", "/metrics")):
                op["security"] = [{"bearer": []}, {"apiKey": []}]
    if doc.get("paths"):
        doc["components"]["securitySchemes"] = {
            "bearer": {"type": "http", "scheme": "bearer"},
            "apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
        }
    return doc

"""Cache values as bytes: JSON, with FeatureVectors and datetimes tagged so they come back as themselves.

JSON rather than pickle: a value read from a shared Redis must never be able to run code in the reader."""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

from pitstore.online.serving import FeatureVector

__all__ = ["decode", "encode"]


def _tag(value: Any) -> Any:
    if isinstance(value, FeatureVector):
        return {"__fv__": [value.symbol, _tag(value.ts), value.status, value.values]}
    if isinstance(value, datetime):
        return {"__dt__": value.isoformat()}
    if isinstance(value, list | tuple):
        return [_tag(v) for v in value]
    if isinstance(value, dict):
        return {k: _tag(v) for k, v in value.items()}
    return value


def _untag(obj: dict[str, Any]) -> Any:
    if "__fv__" in obj:
        symbol, ts, status, values = obj["__fv__"]
        return FeatureVector(symbol, ts, status, values)
    if "__dt__" in obj:
        return datetime.fromisoformat(obj["__dt__"])
    return obj


def encode(value: Any) -> bytes:
    try:
        return json.dumps(_tag(value), separators=(",", ":")).encode()
    except (TypeError, ValueError) as exc:
        raise TypeError(f"FeatureCache values must be JSON-like or FeatureVectors: {exc}") from exc


def decode(data: bytes) -> Any:
    return json.loads(data, object_hook=_untag)

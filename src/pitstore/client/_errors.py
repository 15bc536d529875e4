"""Error bodies of the service (``{"error": type, "message", "request_id"}``) back to pitstore's error classes."""

from __future__ import annotations

import json

from pitstore import errors
from pitstore.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    ConflictError,
    InvalidInputError,
    NotFoundError,
    PitstoreError,
)

__all__ = ["from_response", "retry_after_of"]

_BY_NAME: dict[str, type[PitstoreError]] = {
    name: cls for name in errors.__all__ if isinstance(cls := getattr(errors, name), type)
    and issubclass(cls, PitstoreError)
}
# Names the edge of the service gives that are not in the tree: what a caller of the library would catch.
_BY_NAME.update({"PayloadTooLarge": InvalidInputError, "Unauthorized": ConfigError, "Forbidden": ConfigError,
                 "MethodNotAllowed": ConfigError, "InternalError": BackendError})
_BY_STATUS: dict[int, type[PitstoreError]] = {429: BackendUnavailableError, 422: InvalidInputError,
                                              413: InvalidInputError, 409: ConflictError, 404: NotFoundError,
                                              400: ConfigError}


def from_response(status: int, body: bytes) -> PitstoreError:
    """The pitstore error a failed response stands for: by the body's ``error`` name, else by status. A 503 is
    always BackendUnavailableError (whatever tier failed on the server, the service cannot answer now)."""
    try:
        data = json.loads(body)
        kind, message, rid = str(data["error"]), str(data["message"]), data.get("request_id")
    except (ValueError, KeyError, TypeError):
        kind, message, rid = "", body[:200].decode("utf-8", "replace") or f"HTTP {status}", None
    cls = BackendUnavailableError if status == 503 else _BY_NAME.get(kind) or _BY_STATUS.get(status) or (
        BackendError if status >= 500 else PitstoreError)
    exc = InvalidInputError(message) if cls is InvalidInputError else cls(message)
    exc.add_note(f"pitstore service: HTTP {status} {kind} (request id {rid})")
    return exc


def retry_after_of(value: str | None) -> float | None:
    """Seconds of a ``Retry-After`` header given as seconds (the service's form); an HTTP date is ignored."""
    if value is None:
        return None
    try:
        seconds = float(value)
    except ValueError:
        return None
    return seconds if seconds >= 0 else None

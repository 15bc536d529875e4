"""The one table from the error tree to HTTP status codes, and the JSON error body."""

from __future__ import annotations

from pitstore.errors import (
    BackendError,
    BackendUnavailableError,
    CacheCorruptionError,
    ConfigError,
    ConflictError,
    DefinitionError,
    InvalidInputError,
    LookaheadError,
    MissingDependencyError,
    NotFoundError,
    PitstoreError,
)

__all__ = ["RETRY_AFTER_S", "STATUS", "status_of"]

# Most specific first: the first class an error is an instance of gives its status.
STATUS: tuple[tuple[type[Exception], int], ...] = (
    (InvalidInputError, 422),  # names the field (column / argument) and the problem
    (DefinitionError, 422),
    (LookaheadError, 422),
    (ConfigError, 400),  # e.g. an unknown timeframe in a query
    (NotFoundError, 404),  # unknown feature set, version, symbol with no bars, feature name
    (ConflictError, 409),
    (BackendUnavailableError, 503),  # with Retry-After: the tier may come back
    (BackendError, 502),
    (CacheCorruptionError, 500),
    (MissingDependencyError, 501),
    (PitstoreError, 500),
)

RETRY_AFTER_S = 1  # what a client should wait before retrying a 503


def status_of(exc: Exception) -> int:
    """The HTTP status of an error raised by the Store (500 for anything outside the tree)."""
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return 500

"""Every error pitstore raises, in one place.

Each error also subclasses the builtin a caller would naturally catch::

    PitstoreError
    +-- ConfigError(ValueError)             bad settings, URLs, options
    |   +-- ReadOnlyStoreError              a write asked of a store opened read-only
    +-- DefinitionError(ValueError)         a feature or feature set that cannot be built
    |   +-- SchemaMismatchError             stored columns differ from a definition
    +-- NotFoundError(LookupError)
    |   +-- FeatureSetNotFoundError         no feature set of that name
    |   +-- VersionNotFoundError            the feature set exists, the version does not
    +-- ConflictError                       a write-once object would be changed
    +-- LookaheadError                      a value would leak from the future
    +-- BackendError                        a storage backend failed
    |   +-- BackendUnavailableError         ... because it cannot be reached
    +-- MissingDependencyError(ImportError) an optional extra is not installed
    +-- CacheCorruptionError                a stored entry does not match its catalog row
    +-- InvalidInputError(ValueError)       bad bars or arguments at the API edge
        +-- RetentionError                  as_known_at older than the retained history (retention_days)
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "CacheCorruptionError",
    "ConfigError",
    "ConflictError",
    "DefinitionError",
    "FeatureSetNotFoundError",
    "InvalidInputError",
    "LookaheadError",
    "MissingDependencyError",
    "NotFoundError",
    "PitstoreError",
    "ReadOnlyStoreError",
    "RetentionError",
    "SchemaMismatchError",
    "VersionNotFoundError",
]


class PitstoreError(Exception):
    """Base of every pitstore error."""


class ConfigError(PitstoreError, ValueError):
    """A setting, URL or option is invalid."""


class ReadOnlyStoreError(ConfigError):
    """The store was opened read-only (its root is not writable, or ``read_only`` says so) and an operation
    would write to it; nothing was changed."""

    def __init__(self, root: object, operation: str) -> None:
        self.root = root
        self.operation = operation
        super().__init__(f"store {root} is read-only: cannot {operation} (open it with write access, or"
                         " read_only=False where the root is writable)")


class DefinitionError(PitstoreError, ValueError):
    """A feature or feature set definition is invalid."""


class SchemaMismatchError(DefinitionError):
    """Stored data does not have the columns a definition expects."""


class NotFoundError(PitstoreError, LookupError):
    """Something asked for by name does not exist."""


class FeatureSetNotFoundError(NotFoundError):
    """No feature set is registered under that name."""


class VersionNotFoundError(NotFoundError):
    """The feature set exists but not in that version."""


class ConflictError(PitstoreError):
    """A write-once object would be changed."""


class LookaheadError(PitstoreError):
    """A value that was not knowable at the requested time would be served."""


class BackendError(PitstoreError):
    """A storage backend failed."""


class BackendUnavailableError(BackendError):
    """A storage backend cannot be reached."""


class MissingDependencyError(PitstoreError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class CacheCorruptionError(PitstoreError):
    """A stored entry does not match the size or hash its catalog row records."""


class InvalidInputError(PitstoreError, ValueError):
    """Input data is malformed. Names the column, the symbol and the first offending row when known."""

    def __init__(
        self,
        problem: str,
        *,
        column: str | None = None,
        symbol: str | None = None,
        row: int | None = None,
        value: Any = None,
    ) -> None:
        self.problem = problem
        self.column = column
        self.symbol = symbol
        self.row = row
        self.value = value
        where = []
        if column is not None:
            where.append(f"column {column!r}")
        if symbol is not None:
            where.append(f"symbol {symbol!r}")
        if row is not None:
            where.append(f"row {row}")
        msg = problem
        if where:
            msg += " (" + ", ".join(where) + ")"
        if value is not None:
            msg += f": got {value!r}"
        super().__init__(msg)


class RetentionError(InvalidInputError):
    """``as_known_at`` lies before the history the store keeps: superseded entries are deleted by ``gc`` once
    older than the ``retention_days`` setting, so an answer that far back could silently miss rows."""

    def __init__(self, as_known_at: Any, horizon: Any, retention_days: float) -> None:
        self.horizon = horizon
        self.retention_days = retention_days
        super().__init__(
            f"as_known_at {as_known_at} is before {horizon}, the earliest time this store can replay: superseded"
            f" entries are kept for retention_days = {retention_days:g} days (setting `retention_days`, or a"
            " shorter one of the process that last ran gc), then gc deletes them; raise retention_days before"
            " gc runs to replay further back", column="as_known_at")

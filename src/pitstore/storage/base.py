"""The data backend of a store: where entries, bar snapshots, cache results and archives live.

Paths are relative (``bars/s_AAPL/<uuid>.parquet``); a backend maps them under its root (a local directory, or
a bucket and prefix). Every file is written once under a name nobody used before (or, for the compute cache,
only under its key's lock) and never changed, so a backend needs no update-in-place, only an atomic ``put``.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import NamedTuple, Protocol, runtime_checkable

import pyarrow as pa

__all__ = ["ObjectInfo", "Storage"]


class ObjectInfo(NamedTuple):
    """One stored file: its relative path, size in bytes and modification time (seconds since the epoch)."""

    path: str
    size: int
    mtime: float


@runtime_checkable
class Storage(Protocol):
    """What the offline tier, the compute cache, ``gc`` and ``verify`` need of a data backend."""

    url: str  # where the files are, for messages and stats (a directory or a URL)

    def local_path(self, path: str) -> Path | None:
        """The local file of ``path`` when the backend is a local directory (readers then scan or memory-map it
        directly), else None."""
        ...

    def put(self, path: str, data: bytes | memoryview) -> None:
        """Store ``data`` as ``path`` atomically (no reader ever sees part of it) and check what was stored:
        its size, and its hash where the backend reports one. Raises OSError (the file is then not left)."""
        ...

    def read(self, path: str) -> bytes:
        """The bytes of ``path``; FileNotFoundError when it is missing."""
        ...

    def read_many(self, paths: Sequence[str]) -> list[bytes]:
        """The bytes of each of ``paths``, in order (fetched concurrently where the backend can)."""
        ...

    def read_buffer(self, path: str) -> pa.Buffer:
        """``path`` as an Arrow buffer (memory-mapped when local: no copy)."""
        ...

    def size(self, path: str) -> int | None:
        """The size of ``path`` in bytes; None when it is missing."""
        ...

    def delete(self, path: str) -> None:
        """Remove ``path`` (nothing when it is missing)."""
        ...

    def list(self, prefix: str) -> Iterator[ObjectInfo]:
        """Every file under the directory ``prefix`` (recursively; hidden directories skipped: they hold local
        state such as locks, never data)."""
        ...

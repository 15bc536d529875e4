"""Decoded results kept in memory between reads, least recently used out first, bounded in bytes
(cachetools' LRU with a size function; thread-safe here). A value larger than the bound is not kept."""

from __future__ import annotations

import threading
from collections.abc import Callable, Hashable
from contextlib import suppress
from typing import Any

from cachetools import LRUCache

__all__ = ["BytesLRU", "frame_bytes"]


def frame_bytes(value: Any) -> int:
    """Bytes a decoded frame holds: polars (estimated_size), Arrow (nbytes) or pandas (memory_usage)."""
    if hasattr(value, "estimated_size"):
        return int(value.estimated_size())
    if hasattr(value, "nbytes"):
        return int(value.nbytes)
    return int(value.memory_usage(index=True, deep=True).sum())


class BytesLRU:
    def __init__(self, max_bytes: int, sizeof: Callable[[Any], int] = frame_bytes) -> None:
        self.max_bytes = max_bytes
        self._cache: LRUCache[Hashable, Any] = LRUCache(maxsize=max(max_bytes, 1), getsizeof=sizeof)
        self._lock = threading.Lock()

    @property
    def cached_bytes(self) -> int:
        return int(self._cache.currsize)

    def get(self, key: Hashable) -> Any:
        with self._lock:
            return self._cache.get(key)

    def put(self, key: Hashable, value: Any) -> None:
        if self.max_bytes <= 0:
            return
        with self._lock, suppress(ValueError):  # ValueError: larger than the whole bound: served, not kept
            self._cache[key] = value

    def clear(self) -> None:
        with self._lock:
            self._cache.clear()

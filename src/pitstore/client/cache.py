"""FeatureCache: a client-side cache with a TTL per entry, bounded by entries and bytes (LRU eviction), safe
across threads and asyncio tasks; in memory, or shared through Redis with the same semantics.

An entry's size is the length of its JSON encoding (the bytes Redis stores), so both modes count bytes alike.
Memory mode keeps the object itself: a warm ``get`` is a dict look-up under a lock, no decoding.
"""

from __future__ import annotations

import fnmatch
import math
import threading
import time
from collections.abc import Callable
from typing import Any, NamedTuple

from pitstore.client import _codec
from pitstore.deps import need as need_extra
from pitstore.errors import ConfigError, MissingDependencyError

try:
    from cachetools import TLRUCache
except ImportError as exc:  # pragma: no cover
    raise MissingDependencyError(f"pitstore.client needs cachetools: pip install 'pitstore[client]' ({exc})") from exc

__all__ = ["FeatureCache"]


class _Entry(NamedTuple):
    value: Any
    size: int
    expires: float


class _Counted(TLRUCache[str, "_Entry"]):
    """cachetools' TLRU (per-entry expiry, then least recently used) counting what its byte bound evicts."""

    evictions = 0

    def popitem(self) -> tuple[str, _Entry]:
        item = super().popitem()
        self.evictions += 1
        return item


class FeatureCache:
    """``FeatureCache(max_entries=10_000, max_bytes=64 MiB, ttl=1.0)``; ``url="redis://..."`` shares it
    through Redis under ``prefix``. ``clock``: wall-clock seconds (injectable for tests): entries of online
    vectors expire at the vector's own freshness bound, a wall-clock time.

    ``get(key)`` returns None on a miss or an expired entry: an expired entry is never returned.
    ``invalidate_pattern`` takes a glob (``online:daily_core:*``), as Redis' MATCH does.
    """

    def __init__(self, *, max_entries: int = 10_000, max_bytes: int = 64 * 1024 * 1024, ttl: float = 1.0,
                 url: str | None = None, prefix: str = "pitstore:client:",
                 clock: Callable[[], float] = time.time) -> None:
        if max_entries < 1 or max_bytes < 1 or not ttl > 0:
            raise ConfigError("FeatureCache: max_entries and max_bytes must be >= 1 and ttl > 0")
        self.max_entries, self.max_bytes, self.ttl, self.clock = max_entries, max_bytes, ttl, clock
        self._lock = threading.Lock()
        self._hits = self._misses = self._evictions = 0
        self._redis: _RedisEntries | None = None
        if url is not None:
            if not url.startswith(("redis://", "rediss://", "unix://")):
                raise ConfigError(f"FeatureCache url must be redis://..., got {url!r}")
            self._redis = _RedisEntries(url, prefix)
        self._mem = _Counted(max_bytes, lambda _k, e, _now: e.expires, timer=clock, getsizeof=lambda e: e.size)

    def get(self, key: str) -> Any:  # Any: the value set() was given (any JSON-encodable value), or None
        if self._redis is not None:
            return self._get_redis(key)
        with self._lock:
            try:
                entry = self._mem[key]  # one expiry check (get() would check twice)
            except KeyError:
                self._misses += 1
                return None
            self._hits += 1
            return entry.value

    def set(self, key: str, value: Any, ttl: float | None = None) -> bool:
        """Store ``value`` for ``ttl`` seconds (default: the cache's); False when it is not stored (a ttl of 0
        or less, which also drops the key, or a value larger than ``max_bytes``)."""
        ttl = self.ttl if ttl is None else ttl
        data = _codec.encode(value)
        if not ttl > 0 or len(data) > self.max_bytes:
            self.invalidate(key)
            return False
        expires = self.clock() + ttl
        if self._redis is not None:
            evicted = self._redis.put(key, data, expires, ttl, self.max_entries, self.max_bytes)
            with self._lock:
                self._evictions += evicted
            return True
        with self._lock:
            self._mem[key] = _Entry(value, len(data), expires)
            while len(self._mem) > self.max_entries:
                self._mem.popitem()
        return True

    def invalidate(self, key: str) -> bool:
        if self._redis is not None:
            return self._redis.delete(key)
        with self._lock:
            return self._mem.pop(key, None) is not None

    def invalidate_pattern(self, pattern: str) -> int:
        """Drop every key matching the glob ``pattern``; the number dropped."""
        if self._redis is not None:
            return self._redis.delete_matching(pattern)
        with self._lock:
            keys = [k for k in self._mem if fnmatch.fnmatchcase(k, pattern)]
            for k in keys:
                del self._mem[k]
        return len(keys)

    def clear(self) -> None:
        if self._redis is not None:
            self._redis.clear()
        with self._lock:
            kept = self._mem.evictions
            self._mem.clear()  # MutableMapping.clear pops items one by one: they are not evictions
            self._mem.evictions = kept

    def stats(self) -> dict[str, Any]:
        """hits, misses, evictions (by the bounds; expiries are not evictions) and hit rate of this instance;
        entries and bytes held (in Redis mode: by every client sharing the prefix)."""
        with self._lock:
            self._mem.expire()
            evictions = self._evictions + self._mem.evictions
            entries, size = (len(self._mem), int(self._mem.currsize)) if self._redis is None else self._redis.size()
            total = self._hits + self._misses
            return {"hits": self._hits, "misses": self._misses, "evictions": evictions,
                    "hit_rate": self._hits / total if total else 0.0, "entries": entries, "bytes": size,
                    "backend": "redis" if self._redis is not None else "memory"}

    def _get_redis(self, key: str) -> Any:
        assert self._redis is not None
        data = self._redis.get(key)
        value, fresh = None, False
        if data is not None:
            expires, _, payload = data.partition(b"\n")
            # The entry's own expiry, by this cache's clock: Redis' PX is a memory bound only.
            fresh = self.clock() < float(expires)
            if fresh:
                value = _codec.decode(payload)
            else:
                self._redis.delete(key)
        with self._lock:
            if fresh:
                self._hits += 1
            else:
                self._misses += 1
        return value


# Lua: each operation is atomic in Redis, so clients sharing a prefix keep one consistent LRU order and byte
# count. Keys: <prefix>e:<key> (expiry line + payload), <prefix>lru (zset, score = access sequence),
# <prefix>size (hash key -> bytes), <prefix>bytes (their sum), <prefix>seq (the access sequence).
_DROP = """
local function drop(p, k)
  local s = redis.call('HGET', p..'size', k)
  if s then redis.call('DECRBY', p..'bytes', s); redis.call('HDEL', p..'size', k) end
  redis.call('ZREM', p..'lru', k)
  return redis.call('DEL', p..'e:'..k)
end
"""
_GET = """
local v = redis.call('GET', ARGV[1]..'e:'..ARGV[2])
if not v then drop(ARGV[1], ARGV[2]); return false end
redis.call('ZADD', ARGV[1]..'lru', redis.call('INCR', ARGV[1]..'seq'), ARGV[2])
return v
"""
_PUT = """
local p, k = ARGV[1], ARGV[2]
drop(p, k)
redis.call('SET', p..'e:'..k, ARGV[3], 'PX', ARGV[4])
redis.call('HSET', p..'size', k, ARGV[7])  -- the value's size, as memory mode counts it (not the expiry line)
redis.call('INCRBY', p..'bytes', ARGV[7])
redis.call('ZADD', p..'lru', redis.call('INCR', p..'seq'), k)
local evicted = 0
local max_n, max_b = tonumber(ARGV[5]), tonumber(ARGV[6])
while redis.call('ZCARD', p..'lru') > max_n or tonumber(redis.call('GET', p..'bytes')) > max_b do
  local victim = redis.call('ZRANGE', p..'lru', 0, 0)[1]
  if victim == k then break end
  evicted = evicted + drop(p, victim)  -- an entry Redis already expired is dropped, not counted
end
return evicted
"""
_DEL = "return drop(ARGV[1], ARGV[2])"


class _RedisEntries:
    def __init__(self, url: str, prefix: str) -> None:
        redis = need_extra("redis", "redis", "FeatureCache(url=redis://...)")
        self.prefix = prefix
        self.db = redis.Redis.from_url(url, socket_timeout=2.0, socket_connect_timeout=2.0)
        self._get, self._put, self._del = (self.db.register_script(_DROP + s) for s in (_GET, _PUT, _DEL))

    def get(self, key: str) -> bytes | None:
        return self._get(args=[self.prefix, key])  # type: ignore[no-any-return]

    def put(self, key: str, data: bytes, expires: float, ttl: float, max_entries: int, max_bytes: int) -> int:
        px = max(1, math.ceil(ttl * 1000))
        return int(self._put(args=[self.prefix, key, repr(expires).encode() + b"\n" + data, px, max_entries,
                                   max_bytes, len(data)]))

    def delete(self, key: str) -> bool:
        return bool(self._del(args=[self.prefix, key]))

    def delete_matching(self, pattern: str) -> int:
        # The LRU index holds every key put and not dropped (also those Redis already expired: dropped here).
        keys = [m.decode() for m in self.db.zrange(f"{self.prefix}lru", 0, -1)]
        return sum(self.delete(k) for k in keys if fnmatch.fnmatchcase(k, pattern))

    def clear(self) -> None:
        keys = list(self.db.scan_iter(match=f"{self.prefix}*", count=500))
        if keys:
            self.db.delete(*keys)

    def size(self) -> tuple[int, int]:
        return int(self.db.zcard(f"{self.prefix}lru")), int(self.db.get(f"{self.prefix}bytes") or 0)

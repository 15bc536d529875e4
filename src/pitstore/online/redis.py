"""Redis online store: shared by many processes and machines; rides out Redis outages without losing writes.

Keys, under a ``namespace`` prefix: ``{ns}:r:{table_id}:{symbol}`` holds a row in the codec's bytes and
``{ns}:c:{table_id}`` the table's column list. table_id never contains ``:``, so the symbol is everything after
the third separator and no symbol (slashes, dots, colons, unicode) can reach another key.

A stored value that cannot be decoded (corrupt) reads as a miss, counted in ``corrupt``: the caller refills it
from the lower tiers, and the write replaces it whatever its ts; it never fails the batch it is read in.

Failure behaviour: reads raise BackendUnavailableError fast (short socket timeouts, then a circuit breaker that
fails calls at once and lets one through every ``breaker_seconds``). Writes while Redis is down go to a bounded
in-memory queue, replayed in order through the same conditional script by the next call that reaches Redis.
"""

from __future__ import annotations

import logging
import math
import re
import struct
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from typing import TypeVar, cast

import redis
from redis.backoff import NoBackoff
from redis.exceptions import LockError
from redis.retry import Retry

from pitstore.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigError,
    InvalidInputError,
    SchemaMismatchError,
)
from pitstore.online.base import InputRow, OnlineRow, check_put, schema_mismatch, validate_table_id
from pitstore.online.codec import TS_OFFSET, decode, decode_columns, encode, encode_columns
from pitstore.online.outage import warn_outage

__all__ = ["RedisOnlineStore"]

T = TypeVar("T")
log = logging.getLogger("pitstore.online")

# KEYS[1]: the column-list key; KEYS[2..]: row keys. ARGV[1]: the column list, ARGV[2]: expiry in ms (0: none),
# ARGV[3..]: one encoded row per row key. Returns the rows written, or -1 when the stored column list differs.
# An older row never replaces a newer one; the script runs atomically, so this holds across writers.
_WRITE_LUA = f"""
local cols = redis.call('GET', KEYS[1])
if not cols then
  redis.call('SET', KEYS[1], ARGV[1])
elseif cols ~= ARGV[1] then
  return -1
end
local px = tonumber(ARGV[2])
local written = 0
for i = 2, #KEYS do
  local new = ARGV[i + 1]
  local old = redis.call('GET', KEYS[i])
  -- A value that is not a row of this table (another length or format: corrupt) is replaced like a missing one.
  if not old or #old ~= #new or string.byte(old, 1) ~= string.byte(new, 1)
      or struct.unpack('<i8', old, {TS_OFFSET + 1}) <= struct.unpack('<i8', new, {TS_OFFSET + 1}) then
    if px > 0 then
      redis.call('SET', KEYS[i], new, 'PX', px)
    else
      redis.call('SET', KEYS[i], new)
    end
    written = written + 1
  end
end
return written
"""
_CHUNK = 1000  # rows per script call: one call blocks Redis, keep each one to a few milliseconds
_DOWN = (redis.ConnectionError, redis.TimeoutError)
_GLOB_SPECIAL = re.compile(rb"([\\*?\[\]])")


@dataclass
class _Batch:
    """Encoded rows of one table waiting to be written, in order."""

    table_id: str
    columns: tuple[str, ...]
    expire_ms: int
    keys: list[bytes]
    rows: list[bytes]


class RedisOnlineStore:
    """Online rows in Redis (redis-py). Works under ``maxmemory-policy allkeys-lru``: an evicted row reads as
    None. ``expire_seconds`` sets a key expiry (``SET ... PX``) on the rows written."""

    def __init__(
        self,
        url: str,
        *,
        namespace: str = "pitstore",
        socket_timeout: float = 0.2,
        breaker_seconds: float = 0.25,
        max_pending: int = 1_000_000,
    ) -> None:
        if not isinstance(namespace, str) or not namespace or not namespace.isprintable():
            raise ConfigError(f"namespace must be a non-empty printable string, got {namespace!r}")
        for name, value in (("socket_timeout", socket_timeout), ("breaker_seconds", breaker_seconds)):
            if not isinstance(value, int | float) or not 0 < value < math.inf:
                raise ConfigError(f"{name} must be a positive number of seconds, got {value!r}")
        if isinstance(max_pending, bool) or not isinstance(max_pending, int) or max_pending < 0:
            raise ConfigError(f"max_pending must be a non-negative integer, got {max_pending!r}")
        try:
            self._client = redis.Redis.from_url(
                url,
                socket_timeout=socket_timeout,
                socket_connect_timeout=socket_timeout,
                # One immediate retry on a dropped connection (a pooled socket that a Redis restart closed), none
                # on timeouts: a stalled server must fail the call within socket_timeout.
                retry=Retry(NoBackoff(), 1, supported_errors=(redis.ConnectionError,)),
                protocol=2,
            )
        except ValueError as exc:
            raise ConfigError(f"invalid Redis URL {url!r}: {exc}") from exc
        kw = self._client.connection_pool.connection_kwargs
        address = kw.get("path") or f"{kw.get('host')}:{kw.get('port')}"
        self._where = f"Redis at {address}/{kw.get('db', 0)}"  # never the URL: it may hold a password
        self._namespace = namespace
        self._script = self._client.register_script(_WRITE_LUA)
        self._breaker_seconds = float(breaker_seconds)
        self._max_pending = max_pending
        self._retry_at = 0.0  # monotonic time before which calls fail at once; 0.0: closed (Redis reachable)
        self._last_error = ""
        self._lock = threading.Lock()  # guards the write queue and the writes themselves (in order)
        self._queue: deque[_Batch] = deque()
        self._pending = 0
        self._prefixes: dict[str, bytes] = {}
        self._columns: dict[str, tuple[str, ...]] = {}  # last known per table: rejects a mismatch while down
        self.corrupt = 0  # stored values read that could not be decoded (served as misses)

    # --- keys ---------------------------------------------------------------------------------------------

    def _prefix(self, table_id: str) -> bytes:
        prefix = self._prefixes.get(table_id)
        if prefix is None:
            validate_table_id(table_id)
            prefix = self._prefixes[table_id] = f"{self._namespace}:r:{table_id}:".encode()
        return prefix

    def _columns_key(self, table_id: str) -> bytes:
        return f"{self._namespace}:c:{table_id}".encode()

    def _keys(self, table_id: str, symbols: Sequence[str]) -> list[bytes]:
        prefix = self._prefix(table_id)
        try:
            return [prefix + s.encode() for s in symbols]
        except UnicodeEncodeError as exc:
            raise InvalidInputError(f"symbol is not valid unicode ({exc})", column="symbol") from exc

    # --- the circuit breaker --------------------------------------------------------------------------------

    def _unavailable(self) -> BackendUnavailableError:
        wait = max(0.0, self._retry_at - time.monotonic())
        return BackendUnavailableError(
            f"{self._where} is unreachable ({self._last_error}); next attempt in {wait:.2f} s"
        )

    def _trip(self, exc: Exception) -> BackendUnavailableError:
        """Record a failed call: fail calls at once for the next breaker_seconds."""
        self._last_error = f"{type(exc).__name__}: {exc}"
        self._retry_at = time.monotonic() + self._breaker_seconds
        return self._unavailable()

    def _is_open(self) -> bool:
        return bool(self._retry_at) and time.monotonic() < self._retry_at

    def _run(self, what: str, call: Callable[[], T], *, force: bool = False, for_read: bool = True) -> T:
        """Run ``call`` against Redis after flushing queued writes. ``force`` ignores an open breaker."""
        if not force and self._is_open():
            raise self._unavailable()
        try:
            if self._pending:
                with self._lock:
                    self._flush(for_read=for_read)
            result = call()
        except _DOWN as exc:
            raise self._trip(exc) from exc
        except redis.RedisError as exc:
            raise BackendError(f"{self._where}: cannot {what}: {exc}") from exc
        self._retry_at = 0.0
        return result

    # --- reads --------------------------------------------------------------------------------------------

    def get_latest(self, table_id: str, symbols: Sequence[str]) -> list[OnlineRow | None]:
        if not symbols:
            return []
        if self._retry_at and self._is_open():
            raise self._unavailable()
        keys = self._keys(table_id, symbols)
        try:
            if self._pending:
                with self._lock:
                    self._flush(for_read=True)
            if len(keys) == 1:
                raw: list[bytes | None] = [cast("bytes | None", self._client.get(keys[0]))]
            else:
                raw = cast("list[bytes | None]", self._client.mget(keys))
        except _DOWN as exc:
            raise self._trip(exc) from exc
        except redis.RedisError as exc:
            raise BackendError(f"{self._where}: cannot read {table_id!r}: {exc}") from exc
        self._retry_at = 0.0
        try:
            return [None if b is None else decode(b) for b in raw]
        except (BackendError, struct.error):  # off the hot path: only a batch holding a corrupt value gets here
            return self._decode_each(table_id, symbols, raw)

    def _decode_each(self, table_id: str, symbols: Sequence[str], raw: list[bytes | None]) -> list[OnlineRow | None]:
        """``raw`` decoded, an undecodable value as a miss (counted, logged)."""
        out: list[OnlineRow | None] = []
        for symbol, b in zip(symbols, raw, strict=True):
            try:
                out.append(None if b is None else decode(b))
            except (BackendError, struct.error) as exc:
                self.corrupt += 1
                warn_outage(log, f"online:corrupt:{table_id}", "%s: undecodable online value of %r in %r (%s),"
                            " read as a miss; %d so far", self._where, symbol, table_id, exc, self.corrupt)
                out.append(None)
        return out

    def columns(self, table_id: str) -> tuple[str, ...] | None:
        validate_table_id(table_id)
        raw = self._run(f"read columns of {table_id!r}", lambda: self._client.get(self._columns_key(table_id)))
        return None if raw is None else decode_columns(raw)

    # --- writes -------------------------------------------------------------------------------------------

    def put_latest(
        self,
        table_id: str,
        columns: Sequence[str],
        rows: Sequence[InputRow],
        *,
        expire_seconds: float | None = None,
    ) -> int:
        cols, latest = check_put(table_id, columns, rows, expire_seconds)
        expire_ms = 0 if expire_seconds is None else max(1, math.ceil(expire_seconds * 1000))
        batch = _Batch(table_id, cols, expire_ms, self._keys(table_id, [r[0] for r in latest]),
                       [encode(ts, values, symbol) for symbol, ts, values in latest])
        with self._lock:
            if self._is_open():
                return self._enqueue(batch)
            try:
                self._flush()
                written = self._write(batch)
            except _DOWN as exc:
                self._trip(exc)
                return self._enqueue(batch)
            except redis.RedisError as exc:
                raise BackendError(f"{self._where}: cannot write {table_id!r}: {exc}") from exc
            self._retry_at = 0.0
        return written

    def _write(self, batch: _Batch) -> int:
        """Run the conditional script over ``batch``. Idempotent, so a batch cut short by a failure is replayed
        whole."""
        ckey, text = self._columns_key(batch.table_id), encode_columns(batch.columns)
        written = 0
        for i in range(0, max(1, len(batch.keys)), _CHUNK):  # an empty batch still checks the column list
            n = int(self._script(keys=[ckey, *batch.keys[i:i + _CHUNK]],
                                 args=[text, batch.expire_ms, *batch.rows[i:i + _CHUNK]]))
            if n < 0:
                stored = cast("bytes | None", self._client.get(ckey))
                raise schema_mismatch(batch.table_id, decode_columns(stored or b"[]"), batch.columns)
            written += n
        self._columns[batch.table_id] = batch.columns
        return written

    def _enqueue(self, batch: _Batch) -> int:
        """Queue ``batch`` while Redis is down (under the lock); raises for the rows beyond ``max_pending``."""
        known = self._columns.get(batch.table_id)
        if known is not None and known != batch.columns:
            raise schema_mismatch(batch.table_id, known, batch.columns)
        n = len(batch.keys)
        room = max(0, self._max_pending - self._pending)
        accepted = min(n, room)
        if accepted:
            last = self._queue[-1] if self._queue else None
            if (last is not None and len(last.keys) < _CHUNK
                    and (last.table_id, last.columns, last.expire_ms) == (batch.table_id, batch.columns,
                                                                          batch.expire_ms)):
                last.keys += batch.keys[:accepted]  # one script call replays many small puts
                last.rows += batch.rows[:accepted]
            else:
                self._queue.append(_Batch(batch.table_id, batch.columns, batch.expire_ms, batch.keys[:accepted],
                                          batch.rows[:accepted]))
            self._pending += accepted
        if accepted < n:
            raise BackendUnavailableError(
                f"{self._where} is unreachable ({self._last_error}) and the write queue is full "
                f"({self._max_pending} rows): {n - accepted} of {n} rows were not accepted"
            )
        return 0

    def _flush(self, *, for_read: bool = False) -> None:
        """Write the queued batches in order (under the lock); unreachability leaves the rest queued. A batch that
        Redis rejects (e.g. out of memory) stays queued and raises; one whose table changed columns meanwhile
        (another process recreated it) is dropped and raises SchemaMismatchError. ``for_read``: a rejected batch
        only stops the replay, the read goes on and the next write reports it."""
        while self._queue:
            batch = self._queue[0]
            try:
                self._write(batch)
            except (redis.ResponseError, SchemaMismatchError) as exc:
                if for_read:
                    return
                if isinstance(exc, SchemaMismatchError):
                    self._queue.popleft()
                    self._pending -= len(batch.keys)
                    raise SchemaMismatchError(f"{len(batch.keys)} queued rows were dropped: {exc}") from exc
                raise
            self._queue.popleft()
            self._pending -= len(batch.keys)

    def pending(self) -> int:
        """Rows queued while Redis was unreachable, not yet written."""
        return self._pending

    # --- the rest -----------------------------------------------------------------------------------------

    def delete(self, table_id: str, symbols: Sequence[str] | None = None) -> int:
        validate_table_id(table_id)

        def run() -> int:
            if symbols is not None:
                keys = self._keys(table_id, list(set(symbols)))
                return int(self._client.delete(*keys)) if keys else 0
            pattern = _GLOB_SPECIAL.sub(rb"\\\1", self._prefix(table_id)) + b"*"
            deleted, chunk = 0, []
            for key in self._client.scan_iter(match=pattern, count=_CHUNK):
                chunk.append(key)
                if len(chunk) == _CHUNK:
                    deleted += int(self._client.delete(*chunk))
                    chunk = []
            if chunk:
                deleted += int(self._client.delete(*chunk))
            self._client.delete(self._columns_key(table_id))
            self._columns.pop(table_id, None)
            return deleted

        return self._run(f"delete rows of {table_id!r}", run, for_read=False)  # queued writes go first, or fail

    @contextmanager
    def lock(self, name: str, *, timeout: float) -> Iterator[None]:
        """Hold a lock shared by every process using this Redis (redis-py's token lock, expiring after
        ``timeout`` seconds so a killed holder cannot block the others for longer)."""
        key = f"{self._namespace}:lock:{name}"
        lock = self._client.lock(key, timeout=timeout, blocking_timeout=timeout, sleep=0.005)
        try:
            acquired = lock.acquire()
        except redis.RedisError as exc:
            raise self._trip(exc) from exc
        if not acquired:
            raise BackendUnavailableError(f"{self._where}: lock {name!r} not acquired within {timeout} s")
        try:
            yield
        finally:
            with suppress(redis.RedisError, LockError):  # expired or Redis gone: the key expires on its own
                lock.release()

    def change_token(self) -> None:
        """None: no token is both cheap and correct here. A write counter in Redis costs the round trip a read
        does, and keys that expire or are evicted by Redis itself change rows without any writer."""
        return None

    def touch(self, table_id: str, symbols: Sequence[str]) -> None:
        """Nothing: Redis keeps its own access times (and callers keep no copies of its rows)."""

    def ping(self) -> None:
        """Reach Redis (even while the breaker is open) and flush queued writes."""
        self._run("ping", self._client.ping, force=True)

    def close(self) -> None:
        """Flush queued writes and close the connections; raises if queued rows could not be written."""
        with self._lock:
            try:
                self._flush()
            except _DOWN as exc:
                self._trip(exc)
            finally:
                left = self._pending
                self._client.close()
        if left:
            raise BackendUnavailableError(f"closed with {left} queued rows not written: {self._unavailable()}")

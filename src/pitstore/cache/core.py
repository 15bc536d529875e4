"""The compute cache: ``get_or_compute`` with single flight, atomic publish and verified reads."""

from __future__ import annotations

import functools
import logging
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol, TypeVar, overload

import polars as pl
import pyarrow as pa

from pitstore.cache import codec
from pitstore.cache.keys import CacheKey, cache_key, raw_table
from pitstore.cache.lock import KeyLocks, ProcessLocks
from pitstore.catalog.base import CacheEntry, CacheIndex
from pitstore.catalog.sqlite import now_us
from pitstore.datahash import HASH_METHOD, file_hash
from pitstore.errors import CacheCorruptionError, InvalidInputError, ReadOnlyStoreError
from pitstore.memo import BytesLRU
from pitstore.offline.entries import default_cache_bytes, encode_symbol
from pitstore.storage import Storage, as_storage

__all__ = ["CACHE_DIR", "CachedCompute", "ComputeCache", "WarmReport"]

log = logging.getLogger("pitstore.cache")

CACHE_DIR = "cache"  # under the store root: <symbol>/<key>.parquet entries and .locks/<key>.lock
LOCK_DIR = ".locks"

R = TypeVar("R")  # the raw data a compute takes
C = TypeVar("C")  # its config
T = TypeVar("T")  # its result
R_contra = TypeVar("R_contra", contravariant=True)
C_contra = TypeVar("C_contra", contravariant=True)
T_co = TypeVar("T_co", covariant=True)


class CachedCompute(Protocol[R_contra, C_contra, T_co]):
    """What :meth:`ComputeCache.cached` (and ``Store.cached``) make of ``fn(raw, config)``: the same call, cached,
    with ``symbol=`` (default: raw's single ``symbol`` value)."""

    def __call__(self, raw: R_contra, config: C_contra, symbol: str | None = None) -> T_co: ...


@dataclass
class WarmReport:
    """What ``warm_cache`` did: computed and already-stored keys, and the symbols whose compute failed."""

    computed: int = 0
    hits: int = 0
    failed: dict[str, str] = field(default_factory=dict)  # symbol -> error message
    seconds: float = 0.0


class ComputeCache:
    """Content-addressed results of ``compute(raw, config)``, shared by every process using the store root."""

    def __init__(self, root: Path, catalog: CacheIndex, *, cost_per_compute_second: float = 0.0,
                 cost_per_data_call: float = 0.0, read_only: bool = False,
                 locks: ProcessLocks | None = None, memory_bytes: int | None = None,
                 storage: Storage | None = None) -> None:
        self.root = root
        self.storage = storage if storage is not None else as_storage(root)  # where the entries are
        # Decoded results of this process, by (key, file hash): a small frame decodes slower than many computes
        # run, and a key's result never changes (the key covers raw data, config and code). The file is still
        # checked on every hit (xxh3 is cheap; decoding is what costs).
        self._memo = BytesLRU(default_cache_bytes() if memory_bytes is None else memory_bytes)
        self.catalog = catalog
        self.read_only = read_only  # hits are served (their statistics not recorded); a miss cannot be stored
        # Single flight: the given locks (a team store's advisory locks), else file locks under the root.
        self.locks: ProcessLocks = locks if locks is not None else KeyLocks(root / CACHE_DIR / LOCK_DIR)
        # Cost tracking: a miss is one upstream data call plus its compute seconds; a hit avoids both.
        self.cost_per_compute_second = cost_per_compute_second
        self.cost_per_data_call = cost_per_data_call

    # --- the one entry point -------------------------------------------------------------------------

    # A compute's result comes back as the frame family it returned; a polars LazyFrame is stored collected, so it
    # comes back as a DataFrame (pyarrow has no types: an Arrow result is Any to mypy either way).
    @overload
    def get_or_compute(self, symbol: str, raw: R, config: C, compute: Callable[[R, C], pl.DataFrame | pl.LazyFrame],
                       *, wait_timeout: float | None = None) -> pl.DataFrame: ...
    @overload
    def get_or_compute(self, symbol: str, raw: R, config: C, compute: Callable[[R, C], T], *,
                       wait_timeout: float | None = None) -> T: ...
    def get_or_compute(
        self, symbol: str, raw: Any, config: Any, compute: Callable[[Any, Any], Any], *,
        wait_timeout: float | None = None,
    ) -> Any:
        """The stored result of ``compute(raw, config)`` for ``symbol``, computing and storing it when missing.

        Concurrent callers of one key (threads or processes) wait for a single computation. A waiter whose
        computing peer dies takes over at once (the kernel releases a dead process's lock); with
        ``wait_timeout`` it also computes itself after that many seconds if the peer is alive but stuck.
        A corrupted or truncated entry is detected (size and xxh3-128), dropped and recomputed.
        """
        return self._get(cache_key(symbol, raw, config, compute), raw, config, compute, wait_timeout)

    @overload
    def cached(self, fn: Callable[[R, C], pl.DataFrame | pl.LazyFrame]) -> CachedCompute[R, C, pl.DataFrame]: ...
    @overload
    def cached(self, fn: Callable[[R, C], T]) -> CachedCompute[R, C, T]: ...
    def cached(self, fn: Callable[[Any, Any], Any]) -> CachedCompute[Any, Any, Any]:
        """Decorator form: ``fn(raw, config)`` becomes cached; call it as ``fn(raw, config, symbol=...)``
        (``symbol`` may be left out when raw has a ``symbol`` column holding one value)."""

        @functools.wraps(fn)
        def wrapper(raw: Any, config: Any, symbol: str | None = None) -> Any:
            return self.get_or_compute(symbol if symbol is not None else _only_symbol(raw), raw, config, fn)

        return wrapper

    # --- internals -------------------------------------------------------------------------------------

    def _get(self, k: CacheKey, raw: Any, config: Any, compute: Callable[[Any, Any], Any],
             wait_timeout: float | None) -> Any:
        found = self._read_verified(k.key)
        if found is not None:
            return self._hit(k, *found)
        if self.read_only:  # before the lock: taking it would create a lock file under the root
            raise ReadOnlyStoreError(self.root, f"store a computed result of {k.symbol!r} (not in its compute cache,"
                                                " or damaged there)")
        with self.locks.hold(k.key, timeout=wait_timeout) as holding:
            # Another process may have published while we waited; a broken entry is dropped under the lock.
            entry = self.catalog.cache_get(k.key)
            corrupt = 0
            if entry is not None:
                try:
                    return self._hit(k, entry, self._load(entry))
                except CacheCorruptionError as exc:
                    log.warning("%s; recomputing", exc)
                    if holding:
                        self._drop(entry)
                    corrupt = 1
            if not holding:
                log.warning("key %s of %r still busy after %.1f s: computing it here too", k.key[:12], k.symbol,
                            wait_timeout)
            return self._compute(k, raw, config, compute, corrupt)

    def _read_verified(self, key: str) -> tuple[CacheEntry, Any] | None:
        entry = self.catalog.cache_get(key)
        if entry is None:
            return None
        try:
            return entry, self._load(entry)
        except CacheCorruptionError:
            return None  # handled under the key's lock

    def _load(self, entry: CacheEntry) -> Any:
        memo = (entry.key, entry.file_hash)
        local = self.storage.local_path(entry.path)
        if local is None:
            # On object storage a kept result is served without fetching its object again: an object is whole
            # or absent (a PUT is atomic), written once under a fresh name and never rewritten, and this process
            # checked every byte of it when it decoded it; a fetch per hit cost a network round trip (moto: 25 ms,
            # 30x an embedded hit). Damage at rest is left to `verify`, which reads every object.
            kept = self._memo.get(memo)
            if kept is not None:
                return _fresh(kept, entry.kind)
        data = self.check(entry)  # a local file is checked on every hit (cheap): damage is found and replaced
        kept = self._memo.get(memo)
        if kept is not None:
            return _fresh(kept, entry.kind)
        try:
            # The file was just checked byte for byte and entries are immutable, so it may be decoded by path.
            result = codec.decode(data, entry.kind, local)
        except (pa.ArrowException, pl.exceptions.PolarsError, OSError) as exc:  # unexpected: the bytes were checked
            raise CacheCorruptionError(f"cache entry {entry.path} of {entry.symbol!r} cannot be decoded: {exc}") \
                from exc
        self._memo.put(memo, result)
        return _fresh(result, entry.kind)

    def check(self, entry: CacheEntry) -> pa.Buffer:
        """An entry's bytes, checked complete and unchanged (size, then xxh3-128 of every byte)."""
        try:
            data = self.storage.read_buffer(entry.path)
        except (FileNotFoundError, pa.ArrowException, OSError) as exc:
            raise CacheCorruptionError(f"cache entry {entry.path} of {entry.symbol!r} is unreadable: {exc}") from exc
        if data.size != entry.size:
            raise CacheCorruptionError(
                f"cache entry {entry.path} of {entry.symbol!r} has {data.size} bytes, the catalog says {entry.size}")
        if file_hash(data) != entry.file_hash:
            raise CacheCorruptionError(f"cache entry {entry.path} of {entry.symbol!r} does not match its hash")
        return data

    def _hit(self, k: CacheKey, entry: CacheEntry, result: Any) -> Any:
        if self.read_only:  # access statistics are writes: a read-only store serves hits without counting them
            return result
        self.catalog.cache_record(k.symbol, hit_key=k.key, hits=1, saved_seconds=entry.compute_seconds,
                                  hash_seconds=k.data.seconds, hash_bytes=k.data.nbytes)
        return result

    def _drop(self, entry: CacheEntry) -> None:
        self.catalog.cache_drop([entry.key])
        self.storage.delete(entry.path)

    def _compute(self, k: CacheKey, raw: Any, config: Any, compute: Callable[[Any, Any], Any], corrupt: int) -> Any:
        t0 = time.perf_counter()
        result = compute(raw, config)
        seconds = time.perf_counter() - t0
        table, kind = codec.to_arrow(result, "the result of compute")
        data = codec.encode(table)
        relative = f"{CACHE_DIR}/{encode_symbol(k.symbol)}"
        self.storage.put(f"{relative}/{k.key}.parquet", data)
        t = now_us()
        self.catalog.cache_put(CacheEntry(
            k.key, k.symbol, f"{relative}/{k.key}.parquet", len(data), file_hash(data), kind, table.num_rows,
            k.first_ts, k.last_ts, seconds, t, t, 0,
        ))
        self.catalog.cache_record(k.symbol, misses=1, compute_seconds=seconds, hash_seconds=k.data.seconds,
                                  hash_bytes=k.data.nbytes, corruptions=corrupt)
        cost = self.cost_per_data_call + seconds * self.cost_per_compute_second
        log.info("cache miss symbol=%s key=%s compute_seconds=%.6f cost=%.6f rows=%d", k.symbol, k.key[:16],
                 seconds, cost, table.num_rows,
                 extra={"event": "cache_miss", "symbol": k.symbol, "key": k.key, "compute_seconds": seconds,
                        "cost": cost, "rows": table.num_rows})
        # Return what every later hit returns (decoded from the stored bytes), so all callers see the same frame.
        decoded = codec.decode(data, kind)
        self._memo.put((k.key, file_hash(data)), decoded)
        return _fresh(decoded, kind)

    # --- warming, housekeeping and statistics ---------------------------------------------------------

    def warm(
        self, symbols: Iterable[str], load: Callable[[str], Any], configs: Sequence[Any],
        compute: Callable[[Any, Any], Any], *, progress: Callable[[int], None] | None = None,
    ) -> WarmReport:
        """Precompute ``compute(load(symbol), config)`` for every symbol and config (a nightly job).

        One symbol's raw data is in memory at a time; stored keys are skipped cheaply; a failing symbol is
        reported and does not stop the others; re-running after an interruption resumes where it stopped.
        """
        report = WarmReport()
        t0 = time.perf_counter()
        for symbol in symbols:
            try:
                raw = load(symbol)
                for config in configs:
                    k = cache_key(symbol, raw, config, compute)
                    if self.catalog.cache_get(k.key) is not None:
                        report.hits += 1  # stored: no need to read it back
                    else:
                        self._get(k, raw, config, compute, None)
                        report.computed += 1
            except Exception as exc:  # a nightly job reports a bad symbol and goes on
                report.failed[symbol] = f"{type(exc).__name__}: {exc}"
            if progress is not None:
                progress(1)
        report.seconds = time.perf_counter() - t0
        return report

    def clear(self, symbol: str | None = None) -> int:
        """Delete the cached results of ``symbol`` (all when None); returns how many. Entries a process is
        computing right now are left alone."""
        self._memo.clear()
        return self._delete(self.catalog.cache_entries(symbol))

    def cleanup_old_entries(self, days_old: float) -> int:
        """Delete entries not accessed within ``days_old`` days; returns how many."""
        if days_old < 0:
            raise InvalidInputError(f"days_old must be >= 0, got {days_old}")
        return self._delete(self.catalog.cache_entries(accessed_before=now_us() - int(days_old * 86_400e6)))

    def _delete(self, entries: Sequence[CacheEntry]) -> int:
        done = 0
        for entry in entries:
            with self.locks.hold(entry.key, blocking=False) as holding:
                if holding and self.catalog.cache_get(entry.key) == entry:
                    self._drop(entry)
                    done += 1
        return done

    def stats(self) -> dict[str, Any]:
        """Entries, bytes, hits, misses, hit rate, compute seconds spent and saved, hashing; total and per symbol."""
        per: dict[str, dict[str, Any]] = {}
        for e in self.catalog.cache_entries():
            s = per.setdefault(e.symbol, _empty())
            s["entries"] += 1
            s["bytes"] += e.size
        for r in self.catalog.cache_stats():
            s = per.setdefault(r.symbol, _empty())
            for name in ("hits", "misses", "compute_seconds", "saved_seconds", "hash_seconds", "hash_bytes",
                         "corruptions"):
                s[name] += getattr(r, name)
        total = _empty()
        for s in per.values():
            for name in total:
                total[name] += s[name]
            _rates(s)
        _rates(total)
        return {**total, "cost": self._costs(total), "hash_method": HASH_METHOD, "per_symbol": per}

    def _costs(self, s: dict[str, Any]) -> dict[str, float]:
        """Cost spent (misses: data calls and compute) and avoided (hits), at the configured rates."""
        spent = s["misses"] * self.cost_per_data_call + s["compute_seconds"] * self.cost_per_compute_second
        avoided = s["hits"] * self.cost_per_data_call + s["saved_seconds"] * self.cost_per_compute_second
        calls = s["hits"] + s["misses"]
        return {"spent": spent, "avoided": avoided, "per_query": spent / calls if calls else 0.0,
                "per_compute_second": self.cost_per_compute_second, "per_data_call": self.cost_per_data_call}


def _empty() -> dict[str, Any]:
    return {"entries": 0, "bytes": 0, "hits": 0, "misses": 0, "compute_seconds": 0.0, "saved_seconds": 0.0,
            "hash_seconds": 0.0, "hash_bytes": 0, "corruptions": 0}


def _rates(s: dict[str, Any]) -> None:
    calls = s["hits"] + s["misses"]
    s["hit_rate"] = s["hits"] / calls if calls else 0.0
    s["hash_gb_per_s"] = s["hash_bytes"] / s["hash_seconds"] / 1e9 if s["hash_seconds"] else None


def _only_symbol(raw: Any) -> str:
    table = raw_table(raw)
    if "symbol" in table.column_names:
        values = table.column("symbol").unique().to_pylist()
        if len(values) == 1 and isinstance(values[0], str):
            return values[0]
    raise InvalidInputError("pass symbol=...: raw has no 'symbol' column holding a single value")


def _fresh(result: Any, kind: str) -> Any:
    """A kept result as a caller may have it: polars and Arrow frames are immutable, a pandas one is copied."""
    return result.copy() if kind == "pandas" else result

"""One lock per cache key, across threads and processes: single flight for ``get_or_compute``.

:class:`ProcessLocks` is the interface (``hold`` and ``remove_unused``); threads of one process queue on a
``threading.Lock`` per key before a subclass takes the cross-process lock. :class:`KeyLocks`, the embedded one,
uses an ``flock`` of ``<key>.lock``: the kernel drops the flock of a process that dies (even by SIGKILL), so a
waiter takes over a killed peer's key at once. ``gc`` may delete a lock file: a holder checks after locking that
its file is still the one at that path. Team stores use PostgreSQL advisory locks instead
(:class:`pitstore.catalog.postgres.AdvisoryLocks`), which the server drops with a dead holder's session.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

__all__ = ["KeyLocks", "ProcessLocks"]

_POLL_MAX = 0.05  # seconds between tries when waiting with a timeout (flock itself cannot time out)


class ProcessLocks:
    """Exclusive locks named by key: threads queue here, :meth:`_acquire` takes the cross-process lock."""

    def __init__(self) -> None:
        self._guard = threading.Lock()
        self._local: dict[str, tuple[threading.Lock, int]] = {}  # key -> (lock, holders and waiters)

    @contextmanager
    def hold(self, key: str, *, timeout: float | None = None, blocking: bool = True) -> Iterator[bool]:
        """Hold ``key``'s lock inside the block; yields False (not holding) when ``blocking`` is False and the
        key is busy, or when ``timeout`` seconds passed first. Waits as long as the holder lives otherwise."""
        with self._guard:
            local, users = self._local.get(key, (threading.Lock(), 0))
            self._local[key] = (local, users + 1)
        try:
            got = local.acquire(blocking, -1 if timeout is None or not blocking else timeout)
            if not got:
                yield False
                return
            try:
                release = self._acquire(key, timeout if blocking else 0.0)
                if release is None:
                    yield False
                    return
                try:
                    yield True
                finally:
                    release()
            finally:
                local.release()
        finally:
            with self._guard:
                local, users = self._local[key]
                if users == 1:
                    del self._local[key]
                else:
                    self._local[key] = (local, users - 1)

    def _acquire(self, key: str, timeout: float | None) -> Callable[[], None] | None:
        """Take ``key``'s cross-process lock (waiting at most ``timeout`` seconds, forever when None); returns
        what releases it, or None when the time ran out."""
        raise NotImplementedError

    def shared(self, key: str) -> AbstractContextManager[None]:
        """Hold ``key``'s lock shared inside the block: with other shared holders, never with a :meth:`hold`
        (waits for it). Only the team store's locks have it (version leases every machine sees)."""
        raise NotImplementedError

    def remove_unused(self) -> int:
        """Delete what unused locks leave behind (gc); returns how many were deleted."""
        return 0

    def close(self) -> None:
        """Release what the locks keep open between holds."""


class KeyLocks(ProcessLocks):
    """Exclusive locks named by cache key, under ``directory``."""

    def __init__(self, directory: Path) -> None:
        super().__init__()
        self.directory = directory

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.lock"

    def _acquire(self, key: str, timeout: float | None) -> Callable[[], None] | None:
        fd = self._flock(key, timeout)
        if fd is None:
            return None

        def release() -> None:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

        return release

    def _flock(self, key: str, timeout: float | None) -> int | None:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while True:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                if deadline is None:
                    fcntl.flock(fd, fcntl.LOCK_EX)
                else:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                assert deadline is not None  # only non-blocking tries raise BlockingIOError
                if time.monotonic() >= deadline:
                    return None
                time.sleep(pause)  # back-off between tries of a lock that has no timed wait
                pause = min(pause * 2, _POLL_MAX)
                continue
            try:
                same = os.fstat(fd).st_ino == os.stat(path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                return fd
            os.close(fd)  # gc removed the file between our open and our lock: lock the new one

    def remove_unused(self) -> int:
        """Delete lock files nobody holds (gc). Safe: a waiter on a deleted file retries on a new one."""
        removed = 0
        for path in self.directory.glob("*.lock"):
            try:
                fd = os.open(path, os.O_RDWR)
            except FileNotFoundError:
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                if os.fstat(fd).st_ino == os.stat(path).st_ino:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                pass
            finally:
                os.close(fd)  # closing releases the flock
        return removed

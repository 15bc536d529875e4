"""One lock per cache key, across threads and processes: single flight for ``get_or_compute``.

Threads of one process queue on a ``threading.Lock``; processes on an ``flock`` of ``<key>.lock``. The kernel
drops the flock of a process that dies (even by SIGKILL), so a waiter takes over a killed peer's key at once.
``gc`` may delete a lock file: a holder checks after locking that its file is still the one at that path.
"""

from __future__ import annotations

import fcntl
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = ["KeyLocks"]

_POLL_MAX = 0.05  # seconds between tries when waiting with a timeout (flock itself cannot time out)


class KeyLocks:
    """Exclusive locks named by cache key, under ``directory``."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self._guard = threading.Lock()
        self._local: dict[str, tuple[threading.Lock, int]] = {}  # key -> (lock, holders and waiters)

    def path(self, key: str) -> Path:
        return self.directory / f"{key}.lock"

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
                fd = self._flock(key, timeout if blocking else 0.0)
                if fd is None:
                    yield False
                    return
                try:
                    yield True
                finally:
                    fcntl.flock(fd, fcntl.LOCK_UN)
                    os.close(fd)
            finally:
                local.release()
        finally:
            with self._guard:
                local, users = self._local[key]
                if users == 1:
                    del self._local[key]
                else:
                    self._local[key] = (local, users - 1)

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

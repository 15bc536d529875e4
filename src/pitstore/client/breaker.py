"""A circuit breaker per client: after ``failures`` consecutive failures it opens and calls fail fast with
BackendUnavailableError; after ``cooldown`` seconds one trial call goes through (half-open); a success closes it,
a failure opens it again.

Written here rather than taken from a library: pybreaker's async path needs Tornado, aiobreaker has had no
release since 2021, purgatory keeps its state in a named-circuit factory with separate sync and async APIs and
no injectable clock. This one is a few lines, one lock, shared by the sync and the async client (no await is
ever made under the lock, so it is safe across threads and tasks alike).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Literal

from pitstore.errors import BackendUnavailableError

__all__ = ["CLOSED", "HALF_OPEN", "OPEN", "CircuitBreaker", "State"]

State = Literal["closed", "open", "half_open"]
CLOSED: State = "closed"
OPEN: State = "open"
HALF_OPEN: State = "half_open"


class CircuitBreaker:
    def __init__(self, failures: int = 5, cooldown: float = 5.0, *, clock: Callable[[], float] = time.monotonic,
                 on_change: Callable[[State, State], None] | None = None) -> None:
        if failures < 1 or cooldown <= 0:
            raise ValueError("failures must be >= 1 and cooldown > 0")
        self.failures, self.cooldown, self._clock, self._on_change = failures, cooldown, clock, on_change
        self._lock = threading.Lock()
        self._state: State = CLOSED
        self._count = 0
        self._opened_at = 0.0
        self._trial_at: float | None = None  # when the half-open trial call started

    @property
    def state(self) -> State:
        return self._state

    def before(self) -> None:
        """Raise BackendUnavailableError when open (or half-open with its one trial in flight)."""
        if self._state == CLOSED:  # the hot path: no lock needed to read one attribute
            return
        with self._lock:
            now = self._clock()
            if self._state == OPEN:
                left = self._opened_at + self.cooldown - now
                if left > 0:
                    raise BackendUnavailableError(
                        f"circuit open after {self.failures} consecutive failures: failing fast for {left:.1f} s more")
                self._set(HALF_OPEN)
            elif self._trial_at is not None and now - self._trial_at < self.cooldown:
                # One trial at a time; a trial whose caller vanished (cancelled) frees the slot after a cool-down.
                raise BackendUnavailableError("circuit half-open: a trial call is in flight, failing fast")
            self._trial_at = now

    def success(self) -> None:
        if self._state == CLOSED and self._count == 0:
            return
        with self._lock:
            self._count = 0
            self._trial_at = None
            if self._state != CLOSED:
                self._set(CLOSED)

    def failure(self) -> None:
        with self._lock:
            self._count += 1
            self._trial_at = None
            if self._state == HALF_OPEN or (self._state == CLOSED and self._count >= self.failures):
                self._opened_at = self._clock()
                self._set(OPEN)

    def _set(self, state: State) -> None:
        old, self._state = self._state, state
        if self._on_change is not None:
            self._on_change(old, state)

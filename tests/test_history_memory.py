"""The in-memory history backend: the conformance suite (:mod:`pitstore.testing.history`), as PostgreSQL's."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from pitstore.history.base import StoreScope
from pitstore.history.memory import MemoryHistory
from pitstore.testing.history import HistoryConformance, Opener


class TestMemoryHistory(HistoryConformance):
    @pytest.fixture
    def opener(self) -> Iterator[Opener]:
        name = f"test-{time.monotonic_ns()}"  # rows of this test's own
        opened: list[MemoryHistory] = []

        def open_one(scope: StoreScope | None = None) -> MemoryHistory:
            opened.append(MemoryHistory(name, scope=scope))
            return opened[-1]

        yield open_one
        for h in opened:
            h.close()

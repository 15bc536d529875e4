"""Helpers for tests, examples and benchmarks: seeded synthetic bars, and the conformance suites every backend's
tests subclass (:mod:`pitstore.testing.catalog`, :mod:`pitstore.testing.storage`, :mod:`pitstore.testing.history`).

Only :func:`synthetic_bars` is imported with ``pitstore``: the suites import pytest (and what they test) when a
test module imports them, never at ``import pitstore`` time.
"""

from __future__ import annotations

from pitstore.testing.bars import synthetic_bars

__all__ = ["synthetic_bars"]

"""How far back ``as_known_at`` can replay: the retention of superseded entries (setting ``retention_days``).

A restatement or a full recompute supersedes bar snapshots and feature entries; they stay on disk so that
``as_known_at`` replays what the store knew before. Kept forever, a daily append job grows the store by a
full copy of every touched symbol's history a day. So superseded entries are kept for ``retention_days``
after they were superseded, then ``gc`` deletes them (rows first, in one transaction, then files).

An entry superseded at ``s`` is visible to ``as_known_at=T`` only when ``T < s``: once every entry
superseded at or before ``H`` is gone, a replay at ``T >= H`` is exact and one before ``H`` would silently
miss rows. Reads therefore refuse ``as_known_at`` before ``now - retention_days``, and before the horizon
``gc`` recorded in the catalog (:meth:`pitstore.catalog.base.Catalog.replay_from`), which covers processes
running with a longer retention than the one that ran ``gc``. ``gc`` deletes only what was superseded
``GRACE`` before the retention too, so a read that passed the check a moment ago is not cut under it.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from pitstore.catalog import sqlite as _clock
from pitstore.catalog.base import Catalog
from pitstore.errors import RetentionError
from pitstore.rules import from_us, micros, to_us

__all__ = ["GRACE", "check_known_at", "gc_horizon", "replay_horizon"]

GRACE = timedelta(hours=1)  # gc keeps this much more than the retention: a read never races a deletion


def replay_horizon(catalog: Catalog, retention_days: float) -> int:
    """The earliest ``as_known_at`` (µs) a read answers exactly now."""
    horizon = _clock.now_us() - micros(timedelta(days=retention_days))
    recorded = catalog.replay_from()
    return horizon if recorded is None else max(horizon, recorded)


def check_known_at(catalog: Catalog, retention_days: float, as_known_at: datetime | None) -> None:
    """Raise RetentionError when ``as_known_at`` lies before what the retained entries can replay."""
    if as_known_at is None:
        return
    horizon = replay_horizon(catalog, retention_days)
    if to_us(as_known_at, "as_known_at") < horizon:
        raise RetentionError(as_known_at, from_us(horizon), retention_days)


def gc_horizon(retention_days: float) -> int:
    """What ``gc`` may delete: entries superseded at or before this (µs)."""
    return _clock.now_us() - micros(timedelta(days=retention_days) + GRACE)

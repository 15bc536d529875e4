"""Which stored rows a read needs, decided from the catalog before anything is decoded (issue #18, item 2b).

A point-in-time look-up at ``t`` needs one row: the newest with ``ts <= t - lag`` (its *as-of row*). For the
look-ups of one symbol, with smallest bound ``lo`` and greatest ``hi``, every answer lies in ``[A(lo), hi]``,
where ``A(lo)`` is the as-of row of ``lo``. ``A(lo)`` is not known before reading, but the catalog's per-entry
ts ranges give a lower bound: an entry starting at or before ``lo`` holds a row at or before ``lo`` (its
first), and one ending at or before ``lo`` its last. So entries ending before that bound, or starting after
``hi``, are not read, and within the others only rows of the span are decoded (Parquet row-group statistics).

With a TTL, a row older than ``t - ttl`` can only be a *stale* answer, whose values are null and whose ts
``get_historical`` does not return: rows older than the smallest ``t - ttl`` are not read either, and a
look-up left without a row is then told apart (stale, not no_data_yet) by the symbol's first stored ts, which
the catalog knows (``Loaded.first_ts``; :func:`pitstore.offline.pit.asof_join` ``stored_from``). Reads that report
the ts of a stale row (``get_features``) pass no TTL here.

The answers are those of reading everything: ``tests/test_prune.py`` compares both on random look-ups.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import polars as pl

from pitstore.catalog.base import FeatureEntry
from pitstore.rules import micros

__all__ = ["ENABLED", "Span", "Window", "range_spans", "window_spans", "windows_of"]

# Pruning on or off, for the whole process. Only the bench turns it off (to measure before/after side by side):
# answers are the same either way, only the bytes decoded differ.
ENABLED = True

Span = tuple[int | None, int | None]  # ts bounds in µs, both inclusive; None: unbounded on that side
WHOLE: Span = (None, None)


@dataclass(frozen=True)
class Window:
    """What the look-ups of one symbol can need (µs): rows with ts up to ``hi`` (the greatest as-of bound),
    the as-of row of ``lo`` (the smallest bound) and newer, none older than ``fresh_from`` (None: no TTL cut)."""

    lo: int
    hi: int
    fresh_from: int | None


def windows_of(spine: pl.DataFrame, lag: timedelta, ttl: timedelta | None) -> dict[str, Window]:
    """The window of each symbol of ``spine`` (symbol, ts: Datetime µs UTC)."""
    lag_us = micros(lag)
    ttl_us = None if ttl is None else micros(ttl)
    per = spine.group_by("symbol").agg(lo=pl.col("ts").dt.epoch("us").min(), hi=pl.col("ts").dt.epoch("us").max())
    return {s: Window(lo - lag_us, hi - lag_us, None if ttl_us is None else lo - ttl_us)
            for s, lo, hi in per.iter_rows()}


def window_spans(entries: Sequence[FeatureEntry], windows: dict[str, Window]) -> dict[int, Span]:
    """The entries (by id: compacted entries share a path) the look-ups need, each with the span of its rows to
    decode."""
    by_symbol: dict[str, list[FeatureEntry]] = {}
    for e in entries:
        by_symbol.setdefault(e.symbol, []).append(e)
    out: dict[int, Span] = {}
    for symbol, own in by_symbol.items():
        w = windows.get(symbol)
        if w is None:
            continue
        # A lower bound of A(lo) from the catalog (None: no stored row at or before lo, nothing to cut).
        floor = max((e.last_ts if e.last_ts <= w.lo else e.first_ts for e in own if e.first_ts <= w.lo),
                    default=None)
        cut = max((c for c in (floor, w.fresh_from) if c is not None), default=None)
        out.update(_spans(own, cut, w.hi))
    return out


def range_spans(entries: Sequence[FeatureEntry], start: int | None, end: int | None) -> dict[int, Span]:
    """The entries a range read of ``[start, end]`` needs, each with its span."""
    return _spans(entries, start, end)


def _spans(entries: Sequence[FeatureEntry], lo: int | None, hi: int | None) -> dict[int, Span]:
    out: dict[int, Span] = {}
    for e in entries:
        if (lo is not None and e.last_ts < lo) or (hi is not None and e.first_ts > hi):
            continue  # no row of it can be needed
        # Bounds the entry lies within are dropped: no filter to evaluate for a file read whole.
        out[e.id] = (lo if lo is not None and e.first_ts < lo else None,
                       hi if hi is not None and e.last_ts > hi else None)
    return out

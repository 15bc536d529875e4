"""Carried state of the TA-Lib (recursive) features between incremental backfills in one process.

A recursive feature's value at a bar depends on every bar before it, so an incremental backfill either recomputes
the symbol's whole history or resumes from the state the last computation ended in. That state is TA-Lib's own:
its streaming handles (:mod:`talib.stream`), which TA-Lib makes bit-identical to its function API (the live
engine relies on the same guarantee, :mod:`pitstore.live.steppers`). They cannot be serialised, and this TA-Lib's
arithmetic cannot be replayed from the values it outputs (docs/decisions.md, 2026-12-04), so the state is kept
in memory, per (feature set, version, symbol), next to the id of the entry whose last row it stands at: a
backfill resumes a symbol only when that entry is still its newest live one (nothing else committed since), and
computes the symbol in full otherwise (a new process, a restatement, another writer), opening new handles from
the history it has read anyway.
"""

from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from talib import stream as talib_stream

from pitstore.features.base import Feature
from pitstore.features.library import is_window
from pitstore.memo import BytesLRU
from pitstore.sources.bars import PRICE_COLUMNS
from pitstore.sources.segments import kept_bytes

__all__ = ["Carry", "Handles", "carried", "open_handles", "step_handles"]

Handles = dict[str, Any]  # feature name -> TA-Lib stream handle, all at one bar of one symbol
Key = tuple[str, int, str]  # feature set, version, symbol
TAIL_BYTES = 256 << 20  # 500 symbols' last base groups of 1,024 bars: ~30 MB
_STEPPABLE = frozenset((*PRICE_COLUMNS, "volume"))  # validated finite: a handle's update never refuses them


def carried(features: Sequence[Feature]) -> list[Feature]:
    """The features of a set that carry state, when every other one is a window feature (the set can then resume
    from tails: windows from their lookback bars, these from their handles); [] when the set cannot."""
    talibs = [f for f in features if f.talib is not None and set(f.inputs) <= _STEPPABLE]
    if not talibs or len(talibs) + sum(is_window(f) for f in features) != len(features):
        return []
    return talibs


class Carry:
    """The handles of each (feature set, version, symbol), at the last row of one committed entry; and the
    decoded bar row groups incremental backfills read their tails from."""

    def __init__(self, tail_bytes: int = TAIL_BYTES) -> None:
        self._state: dict[Key, tuple[int, Handles]] = {}
        self._lock = threading.Lock()
        # Decoded bar row groups (bases' last groups, segments): the tails the next append reads again.
        self.tails = BytesLRU(tail_bytes, sizeof=kept_bytes)

    def get(self, feature_set: str, version: int, symbol: str, entry_id: int) -> Handles | None:
        """Copies of the handles that stand at the last row of entry ``entry_id`` (None: not carried)."""
        with self._lock:
            held = self._state.get((feature_set, version, symbol))
        if held is None or held[0] != entry_id:
            return None
        return {name: h.copy() for name, h in held[1].items()}

    def put(self, feature_set: str, version: int, symbol: str, entry_id: int, handles: Handles) -> None:
        with self._lock:
            self._state[(feature_set, version, symbol)] = (entry_id, handles)

    def __len__(self) -> int:
        return len(self._state)


def open_handles(features: Sequence[Feature], arrays: Mapping[str, np.ndarray]) -> Handles | None:
    """Handles of ``features`` opened on one symbol's whole history (its columns, oldest first); None when the
    history is too short for one of them to open, or the first bars would still be inside a lookback."""
    n = len(next(iter(arrays.values())))
    if n <= max(f.lookback for f in features):
        return None
    handles: Handles = {}
    for f in features:
        assert f.talib is not None
        name, params = f.talib
        try:
            handles[f.name] = getattr(talib_stream, name)(*(arrays[c] for c in f.inputs), **params)
        except Exception:  # InsufficientHistory (untyped in TA-Lib's stubs), or a parameter a handle refuses
            return None
    return handles


def step_handles(features: Sequence[Feature], handles: Handles, arrays: Mapping[str, np.ndarray]
                 ) -> dict[str, list[np.ndarray]]:
    """Advance ``handles`` over new bars (columns, oldest first); each feature's outputs at those bars."""
    n = len(next(iter(arrays.values())))
    out: dict[str, list[np.ndarray]] = {}
    for f in features:
        h = handles[f.name]
        columns = [arrays[c].tolist() for c in f.inputs]  # positional, as the function takes them
        values = np.empty((n, len(f.outputs)))
        for i, bar in enumerate(zip(*columns, strict=True)):
            values[i] = h.update(*bar)
        out[f.name] = [values[:, j].copy() for j in range(len(f.outputs))]
    return out

"""Window statistics in one fixed order of operations, shared by the batch kernels and the live steppers.

Each window is computed on its own, never as a running total, so a value depends only on the values in
its window, not on where the computation started; and a live stepper that applies the same operations in
the same order to the same values gets the same bits. The order: a window's sum adds its values left to
right starting from the first; its moments are the mean (sum / n) and the sum of squared deviations from
that mean, added the same way (two passes: stable on price levels, where a sum of squares cancels).

Windows run along the last axis: a 1-D series (a backfill) or a matrix of rows, one symbol's last bars each
(a live update of many symbols at once). Many windows (a backfill) are added as n shifted passes; fewer
windows than values per window (a live update: one or two per row) as one left-to-right ``np.add.accumulate``
over each window, which adds in the same order and so gives the same bits (never ``np.sum``: it adds pairwise).
"""

from __future__ import annotations

import numpy as np

__all__ = ["window_moments", "window_sum"]

_CHUNK = 1 << 14  # outputs per block: the n shifted passes over a block stay in the CPU cache


def window_sum(x: np.ndarray, n: int) -> np.ndarray:
    """The sum of the ``n`` values ending at each index; NaN before the first full window."""
    out = np.full(x.shape, np.nan)
    m = x.shape[-1] - n + 1
    if 0 < m < n:
        for i in range(m):
            out[..., n - 1 + i] = _total(x[..., i : i + n])
        return out
    for s in range(0, max(m, 0), _CHUNK):
        e = min(m, s + _CHUNK)
        acc = x[..., s:e].copy()
        for j in range(1, n):
            acc += x[..., s + j : e + j]
        out[..., n - 1 + s : n - 1 + e] = acc
    return out


def window_moments(x: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """Per window of ``n`` values ending at each index: the mean and the sum of squared deviations from it."""
    mean = window_sum(x, n) / n
    m2 = np.full(x.shape, np.nan)
    m = x.shape[-1] - n + 1
    if 0 < m < n:
        for i in range(m):
            d = x[..., i : i + n] - mean[..., n - 1 + i, None]
            d *= d
            m2[..., n - 1 + i] = _total(d)
        return mean, m2
    for s in range(0, max(m, 0), _CHUNK):
        e = min(m, s + _CHUNK)
        mu = mean[..., n - 1 + s : n - 1 + e]
        acc = x[..., s:e] - mu
        acc *= acc
        d = np.empty_like(acc)
        for j in range(1, n):
            np.subtract(x[..., s + j : e + j], mu, out=d)
            d *= d
            acc += d
        m2[..., n - 1 + s : n - 1 + e] = acc
    return mean, m2


def _total(windows: np.ndarray) -> np.ndarray:
    """Each window's (last axis) sum, added left to right from its first value, as the shifted passes do."""
    return np.add.accumulate(windows, axis=-1)[..., -1]

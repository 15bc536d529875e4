"""Window statistics in one fixed order of operations, shared by the batch kernels and the live steppers.

Each window is computed on its own, never as a running total, so a value depends only on the values in
its window, not on where the computation started; and a live stepper that applies the same operations in
the same order to the same values gets the same bits. The order: a window's sum adds its values left to
right starting from the first; its moments are the mean (sum / n) and the sum of squared deviations from
that mean, added the same way (two passes: stable on price levels, where a sum of squares cancels).

Windows run along the last axis: a 1-D series (a backfill) or a matrix of rows, one symbol's last bars each
(a live update of many symbols at once), through the same code.
"""

from __future__ import annotations

import numpy as np

__all__ = ["moments", "window_moments", "window_sum", "window_total"]

_CHUNK = 1 << 14  # outputs per block: the n shifted passes over a block stay in the CPU cache


def window_sum(x: np.ndarray, n: int) -> np.ndarray:
    """The sum of the ``n`` values ending at each index; NaN before the first full window."""
    out = np.full(x.shape, np.nan)
    m = x.shape[-1] - n + 1
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


def window_total(w: np.ndarray) -> float:
    """One window's sum in :func:`window_sum`'s order (numpy's accumulate adds strictly left to right)."""
    return float(np.add.accumulate(w)[-1])


def moments(w: np.ndarray) -> tuple[float, float]:
    """One window's mean and sum of squared deviations, in :func:`window_moments`' order."""
    mean = window_total(w) / len(w)
    d = w - mean
    return mean, window_total(d * d)

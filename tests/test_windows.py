"""Window sums from blocks anchored at absolute positions: the same bits from any start, in any layout.

A backfill from a later start (a tail of the history, with its position) and a live update (a matrix of rows,
each one symbol's last values, a position per row) must give exactly the values of the full series.
"""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from pitstore.features.windows import window_moments, window_sum, window_sums2


def _all(x: np.ndarray, n: int, start: int | np.ndarray) -> list[np.ndarray]:
    mean, m2 = window_moments(x, n, start)
    return [window_sum(x, n, start), *window_sums2(x, n, start), mean, m2]


def _same_bits(got: np.ndarray, want: np.ndarray) -> None:
    np.testing.assert_array_equal(np.isnan(got), np.isnan(want))
    ok = ~np.isnan(want)
    np.testing.assert_array_equal(got[ok].view(np.int64), want[ok].view(np.int64))


_VALUES = st.sampled_from(["walk", "level", "signed", "zeros"])


def _series(kind: str, size: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    if kind == "walk":
        return 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, size)))
    if kind == "level":  # cancellation: a large level, tiny moves, exact repeats
        return 1e6 + np.round(rng.normal(0.0, 3.0, size)) * 2.0**-30
    if kind == "signed":  # log-return-like, with exact zeros and -0.0
        x = rng.normal(0.0, 1e-3, size)
        x[rng.random(size) < 0.2] = 0.0
        x[rng.random(size) < 0.1] = -0.0
        return x
    return np.where(rng.random(size) < 0.5, -0.0, 0.0)


@settings(max_examples=300, deadline=None)
@given(kind=_VALUES, size=st.integers(1, 400), n=st.integers(1, 70), base=st.integers(0, 10**6),
       seed=st.integers(0, 2**32 - 1), data=st.data())
def test_windows_from_random_start_offsets_equal_bit_for_bit(kind: str, size: int, n: int, base: int, seed: int,
                                                             data: st.DataObject) -> None:
    """The tail x[k:] at position base + k gives the values of x at base wherever its windows are full."""
    x = _series(kind, size, seed)
    k = data.draw(st.integers(0, size - 1), label="k")
    for got, want in zip(_all(x[k:], n, base + k), _all(x, n, base), strict=True):
        assert np.isnan(got[: n - 1]).all()
        _same_bits(got[n - 1 :], want[k + n - 1 :])


@settings(max_examples=200, deadline=None)
@given(kind=_VALUES, size=st.integers(2, 300), n=st.integers(1, 70), base=st.integers(0, 10**6),
       seed=st.integers(0, 2**32 - 1), extra=st.integers(0, 3))
def test_rows_of_last_values_equal_the_series(kind: str, size: int, n: int, base: int, seed: int,
                                              extra: int) -> None:
    """Every window as a row of its own (with extra values before it, at the row's position): what a live
    update computes equals the series, bit for bit."""
    x = _series(kind, size, seed)
    width = n + extra
    if size < width:
        return
    rows = np.lib.stride_tricks.sliding_window_view(x, width).copy()
    at = base + np.arange(len(rows))
    for got, want in zip(_all(rows, n, at), _all(x, n, base), strict=True):
        _same_bits(got[:, -1], want[width - 1 :])


def test_values_match_direct_sums() -> None:
    """Accuracy: within a few ulps of a direct sum per window, from several starts."""
    rng = np.random.default_rng(5)
    x = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 1e-3, 5000)))
    for n in (1, 2, 7, 20, 60):
        windows = np.lib.stride_tricks.sliding_window_view(x, n)
        for start in (0, 1, n - 1, 12345):
            total = window_sum(x, n, start)
            np.testing.assert_allclose(total[n - 1 :], windows.sum(axis=1), rtol=1e-14)
            mean, m2 = window_moments(x, n, start)
            ref_mean = windows.mean(axis=1)
            np.testing.assert_allclose(mean[n - 1 :], ref_mean, rtol=1e-14)
            ref_m2 = ((windows - ref_mean[:, None]) ** 2).sum(axis=1)
            np.testing.assert_allclose(m2[n - 1 :], ref_m2, rtol=1e-8, atol=1e-18)
            assert np.isnan(total[: n - 1]).all() and np.isnan(m2[: n - 1]).all()


def test_flat_windows_have_exactly_zero_spread() -> None:
    """A flat stretch at an inexact level (1/3): the shifted moments give m2 == 0 exactly, not rounding noise."""
    x = np.r_[np.linspace(1.0, 2.0, 50), np.full(100, 1.0 / 3.0)]
    for n in (2, 20, 60):
        _, m2 = window_moments(x, n, 7)
        assert (m2[50 + n - 1 :] == 0.0).all()

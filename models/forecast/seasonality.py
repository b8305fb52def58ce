"""Which seasonal periods a series has, and the classical decomposition M4's Naive2 benchmark uses.

A period counts when the series holds at least ``MIN_CYCLES`` cycles of it
and its autocorrelation at that lag passes the M4 competition's test: larger
than 1.645 standard errors (90 %), the error from Bartlett's formula over the
lags before it. Hourly data is tried at 24 (a day) and 168 (a week).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

HOURLY_PERIODS = (24, 168)
MIN_CYCLES = 2
Z_90 = 1.645


def autocorrelation(values: np.ndarray, lags: int) -> np.ndarray:
    """The sample autocorrelation at lags 1 … ``lags`` (0 for a constant series)."""
    centred = values - values.mean()
    energy = float(centred @ centred)
    if energy == 0 or lags < 1:
        return np.zeros(max(lags, 0))
    spectrum = np.fft.rfft(centred, n=2 * len(centred))
    full = np.fft.irfft(spectrum * np.conj(spectrum))[: len(centred)]
    return np.asarray(full[1 : lags + 1] / energy)


def is_seasonal(values: np.ndarray, period: int) -> bool:
    """Whether ``period`` passes the M4 90 % autocorrelation test (and the series holds two cycles of it)."""
    if period < 2 or len(values) < max(MIN_CYCLES * period, 3 * period if period < 10 else 0):
        return False
    acf = autocorrelation(values, period)
    limit = Z_90 * np.sqrt((1 + 2 * float(np.sum(acf[:-1] ** 2))) / len(values))
    return bool(abs(acf[-1]) > limit)


def seasonal_periods(values: np.ndarray, candidates: Sequence[int] = HOURLY_PERIODS) -> tuple[int, ...]:
    """The candidate periods the series shows, shortest first."""
    return tuple(period for period in sorted(candidates) if is_seasonal(values, period))


def multiplicative_indices(values: np.ndarray, period: int) -> np.ndarray:
    """Seasonal indices (mean 1) of a classical multiplicative decomposition, phase-aligned to ``values[-period:]``."""
    n = len(values)
    weights = np.ones(period + 1 if period % 2 == 0 else period)
    if period % 2 == 0:
        weights[[0, -1]] = 0.5
    weights /= period
    trend = np.convolve(values, weights, mode="valid")
    offset = (len(weights) - 1) // 2
    ratios = values[offset : offset + len(trend)] / np.where(trend != 0, trend, np.nan)
    phase = (np.arange(offset, offset + len(trend))) % period
    indices = np.array([np.nanmean(ratios[phase == p]) if (phase == p).any() else 1.0 for p in range(period)])
    indices = np.where(np.isfinite(indices) & (indices > 0), indices, 1.0)
    indices /= indices.mean()
    return indices[(np.arange(n - period, n)) % period]

"""Correlations between series: Pearson and Spearman on aligned, resampled series, at the best lag within a window.

Series arrive resampled to one bucket width (a mean per bucket; counters as
rates). For each candidate, the primary and the candidate are aligned on their
common buckets and the candidate is shifted by every lag from ``-max_lag`` to
``max_lag`` buckets; the lag with the largest absolute Pearson correlation
wins, and Spearman's rank correlation is computed at that lag too. A positive
lag means the candidate *follows* the primary by that many buckets. Pairs whose
Pearson or Spearman correlation reaches the threshold in absolute value are
returned, strongest first. Constant series and overlaps shorter than
``min_points`` buckets are left out (a correlation there means nothing).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pandas as pd


@dataclass(frozen=True)
class Correlation:
    """One pair: the candidate's label, both coefficients at the best lag, the lag, and the buckets compared."""

    series: str
    pearson: float
    spearman: float
    lag_buckets: int
    lag_seconds: float
    points: int

    @property
    def strength(self) -> float:
        """The larger absolute coefficient."""
        return max(abs(self.pearson), abs(self.spearman))

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {**asdict(self), "strength": round(self.strength, 4)}


def _pearson(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return float("nan")
    return float(np.corrcoef(a, b)[0, 1])


def best_lag(primary: pd.Series, candidate: pd.Series, max_lag: int, min_points: int) -> tuple[int, float, int]:
    """(lag, Pearson r, buckets compared) of the lag within ±max_lag with the largest |r|; r is NaN when none."""
    best: tuple[int, float, int] = (0, float("nan"), 0)
    for lag in range(-max_lag, max_lag + 1):
        shifted = candidate.shift(-lag)  # value at t + lag lines up with the primary at t
        both = pd.concat([primary, shifted], axis=1, join="inner").dropna()
        if len(both) < min_points:
            continue
        r = _pearson(both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy())
        if np.isnan(r):
            continue
        if np.isnan(best[1]) or abs(r) > abs(best[1]) or (abs(r) == abs(best[1]) and abs(lag) < abs(best[0])):
            best = (lag, r, len(both))
    return best


def correlate(
    primary: pd.Series,
    candidates: Mapping[str, pd.Series],
    *,
    threshold: float = 0.7,
    max_lag: int = 12,
    bucket_seconds: float = 300.0,
    min_points: int = 10,
) -> list[Correlation]:
    """The candidates correlated with ``primary`` at least ``threshold`` (|r|), strongest first.

    Args:
        primary: values indexed by bucket start (a regular grid of ``bucket_seconds``).
        candidates: label → values on the same grid.
        threshold: the least absolute Pearson or Spearman coefficient reported, in [0, 1].
        max_lag: lags tried in each direction, in buckets.
        bucket_seconds: the grid's width (for ``lag_seconds``).
        min_points: the least number of common buckets a coefficient is computed on.
    """
    if not 0 <= threshold <= 1:
        raise ValueError(f"correlation_threshold: {threshold!r} must be in [0, 1]")
    if max_lag < 0:
        raise ValueError(f"max_lag: {max_lag!r} must be >= 0")
    found: list[Correlation] = []
    for label, candidate in candidates.items():
        lag, r, points = best_lag(primary, candidate, max_lag, min_points)
        if np.isnan(r):
            continue
        both = pd.concat([primary, candidate.shift(-lag)], axis=1, join="inner").dropna()
        rho = float(both.iloc[:, 0].corr(both.iloc[:, 1], method="spearman"))
        result = Correlation(
            label, round(r, 6), round(rho if rho == rho else 0.0, 6), lag, lag * bucket_seconds, points
        )
        if result.strength >= threshold:
            found.append(result)
    return sorted(found, key=lambda c: (-c.strength, c.series))

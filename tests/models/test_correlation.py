"""Correlations at the best lag, on constructed series whose relation is known."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from models.correlation import best_lag, correlate

GRID = np.arange(300) * 300_000_000


def series(values: np.ndarray) -> pd.Series:
    return pd.Series(values, index=GRID[: len(values)])


def test_a_lagged_copy_is_found_at_its_lag() -> None:
    rng = np.random.default_rng(0)
    base = np.cumsum(rng.normal(0, 1, 300))
    follower = np.roll(base, 3) + rng.normal(0, 0.1, 300)  # follows the primary three buckets later
    opposite = -base + rng.normal(0, 0.1, 300)
    noise = rng.normal(0, 1, 300)
    found = correlate(
        series(base),
        {"follower": series(follower), "opposite": series(opposite), "noise": series(noise)},
        threshold=0.7,
        max_lag=6,
    )
    by = {item.series: item for item in found}
    assert set(by) == {"follower", "opposite"}
    assert by["follower"].lag_buckets == 3
    assert by["follower"].lag_seconds == 900.0
    assert by["follower"].pearson > 0.95
    assert by["opposite"].pearson < -0.95
    assert by["opposite"].spearman < -0.9
    assert found == sorted(found, key=lambda c: -c.strength)


def test_constant_and_short_series_are_left_out() -> None:
    base = series(np.arange(300, dtype=float))
    assert correlate(base, {"flat": series(np.ones(300)), "short": series(np.arange(5.0))}, threshold=0.0) == []
    assert np.isnan(best_lag(base, series(np.ones(300)), 2, 10)[1])
    with pytest.raises(ValueError, match="correlation_threshold"):
        correlate(base, {}, threshold=2)

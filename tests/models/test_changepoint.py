"""The change point's split gains are ruptures' own, computed for all windows at once."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import ruptures as rpt

from models.changepoint import split_gains


def ruptures_gains(values: np.ndarray, width: int) -> np.ndarray:
    """``ruptures.Window(model="normal")`` scores placed at the row each window ends at."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ruptures announces its small diagonal bias
        score = rpt.Window(width=width, model="normal", jump=1, min_size=2).fit(np.append(values, values[-1])).score
    gains = np.zeros(len(values))
    score = np.nan_to_num(np.asarray(score, dtype=float), nan=0.0, posinf=0.0)[: len(values) - width + 1]
    gains[width - 1 : width - 1 + len(score)] = score
    return np.maximum(gains, 0.0)


@pytest.mark.parametrize("width", [8, 12, 24])
def test_split_gains_equal_ruptures_window(width: int) -> None:
    rng = np.random.default_rng(0)
    values = np.r_[rng.normal(0, 1, 300), rng.normal(3, 2, 300), np.full(50, 5.0), 1e9 + rng.normal(0, 10, 100)]
    np.testing.assert_allclose(split_gains(values, width), ruptures_gains(values, width), rtol=1e-9, atol=1e-8)


def test_an_odd_width_is_the_even_one_below_and_short_series_gain_nothing() -> None:
    values = np.random.default_rng(1).normal(0, 1, 100)
    np.testing.assert_array_equal(split_gains(values, 9), split_gains(values, 8))
    assert (split_gains(values[:5], 8) == 0).all()
    assert (split_gains(values, 8)[:7] == 0).all()


def test_the_change_point_and_the_seasonal_detector_share_one_pattern_fit() -> None:
    from models import seasonal

    day = 24 * 12
    ts = (np.arange(10 * day) * 300 + 1_700_000_000) * 1_000_000
    values = 50 + 10 * np.sin(2 * np.pi * np.arange(len(ts)) / day)
    first = seasonal.fit_pattern(ts, values, bins_per_day=24, min_autocorrelation=0.3, max_days=28)
    again = seasonal.fit_pattern(ts.copy(), values.copy(), bins_per_day=24, min_autocorrelation=0.3, max_days=28)
    other = seasonal.fit_pattern(ts, values + 1, bins_per_day=24, min_autocorrelation=0.3, max_days=28)
    assert again is first  # the same history: fitted once
    assert other is not first
    assert first.periods == (24,)

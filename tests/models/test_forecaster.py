"""The forecaster on known-answer series: trends, seasons, constants, short series, gaps; intervals cover the truth."""

from __future__ import annotations

import numpy as np
import pytest

from metrics.errors import ValidationError
from models.forecast import methods
from models.forecast.forecaster import AutoForecaster, clean_history, forecast_series, mase_scale
from models.forecast.seasonality import autocorrelation, is_seasonal, multiplicative_indices, seasonal_periods

DAY = 24
rng = np.random.default_rng(7)


def daily(n: int = 30 * DAY, noise: float = 1.0, trend: float = 0.0, seed: int = 0) -> np.ndarray:
    t = np.arange(n)
    noise_values = np.random.default_rng(seed).normal(0, noise, n)
    return 100 + 10 * np.sin(2 * np.pi * t / DAY) + trend * t + noise_values


def truth_daily(start: int, horizon: int, trend: float = 0.0) -> np.ndarray:
    t = np.arange(start, start + horizon)
    return 100 + 10 * np.sin(2 * np.pi * t / DAY) + trend * t


def test_pure_seasonality_is_forecast_close_to_the_truth() -> None:
    forecast = forecast_series(daily(), 48)
    assert forecast.periods[0] == DAY
    assert np.abs(forecast.mean - truth_daily(30 * DAY, 48)).mean() < 1.0  # the noise is 1


def test_trend_and_seasonality_keep_the_level_moving() -> None:
    history = daily(trend=0.05)
    forecast = forecast_series(history, 48)
    error = np.abs(forecast.mean - truth_daily(len(history), 48, trend=0.05)).mean()
    assert error < 2.0
    assert forecast.mean.mean() > history[-DAY:].mean() - 1.0  # not dragged down to the past's average


def test_a_linear_trend_is_followed() -> None:
    history = 5 + 0.5 * np.arange(300) + rng.normal(0, 0.2, 300)
    forecast = forecast_series(history, 24, season=1)
    assert forecast.periods == ()
    assert forecast.mean[-1] > history[-1]  # upwards, not flat
    assert abs(forecast.mean[0] - (5 + 0.5 * 300)) < 3


def test_a_constant_series_is_itself_with_no_spread() -> None:
    forecast = forecast_series(np.full(100, 7.0), 12)
    assert forecast.method == "constant"
    assert (forecast.mean == 7).all()
    assert (forecast.lower_95 == 7).all()
    assert (forecast.upper_95 == 7).all()


@pytest.mark.parametrize("values", [[3.0], [1.0, 2.0], [4.0, 6.0, 5.0, 7.0]])
def test_a_short_series_gets_its_last_value_and_some_spread(values: list[float]) -> None:
    forecast = forecast_series(values, 5)
    assert forecast.method in ("naive", "constant")
    assert (forecast.mean == values[-1]).all()
    assert len(forecast) == 5
    assert (forecast.upper_95 >= forecast.upper_80).all()


def test_gaps_and_nans_are_interpolated_and_leading_ones_dropped() -> None:
    history = daily()
    holes = history.copy()
    holes[100:110] = np.nan
    holes[-3] = np.nan
    with_nans = np.concatenate(([np.nan, np.nan], holes))
    cleaned = clean_history(with_nans)
    assert len(cleaned) == len(history)
    assert not np.isnan(cleaned).any()
    assert np.abs(forecast_series(with_nans, 24).mean - truth_daily(30 * DAY, 24)).mean() < 1.5


@pytest.mark.parametrize(
    ("values", "message"),
    [([np.nan, np.nan], "no numbers"), ([1.0, np.inf], "row 1 is infinite")],
)
def test_bad_histories_are_refused(values: list[float], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        forecast_series(values, 3)


@pytest.mark.parametrize(
    ("params", "message"),
    [({"horizon": 0}, "horizon"), ({"season": 0}, "season"), ({"guard": 1.5}, "guard"), ({"horizon": 2.5}, "horizon")],
)
def test_bad_parameters_are_refused(params: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AutoForecaster(**params)  # type: ignore[arg-type]


def test_intervals_are_ordered_and_non_negative_for_a_non_negative_series() -> None:
    counts = np.maximum(0, daily(noise=6.0) - 100)  # zeros half the day
    forecast = forecast_series(counts, 48)
    assert (forecast.lower_95 >= 0).all()
    assert (forecast.lower_95 <= forecast.lower_80).all()
    assert (forecast.lower_80 <= forecast.mean + 1e-9).all()
    assert (forecast.upper_80 <= forecast.upper_95).all()
    assert (np.diff(forecast.upper_95 - forecast.mean) >= -1e-9).all()  # never narrower further out
    assert (forecast.mean >= 0).all()


def simulated(kind: str, seed: int, n: int = 600 + 48) -> np.ndarray:
    generator = np.random.default_rng(seed)
    t = np.arange(n)
    season = 10 * np.sin(2 * np.pi * t / DAY)
    if kind == "noise":
        return 100 + season + generator.normal(0, 2, n)
    if kind == "random walk":
        return 100 + season + np.cumsum(generator.normal(0, 1, n))
    errors = np.zeros(n)
    for i in range(1, n):
        errors[i] = 0.7 * errors[i - 1] + generator.normal(0, 1.5)
    return 100 + season + errors


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["noise", "autoregressive", "random walk"])
def test_intervals_cover_the_truth_at_roughly_their_nominal_rate(kind: str) -> None:
    covered_80, covered_95 = [], []
    for seed in range(20):
        values = simulated(kind, seed)
        forecast = forecast_series(values[:-48], 48)
        actual = values[-48:]
        covered_80.append(((actual >= forecast.lower_80) & (actual <= forecast.upper_80)).mean())
        covered_95.append(((actual >= forecast.lower_95) & (actual <= forecast.upper_95)).mean())
    assert 0.6 <= np.mean(covered_80) <= 0.97
    assert 0.8 <= np.mean(covered_95) <= 1.0
    assert np.mean(covered_95) > np.mean(covered_80)


def test_periods_are_detected_when_present() -> None:
    t = np.arange(6 * 168)
    both = 10 * np.sin(2 * np.pi * t / 24) + 20 * np.sin(2 * np.pi * t / 168) + rng.normal(0, 1, len(t))
    assert seasonal_periods(both) == (24, 168)
    assert seasonal_periods(rng.normal(0, 1, 1000)) == ()
    assert not is_seasonal(both[:30], 24)  # not two cycles
    assert autocorrelation(np.ones(10), 3).tolist() == [0, 0, 0]


def test_multiplicative_indices_follow_the_cycle() -> None:
    t = np.arange(10 * DAY)
    values = 100 * (1 + 0.2 * np.sin(2 * np.pi * t / DAY))
    indices = multiplicative_indices(values, DAY)
    assert indices.mean() == pytest.approx(1.0)
    np.testing.assert_allclose(indices, values[-DAY:] / 100, atol=0.01)


def test_seasonal_naives_repeat_the_last_cycles() -> None:
    history = np.arange(48.0)
    np.testing.assert_array_equal(
        methods.seasonal_naive(history, 30, (24, 168)), np.r_[history[-24:], history[-24:-18]]
    )
    np.testing.assert_array_equal(methods.weekly_naive(history, 3, (2, 4)), history[-4:-1])
    np.testing.assert_array_equal(methods.seasonal_naive(history, 2, ()), [47.0, 47.0])


def test_every_method_forecasts_a_seasonal_series() -> None:
    history = daily(20 * DAY)
    for name, method in methods.METHODS.items():
        if name == "naive":
            continue
        forecast = method(history, 24, (24,))
        assert forecast.shape == (24,), name
        assert np.abs(forecast - truth_daily(20 * DAY, 24)).mean() < 4, name


def test_mase_scale_falls_back_to_one() -> None:
    assert mase_scale(np.ones(50), 24) == 1.0
    assert mase_scale(np.array([1.0, 3.0]), 24) == 2.0  # shorter than the period: lag 1

"""Time to a limit on constructed fill series, breach probabilities, scaling advice."""

from __future__ import annotations

import numpy as np
import pytest

from metrics.errors import ValidationError
from models.forecast.capacity import breach_probability, scaling_advice, time_to_limit
from models.forecast.forecaster import Forecast

HOUR = 3600.0


def disk_fill(
    days: int = 14, per_day: float = 2.0, start: float = 60.0, noise: float = 0.3, seed: int = 0
) -> np.ndarray:
    """A disk filling ``per_day`` percent a day, with a daily rhythm (log rotation at night) and noise."""
    hours = np.arange(days * 24)
    rng = np.random.default_rng(0)
    return start + per_day * hours / 24 + 1.5 * np.sin(2 * np.pi * hours / 24) + rng.normal(0, noise, len(hours))


def test_a_filling_disk_is_full_when_its_trend_says_with_an_interval_around_it() -> None:
    values = disk_fill()  # ends near 88 %, rising 2 % a day: full in about 6 days
    exhaustion = time_to_limit(values, HOUR, 100.0)
    assert exhaustion.days is not None
    assert exhaustion.days == pytest.approx((100 - (60 + 2 * (14 * 24 - 1) / 24)) / 2, abs=0.5)
    assert exhaustion.slope_per_day == pytest.approx(2.0, abs=0.2)
    assert exhaustion.earliest_seconds is not None
    assert exhaustion.latest_seconds is not None
    assert exhaustion.earliest_seconds < exhaustion.seconds < exhaustion.latest_seconds
    sentence = exhaustion.describe("disk / on host-3")
    assert sentence.startswith("disk / on host-3 reaches 100 in ")
    assert "80 %: " in sentence


@pytest.mark.parametrize(
    ("values", "falling"),
    [
        (disk_fill(per_day=-1.0), False),  # emptying: never full
        (np.full(200, 40.0), False),  # flat
        (60 + np.random.default_rng(1).normal(0, 1, 300), False),  # noise: no trend to speak of
    ],
)
def test_no_date_when_not_heading_for_the_limit(values: np.ndarray, falling: bool) -> None:
    exhaustion = time_to_limit(values, HOUR, 100.0, falling=falling)
    assert exhaustion.seconds is None
    assert "not heading for 100" in exhaustion.describe("disk")


def test_a_falling_series_reaches_a_lower_limit() -> None:
    available = 8e9 - 2e7 * np.arange(200)  # bytes falling 20 MB an hour
    exhaustion = time_to_limit(available, HOUR, 0.0, falling=True)
    assert exhaustion.seconds == pytest.approx((8e9 - 2e7 * 199) / 2e7 * HOUR, rel=1e-6)


def test_a_limit_already_passed_is_now() -> None:
    assert time_to_limit(disk_fill(start=101), HOUR, 100.0).seconds == 0.0


def test_a_bad_step_is_refused() -> None:
    with pytest.raises(ValidationError, match="step_seconds"):
        time_to_limit(disk_fill(), 0, 100.0)


def forecast(mean: list[float], spread: float) -> Forecast:
    values = np.array(mean)
    width = np.full(len(values), spread)
    return Forecast(
        values,
        values - 1.28 * width,
        values + 1.28 * width,
        values - 1.96 * width,
        values + 1.96 * width,
        "test",
        (),
        None,
    )


def test_breach_probability_follows_the_forecast_distribution() -> None:
    assert breach_probability(forecast([80, 85, 90], 5), 90) == pytest.approx(0.5, abs=1e-6)
    assert breach_probability(forecast([80, 85, 90], 5), 100) == pytest.approx(0.0228, abs=1e-3)  # 2 sigma
    assert breach_probability(forecast([50, 50], 0), 90) == 0.0
    assert breach_probability(forecast([95, 50], 0), 90) == 1.0
    assert breach_probability(forecast([10, 12], 2), 5, above=False) == pytest.approx(0.0062, abs=1e-3)


@pytest.mark.parametrize(
    ("peak", "current", "target", "recommended", "verb"),
    [(85.0, 3, 70.0, 4, "scale up to 4"), (30.0, 4, 70.0, 2, "scale down to 2"), (69.0, 2, 70.0, 2, "keep 2")],
)
def test_scaling_advice(peak: float, current: int, target: float, recommended: int, verb: str) -> None:
    advice = scaling_advice(forecast([peak - 10, peak], 0), current_replicas=current, target_utilisation=target)
    assert advice.recommended == recommended
    assert verb in advice.reason
    with pytest.raises(ValidationError, match="target_utilisation"):
        scaling_advice(forecast([1.0], 0), current_replicas=1, target_utilisation=0)

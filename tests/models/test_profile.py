"""The hour-of-week profile: busy Monday mornings are usual, a burst on a Sunday night is not."""

from __future__ import annotations

import numpy as np
import pytest

from models.detectors import make_detector

STEP_US = 300 * 1_000_000
MONDAY = 1_700_438_400 * 1_000_000  # 2023-11-20 00:00 UTC, a Monday


def working_week(weeks: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Calls per five minutes: about 30 in working hours on weekdays, about 2 otherwise."""
    rng = np.random.default_rng(seed)
    ts = MONDAY + np.arange(weeks * 7 * 288) * STEP_US
    hour = (ts // 3_600_000_000) % 24
    weekday = ((ts - MONDAY) // 86_400_000_000) % 7  # 0 = Monday
    busy = (weekday < 5) & (hour >= 8) & (hour < 18)
    return ts, rng.poisson(np.where(busy, 30, 2)).astype(float)


def test_a_burst_at_an_unusual_hour_stands_out_and_a_busy_morning_does_not() -> None:
    ts, counts = working_week()
    sunday_night = (2 * 7 + 6) * 288 + 3 * 12  # week 3, Sunday 03:00
    monday_morning = 2 * 7 * 288 + 10 * 12  # week 3, Monday 10:00
    burst = counts.copy()
    burst[sunday_night : sunday_night + 12] += 25  # a working day's load at 3 a.m.
    scores = make_detector("profile").calibrated((ts, burst))
    assert scores[sunday_night : sunday_night + 12].max() > 0.9
    assert scores[monday_morning : monday_morning + 12].max() < 0.5
    assert scores[:288].max() == 0.0  # silent until an hour of the day has been seen twice
    clean = make_detector("profile").calibrated(working_week(seed=4))
    assert clean.max() < 0.9  # three ordinary weeks raise no alarm


def test_a_weak_candidate_does_not_mute_a_surge_hours_later() -> None:
    ts, counts = working_week()
    night = (2 * 7 + 2) * 288 + 2 * 12  # week 3, Wednesday 02:00
    counts[night + 11] += 17  # a slightly busy hour (41 calls, 24 usual): a candidate, not an anomaly
    counts[night + 5 * 12 : night + 5 * 12 + 6] += 40  # a real surge three hours later, 07:00
    detector = make_detector("profile")
    calibrated = make_detector("profile").calibrated((ts, counts))
    scores = detector.score((ts, counts))
    assert 0.5 <= calibrated[night : night + 12].max() < 0.7
    assert scores[night + 5 * 12 : night + 5 * 12 + 6].max() == pytest.approx(1.0)
    assert scores[night + 5 * 12 + 6 : night + 12 * 12].max() == 0.0  # then quiet, one detection per incident


def test_the_profile_streams() -> None:
    ts, counts = working_week(weeks=2)
    whole = make_detector("profile").calibrated((ts, counts))
    detector = make_detector("profile")
    parts = np.concatenate(
        [detector.calibrated((ts[a:b], counts[a:b])) for a, b in ((0, 1000), (1000, 1001), (1001, len(ts)))]
    )
    np.testing.assert_allclose(parts, whole)


def test_profile_parameters() -> None:
    with pytest.raises(ValueError, match="min_weeks"):
        make_detector("profile", weeks=2, min_weeks=3)

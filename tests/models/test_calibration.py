"""The anomaly likelihood and the quiet period: streaming, bounded, and as documented."""

from __future__ import annotations

import numpy as np
import pytest

from models.calibration import AnomalyLikelihood, QuietPeriod

MINUTE = 60 * 1_000_000


def test_the_likelihood_is_silent_while_it_learns_and_high_for_a_sustained_rise() -> None:
    rng = np.random.default_rng(0)
    raw = np.abs(rng.normal(0, 1, 3000))
    raw[2500:2520] += 8  # twenty rows far above anything before
    scores = AnomalyLikelihood(min_history=200).transform(raw)
    assert (scores[:200] == 0).all()
    assert scores[2500:2520].max() > 0.9
    assert scores[300:2500].max() < scores[2500:2520].max()
    assert ((scores >= 0) & (scores <= 1)).all()


def test_the_likelihood_streams() -> None:
    raw = np.abs(np.random.default_rng(1).normal(0, 1, 2000))
    whole = AnomalyLikelihood(long_window=500).transform(raw)
    pieces = AnomalyLikelihood(long_window=500)
    parts = np.concatenate([pieces.transform(raw[a:b]) for a, b in ((0, 3), (3, 700), (700, 1999), (1999, 2000))])
    np.testing.assert_allclose(parts, whole)
    assert len(pieces.raw_) == 500 + pieces.short_window  # a bounded memory


@pytest.mark.parametrize(
    ("params", "message"),
    [({"short_window": 0}, "short_window"), ({"short_window": 20, "long_window": 10}, "smaller than long_window")],
)
def test_likelihood_parameters(params: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        AnomalyLikelihood(**params)


def test_a_quiet_period_keeps_the_first_alarm_and_silences_the_rest() -> None:
    ts = np.arange(10) * MINUTE
    scores = np.array([0.1, 0.9, 0.95, 0.2, 0.8, 0.1, 0.1, 0.7, 0.9, 0.1])
    quiet = QuietPeriod(level=0.5, hold_seconds=5 * 60)
    out = quiet.apply(ts, scores)
    np.testing.assert_allclose(out, [0.1, 0.9, 0, 0, 0, 0, 0, 0.7, 0, 0])  # rows 2–6 quiet; row 7 alarms again


def test_a_quiet_period_carries_over_to_the_next_call_and_can_damp() -> None:
    quiet = QuietPeriod(level=0.5, hold_seconds=3 * 60, damping=0.5)
    first = quiet.apply(np.arange(3) * MINUTE, np.array([0.2, 0.9, 0.8]))
    second = quiet.apply(np.arange(3, 6) * MINUTE, np.array([0.8, 0.9, 0.6]))
    np.testing.assert_allclose(first, [0.2, 0.9, 0.4])
    np.testing.assert_allclose(second, [0.4, 0.45, 0.6])  # rows up to 4 min are damped; row 5 alarms again
    with pytest.raises(ValueError, match="level"):
        QuietPeriod(level=0)

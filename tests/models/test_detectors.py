"""Detectors on constructed series with known anomalies and on clean ones; streaming never looks ahead."""

from __future__ import annotations

import itertools
from collections.abc import Callable

import numpy as np
import polars as pl
import pytest

from metrics.errors import ValidationError
from models import names
from models.base import Detector, as_series
from models.detectors import DEFAULT_DETECTOR, DETECTORS, make_detector

STEP_US = 300 * 1_000_000  # five minutes
DAY = 288  # rows
START_US = 1_700_000_000 * 1_000_000
ANOMALY = 6 * DAY + 100  # the row where each constructed anomaly begins (day 7)
SEEN = 0.75  # an anomaly is seen when its evidence reaches this (a tail probability of about 2e-4) …
ALERT = 0.9  # … and a clean series never reaches this (3e-5)


def clean(days: int = 9, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """A daily cycle with noise, five-minute rows."""
    rng = np.random.default_rng(seed)
    n = days * DAY
    rows = np.arange(n)
    values = 50 + 10 * np.sin(2 * np.pi * rows / DAY) + rng.normal(0, 1.0, n)
    return START_US + rows * STEP_US, values


def stationary(days: int = 9, seed: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Noise around a constant level, five-minute rows."""
    rng = np.random.default_rng(seed)
    n = days * DAY
    return START_US + np.arange(n) * STEP_US, 50 + rng.normal(0, 1.0, n)


def spike(values: np.ndarray) -> np.ndarray:
    out = values.copy()
    out[ANOMALY] += 40
    return out


def level_shift(values: np.ndarray) -> np.ndarray:
    out = values.copy()
    out[ANOMALY:] += 25
    return out


def variance_change(values: np.ndarray) -> np.ndarray:
    out = values.copy()
    out[ANOMALY:] += np.random.default_rng(7).normal(0, 12.0, len(out) - ANOMALY)
    return out


def seasonal_break(values: np.ndarray) -> np.ndarray:
    """Half a day where the cycle runs upside down: every value is still in the usual range."""
    out = values.copy()
    rows = np.arange(ANOMALY, ANOMALY + DAY // 2)
    out[rows] = 50 - 10 * np.sin(2 * np.pi * rows / DAY) + np.random.default_rng(3).normal(0, 1.0, len(rows))
    return out


def flat_line(values: np.ndarray) -> np.ndarray:
    """The sensor freezes at its last value."""
    out = values.copy()
    out[ANOMALY:] = out[ANOMALY]
    return out


Anomaly = Callable[[np.ndarray], np.ndarray]
Base = Callable[..., tuple[np.ndarray, np.ndarray]]
# Each detector on the series it is built for, with the anomalies it is built to see. The change point and
# the forest judge a stationary series (on a strong daily cycle alone they raise false alarms, which the
# ensemble's median removes); a flat line is seen by the change point, the forest and the seasonal view.
SEES: dict[str, tuple[Base, tuple[Anomaly, ...]]] = {
    "zscore": (clean, (spike, level_shift, variance_change)),
    "seasonal": (clean, (spike, level_shift, variance_change, seasonal_break, flat_line)),
    "changepoint": (stationary, (spike, level_shift, variance_change, flat_line)),
    "iforest": (stationary, (spike, level_shift, variance_change, flat_line)),
    "ensemble": (clean, (spike, level_shift, variance_change)),
}
GENERAL = list(SEES)  # the profile (usage counts against past weeks) has its own tests: tests/models/test_profile.py
CASES = [(name, base, anomaly) for name, (base, anomalies) in SEES.items() for anomaly in anomalies]


@pytest.mark.parametrize(("name", "base", "anomaly"), CASES, ids=[f"{n}-{a.__name__}" for n, _, a in CASES])
def test_the_anomaly_scores_higher_than_anything_before_it(name: str, base: Base, anomaly: Anomaly) -> None:
    ts, values = base()
    scores = make_detector(name).calibrated((ts, anomaly(values)))  # the evidence, before quiet periods
    warm = 2 * DAY  # the detectors learn first
    before = scores[warm:ANOMALY].max()
    during = scores[ANOMALY : ANOMALY + DAY // 2].max()
    assert during >= SEEN, f"{name} missed the {anomaly.__name__}: {during:.2f}"
    assert during > before, f"{name}: the {anomaly.__name__} ({during:.2f}) not above the clean part ({before:.2f})"


@pytest.mark.parametrize("name", GENERAL)
@pytest.mark.parametrize("seed", [11, 12])
def test_a_clean_series_raises_no_alarm(name: str, seed: int) -> None:
    ts, values = SEES[name][0](seed=seed)
    scores = make_detector(name).score((ts, values))  # with quiet periods: alarms, not rows
    assert scores.min() >= 0.0
    assert scores.max() <= 1.0
    alarms = int((scores[2 * DAY :] >= ALERT).sum())
    # A single detector may misjudge noise about once a week; the ensemble, which needs half of them to
    # agree, does not.
    assert alarms <= (0 if name == "ensemble" else 1), f"{name} raised {alarms} alarms on a clean week"


@pytest.mark.parametrize("name", GENERAL)
def test_a_score_never_depends_on_later_rows(name: str) -> None:
    ts, values = clean(days=7)
    cut = 5 * DAY + 17
    changed = values.copy()
    changed[cut:] = np.random.default_rng(5).normal(500, 100, len(values) - cut)  # rewrite the future
    first = make_detector(name).score((ts, values))
    second = make_detector(name).score((ts, changed))
    np.testing.assert_array_equal(first[:cut], second[:cut])


@pytest.mark.parametrize("name", GENERAL)
def test_scoring_in_pieces_equals_scoring_at_once(name: str) -> None:
    ts, values = spike(clean(days=8)[1]), None
    ts, values = clean(days=8)
    values = spike(values)
    whole = make_detector(name).score((ts, values))
    detector = make_detector(name)
    cuts = [0, 7, 500, 501, 1300, 2000, len(values)]
    pieces = np.concatenate([detector.score((ts[a:b], values[a:b])) for a, b in itertools.pairwise(cuts)])
    np.testing.assert_allclose(pieces, whole, atol=1e-9)


def test_missing_values_score_zero_and_teach_nothing() -> None:
    ts, values = clean(days=4)
    gappy = values.copy()
    gappy[500:520] = np.nan
    scores = make_detector("zscore").score((ts, gappy))
    assert (scores[500:520] == 0).all()


def test_fit_learns_history_then_scores_new_rows() -> None:
    ts, values = clean(days=8)
    values = spike(values)
    fitted = make_detector("zscore").fit((ts[:ANOMALY], values[:ANOMALY]))
    continued = fitted.score((ts[ANOMALY:], values[ANOMALY:]))
    streamed = make_detector("zscore").score((ts, values))[ANOMALY:]
    np.testing.assert_allclose(continued, streamed)


def test_frames_and_validation() -> None:
    ts, values = clean(days=1)
    frame = pl.DataFrame({"timestamp": ts.astype("datetime64[us]"), "value": values})
    np.testing.assert_allclose(make_detector("zscore").score(frame), make_detector("zscore").score((ts, values)))
    with pytest.raises(ValidationError, match="value: missing column"):
        as_series(pl.DataFrame({"ts": ts.astype("datetime64[us]")}))
    with pytest.raises(ValidationError, match="timestamp: missing column"):
        as_series(pl.DataFrame({"value": values}))
    with pytest.raises(ValidationError, match="row 3 is infinite"):
        as_series((ts[:5], np.array([1.0, 2, 3, np.inf, 5])))
    out_of_order = as_series((ts[[0, 2, 1]], values[:3]))
    assert list(out_of_order.ts) == [ts[0], ts[2], ts[2]]  # a row stamped earlier counts as arriving last


@pytest.mark.parametrize(
    ("name", "params", "message"),
    [
        ("nope", {}, "detector: 'nope' is not one of"),
        ("zscore", {"window_seconds": 0}, "window_seconds"),
        ("zscore", {"colour": "red"}, "unexpected keyword argument 'colour'"),
        ("ensemble", {"members": ("zscore", "magic")}, "unknown detector 'magic'"),
        ("ensemble", {"combine": "vote"}, "combine: 'vote' is not one of"),
        ("iforest", {"trees": 0}, "trees: 0 must be a whole number >= 1"),
        ("seasonal", {"bins_per_day": 7}, "bins_per_day"),
        ("changepoint", {"width_seconds": -1}, "width_seconds"),
    ],
)
def test_bad_parameters_are_refused_with_the_parameter(name: str, params: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        make_detector(name, **params)


def test_parameters_are_declared_once() -> None:
    detector: Detector = make_detector("zscore", window_seconds=3600.0)
    assert detector.params() == {"hold_seconds": 43_200.0, "window_seconds": 3600.0, "min_points": 20}


def test_the_light_name_list_matches_the_detectors() -> None:
    assert tuple(DETECTORS) == names.DETECTOR_NAMES
    assert names.DEFAULT_DETECTOR == DEFAULT_DETECTOR

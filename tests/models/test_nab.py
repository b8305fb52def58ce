"""The NAB scorer against hand-worked examples, and its exact threshold search against the rules row by row."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from models.nab import (
    PROFILES,
    LabelledFile,
    Profile,
    evaluate,
    probation,
    raw_score,
    score_curve,
    sigmoid,
    window_rows,
)

STANDARD = PROFILES[0]


def s(y: float) -> float:
    return 2 / (1 + math.exp(5 * y)) - 1


def scores(n: int, hits: dict[int, float]) -> np.ndarray:
    out = np.zeros(n)
    for row, value in hits.items():
        out[row] = value
    return out


def test_sigmoid_and_probation() -> None:
    assert float(sigmoid(0.0)) == 0.0
    assert float(sigmoid(-1.0)) == pytest.approx(s(-1))
    assert probation(20) == 3
    assert probation(100_000) == 750


@pytest.mark.parametrize(
    ("hits", "expected"),
    [
        ({}, -1.0),  # the window is missed
        ({10: 1.0}, 1.0),  # detected at its first row: full credit
        ({12: 1.0}, s(-2 / 4) / s(-1)),  # later in the window: less
        ({12: 1.0, 10: 0.9}, 1.0),  # only the earliest detection counts
        ({10: 1.0, 11: 1.0, 13: 1.0}, 1.0),  # later ones add nothing
        ({16: 1.0}, -1.0 + 0.11 * s((16 - 13) / (4 - 1))),  # after the window: a damped false positive
        ({5: 1.0}, -1.0 - 0.11),  # before any window: a full false positive
        ({1: 1.0}, -1.0),  # in the probationary period (3 rows): not scored
    ],
)
def test_hand_worked_raw_scores(hits: dict[int, float], expected: float) -> None:
    file = LabelledFile("f", scores(20, hits), ((10, 13),))
    assert raw_score(file, 0.5, STANDARD) == pytest.approx(expected)
    thresholds, totals = score_curve([file], STANDARD)
    assert totals[int(np.searchsorted(-thresholds, -0.5, side="right")) - 1] == pytest.approx(expected)


def test_profiles_weigh_false_positives_and_negatives() -> None:
    file = LabelledFile("f", scores(20, {5: 1.0}), ((10, 13),))
    low_fp, low_fn = PROFILES[1], PROFILES[2]
    assert raw_score(file, 0.5, low_fp) == pytest.approx(-1.0 - 0.22)
    assert raw_score(file, 0.5, low_fn) == pytest.approx(-2.0 - 0.11)


def test_the_threshold_is_the_best_for_the_corpus() -> None:
    good = LabelledFile("good", scores(20, {10: 0.8, 5: 0.3}), ((10, 13),))
    noisy = LabelledFile("noisy", scores(20, {4: 0.7, 6: 0.7, 8: 0.7}), ())
    result = evaluate([good, noisy], STANDARD)
    assert result.threshold == pytest.approx(0.8)  # 0.7 would add three false positives
    assert result.raw == pytest.approx(1.0)
    assert result.normalised == pytest.approx(100.0)
    assert result.per_file == {"good": pytest.approx(1.0), "noisy": pytest.approx(0.0)}
    # A detector that scores every row alike fires everywhere or nowhere: here everywhere pays better.
    flat = evaluate([LabelledFile("flat", np.zeros(20), ((10, 13),))], STANDARD)
    everywhere = raw_score(LabelledFile("flat", np.zeros(20), ((10, 13),)), 0.0, STANDARD)
    assert (flat.threshold, flat.raw) == (0.0, pytest.approx(everywhere))


@settings(max_examples=150, deadline=None)
@given(
    values=st.lists(st.sampled_from([0.0, 0.2, 0.5, 0.7, 1.0]), min_size=8, max_size=60),
    starts=st.lists(st.integers(0, 59), max_size=4),
    width=st.integers(1, 6),
    profile=st.sampled_from(PROFILES),
)
def test_the_exact_curve_agrees_with_the_rules_at_every_threshold(
    values: list[float], starts: list[int], width: int, profile: Profile
) -> None:
    n = len(values)
    windows: list[tuple[int, int]] = []
    for start in sorted(set(starts)):
        if start < n and (not windows or start > windows[-1][1] + 1):
            windows.append((start, min(n - 1, start + width - 1)))
    file = LabelledFile("f", np.array(values), tuple(windows))
    thresholds, totals = score_curve([file], profile)
    for threshold, total in zip(thresholds, totals, strict=True):
        assert total == pytest.approx(raw_score(file, threshold, profile))


def test_windows_become_rows_and_bad_input_is_refused() -> None:
    stamps = np.array(["2024-01-01T00:00", "2024-01-01T00:05", "2024-01-01T00:10"], dtype="datetime64[us]")
    window = [(np.datetime64("2024-01-01T00:04"), np.datetime64("2024-01-01T00:10"))]
    assert window_rows(stamps, window) == ((1, 2),)
    with pytest.raises(ValueError, match="scores must lie in"):
        LabelledFile("f", np.array([0.5, 2.0]), ())
    with pytest.raises(ValueError, match="outside the file or overlaps"):
        LabelledFile("f", np.zeros(5), ((3, 9),))

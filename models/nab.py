"""The Numenta Anomaly Benchmark's scoring rules, with the corpus threshold found exactly.

A detector gives every row of a file an anomaly score in [0, 1]; a row is a
detection when its score reaches the threshold. Rules (``../shared/data/README.md``):

- the first ``P = min(floor(0.15·N), 750)`` rows of a file (the probationary
  period) are not scored;
- inside a labelled window ``[l, r]`` of ``w`` rows, the earliest detection at
  row ``i`` earns ``A_TP·σ(y)/σ(−1)`` with ``y = −(r−i+1)/w`` (later ones add
  nothing); a window without a detection costs ``A_FN``;
- a detection outside every window costs ``A_FP·σ((i−r')/(w'−1))`` where ``r'``
  and ``w'`` are the end and width of the nearest window before it (``σ`` of a
  positive number is negative), or ``A_FP`` when none precedes it;
- ``σ(y) = 2/(1+e^(5y)) − 1``;
- one threshold per profile for the whole corpus, the one maximising the total
  raw score; normalised score ``100·(S − S_null)/(S_perfect − S_null)`` with
  ``S_null = −A_FN`` and ``S_perfect = A_TP`` per window.

The threshold is found exactly, not by search: as it falls, a row outside the
windows adds its (negative) cost once its score is reached, and a window's
credit changes only when the threshold passes a new running maximum of its
scores from the left; :func:`score_curve` collects these steps for every file
and sums them in score order.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PROBATION_FRACTION = 0.15
MAX_PROBATION = 750


@dataclass(frozen=True)
class Profile:
    """Weights of one NAB profile: a true positive, a false positive, a false negative."""

    name: str
    tp: float
    fp: float
    fn: float


PROFILES = (
    Profile("standard", 1.0, 0.11, 1.0),
    Profile("reward_low_FP_rate", 1.0, 0.22, 1.0),
    Profile("reward_low_FN_rate", 1.0, 0.11, 2.0),
)


def sigmoid(y: float | np.ndarray) -> np.ndarray:
    """NAB's scaled sigmoid: ``2/(1+e^(5y)) − 1`` (1 at −∞, 0 at 0, −1 at +∞), element-wise."""
    return np.asarray(2.0 / (1.0 + np.exp(5.0 * np.asarray(y, dtype=float))) - 1.0)


def probation(rows: int) -> int:
    """Rows at the start of a file that are not scored."""
    return min(math.floor(PROBATION_FRACTION * rows), MAX_PROBATION)


@dataclass(frozen=True)
class LabelledFile:
    """One file's scores and its anomaly windows as inclusive row ranges."""

    name: str
    scores: np.ndarray
    windows: tuple[tuple[int, int], ...]

    def __post_init__(self) -> None:
        if self.scores.ndim != 1:
            raise ValueError(f"{self.name}: scores must be one value per row")
        if np.isnan(self.scores).any() or (self.scores < 0).any() or (self.scores > 1).any():
            raise ValueError(f"{self.name}: scores must lie in [0, 1] (no NaN)")
        previous = -1
        for left, right in self.windows:
            if not 0 <= left <= right < len(self.scores) or left <= previous:
                raise ValueError(f"{self.name}: window {left}–{right} is outside the file or overlaps another")
            previous = right


def window_rows(
    timestamps: np.ndarray, windows: Sequence[tuple[np.datetime64, np.datetime64]]
) -> tuple[tuple[int, int], ...]:
    """Inclusive time windows as inclusive row ranges (rows whose timestamp lies inside); empty ones dropped."""
    found = []
    for start, end in windows:
        left = int(np.searchsorted(timestamps, start, side="left"))
        right = int(np.searchsorted(timestamps, end, side="right")) - 1
        if left <= right:
            found.append((left, right))
    return tuple(found)


def raw_score(file: LabelledFile, threshold: float, profile: Profile) -> float:
    """The raw score of one file at one threshold (the rules, row by row: the reference implementation)."""
    start = probation(len(file.scores))
    total = 0.0
    detected = [False] * len(file.windows)
    for i in range(start, len(file.scores)):
        if file.scores[i] < threshold:
            continue
        inside = next((k for k, (lo, hi) in enumerate(file.windows) if lo <= i <= hi), None)
        if inside is not None:
            if not detected[inside]:
                left, right = file.windows[inside]
                width = right - left + 1
                total += profile.tp * float(sigmoid(-(right - i + 1) / width)) / float(sigmoid(-1.0))
                detected[inside] = True
            continue
        before = [(lo, hi) for lo, hi in file.windows if hi < i]
        if before:
            left, right = before[-1]
            width = right - left + 1
            total += profile.fp * float(sigmoid((i - right) / max(width - 1, 1)))
        else:
            total -= profile.fp
    total -= profile.fn * detected.count(False)
    return total


def _steps(file: LabelledFile, profile: Profile) -> tuple[np.ndarray, np.ndarray, float]:
    """(score levels, score change when the threshold falls to each level, raw score at an infinite threshold)."""
    scores = file.scores
    start = probation(len(scores))
    levels: list[np.ndarray] = []
    changes: list[np.ndarray] = []
    outside = np.ones(len(scores), dtype=bool)
    outside[:start] = False
    for left, right in file.windows:
        outside[left : right + 1] = False
        # Credit of the earliest detection at each row; only rows where the running maximum rises matter.
        lo = max(left, start)
        if lo > right:
            continue
        segment = scores[lo : right + 1]
        width = right - left + 1
        rows = np.arange(lo, right + 1)
        credit = profile.tp * sigmoid(-(right - rows + 1) / width) / sigmoid(-1.0)
        running = np.maximum.accumulate(segment)
        records = np.flatnonzero(np.concatenate(([True], segment[1:] > running[:-1])))[::-1]
        # Falling past a new maximum from the left (the highest, rightmost one first) makes its row the
        # earliest detection; other rows never change which detection is the earliest.
        value = np.concatenate(([-profile.fn], credit[records]))
        levels.append(segment[records])
        changes.append(np.diff(value))
    rows = np.flatnonzero(outside)
    if len(rows):
        ends = np.array([r for _, r in file.windows], dtype=np.int64)
        widths = np.array([hi - lo + 1 for lo, hi in file.windows], dtype=np.int64)
        nearest = np.searchsorted(ends, rows, side="left") - 1  # the last window ending before the row
        cost = np.full(len(rows), -profile.fp)
        has = nearest >= 0
        if has.any():
            gap = (rows[has] - ends[nearest[has]]) / np.maximum(widths[nearest[has]] - 1, 1)
            cost[has] = profile.fp * sigmoid(gap)
        levels.append(scores[rows])
        changes.append(cost)
    base = -profile.fn * len(file.windows)
    if not levels:
        return np.empty(0), np.empty(0), base
    return np.concatenate(levels), np.concatenate(changes), base


@dataclass(frozen=True)
class ProfileResult:
    """A profile's best threshold over a corpus, the raw and normalised score there, and per-file raw scores."""

    profile: str
    threshold: float
    raw: float
    normalised: float
    per_file: dict[str, float]


def score_curve(files: Sequence[LabelledFile], profile: Profile) -> tuple[np.ndarray, np.ndarray]:
    """(thresholds, total raw score at each), thresholds descending: every level where the total changes."""
    all_levels, all_changes, base = [], [], 0.0
    for file in files:
        levels, changes, file_base = _steps(file, profile)
        all_levels.append(levels)
        all_changes.append(changes)
        base += file_base
    levels = np.concatenate(all_levels) if all_levels else np.empty(0)
    changes = np.concatenate(all_changes) if all_changes else np.empty(0)
    order = np.argsort(-levels, kind="stable")
    levels, changes = levels[order], changes[order]
    totals = base + np.cumsum(changes)
    # Rows sharing a level switch on together: keep the last total of each level.
    last = np.concatenate((levels[1:] != levels[:-1], [True])) if len(levels) else np.empty(0, dtype=bool)
    thresholds = np.concatenate(([np.inf], levels[last]))
    return thresholds, np.concatenate(([base], totals[last]))


def evaluate(files: Sequence[LabelledFile], profile: Profile) -> ProfileResult:
    """The profile's optimal corpus threshold and its raw and normalised scores."""
    thresholds, totals = score_curve(files, profile)
    best = int(np.argmax(totals))  # the highest threshold among equal totals: fewest detections
    threshold = float(min(thresholds[best], 1.0))
    windows = sum(len(file.windows) for file in files)
    null, perfect = -profile.fn * windows, profile.tp * windows
    raw = float(totals[best])
    normalised = 100.0 * (raw - null) / (perfect - null) if perfect != null else 0.0
    per_file = {file.name: _file_raw(file, threshold, profile) for file in files}
    return ProfileResult(profile.name, threshold, raw, normalised, per_file)


def _file_raw(file: LabelledFile, threshold: float, profile: Profile) -> float:
    levels, changes, base = _steps(file, profile)
    return float(base + changes[levels >= threshold].sum())


def evaluate_all(files: Sequence[LabelledFile], profiles: Sequence[Profile] = PROFILES) -> dict[str, ProfileResult]:
    """Every profile's result, by name."""
    return {profile.name: evaluate(files, profile) for profile in profiles}

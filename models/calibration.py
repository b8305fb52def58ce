"""From raw surprise to an anomaly score in [0, 1]: the anomaly likelihood, and quiet time after a detection.

A detector's raw output (a z-score, a forest's path length, a likelihood
ratio) has its own scale, and a noisy series keeps it high. :class:`AnomalyLikelihood`
(after Numenta's anomaly likelihood, Ahmad et al. 2017) asks instead how
unusual the *recent* raw scores are against their own history: the mean of
the last ``short_window`` raw scores, compared with the mean and spread of that
average over the last ``long_window`` rows, gives a Gaussian tail
probability ``q``; the score is ``log(q) / log(epsilon)`` clipped to [0, 1], so 1
means a tail probability of ``epsilon`` (1e-5) or less. Every detector scale
becomes the same scale, which is what lets an ensemble add them.

:class:`QuietPeriod` then keeps one incident from scoring again and again: after
a score reaches ``level``, later scores are damped for ``hold_seconds`` (an
alert is raised once per incident, and NAB, like an on-call engineer, counts
only the earliest detection of a window and every further one outside it
as a false alarm).

Both are streaming: their state is a bounded buffer of past raw scores and
the end of the current quiet period.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from scipy.special import ndtr

EPSILON = 1e-5
LOG_EPSILON = float(np.log(EPSILON))
# The default anomaly threshold: a detector whose surprise wanders near the candidate level (0.5) starts its
# quiet period only here, so a weak candidate cannot mute a real incident that follows it.
DETECTION_LEVEL = 0.7


@dataclass
class AnomalyLikelihood:
    """Calibrates raw scores against their own recent history.

    Args:
        short_window: raw scores averaged into the recent level (rows).
        long_window: rows of averaged scores the recent level is compared with.
        min_history: rows needed before any score above 0 (the detector learns first).
        max_raw: raw scores are capped here, so one huge value does not hide the next incident.
    """

    short_window: int = 10
    long_window: int = 8640
    min_history: int = 200
    max_raw: float = 50.0
    raw_: np.ndarray = field(default_factory=lambda: np.zeros(0), repr=False)
    seen_: int = 0

    def __post_init__(self) -> None:
        for name in ("short_window", "long_window", "min_history"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} must be a whole number >= 1")
        if self.short_window >= self.long_window:
            raise ValueError(
                f"short_window ({self.short_window}) must be smaller than long_window ({self.long_window})"
            )

    def reset(self) -> None:
        """Forget the history."""
        self.raw_, self.seen_ = np.zeros(0), 0

    def transform(self, raw: np.ndarray) -> np.ndarray:
        """Scores in [0, 1] of new raw scores (NaN counts as 0), learning them."""
        raw = np.minimum(np.nan_to_num(np.asarray(raw, dtype=float), nan=0.0), self.max_raw)
        kept = len(self.raw_)
        series = pd.Series(np.concatenate((self.raw_, raw)))
        average = series.rolling(self.short_window, min_periods=1).mean()
        past = average.shift(1).rolling(self.long_window, min_periods=2)
        mean, spread = past.mean(), past.std()
        z = ((average - mean) / spread.clip(lower=1e-9)).to_numpy()[kept:]
        rows_seen = self.seen_ + np.arange(1, len(raw) + 1)
        tail = 1.0 - ndtr(np.nan_to_num(z, nan=0.0))
        scores = np.clip(np.log(np.maximum(tail, 1e-300)) / LOG_EPSILON, 0.0, 1.0)
        scores[rows_seen <= self.min_history] = 0.0
        keep = self.long_window + self.short_window
        self.raw_ = series.to_numpy()[-keep:]
        self.seen_ += len(raw)
        return scores


@dataclass
class QuietPeriod:
    """Damps scores for ``hold_seconds`` after one reaches ``level``.

    Args:
        level: a score this high starts a quiet period.
        hold_seconds: how long it lasts.
        damping: scores inside it are multiplied by this (0 silences them).
    """

    level: float = 0.5
    hold_seconds: float = 43_200.0
    damping: float = 0.0
    quiet_until_: int = -(2**62)

    def __post_init__(self) -> None:
        if not 0 < self.level <= 1:
            raise ValueError(f"level: {self.level!r} must be in (0, 1]")
        if not self.hold_seconds >= 0:
            raise ValueError(f"hold_seconds: {self.hold_seconds!r} must be >= 0")
        if not 0 <= self.damping <= 1:
            raise ValueError(f"damping: {self.damping!r} must be in [0, 1]")

    def reset(self) -> None:
        """No quiet period in force."""
        self.quiet_until_ = -(2**62)

    def apply(self, ts: np.ndarray, scores: np.ndarray) -> np.ndarray:
        """The scores with quiet periods applied (rows in time order, ``ts`` in µs)."""
        out = scores.astype(float, copy=True)
        hold = int(self.hold_seconds * 1_000_000)
        row = 0
        if len(out) and ts[0] <= self.quiet_until_:  # a quiet period begun in an earlier call
            row = int(np.searchsorted(ts, self.quiet_until_, side="right"))
            out[:row] *= self.damping
        for start in np.flatnonzero(out >= self.level):
            if start < row:
                continue
            self.quiet_until_ = int(ts[start]) + hold
            row = int(np.searchsorted(ts, self.quiet_until_, side="right"))
            out[start + 1 : row] *= self.damping
        return out

"""Hour-of-week profile: how a value compares with the same hour of the same weekday in past weeks.

Made for usage volumes (a key's calls per second, requests per second) that
follow the working week: Monday 10:00 is compared with earlier Mondays at
10:00, not with Sunday night. Rows are summed into hourly buckets; each hour
of the week keeps the last ``weeks`` values seen for it. A bucket's surprise
is how far it exceeds that slot's median in units of the slot's spread (a
volume *above* the usual is what the profile watches): the median absolute
deviation and the square root of the median (the Poisson noise of a count)
combined, so a quiet key's one extra call is not an incident. Being in noise
units already, its Gaussian tail probability is the score, on the other
detectors' scale (a tail of 1e-5 scores 1). Until a slot has ``min_weeks``
values the same hour of the day stands in (every day's 10:00),
and before that the detector is silent. Every row of an hour gets the hour's
score so far: an hour becoming unusual is seen within it. Only a detection
(0.7) starts the quiet period: a count's noise puts a few hours a month near
the candidate level, and one of them must not mute a key's real surge hours later.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from scipy.special import ndtr

from models.base import US_PER_SECOND, Detector, Series
from models.calibration import DETECTION_LEVEL, LOG_EPSILON
from models.zscore import MAD_TO_SIGMA

HOUR_US = 3600 * US_PER_SECOND
HOURS_PER_WEEK = 168


@dataclass
class HourOfWeekProfile(Detector):
    """Hourly sums against the same hour of the week in past weeks (the same hour of the day at first).

    Args:
        hold_seconds: quiet time after a detection.
        weeks: past values kept per hour of the week.
        min_weeks: values a slot needs before it is used (the hour of the day stands in until then).
    """

    name: ClassVar[str] = "profile"
    quiet_level: ClassVar[float] = DETECTION_LEVEL
    weeks: int = 4
    min_weeks: int = 2
    slots_: dict[int, list[float]] = field(init=False, repr=False)
    hours_: dict[int, list[float]] = field(init=False, repr=False)
    bucket_: int | None = field(init=False, repr=False)
    total_: float = field(init=False, repr=False)

    def validate(self) -> None:
        for name in ("weeks", "min_weeks"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name}: {value!r} must be a whole number >= 1")
        if self.min_weeks > self.weeks:
            raise ValueError(f"min_weeks ({self.min_weeks}) must be at most weeks ({self.weeks})")

    def _reset(self) -> None:
        self.slots_, self.hours_ = {}, {}
        self.bucket_, self.total_ = None, 0.0

    def _expected(self, bucket: int) -> tuple[float, float] | None:
        """(median, spread) for an hour bucket from the past, or None when the past says nothing yet."""
        slot = self.slots_.get(bucket % HOURS_PER_WEEK, [])
        history = slot if len(slot) >= self.min_weeks else self.hours_.get(bucket % 24, [])
        if len(history) < self.min_weeks:
            return None
        values = np.asarray(history)
        median = float(np.median(values))
        mad = float(np.median(np.abs(values - median))) * MAD_TO_SIGMA
        spread = float(np.sqrt(mad**2 + max(median, 1.0)))  # the slot's own variation and a count's noise
        return median, spread

    def _close(self, bucket: int, total: float) -> None:
        """Remember a finished hour for its slot and its hour of the day."""
        for table, key, keep in (
            (self.slots_, bucket % HOURS_PER_WEEK, self.weeks),
            (self.hours_, bucket % 24, 7 * self.weeks),
        ):
            values = table.setdefault(key, [])
            values.append(total)
            del values[:-keep]

    def _calibrated(self, series: Series) -> np.ndarray:
        raw = np.zeros(len(series))
        known = np.zeros(len(series), dtype=bool)
        for row, (stamp, value) in enumerate(zip(series.ts, series.values, strict=True)):
            bucket = int(stamp) // HOUR_US
            if self.bucket_ is not None and bucket != self.bucket_:
                self._close(self.bucket_, self.total_)
                self.total_ = 0.0
            self.bucket_ = bucket
            if value == value:  # not NaN
                self.total_ += float(value)
            expected = self._expected(bucket)
            if expected is not None:
                median, spread = expected
                raw[row] = (self.total_ - median) / spread if self.total_ > median else 0.0  # more than usual
                known[row] = True
        # The surprise is already in noise units (the slot's own spread): its Gaussian tail is the score,
        # on the scale the other detectors use (a tail of 1e-5 scores 1).
        tail = 1.0 - ndtr(raw)
        return np.where(known, np.clip(np.log(np.maximum(tail, 1e-300)) / LOG_EPSILON, 0.0, 1.0), 0.0)

"""Robust z-score: how far a point lies from the recent median, in units of the recent median absolute deviation.

Two views of each point, each measured against the ``window_seconds`` before
it (the point itself excluded): its **level** (``|x − median| / (1.4826·MAD)``)
and its **change** from the previous point (the same statistic over first
differences, which catches spikes and steps in a series whose level wanders).
Each view is calibrated into an anomaly likelihood; the score is the larger.
Medians and MADs ignore outliers, so one spike does not hide the next; a
scale floor (a thousandth of the recent mean level) keeps a flat series from
dividing by zero.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from models.base import US_PER_SECOND, Detector, Series
from models.calibration import AnomalyLikelihood

MAD_TO_SIGMA = 1.4826


def robust_z(ts: np.ndarray, values: np.ndarray, window_seconds: float, min_points: int) -> np.ndarray:
    """``|x − median| / (1.4826·MAD)`` of each value against the values of the previous ``window_seconds``."""
    index = pd.to_datetime(ts, unit="us")
    series = pd.Series(values, index=index)
    window = pd.Timedelta(seconds=window_seconds)
    past = series.rolling(window, min_periods=min_points, closed="left")
    median = past.median()
    deviation = (series - median).abs()
    mad = deviation.rolling(window, min_periods=min_points, closed="left").median() * MAD_TO_SIGMA
    level = series.abs().rolling(window, min_periods=1, closed="left").mean()
    scale = np.maximum(mad.to_numpy(), 1e-3 * np.nan_to_num(level.to_numpy()) + 1e-12)
    return np.nan_to_num(deviation.to_numpy() / scale, nan=0.0)


@dataclass
class RobustZScore(Detector):
    """Rolling median / MAD z-score of levels and of changes, calibrated and quieted.

    Args:
        hold_seconds: quiet time after a detection.
        window_seconds: the look-back of the median and the MAD (default one day).
        min_points: rows needed in the look-back before a z-score is computed.
    """

    name: ClassVar[str] = "zscore"
    window_seconds: float = 86_400.0
    min_points: int = 20
    history_: pd.DataFrame = field(init=False, repr=False)
    level_: AnomalyLikelihood = field(init=False, repr=False)
    change_: AnomalyLikelihood = field(init=False, repr=False)

    def validate(self) -> None:
        if not self.window_seconds > 0:
            raise ValueError(f"window_seconds: {self.window_seconds!r} must be > 0")
        if isinstance(self.min_points, bool) or not isinstance(self.min_points, int) or self.min_points < 2:
            raise ValueError(f"min_points: {self.min_points!r} must be a whole number >= 2")

    def _reset(self) -> None:
        self.history_ = pd.DataFrame({"ts": np.zeros(0, dtype=np.int64), "value": np.zeros(0)})
        self.level_, self.change_ = AnomalyLikelihood(), AnomalyLikelihood()

    def _calibrated(self, series: Series) -> np.ndarray:
        known = len(self.history_)
        ts = np.concatenate((self.history_["ts"].to_numpy(), series.ts))
        values = np.concatenate((self.history_["value"].to_numpy(), series.values))
        present = ~np.isnan(values)
        level = np.zeros(len(values))
        change = np.zeros(len(values))
        if present.any():
            kept_ts, kept = ts[present], values[present]
            level[present] = robust_z(kept_ts, kept, self.window_seconds, self.min_points)
            steps = np.diff(kept, prepend=kept[0])
            change[present] = robust_z(kept_ts, steps, self.window_seconds, self.min_points)
        new = slice(known, None)
        scores = np.maximum(self.level_.transform(level[new]), self.change_.transform(change[new]))
        scores[np.isnan(series.values)] = 0.0
        keep_from = ts[-1] - int(2 * self.window_seconds * US_PER_SECOND)
        tail = ts >= keep_from
        self.history_ = pd.DataFrame({"ts": ts[tail], "value": values[tail]})
        return scores

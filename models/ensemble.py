"""The ensemble: every detector's calibrated score per row, combined, then one quiet period.

Each member (robust z-score, seasonal decomposition, change point, Isolation
Forest by default) turns its own raw surprise into an anomaly likelihood in
[0, 1] (:mod:`models.calibration`), so their scores share a scale. The
ensemble takes their **median** per row: a row scores high only when at least
half the detectors find it unusual, which is what removes most of one
detector's false alarms (a noisy series fools the z-score, a regular
weekday-weekend switch fools the change point, the seasonal view knows both)
while an incident that shows in level, pattern and distribution at once keeps
its score. The quiet period is applied to the combined score, once.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from models.base import Detector, Series
from models.changepoint import ChangePoint
from models.iforest import IsolationForestDetector
from models.seasonal import SeasonalDecomposition
from models.zscore import RobustZScore

MEMBERS: dict[str, type[Detector]] = {
    RobustZScore.name: RobustZScore,
    SeasonalDecomposition.name: SeasonalDecomposition,
    ChangePoint.name: ChangePoint,
    IsolationForestDetector.name: IsolationForestDetector,
}
COMBINATIONS = ("median", "mean", "max")


@dataclass
class Ensemble(Detector):
    """The median (or mean, or max) of several detectors' calibrated scores.

    Args:
        hold_seconds: quiet time after a detection of the combined score.
        members: the detectors combined, by name.
        combine: ``median`` (default), ``mean`` or ``max``.
        member_params: parameters per member name (``{"zscore": {"window_seconds": 3600}}``).
    """

    name: ClassVar[str] = "ensemble"
    members: tuple[str, ...] = tuple(MEMBERS)
    combine: str = "median"
    member_params: dict[str, dict[str, Any]] = field(default_factory=dict)
    detectors_: list[Detector] = field(init=False, repr=False)

    def validate(self) -> None:
        if not self.members:
            raise ValueError("members: give at least one detector")
        unknown = [name for name in self.members if name not in MEMBERS]
        if unknown:
            raise ValueError(f"members: unknown detector {unknown[0]!r}; known: {', '.join(MEMBERS)}")
        if self.combine not in COMBINATIONS:
            raise ValueError(f"combine: {self.combine!r} is not one of {', '.join(COMBINATIONS)}")
        extra = sorted(set(self.member_params) - set(self.members))
        if extra:
            raise ValueError(f"member_params: {extra[0]!r} is not a member")

    def _reset(self) -> None:
        self.detectors_ = [MEMBERS[name](**self.member_params.get(name, {})) for name in self.members]

    def _calibrated(self, series: Series) -> np.ndarray:
        scores = np.vstack([detector.calibrated(series) for detector in self.detectors_])
        if self.combine == "median":
            return np.median(scores, axis=0)
        if self.combine == "mean":
            return scores.mean(axis=0)
        return scores.max(axis=0)

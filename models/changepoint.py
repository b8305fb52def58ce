"""Change-point detection: a shift of level or spread, as the gain of splitting the recent window in two.

At each row the ``width_seconds`` before it (the row included) are split at
their middle, and the gain is how much better two Gaussians (each with its
own mean and variance) explain them than one: ``ruptures``' sliding-window
score with its ``normal`` cost, which is that log-likelihood ratio. A level
shift, a frozen sensor or a change of variance makes it rise as soon as half
a window of the new regime has arrived; ``log(1 + gain)`` is calibrated into
an anomaly likelihood like every other detector's raw score. The cost is
scale-free, so a smooth daily cycle would also produce gains: the series is
split less its daily / weekly pattern (:class:`models.seasonal.SeasonalAdjuster`,
fitted on the rows before each refit moment), so the rise and fall of a
regular day is not taken for a change of level. Alone the detector still
raises more false alarms than the others, which the ensemble's median absorbs.

The gain is ``ruptures``' (a maintained library): ``Window`` with the
``normal`` cost, ``n·log(var)`` of the whole window less that of each half.
``ruptures`` computes it in a Python loop, three cost calls per row (85 µs a
row here: 1.9 s of the ensemble's 3.4 s on a 22,700-row NAB file); the
detector computes the same gains for all windows at once with numpy (about
1 µs a row), and a test holds them equal to ``ruptures.Window``'s. Only the
window ending at each new row is read, so a row's score never sees a later one.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from models.base import Detector, Series, spacing_seconds
from models.calibration import AnomalyLikelihood
from models.seasonal import SeasonalAdjuster

MIN_WIDTH = 8  # rows: a Gaussian per half needs a few points


def split_gains(values: np.ndarray, width: int) -> np.ndarray:
    """Per row, the gain of splitting the ``width`` rows ending there at their middle (0 before a full window).

    The gain of ``ruptures.Window(model="normal")``: ``n·log(var + 1e-6)`` of the whole window less
    that of each half (a test holds the two equal), computed for every window at once. An odd
    ``width`` counts as the even number below it, as in ruptures.
    """
    gains = np.zeros(len(values))
    half = width // 2
    if half < 1 or len(values) < 2 * half:
        return gains
    # As in ruptures: the window ending at a row is the row and the 2·half − 1 before it, halves of ``half``.
    windows = sliding_window_view(np.asarray(values, dtype=float), 2 * half)
    with np.errstate(all="ignore"):
        whole = np.log(windows.var(axis=1) + 1e-6)
        left = np.log(windows[:, :half].var(axis=1) + 1e-6)
        right = np.log(windows[:, half:].var(axis=1) + 1e-6)
    score = np.nan_to_num(half * (2 * whole - left - right), nan=0.0, posinf=0.0)
    gains[2 * half - 1 :] = score
    return np.maximum(gains, 0.0)


@dataclass
class ChangePoint(Detector):
    """Level and variance shifts: ruptures' sliding-window split gain (``normal`` cost), calibrated.

    Args:
        hold_seconds: quiet time after a detection.
        width_seconds: the window split in two at each row (default two hours; at least 8 rows).
        deseasonalise: split the series less its daily / weekly pattern (:class:`models.seasonal.SeasonalAdjuster`),
            so the rise and fall of a daily cycle is not taken for a change of level.
    """

    name: ClassVar[str] = "changepoint"
    width_seconds: float = 2 * 3600.0
    deseasonalise: bool = True
    width_: int | None = field(init=False, repr=False)
    adjuster_: SeasonalAdjuster = field(init=False, repr=False)
    tail_: np.ndarray = field(init=False, repr=False)
    likelihood_: AnomalyLikelihood = field(init=False, repr=False)

    def validate(self) -> None:
        if not self.width_seconds > 0:
            raise ValueError(f"width_seconds: {self.width_seconds!r} must be > 0")

    def _reset(self) -> None:
        self.width_ = None
        self.tail_ = np.zeros(0)
        self.adjuster_ = SeasonalAdjuster()
        self.likelihood_ = AnomalyLikelihood()

    def _calibrated(self, series: Series) -> np.ndarray:
        if self.width_ is None:  # fixed from the first rows seen, so later calls agree with one long call
            self.width_ = max(MIN_WIDTH, 2 * round(self.width_seconds / spacing_seconds(series.ts) / 2))
        values = self.adjuster_.adjust(series.ts, series.values) if self.deseasonalise else series.values
        present = ~np.isnan(values)
        known = len(self.tail_)
        joined = np.concatenate((self.tail_, values[present]))
        gains = split_gains(joined, self.width_)[known:]
        raw = np.zeros(len(values))
        raw[present] = np.log1p(gains)
        self.tail_ = joined[-(self.width_ - 1) :]
        return self.likelihood_.transform(raw)

"""Fitting one model from its training rows: the unit of work the ``train-models`` flow spreads over processes.

A job carries plain arrays (or a frame) and the detector's name, so it
pickles cheaply to a spawned worker, which imports only the models.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import polars as pl

from models.base import Detector
from models.calibration import QuietPeriod
from models.detectors import make_detector
from models.joint import JointForest


@dataclass(frozen=True)
class FitJob:
    """One model to fit.

    Args:
        detector: a detector's name (``ensemble``, …) or ``joint``.
        ts: training timestamps (µs) of a one-series detector.
        values: its training values.
        frame: the wide training frame of a joint forest (``ts`` and one column per series).
    """

    detector: str
    ts: np.ndarray | None = None
    values: np.ndarray | None = None
    frame: pl.DataFrame | None = None

    @property
    def rows(self) -> int:
        """Training rows."""
        if self.frame is not None:
            return self.frame.height
        return 0 if self.ts is None else len(self.ts)


def fit_model(job: FitJob) -> tuple[Detector | JointForest, dict[str, Any]]:
    """The fitted model and its training figures: rows, the share of rows that would be candidates, seconds."""
    clock = time.perf_counter()
    model: Detector | JointForest
    if job.detector == JointForest.name:
        if job.frame is None:
            raise ValueError("frame: a joint forest is fitted on a wide frame")
        model = JointForest()
        scores = model.calibrated(job.frame).scores  # learns the history, as fit() does
    else:
        if job.ts is None or job.values is None:
            raise ValueError("ts, values: a one-series detector is fitted on timestamps and values")
        model = make_detector(job.detector)
        scores = model.calibrated((job.ts, job.values))
    candidates = float((scores >= QuietPeriod.level).mean()) if len(scores) else 0.0
    figures = {
        "rows": job.rows,
        "candidate_rate": round(candidates, 5),
        "seconds": round(time.perf_counter() - clock, 3),
    }
    return model, figures

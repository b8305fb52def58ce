"""Isolation Forest over several aligned series at once: the metrics of one host, or the operations of one key.

One series' detectors judge each value against that series' own past; a
joint forest judges the *combination*: CPU busy while requests are idle, or
a key decrypting at its usual rate while it has stopped encrypting, stands
out even when every value alone is ordinary. Each row is described by every
column's value and its change from the row before; a forest is trained on the
last ``train_points`` complete rows once that many have been seen, and again
every ``refit_seconds``, and each row is scored by the forest trained before
it (streaming, like every detector: scoring in one call or in many gives the
same scores). The raw surprise is calibrated into an anomaly likelihood and
followed by a quiet period, as in :mod:`models.base`.

The forest sees the rows turned onto the whitened principal axes of its
training rows (:func:`whitening`): a broken relation is then an extreme value
on a minor axis, which a forest isolates at once, where on the raw columns it
may sit inside every column's usual range.

A joint score says *that* the group is unusual; :class:`Judgement` also says
*where*: the column furthest from its training median (in robust standard
deviations, of its value or its change), which is the series an anomaly row
is filed under.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl

from metrics.errors import ValidationError
from models.base import US_PER_SECOND
from models.calibration import DETECTION_LEVEL, AnomalyLikelihood, QuietPeriod
from models.iforest import Forest
from models.zscore import MAD_TO_SIGMA

NO_CULPRIT = -1
LIKELIHOOD_WARMUP = 500  # rows judged by a forest before any score above 0
MIN_AXIS_SHARE = 1e-4  # a principal axis with less variance than this share of the largest is scaled as if it had it


def whitening(standard: np.ndarray) -> np.ndarray:
    """The matrix turning rows onto their principal axes, each scaled to unit variance.

    Series that move together leave little variance off their common axis, so a row that breaks the
    relation lands far out on a minor axis: an extreme value there, which a forest isolates at once.
    """
    covariance = np.atleast_2d(np.cov(standard, rowvar=False))
    variances, axes = np.linalg.eigh(covariance)
    floor = max(float(variances.max()), 1e-12) * MIN_AXIS_SHARE
    return axes / np.sqrt(np.maximum(variances, floor))


@dataclass(frozen=True)
class Judgement:
    """Scores in [0, 1] per row, and per row the index of the column that deviates most (-1: not judged)."""

    scores: np.ndarray
    culprits: np.ndarray


@dataclass
class JointForest:
    """Streaming Isolation Forest over the columns of a wide frame (``ts`` plus one column per series).

    Args:
        train_points: complete rows a forest is trained on (the most recent ones).
        refit_seconds: a new forest is trained this long after the last one.
        trees: trees per forest.
        seed: the forests' random seed (scores are reproducible).
        hold_seconds: quiet time after a detection.
    """

    name: ClassVar[str] = "joint"
    train_points: int = 2000
    refit_seconds: float = 7 * 86_400.0
    trees: int = 100
    seed: int = 0
    hold_seconds: float = 43_200.0
    columns_: tuple[str, ...] = field(init=False, repr=False)
    features_: np.ndarray = field(init=False, repr=False)
    previous_: np.ndarray | None = field(init=False, repr=False)
    forest_: Forest | None = field(init=False, repr=False)
    centre_: np.ndarray = field(init=False, repr=False)
    scale_: np.ndarray = field(init=False, repr=False)
    rotation_: np.ndarray = field(init=False, repr=False)
    varied_: np.ndarray = field(init=False, repr=False)
    next_fit_: int | None = field(init=False, repr=False)
    latest_ts_: int = field(init=False, repr=False)
    likelihood_: AnomalyLikelihood = field(init=False, repr=False)
    quiet_: QuietPeriod = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.validate()
        self.reset()

    def validate(self) -> None:
        """Check the parameters; raise ValueError naming the parameter and what is allowed."""
        for name, low in (("train_points", 20), ("trees", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: {value!r} must be a whole number >= {low}")
        for name, allowed in (("refit_seconds", "> 0"), ("hold_seconds", ">= 0")):
            value = getattr(self, name)
            number = isinstance(value, int | float) and not isinstance(value, bool)
            if not number or not (value > 0 if allowed == "> 0" else value >= 0):
                raise ValueError(f"{name}: {value!r} must be a number of seconds {allowed}")

    def reset(self) -> None:
        """Forget everything learned, the columns included."""
        self.columns_ = ()
        self.features_ = np.zeros((0, 0))
        self.previous_ = None
        self.forest_ = None
        self.centre_ = self.scale_ = np.zeros(0)
        self.rotation_ = np.zeros((0, 0))
        self.varied_ = np.zeros(0, dtype=bool)
        self.next_fit_ = None
        self.latest_ts_ = -(2**62)
        # The calibration learns for a while after the first forest: a daily rhythm in its surprise needs days.
        self.likelihood_ = AnomalyLikelihood(min_history=LIKELIHOOD_WARMUP)
        self.quiet_ = QuietPeriod(level=DETECTION_LEVEL, hold_seconds=float(self.hold_seconds))

    def params(self) -> dict[str, Any]:
        """The declared parameters and their values (not the learned state)."""
        return {
            "train_points": self.train_points,
            "refit_seconds": self.refit_seconds,
            "trees": self.trees,
            "seed": self.seed,
            "hold_seconds": self.hold_seconds,
        }

    def fit(self, frame: pl.DataFrame) -> Self:
        """Learn from history (the state is reset first); returns the detector."""
        self.reset()
        self.calibrated(frame)
        return self

    def score(self, frame: pl.DataFrame) -> np.ndarray:
        """Anomaly scores in [0, 1] of the frame's rows, each from earlier rows only; learns from them."""
        return self.judge(frame).scores

    def judge(self, frame: pl.DataFrame) -> Judgement:
        """Scores (after the quiet period) and culprit columns of rows after those already seen; learns them.

        Args:
            frame: ``ts`` (datetimes or µs since the epoch) and one numeric column per series, rows in
                the order they arrived; the same columns on every call after the first. A row with a
                missing value scores 0 and teaches nothing.
        """
        ts, judgement = self._judged(frame)
        scores = self.quiet_.apply(ts, judgement.scores) if len(ts) else judgement.scores
        return Judgement(scores, judgement.culprits)

    def calibrated(self, frame: pl.DataFrame) -> Judgement:
        """Like :meth:`judge`, before the quiet period (the scores training figures are computed on)."""
        return self._judged(frame)[1]

    def _judged(self, frame: pl.DataFrame) -> tuple[np.ndarray, Judgement]:
        ts, values = self._validated(frame)
        scores = np.zeros(len(ts))
        culprits = np.full(len(ts), NO_CULPRIT, dtype=np.int64)
        complete = np.flatnonzero(np.isfinite(values).all(axis=1))
        if len(complete):
            features = self._features(values[complete])
            raw, judged, blamed = self._surprise(ts[complete], features)
            calibrated = np.zeros(len(complete))
            if judged.any():
                calibrated[judged] = self.likelihood_.transform(raw[judged])
            scores[complete] = calibrated
            culprits[complete] = blamed
        return ts, Judgement(scores, culprits)

    def _validated(self, frame: pl.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        """(ts µs made non-decreasing, values rows × columns in ``columns_`` order); fixes the columns at first."""
        if not isinstance(frame, pl.DataFrame):
            raise ValidationError(f"frame: expected a polars DataFrame, got {type(frame).__name__}")
        if "ts" not in frame.columns:
            raise ValidationError("ts: missing column")
        columns = tuple(sorted(name for name in frame.columns if name != "ts"))
        if not columns:
            raise ValidationError("columns: give at least one value column besides ts")
        if self.columns_ and columns != self.columns_:
            raise ValidationError(f"columns: this model knows {list(self.columns_)}; the frame has {list(columns)}")
        for name in columns:
            if not frame.schema[name].is_numeric():
                raise ValidationError(f"{name}: column has type {frame.schema[name]}; expected numbers")
        stamps = frame.get_column("ts")
        if isinstance(stamps.dtype, pl.Datetime):
            stamps = stamps.dt.cast_time_unit("us").to_physical()
        elif not stamps.dtype.is_integer():
            raise ValidationError(f"ts: column has type {stamps.dtype}; expected datetimes or µs integers")
        if stamps.null_count():
            raise ValidationError(f"ts: row {int(stamps.is_null().arg_max() or 0)} is missing")
        ts = np.maximum.accumulate(np.concatenate(([self.latest_ts_], stamps.to_numpy().astype(np.int64))))[1:]
        values = frame.select(pl.col(columns).cast(pl.Float64)).to_numpy().astype(float, copy=False)
        if len(ts):
            self.latest_ts_ = int(ts[-1])
        self.columns_ = columns
        return ts, values

    def _features(self, values: np.ndarray) -> np.ndarray:
        """Rows × (every column's value, every column's change from the complete row before)."""
        before = np.vstack(([self.previous_ if self.previous_ is not None else values[0]], values[:-1]))
        self.previous_ = values[-1].copy()
        return np.hstack((values, values - before))

    def _surprise(self, ts: np.ndarray, features: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(raw surprise, judged by a forest, culprit column) of complete rows; they join the training rows."""
        raw = np.zeros(len(ts))
        judged = np.zeros(len(ts), dtype=bool)
        blamed = np.full(len(ts), NO_CULPRIT, dtype=np.int64)
        start = 0
        while start < len(ts):
            if self._due(int(ts[start])):
                self._train(int(ts[start]))
            end = self._segment_end(ts, start)
            if self.forest_ is not None:
                raw[start:end] = self._excess(self._rotated(features[start:end]))
                judged[start:end] = True
                blamed[start:end] = self._culprits(features[start:end])
            self._learn(features[start:end])
            start = end
        return raw, judged, blamed

    def _due(self, moment: int) -> bool:
        if self.forest_ is None:
            return len(self.features_) >= self.train_points
        return self.next_fit_ is not None and moment >= self.next_fit_

    def _segment_end(self, ts: np.ndarray, start: int) -> int:
        """The end of the rows judged by the current forest (or, before one, of those completing its training)."""
        if self.forest_ is None:
            return min(len(ts), start + max(1, self.train_points - len(self.features_)))
        assert self.next_fit_ is not None
        return max(start + 1, int(np.searchsorted(ts, self.next_fit_, side="left")))

    def _train(self, moment: int) -> None:
        rows = self.features_[-self.train_points :]
        self.centre_ = np.median(rows, axis=0)
        spread = np.median(np.abs(rows - self.centre_), axis=0) * MAD_TO_SIGMA
        spread = np.where(spread > 0, spread, rows.std(axis=0))
        self.varied_ = spread > 0
        self.scale_ = np.where(self.varied_, spread, 1.0)
        standard = (rows - self.centre_) / self.scale_
        self.rotation_ = whitening(standard)
        self.forest_ = Forest.train(standard @ self.rotation_, trees=self.trees, seed=self.seed)
        self.next_fit_ = moment + int(self.refit_seconds * US_PER_SECOND)

    def _learn(self, features: np.ndarray) -> None:
        known = self.features_ if len(self.features_) else np.zeros((0, features.shape[1]))
        self.features_ = np.vstack((known, features))[-self.train_points :]

    def _excess(self, rotated: np.ndarray) -> np.ndarray:
        """How far each row's forest score lies above the training rows' median, in robust units (log-damped).

        Not the one-series forest's tail probability: over whitened axes a row at a daily extreme is often
        the rarest training row seen, and a rank-based surprise there makes every such peak an alarm.
        """
        assert self.forest_ is not None
        excess = (self.forest_.scores(rotated) - float(np.median(self.forest_.training))) / self.forest_.spread
        return np.log1p(np.maximum(excess, 0.0))

    def _rotated(self, features: np.ndarray) -> np.ndarray:
        """Features standardised and turned onto the training rows' whitened principal axes."""
        return ((features - self.centre_) / self.scale_) @ self.rotation_

    def _culprits(self, features: np.ndarray) -> np.ndarray:
        """Per row, the column whose value or change lies furthest from its training median."""
        # A feature constant in training cannot be what the forest found unusual.
        distance = np.where(self.varied_, np.abs((features - self.centre_) / self.scale_), 0.0)
        width = len(self.columns_)
        return np.maximum(distance[:, :width], distance[:, width:]).argmax(axis=1)

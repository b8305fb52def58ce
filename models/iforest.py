"""Isolation Forest (scikit-learn) over windowed features: points that are easy to isolate from the recent past.

Each row is described by its value, its change from the row before, and the
mean and standard deviation of the ``feature_seconds`` ending at it. A forest
is trained on the features of the last ``train_points`` rows once that many
have been seen, and again every ``refit_seconds``; rows are scored by the
forest trained before them. The raw score is the row's surprise against the
training rows' own anomaly scores: ``−log`` of the empirical tail probability
(the share of training rows at least as anomalous), which no heavy tail of
the forest's scores can stretch, plus — beyond the most anomalous training
row — the distance past it in units of the training scores' median absolute
deviation, so a spike unlike anything seen keeps rising instead of stopping
at the tail probability of the rarest training row. That raw score is
calibrated into an anomaly likelihood.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from sklearn.ensemble import IsolationForest

from models.base import US_PER_SECOND, Detector, Series
from models.calibration import AnomalyLikelihood
from models.zscore import MAD_TO_SIGMA


def window_features(ts: np.ndarray, values: np.ndarray, feature_seconds: float) -> np.ndarray:
    """Rows × (value, change, rolling mean, rolling std) over the ``feature_seconds`` ending at each row."""
    index = pd.to_datetime(ts, unit="us")
    series = pd.Series(values, index=index)
    rolling = series.rolling(pd.Timedelta(seconds=feature_seconds), min_periods=1)
    change = np.diff(values, prepend=values[0] if len(values) else 0.0)
    features = np.column_stack(
        (values, change, rolling.mean().to_numpy(), np.nan_to_num(rolling.std().to_numpy(), nan=0.0))
    )
    return np.nan_to_num(features, nan=0.0)


@dataclass
class Forest:
    """A trained forest with the standardisation of its training rows, their scores (sorted) and the scores' spread."""

    model: IsolationForest
    centre: np.ndarray
    scale: np.ndarray
    training: np.ndarray
    spread: float

    @classmethod
    def train(cls, features: np.ndarray, *, trees: int, seed: int) -> Forest:
        """A forest over standardised ``features``."""
        centre = np.median(features, axis=0)
        scale = np.median(np.abs(features - centre), axis=0) * MAD_TO_SIGMA
        scale = np.where(scale > 0, scale, np.std(features, axis=0) + 1e-9)
        standard = (features - centre) / scale
        model = IsolationForest(n_estimators=trees, max_samples=min(256, len(features)), random_state=seed)
        model.fit(standard)
        scores = np.sort(-model.score_samples(standard))
        spread = float(np.median(np.abs(scores - np.median(scores))) * MAD_TO_SIGMA) or 1e-6
        return cls(model, centre, scale, scores, spread)

    def scores(self, features: np.ndarray) -> np.ndarray:
        """The forest's anomaly score of each row (higher: easier to isolate)."""
        return np.asarray(-self.model.score_samples((features - self.centre) / self.scale))

    def surprise(self, features: np.ndarray) -> np.ndarray:
        """``−log`` of each row's empirical tail probability among the training scores, rising on past the highest."""
        scores = self.scores(features)
        count = len(self.training)
        as_anomalous = count - np.searchsorted(self.training, scores, side="left")  # training rows scoring >= it
        beyond = np.maximum((scores - self.training[-1]) / self.spread, 0.0)
        return -np.log((as_anomalous + 1) / (count + 1)) + beyond


@dataclass
class IsolationForestDetector(Detector):
    """scikit-learn's Isolation Forest over windowed features, retrained periodically on the recent past.

    Args:
        hold_seconds: quiet time after a detection.
        feature_seconds: the window of the rolling mean and standard deviation features (default one hour).
        train_points: rows a forest is trained on (the first forest waits for this many).
        refit_seconds: how often a new forest is trained (default a week).
        trees: trees per forest.
        seed: the forests' random seed (scores are reproducible).
    """

    name: ClassVar[str] = "iforest"
    feature_seconds: float = 3600.0
    train_points: int = 1000
    refit_seconds: float = 7 * 86_400.0
    trees: int = 50
    seed: int = 0
    history_: pd.DataFrame = field(init=False, repr=False)
    forest_: Forest | None = field(init=False, repr=False)
    first_forest_: int | None = field(init=False, repr=False)
    next_fit_: int | None = field(init=False, repr=False)
    likelihood_: AnomalyLikelihood = field(init=False, repr=False)

    def validate(self) -> None:
        if not self.feature_seconds > 0 or not self.refit_seconds > 0:
            raise ValueError("feature_seconds and refit_seconds must be > 0")
        for name, low in (("train_points", 20), ("trees", 1)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name}: {value!r} must be a whole number >= {low}")

    def _reset(self) -> None:
        self.history_ = pd.DataFrame({"ts": np.zeros(0, dtype=np.int64), "value": np.zeros(0)})
        self.forest_ = None
        self.first_forest_ = None
        self.next_fit_ = None
        self.likelihood_ = AnomalyLikelihood(min_history=2 * AnomalyLikelihood.min_history)  # after a forest only

    def _calibrated(self, series: Series) -> np.ndarray:
        present = ~np.isnan(series.values)
        ts, values = series.ts[present], series.values[present]
        raw_present = np.zeros(len(ts))
        start = 0
        while start < len(ts):
            end = self._segment_end(ts, start)
            if end > start:
                raw_present[start:end] = self._surprise(ts[start:end], values[start:end])
                start = end
            if start < len(ts) and self._due(ts[start]):
                self._train(ts[start])
        raw = np.zeros(len(series))
        raw[present] = raw_present
        # Rows before the first forest have no score and teach the calibration nothing: their zeros
        # would make the first real scores look like a sudden rise.
        judged = present & self._judged(series)
        scores = np.zeros(len(series))
        if judged.any():
            scores[judged] = self.likelihood_.transform(raw[judged])
        return scores

    def _judged(self, series: Series) -> np.ndarray:
        """Rows scored by a forest (those after the first one was trained)."""
        if self.first_forest_ is None:
            return np.zeros(len(series), dtype=bool)
        return series.ts >= self.first_forest_

    def _due(self, moment: int) -> bool:
        if self.forest_ is None:
            return len(self.history_) >= self.train_points
        return self.next_fit_ is not None and moment >= self.next_fit_

    def _segment_end(self, ts: np.ndarray, start: int) -> int:
        """The end of the rows scored by the current forest: the next retraining, or the first forest's moment."""
        if self.forest_ is None:
            return min(len(ts), start + max(0, self.train_points - len(self.history_)))
        assert self.next_fit_ is not None
        return int(np.searchsorted(ts, self.next_fit_, side="left"))

    def _train(self, moment: int) -> None:
        history = self.history_.iloc[-self.train_points :]
        features = window_features(history["ts"].to_numpy(), history["value"].to_numpy(), self.feature_seconds)
        self.forest_ = Forest.train(features, trees=self.trees, seed=self.seed)
        if self.first_forest_ is None:
            self.first_forest_ = moment
        refit = int(self.refit_seconds * US_PER_SECOND)
        self.next_fit_ = moment + refit

    def _surprise(self, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
        """Raw scores of rows under the current forest (0 before the first); the rows join the history."""
        look_back = int(self.feature_seconds * US_PER_SECOND)
        history = self.history_
        first = int(np.searchsorted(history["ts"].to_numpy(), ts[0] - look_back, side="left"))
        recent = history.iloc[first:]
        all_ts = np.concatenate((recent["ts"].to_numpy(), ts))
        all_values = np.concatenate((recent["value"].to_numpy(), values))
        surprise = np.zeros(len(ts))
        if self.forest_ is not None:
            features = window_features(all_ts, all_values, self.feature_seconds)[len(recent) :]
            surprise = self.forest_.surprise(features)
        added = pd.DataFrame({"ts": ts, "value": values})
        combined = pd.concat([history, added], ignore_index=True) if len(history) else added
        keep = max(self.train_points, 1)
        cut = min(len(combined) - keep, int(np.searchsorted(combined["ts"].to_numpy(), ts[-1] - look_back)))
        self.history_ = combined.iloc[max(cut, 0) :]
        return surprise

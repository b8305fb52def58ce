"""The one interface of every anomaly detector: parameters declared once, ``fit`` on history, ``score`` streaming.

A detector is an online learner over one series. ``score(frame)`` returns an
anomaly score in [0, 1] per row, in order, where each row's score uses only
the rows before it (and the detector's state from earlier calls) — how a
detector runs in production, and how NAB scores it. Scoring a series in one
call or in any number of consecutive calls gives the same scores: every
window a detector computes looks back only, and the state it keeps between
calls (``history_`` and the like, names ending in ``_``) holds at least as
many past rows as its longest look-back. ``fit(frame)`` learns from history
without scoring it; a detector that was never fitted learns as it scores.

Parameters are dataclass fields, validated when the detector is built;
frames are validated on every call with an error naming the column and the
reason (:class:`metrics.errors.ValidationError`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar, Self

import numpy as np
import polars as pl

from metrics.errors import ValidationError
from models.calibration import QuietPeriod

US_PER_SECOND = 1_000_000
DEFAULT_SPACING_SECONDS = 300.0


@dataclass(frozen=True)
class Series:
    """A validated series: timestamps (µs since the epoch, made non-decreasing) and float values (NaN: missing)."""

    ts: np.ndarray
    values: np.ndarray

    def __len__(self) -> int:
        return len(self.values)


def as_series(frame: Any) -> Series:
    """A polars or pandas frame with ``ts``/``timestamp`` and ``value`` columns, or a (ts, values) pair, as a Series."""
    if isinstance(frame, Series):
        return frame
    if isinstance(frame, tuple) and len(frame) == 2:
        ts, values = (np.asarray(part) for part in frame)
    else:
        data = frame if isinstance(frame, pl.DataFrame) else _to_polars(frame)
        column = next((name for name in ("ts", "timestamp", "time") if name in data.columns), None)
        if column is None:
            raise ValidationError("timestamp: missing column (one of ts, timestamp, time)")
        if "value" not in data.columns:
            raise ValidationError("value: missing column")
        ts_col = data.get_column(column)
        if ts_col.dtype == pl.String:
            ts_col = ts_col.str.to_datetime(time_unit="us", strict=False)
        if not isinstance(ts_col.dtype, pl.Datetime):
            raise ValidationError(f"timestamp: column {column!r} has type {ts_col.dtype}; expected datetimes")
        if ts_col.null_count():
            raise ValidationError(f"timestamp: row {int(ts_col.is_null().arg_max() or 0)} is missing or unreadable")
        ts = ts_col.dt.cast_time_unit("us").to_physical().to_numpy()
        values = data.get_column("value").cast(pl.Float64, strict=False).to_numpy()
    if ts.dtype.kind == "M":
        ts = ts.astype("datetime64[us]").astype(np.int64)
    ts = np.asarray(ts, dtype=np.int64)
    values = np.asarray(values, dtype=np.float64)
    if ts.shape != values.shape or ts.ndim != 1:
        raise ValidationError("series: timestamps and values must be one-dimensional and of equal length")
    if np.isinf(values).any():
        raise ValidationError(f"value: row {int(np.flatnonzero(np.isinf(values))[0])} is infinite")
    # Rows are taken in the order given (the order they arrived): one stamped earlier than a row before
    # it (a clock step, a daylight-saving repeat) counts as arriving at the latest time seen so far.
    return Series(np.maximum.accumulate(ts) if len(ts) else ts, values)


def _to_polars(frame: Any) -> pl.DataFrame:
    try:
        converted = pl.from_pandas(frame) if hasattr(frame, "to_numpy") and hasattr(frame, "columns") else None
    except (TypeError, ValueError):
        converted = None
    if not isinstance(converted, pl.DataFrame):
        raise ValidationError(f"series: expected a DataFrame with ts and value columns, got {type(frame).__name__}")
    return converted


def spacing_seconds(ts: np.ndarray) -> float:
    """The typical interval between rows (median), in seconds; the default 5 minutes for fewer than two rows."""
    if len(ts) < 2:
        return DEFAULT_SPACING_SECONDS
    steps = np.diff(ts)
    steps = steps[steps > 0]
    return float(np.median(steps)) / US_PER_SECOND if len(steps) else DEFAULT_SPACING_SECONDS


@dataclass
class Detector(ABC):
    """Base of the detectors (dataclasses): streaming ``score``, ``fit`` on history, parameters and state.

    Subclasses compute calibrated scores in :meth:`_calibrated`; the base applies the quiet period
    after a detection (``hold_seconds``, see :class:`models.calibration.QuietPeriod`).
    """

    name: ClassVar[str]
    quiet_level: ClassVar[float] = 0.5  # a score this high starts the quiet period
    hold_seconds: float = 43_200.0
    quiet_: QuietPeriod = field(init=False, repr=False)
    latest_ts_: int = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if not (isinstance(self.hold_seconds, int | float) and self.hold_seconds >= 0):
            raise ValueError(f"hold_seconds: {self.hold_seconds!r} must be a number of seconds >= 0")
        self.validate()
        self.reset()

    def validate(self) -> None:  # noqa: B027  (optional: detectors with constraints override it)
        """Check the parameters; raise ValueError naming the parameter and what is allowed."""

    def reset(self) -> None:
        """Forget everything learned (the state ending in ``_``)."""
        self.quiet_ = QuietPeriod(level=self.quiet_level, hold_seconds=float(self.hold_seconds))
        self.latest_ts_ = -(2**62)
        self._reset()

    @abstractmethod
    def _reset(self) -> None:
        """Forget the detector's own state."""

    @abstractmethod
    def _calibrated(self, series: Series) -> np.ndarray:
        """Calibrated scores in [0, 1] of new rows (each from the past only), before quiet periods; learns them."""

    def calibrated(self, frame: Any) -> np.ndarray:
        """Scores before quiet periods (what an ensemble combines); learns from the rows like :meth:`score`."""
        return self._scored(frame)[1]

    def score(self, frame: Any) -> np.ndarray:
        """Anomaly scores in [0, 1] of the frame's rows, each computed from earlier rows only; learns from them.

        Args:
            frame: rows after those already seen: a polars/pandas frame with ``ts`` (or ``timestamp``)
                and ``value`` columns, or a ``(timestamps, values)`` pair. NaN values are missing: they
                score 0 and teach nothing. Rows are taken in the order given.
        """
        series, scores = self._scored(frame)
        return self.quiet_.apply(series.ts, scores) if len(series) else scores

    def _scored(self, frame: Any) -> tuple[Series, np.ndarray]:
        """The frame as arrived rows and their calibrated scores, clipped to [0, 1]; missing values score 0."""
        series = self._arrived(as_series(frame))
        if len(series) == 0:
            return series, np.zeros(0)
        scores = np.clip(np.nan_to_num(self._calibrated(series), nan=0.0), 0.0, 1.0)
        scores[np.isnan(series.values)] = 0.0
        return series, scores

    def _arrived(self, series: Series) -> Series:
        """The series with times made non-decreasing across calls too."""
        if len(series) == 0:
            return series
        ts = np.maximum(series.ts, self.latest_ts_)
        self.latest_ts_ = int(ts[-1])
        return Series(ts, series.values)

    def fit(self, frame: Any) -> Self:
        """Learn from history (the state is reset first); returns the detector."""
        self.reset()
        self.calibrated(frame)
        return self

    def params(self) -> dict[str, Any]:
        """The declared parameters and their values (not the learned state)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

"""Seasonal decomposition: remove the daily and weekly pattern (statsmodels STL / MSTL), score what remains.

Each ``refit_seconds`` (a day; a week once the weekly period is found) the detector looks at the history before that
moment, averaged into ``bins_per_day`` bins a day (hourly by default: STL on
hourly means takes milliseconds where STL on 5-minute points takes a fifth of
a second), and keeps the periods that are really there: the daily period when
the history holds three days and its autocorrelation at one day reaches
``min_autocorrelation``, the weekly one likewise with three weeks. One period
is decomposed with STL, two with MSTL; the seasonal component of the last
cycle is the pattern expected for the next day. Until a period is found the
pattern is flat.

A row's expected value is its pattern value plus the recent level (the median
of the de-seasonalised series over the ``level_seconds`` before it); the
residual is scored like :mod:`models.zscore` — against the median absolute
residual of the previous ``window_seconds`` — and calibrated into an anomaly
likelihood. A seasonal break (a day that does not look like the days before)
stands out here while a plain z-score sees nothing unusual in the values.
"""

from __future__ import annotations

import hashlib
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd
from statsmodels.tsa.seasonal import MSTL, STL

from models.base import US_PER_SECOND, Detector, Series
from models.calibration import AnomalyLikelihood
from models.zscore import robust_z

DAY_US = 86_400 * US_PER_SECOND
WEEK_US = 7 * DAY_US
MIN_CYCLES = 3  # full periods of history before a period is trusted


def autocorrelation(values: np.ndarray, lag: int) -> float:
    """The autocorrelation of ``values`` (NaN rows left out pairwise) at ``lag``; 0 when it cannot be computed."""
    if lag >= len(values):
        return 0.0
    a, b = values[:-lag], values[lag:]
    both = ~(np.isnan(a) | np.isnan(b))
    if both.sum() < 3 or np.std(a[both]) == 0 or np.std(b[both]) == 0:
        return 0.0
    return float(np.corrcoef(a[both], b[both])[0, 1])


@dataclass
class Pattern:
    """The expected seasonal value per phase bin: a day of bins, or a week of them."""

    bin_us: int
    values: np.ndarray  # one per bin of the longest period found
    periods: tuple[int, ...] = ()  # in bins

    def at(self, ts: np.ndarray) -> np.ndarray:
        """The pattern's value at each time."""
        if not self.periods:
            return np.zeros(len(ts))
        phase = (ts // self.bin_us) % len(self.values)
        return self.values[phase]


# The patterns fitted last, by their inputs: in the ensemble the seasonal and change-point detectors fit
# the same history at the same moments (one after the other over a whole batch: a year of daily refits),
# and STL/MSTL is most of their cost. A pattern is a few hundred floats.
_RECENT_PATTERNS: OrderedDict[bytes, Pattern] = OrderedDict()
RECENT_PATTERNS_KEPT = 512


def fit_pattern(
    ts: np.ndarray, values: np.ndarray, *, bins_per_day: int, min_autocorrelation: float, max_days: int
) -> Pattern:
    """The daily/weekly pattern of a history (bin means decomposed with STL or MSTL); flat when none is found."""
    digest = hashlib.blake2b(digest_size=16)
    for part in (np.ascontiguousarray(ts), np.ascontiguousarray(values)):
        digest.update(part.tobytes())
    digest.update(repr((bins_per_day, min_autocorrelation, max_days)).encode())
    key = digest.digest()
    if key in _RECENT_PATTERNS:
        _RECENT_PATTERNS.move_to_end(key)
        return _RECENT_PATTERNS[key]
    pattern = _fit_pattern(
        ts, values, bins_per_day=bins_per_day, min_autocorrelation=min_autocorrelation, max_days=max_days
    )
    _RECENT_PATTERNS[key] = pattern
    while len(_RECENT_PATTERNS) > RECENT_PATTERNS_KEPT:
        _RECENT_PATTERNS.popitem(last=False)
    return pattern


def _fit_pattern(
    ts: np.ndarray, values: np.ndarray, *, bins_per_day: int, min_autocorrelation: float, max_days: int
) -> Pattern:
    bin_us = DAY_US // bins_per_day
    flat = Pattern(bin_us, np.zeros(1))
    if len(ts) < 2:
        return flat
    start = (ts[0] // bin_us) * bin_us
    index = (ts - start) // bin_us
    bins = int(index[-1]) + 1
    total = np.bincount(index, weights=np.nan_to_num(values), minlength=bins)
    count = np.bincount(index, weights=~np.isnan(values), minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = total / count
    means = means[-max_days * bins_per_day :]
    first_bin = bins - len(means)
    filled = pd.Series(means).interpolate(limit_direction="both").to_numpy()
    if np.isnan(filled).all():
        return flat
    periods = tuple(
        period
        for period in (bins_per_day, 7 * bins_per_day)
        if len(means) >= MIN_CYCLES * period and autocorrelation(means, period) >= min_autocorrelation
    )
    if not periods:
        return flat
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # statsmodels' notes on short series and convergence
        if len(periods) == 1:
            seasonal = STL(filled, period=periods[0]).fit().seasonal
        else:
            seasonal = MSTL(filled, periods=periods, iterate=1).fit().seasonal.sum(axis=1)
    longest = max(periods)
    # The last cycle of the longest period, placed by absolute bin number (phase = bin mod period).
    bins_of_last = ts[0] // bin_us + first_bin + np.arange(len(filled) - longest, len(filled))
    pattern = np.zeros(longest)
    pattern[bins_of_last % longest] = np.asarray(seasonal)[-longest:]
    return Pattern(bin_us, pattern, periods)


@dataclass
class SeasonalAdjuster:
    """Streaming removal of the daily / weekly pattern: each row minus the pattern fitted on the rows before it.

    The pattern is fitted like :class:`SeasonalDecomposition`'s (:func:`fit_pattern` on the history before
    each refit moment: every ``refit_seconds``, weekly once a weekly period is found); until a period is
    found it is flat and rows pass unchanged.

    Args:
        bins_per_day: resolution of the decomposition (24: hourly means).
        refit_seconds: how often the pattern is fitted again from the history before.
        history_days: days of history a fit uses.
        min_autocorrelation: a period counts when the autocorrelation at its lag reaches this.
    """

    bins_per_day: int = 24
    refit_seconds: float = 86_400.0
    history_days: int = 28
    min_autocorrelation: float = 0.3
    ts_: np.ndarray = field(init=False, repr=False)
    values_: np.ndarray = field(init=False, repr=False)
    pattern_: Pattern = field(init=False, repr=False)
    next_fit_: int | None = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        """Forget the history and the pattern."""
        self.ts_, self.values_ = np.zeros(0, dtype=np.int64), np.zeros(0)
        self.pattern_ = Pattern(DAY_US // self.bins_per_day, np.zeros(1))
        self.next_fit_ = None

    def adjust(self, ts: np.ndarray, values: np.ndarray) -> np.ndarray:
        """The values less the pattern expected at their times (NaN stays NaN); the rows join the history."""
        adjusted = np.array(values, dtype=float)
        if len(ts) == 0:
            return adjusted
        refit_us = int(self.refit_seconds * US_PER_SECOND)
        if self.next_fit_ is None:
            self.next_fit_ = int(ts[0]) + refit_us
        start = 0
        while start < len(ts):
            end = int(np.searchsorted(ts, self.next_fit_, side="left"))
            if end > start:
                adjusted[start:end] -= self.pattern_.at(ts[start:end])
                self._learn(ts[start:end], values[start:end])
                start = end
            if start < len(ts):
                self.pattern_ = fit_pattern(
                    self.ts_,
                    self.values_,
                    bins_per_day=self.bins_per_day,
                    min_autocorrelation=self.min_autocorrelation,
                    max_days=self.history_days,
                )
                step = max(refit_us, WEEK_US) if len(self.pattern_.periods) > 1 else refit_us
                while self.next_fit_ <= ts[start]:
                    self.next_fit_ += step
        return adjusted

    def _learn(self, ts: np.ndarray, values: np.ndarray) -> None:
        """Add rows to the history, keeping the ``history_days`` before the latest."""
        all_ts, all_values = np.concatenate((self.ts_, ts)), np.concatenate((self.values_, values))
        first = int(np.searchsorted(all_ts, all_ts[-1] - self.history_days * DAY_US, side="left"))
        self.ts_, self.values_ = all_ts[first:], all_values[first:]


@dataclass
class SeasonalDecomposition(Detector):
    """Residual of a daily / weekly STL (MSTL) decomposition, scored against recent residuals.

    Args:
        hold_seconds: quiet time after a detection.
        bins_per_day: resolution of the decomposition (24: hourly means).
        refit_seconds: how often the pattern is fitted again from the history before.
        history_days: days of history a fit uses (at least three weeks keeps the weekly period).
        min_autocorrelation: a period counts when the autocorrelation at its lag reaches this.
        level_seconds: look-back of the median level of the de-seasonalised series.
        window_seconds: look-back of the residuals' median absolute value.
    """

    name: ClassVar[str] = "seasonal"
    bins_per_day: int = 24
    refit_seconds: float = 86_400.0
    history_days: int = 28
    min_autocorrelation: float = 0.3
    level_seconds: float = 3 * 3600.0
    window_seconds: float = 86_400.0
    history_: pd.DataFrame = field(init=False, repr=False)
    adjuster_: SeasonalAdjuster = field(init=False, repr=False)
    likelihood_: AnomalyLikelihood = field(init=False, repr=False)

    def validate(self) -> None:
        if isinstance(self.bins_per_day, bool) or not isinstance(self.bins_per_day, int) or self.bins_per_day < 4:
            raise ValueError(f"bins_per_day: {self.bins_per_day!r} must be a whole number >= 4")
        if DAY_US % self.bins_per_day:
            raise ValueError(f"bins_per_day: {self.bins_per_day!r} must divide a day into whole microseconds")
        for name in ("refit_seconds", "level_seconds", "window_seconds"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name}: {getattr(self, name)!r} must be > 0")
        if isinstance(self.history_days, bool) or not isinstance(self.history_days, int) or self.history_days < 3:
            raise ValueError(f"history_days: {self.history_days!r} must be a whole number >= 3")
        if not -1 <= self.min_autocorrelation <= 1:
            raise ValueError(f"min_autocorrelation: {self.min_autocorrelation!r} must be in [-1, 1]")

    def _reset(self) -> None:
        empty = np.zeros(0)
        self.history_ = pd.DataFrame({"ts": np.zeros(0, dtype=np.int64), "adjusted": empty, "residual": empty})
        self.adjuster_ = SeasonalAdjuster(
            bins_per_day=self.bins_per_day,
            refit_seconds=self.refit_seconds,
            history_days=self.history_days,
            min_autocorrelation=self.min_autocorrelation,
        )
        self.likelihood_ = AnomalyLikelihood()

    def _calibrated(self, series: Series) -> np.ndarray:
        adjusted = self.adjuster_.adjust(series.ts, series.values)  # each row less the pattern fitted before it
        return self.likelihood_.transform(self._residual_z(series.ts, adjusted))

    def _residual_z(self, ts: np.ndarray, adjusted_new: np.ndarray) -> np.ndarray:
        """Residual z-scores of rows (``adjusted_new``: their de-seasonalised values); they join the history."""
        history = self.history_
        look_back = int(max(self.level_seconds, self.window_seconds) * US_PER_SECOND)
        # Only the rows a look-back can reach take part in the rolling statistics.
        first = int(np.searchsorted(history["ts"].to_numpy(), ts[0] - 2 * look_back, side="left"))
        recent = history.iloc[first:]
        known = len(recent)
        all_ts = np.concatenate((recent["ts"].to_numpy(), ts))
        adjusted = np.concatenate((recent["adjusted"].to_numpy(), adjusted_new))
        index = pd.to_datetime(all_ts, unit="us")
        level = (
            pd.Series(adjusted, index=index)
            .rolling(pd.Timedelta(seconds=self.level_seconds), min_periods=1, closed="left")
            .median()
            .to_numpy()
        )
        residual = adjusted - np.where(np.isnan(level), adjusted, level)
        residual = np.concatenate((recent["residual"].to_numpy(), residual[known:]))
        present = ~np.isnan(residual)
        z = np.zeros(len(all_ts))
        if present.any():
            z[present] = robust_z(all_ts[present], residual[present], self.window_seconds, 20)
        added = pd.DataFrame({"ts": ts, "adjusted": adjusted[known:], "residual": residual[known:]})
        combined = pd.concat([history, added], ignore_index=True) if len(history) else added
        keep_from = ts[-1] - 2 * look_back  # the pattern's own history is the adjuster's
        self.history_ = combined.iloc[int(np.searchsorted(combined["ts"].to_numpy(), keep_from, side="left")) :]
        return z[known:]

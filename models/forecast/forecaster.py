"""One series forecast: its seasonal periods, a method chosen by backtest, point forecasts and intervals.

:class:`AutoForecaster` cleans the history (gaps and NaNs interpolated,
leading ones dropped), detects the seasonal periods
(:mod:`models.forecast.seasonality`), and backtests every combined method of
:mod:`models.forecast.methods` and their median on the last ``horizon``
steps before the end (at most a quarter of the history). The median wins
unless one method's backtest error (MASE) is below ``guard`` times its own:
one holdout is a noisy judge, and a combination is the safer bet unless a
method is clearly better. The chosen method is then refitted on the whole
history.

**Intervals** come from the backtest's own errors: their spread, pooled over
the steps after dividing each by how an exponential-smoothing forecast's
error grows (``sqrt(1 + (h - 1)·alpha²)``, alpha the smoothing level of the
series' seasonally adjusted remainder: flat for a stationary series, the
square root of the step for a random walk), but never below the remainder's
in-sample one-step error (one holdout path of a wandering series can be calm
by luck); scaled back per step and by the normal quantiles of 80 % and 95 %.
A non-negative series gets no negative forecast or bound. A constant series
is forecast as itself with no spread; a series too short to backtest (under
eight points) is forecast by its last value with the spread of its steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Self

import numpy as np

from metrics.errors import ValidationError
from models.forecast import methods
from models.forecast.seasonality import HOURLY_PERIODS, seasonal_periods

Z_80 = 1.2815515655446004
Z_95 = 1.959963984540054
MIN_BACKTEST = 2
MIN_POINTS = 8  # fewer: no backtest, the last value
FAILURES = (ValueError, ZeroDivisionError, FloatingPointError, np.linalg.LinAlgError, IndexError)


@dataclass(frozen=True)
class Forecast:
    """Point forecasts and 80 % / 95 % prediction intervals of the next steps, and how they were made."""

    mean: np.ndarray
    lower_80: np.ndarray
    upper_80: np.ndarray
    lower_95: np.ndarray
    upper_95: np.ndarray
    method: str
    periods: tuple[int, ...]
    backtest_mase: float | None

    def __len__(self) -> int:
        return len(self.mean)


def clean_history(values: Any) -> np.ndarray:
    """The values as floats with inner NaNs interpolated, leading NaNs dropped and trailing ones held."""
    array = np.asarray(values, dtype=float).ravel()
    if np.isinf(array).any():
        raise ValidationError(f"values: row {int(np.flatnonzero(np.isinf(array))[0])} is infinite")
    present = np.flatnonzero(~np.isnan(array))
    if not len(present):
        raise ValidationError("values: no numbers to forecast from")
    array = array[present[0] :]
    missing = np.isnan(array)
    if missing.any():
        rows = np.arange(len(array))
        array[missing] = np.interp(rows[missing], rows[~missing], array[~missing])
    return array


@dataclass
class AutoForecaster:
    """Forecasts one series ``horizon`` steps ahead with the method its own backtest prefers.

    Args:
        horizon: steps to forecast (and to backtest on).
        season: a seasonal period to use instead of detecting one (``None``: detect among ``periods``;
            ``1``: none).
        periods: the candidate periods detection tries (hourly data: a day and a week).
        guard: a single method replaces the median of all when its backtest MASE is below this share
            of the median's.
    """

    horizon: int = 48
    season: int | None = None
    periods: tuple[int, ...] = HOURLY_PERIODS
    guard: float = 0.8
    history_: np.ndarray = field(init=False, repr=False)
    periods_: tuple[int, ...] = field(init=False, repr=False)
    method_: str = field(init=False, repr=False)
    backtest_mase_: float | None = field(init=False, repr=False)
    sigma_: float = field(init=False, repr=False)
    alpha_: float = field(init=False, repr=False)

    def __post_init__(self) -> None:
        if isinstance(self.horizon, bool) or not isinstance(self.horizon, int) or self.horizon < 1:
            raise ValueError(f"horizon: {self.horizon!r} must be a whole number of steps >= 1")
        if self.season is not None and (isinstance(self.season, bool) or not isinstance(self.season, int)):
            raise ValueError(f"season: {self.season!r} must be a whole number of steps or None")
        if self.season is not None and self.season < 1:
            raise ValueError(f"season: {self.season!r} must be >= 1 (1: no season)")
        if not 0 < self.guard <= 1:
            raise ValueError(f"guard: {self.guard!r} must be in (0, 1]")

    def fit(self, values: Any) -> Self:
        """Learn the series: clean it, detect its periods, choose the method by backtest."""
        history = clean_history(values)
        self.history_ = history
        self.periods_ = self._periods(history)
        self.backtest_mase_ = None
        self.alpha_ = 1.0
        if np.ptp(history) == 0:
            self.method_, self.sigma_, self.alpha_ = "constant", 0.0, 0.0
            return self
        if len(history) < MIN_POINTS:
            self.method_ = "naive"
            self.sigma_ = float(np.std(np.diff(history))) if len(history) > 2 else float(np.ptp(history))
            return self
        holdout = max(MIN_BACKTEST, min(self.horizon, len(history) // 4))
        inner, actual = history[:-holdout], history[-holdout:]
        periods = tuple(p for p in self.periods_ if len(inner) >= 2 * p)
        forecasts, smoothing = self._candidates(inner, holdout, periods)
        scale = mase_scale(inner, min(periods) if periods else 1)
        errors = {name: float(np.mean(np.abs(actual - f))) / scale for name, f in forecasts.items()}
        best = min((name for name in errors if name != methods.COMBINATION), key=errors.__getitem__)
        chosen = best if errors[best] < self.guard * errors[methods.COMBINATION] else methods.COMBINATION
        self.method_ = chosen
        self.backtest_mase_ = errors[chosen]
        self.alpha_ = smoothing.alpha
        growth = self._growth(holdout)
        backtested = float(np.sqrt(np.mean(((actual - forecasts[chosen]) / growth) ** 2)))
        # One holdout path of a wandering series can be calm by luck: never below the in-sample one-step error.
        self.sigma_ = max(backtested, smoothing.sd)
        return self

    def predict(self) -> Forecast:
        """The forecast of the next ``horizon`` steps after the fitted history."""
        history, horizon = self.history_, self.horizon
        if self.method_ == "constant":
            mean = np.full(horizon, history[-1])
        elif self.method_ == "naive" and len(history) < MIN_POINTS:
            mean = methods.naive(history, horizon, ())
        elif self.method_ == methods.COMBINATION:
            mean = methods.combination(list(self._candidates(history, horizon, self.periods_)[0].values())[:-1])
        else:
            mean = methods.METHODS[self.method_](history, horizon, self.periods_)
        spread = self.sigma_ * self._growth(horizon)
        floor = 0.0 if history.min() >= 0 else -np.inf
        mean = np.maximum(mean, floor)
        return Forecast(
            mean=mean,
            lower_80=np.maximum(mean - Z_80 * spread, floor),
            upper_80=mean + Z_80 * spread,
            lower_95=np.maximum(mean - Z_95 * spread, floor),
            upper_95=mean + Z_95 * spread,
            method=self.method_,
            periods=self.periods_,
            backtest_mase=None if self.backtest_mase_ is None else round(self.backtest_mase_, 4),
        )

    def forecast(self, values: Any) -> Forecast:
        """Fit on ``values`` and forecast the next ``horizon`` steps."""
        return self.fit(values).predict()

    def _periods(self, history: np.ndarray) -> tuple[int, ...]:
        if self.season is not None:
            return () if self.season == 1 or len(history) < 2 * self.season else (self.season,)
        return seasonal_periods(history, self.periods)

    def _growth(self, steps: int) -> np.ndarray:
        """How the error grows over the steps, relative to the first."""
        return np.sqrt(1 + np.arange(steps) * self.alpha_**2)

    def _candidates(
        self, history: np.ndarray, horizon: int, periods: Sequence[int]
    ) -> tuple[dict[str, np.ndarray], methods.Smoothing]:
        """Every combined method's forecast (those that fail are left out), their median last; the smoothing."""
        forecasts: dict[str, np.ndarray] = {}
        smoothing = methods.Smoothing(alpha=1.0, sd=0.0)
        for name, method in methods.COMBINED.items():
            try:
                if name == "mstl_ets":
                    forecast, smoothing = methods.decomposed_forecast(history, horizon, periods)
                else:
                    forecast = method(history, horizon, periods)
            except FAILURES:
                continue
            if np.isfinite(forecast).all():
                forecasts[name] = forecast
        if not forecasts:
            forecasts["naive"] = methods.naive(history, horizon, periods)
        forecasts[methods.COMBINATION] = methods.combination(list(forecasts.values()))
        return forecasts, smoothing


def mase_scale(history: np.ndarray, period: int) -> float:
    """The in-sample mean absolute seasonal difference (MASE's denominator); 1 when it is 0 or undefined."""
    lag = period if len(history) > period else 1
    steps = np.abs(history[lag:] - history[:-lag])
    value = float(steps.mean()) if len(steps) else 0.0
    return value if value > 0 else 1.0


def forecast_series(values: Any, horizon: int, season: int | None = None) -> Forecast:
    """The forecast of one series ``horizon`` steps ahead (see :class:`AutoForecaster`)."""
    return AutoForecaster(horizon=horizon, season=season).forecast(values)

"""The forecasting methods a series is forecast with: each maps (history, horizon, periods) to point forecasts.

- ``naive`` — the last value; ``seasonal_naive`` — the last cycle repeated
  (the shortest period); ``weekly_naive`` — the last cycle of the longest.
- ``naive2`` — M4's benchmark: the naive forecast of the seasonally adjusted
  series (classical multiplicative decomposition), reseasonalised.
- ``theta`` — statsmodels' Theta method (seasonally adjusted when a period is found).
- ``mstl_ets`` — statsmodels MSTL (STL for one period) on the log of a
  positive series, each seasonal component's last cycle carried forward, and
  simple exponential smoothing (ETS(A,N,N)) of what remains.
- ``combination`` — the median of the combined methods' forecasts (the three naives, theta, mstl_ets, stl_ets): robust
  when no single one fits, which is the case for most real series.

``stl_ets`` is ``mstl_ets`` with the shortest period only. The smoothing
level of the remainder and its one-step error (:class:`Smoothing`, from
:func:`decomposed_forecast`) are what prediction intervals start from and grow by.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from models.forecast.seasonality import multiplicative_indices

Method = Callable[[np.ndarray, int, Sequence[int]], np.ndarray]


def naive(history: np.ndarray, horizon: int, periods: Sequence[int]) -> np.ndarray:
    """The last value, held."""
    return np.full(horizon, history[-1], dtype=float)


def seasonal_naive(history: np.ndarray, horizon: int, periods: Sequence[int]) -> np.ndarray:
    """The last cycle of the shortest period repeated (the last value without a period)."""
    if not periods:
        return naive(history, horizon, periods)
    return _repeat(history[-min(periods) :], horizon)


def weekly_naive(history: np.ndarray, horizon: int, periods: Sequence[int]) -> np.ndarray:
    """The last cycle of the longest period repeated."""
    if not periods:
        return naive(history, horizon, periods)
    return _repeat(history[-max(periods) :], horizon)


def naive2(history: np.ndarray, horizon: int, periods: Sequence[int]) -> np.ndarray:
    """M4's Naive2: naive on the seasonally adjusted series (shortest period), reseasonalised."""
    if not periods or history.min() <= 0:
        return naive(history, horizon, periods)
    indices = multiplicative_indices(history, min(periods))
    return history[-1] / indices[-1] * _repeat(indices, horizon)


def theta(history: np.ndarray, horizon: int, periods: Sequence[int]) -> np.ndarray:
    """statsmodels' Theta method; multiplicative seasonal adjustment for a positive seasonal series."""
    from statsmodels.tsa.forecasting.theta import ThetaModel

    period = min(periods) if periods else 1
    positive = history.min() > 0
    model = ThetaModel(
        history,
        period=period,
        deseasonalize=bool(periods),
        method="multiplicative" if positive else "additive",
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.asarray(model.fit().forecast(horizon), dtype=float)


def mstl_ets(history: np.ndarray, horizon: int, periods: Sequence[int]) -> np.ndarray:
    """MSTL (STL for one period) of the series (its log when positive), seasons carried on, SES of the rest."""
    return decomposed_forecast(history, horizon, periods)[0]


def stl_ets(history: np.ndarray, horizon: int, periods: Sequence[int]) -> np.ndarray:
    """Like :func:`mstl_ets` with the shortest period only (a daily pattern without the weekly one)."""
    return decomposed_forecast(history, horizon, periods[:1])[0]


@dataclass(frozen=True)
class Smoothing:
    """How the remainder of a decomposed series was smoothed: its level ``alpha`` and one-step error ``sd``."""

    alpha: float
    sd: float  # in the series' own units


def decomposed_forecast(history: np.ndarray, horizon: int, periods: Sequence[int]) -> tuple[np.ndarray, Smoothing]:
    """(the :func:`mstl_ets` forecast, how its remainder was smoothed: how fast and from where errors grow)."""
    values, back = _log_scale(history)
    seasons, remainder = decompose(values, periods)
    level, alpha, sd = _ses_fit(remainder)
    forecast = np.full(horizon, level)
    for period, season in zip(periods, seasons, strict=True):
        forecast = forecast + _repeat(season[-period:], horizon)
    result = back(forecast)
    if back is np.exp:  # a spread on the log scale is a relative one
        sd *= float(np.mean(result))
    return result, Smoothing(alpha, sd)


def decompose(values: np.ndarray, periods: Sequence[int]) -> tuple[list[np.ndarray], np.ndarray]:
    """(one seasonal component per period, the remainder: trend plus noise) by statsmodels STL or MSTL."""
    from statsmodels.tsa.seasonal import MSTL, STL

    if not periods:
        return [], values
    if len(periods) == 1:
        fitted = STL(values, period=periods[0], robust=False).fit()
        seasons = [np.asarray(fitted.seasonal)]
    else:
        fitted = MSTL(values, periods=list(periods), iterate=1).fit()
        seasons = [np.asarray(column) for column in np.asarray(fitted.seasonal).T]
    return seasons, values - np.sum(seasons, axis=0)


COMBINED: dict[str, Method] = {
    "seasonal_naive": seasonal_naive,
    "weekly_naive": weekly_naive,
    "theta": theta,
    "mstl_ets": mstl_ets,
    "stl_ets": stl_ets,
    "naive2": naive2,
}
METHODS: dict[str, Method] = {**COMBINED, "naive": naive}
COMBINATION = "combination"


def combination(forecasts: Sequence[np.ndarray]) -> np.ndarray:
    """The median of several forecasts, step by step."""
    return np.median(np.vstack(forecasts), axis=0)


def _repeat(cycle: np.ndarray, horizon: int) -> np.ndarray:
    return np.tile(cycle, horizon // len(cycle) + 1)[:horizon].astype(float)


def _log_scale(history: np.ndarray) -> tuple[np.ndarray, Callable[[np.ndarray], np.ndarray]]:
    """The series on a log scale when it is positive (multiplicative seasons become additive), and the way back."""
    if history.min() > 0:
        return np.log(history), np.exp
    return history.astype(float), lambda values: values


def _ses_fit(values: np.ndarray) -> tuple[float, float, float]:
    """(the smoothed level at the end, alpha, the one-step errors' standard deviation) of simple smoothing."""
    from statsmodels.tsa.holtwinters import SimpleExpSmoothing

    if np.ptp(values) == 0:
        return float(values[-1]), 0.0, 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = SimpleExpSmoothing(values, initialization_method="estimated").fit()
    level = float(np.asarray(fitted.forecast(1))[0])
    residuals = np.asarray(fitted.resid, dtype=float)[1:]
    return level, float(fitted.params["smoothing_level"]), float(np.sqrt(np.mean(residuals**2)))

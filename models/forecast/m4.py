"""M4-style evaluation: the wide file format, sMAPE, MASE, the Naive2 benchmark and OWA, over a backtest.

The wide format has one series per row: an id in the first column, then the
values, trailing cells empty (M4's ``Hourly-train.csv``). A backtest holds
out each series' last ``horizon`` points, forecasts them from the rest, and
averages over series (rules in ``../shared/data/README.md``):

- sMAPE = mean over the steps of 200·|y − f| / (|y| + |f|);
- MASE = mean |y − f| over the in-sample mean |y_t − y_(t−m)|;
- OWA = ½ (sMAPE / sMAPE of Naive2 + MASE / MASE of Naive2), Naive2 being
  the naive forecast of the series seasonally adjusted by a classical
  multiplicative decomposition when M4's 90 % autocorrelation test at lag m
  finds seasonality.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from metrics.errors import ValidationError
from metrics.processes import parallel_map
from models.forecast import methods
from models.forecast.forecaster import AutoForecaster, Forecast, mase_scale
from models.forecast.seasonality import is_seasonal


@dataclass(frozen=True)
class WideSeries:
    """One row of a wide file: its id and values."""

    series_id: str
    values: np.ndarray


def read_wide(path: Path) -> list[WideSeries]:
    """The series of an M4-style wide CSV (header row, then id and values; empty cells end a series)."""
    try:
        with open(path, newline="") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError) as exc:
        raise ValidationError(f"--input: {path}: {exc}") from None
    if len(rows) < 2:
        raise ValidationError(f"--input: {path}: expected a header row and at least one series")
    found = []
    for number, row in enumerate(rows[1:], start=2):
        cells = [cell for cell in row[1:] if cell.strip() != ""]
        try:
            values = np.array([float(cell) for cell in cells], dtype=float)
        except ValueError:
            bad = next(cell for cell in cells if not _is_number(cell))
            raise ValidationError(f"--input: {path}: line {number}: {bad!r} is not a number") from None
        if not len(values):
            raise ValidationError(f"--input: {path}: line {number}: series {row[0]!r} has no values")
        found.append(WideSeries(row[0], values))
    return found


def write_wide(path: Path, ids: Sequence[str], forecasts: Sequence[np.ndarray]) -> None:
    """Forecasts as an M4-style wide CSV: ``id,F1,…,Fh``."""
    horizon = max((len(f) for f in forecasts), default=0)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["id", *[f"F{step}" for step in range(1, horizon + 1)]])
        for series_id, forecast in zip(ids, forecasts, strict=True):
            writer.writerow([series_id, *[repr(float(value)) for value in forecast]])


def smape(actual: np.ndarray, forecast: np.ndarray) -> float:
    """Symmetric MAPE in percent (a step where both are 0 counts as 0)."""
    denominator = np.abs(actual) + np.abs(forecast)
    ratio = np.divide(np.abs(actual - forecast), denominator, out=np.zeros_like(denominator), where=denominator > 0)
    return float(200 * ratio.mean())


def mase(history: np.ndarray, actual: np.ndarray, forecast: np.ndarray, period: int) -> float:
    """Mean absolute error over the in-sample mean absolute seasonal difference."""
    return float(np.mean(np.abs(actual - forecast))) / mase_scale(history, period)


def naive2_forecast(history: np.ndarray, horizon: int, period: int) -> np.ndarray:
    """M4's Naive2 benchmark forecast."""
    periods = (period,) if period > 1 and is_seasonal(history, period) else ()
    return methods.naive2(history, horizon, periods)


@dataclass(frozen=True)
class BacktestJob:
    """One series to backtest (a picklable job for a worker process)."""

    values: np.ndarray
    horizon: int
    season: int | None
    period: int


def backtest_one(job: BacktestJob) -> dict[str, Any]:
    """sMAPE and MASE of the forecaster and of Naive2 on one series' last ``horizon`` points."""
    history, actual = job.values[: -job.horizon], job.values[-job.horizon :]
    clock = time.perf_counter()
    forecast = AutoForecaster(horizon=job.horizon, season=job.season).forecast(history)
    seconds = time.perf_counter() - clock
    benchmark = naive2_forecast(history, job.horizon, job.period)
    inside_80 = (actual >= forecast.lower_80) & (actual <= forecast.upper_80)
    inside_95 = (actual >= forecast.lower_95) & (actual <= forecast.upper_95)
    return {
        "smape": smape(actual, forecast.mean),
        "mase": mase(history, actual, forecast.mean, job.period),
        "naive2_smape": smape(actual, benchmark),
        "naive2_mase": mase(history, actual, benchmark, job.period),
        "coverage_80": float(inside_80.mean()),
        "coverage_95": float(inside_95.mean()),
        "method": forecast.method,
        "seconds": seconds,
    }


def backtest(
    series: Sequence[WideSeries],
    horizon: int = 48,
    *,
    season: int | None = None,
    period: int = 24,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> dict[str, Any]:
    """sMAPE, MASE and OWA of the forecaster over the series' last ``horizon`` points, and the time taken.

    Args:
        series: the series (each needs more than ``horizon`` points).
        horizon: held-out points per series.
        season: passed to the forecaster (``None``: it detects the periods).
        period: the seasonal period of MASE's scale and Naive2's test (M4 Hourly: 24).
        workers: processes (default one per core).
        progress: told (done, all) after each series.
    """
    short = [item.series_id for item in series if len(item.values) <= horizon + 1]
    if short:
        raise ValidationError(f"series {short[0]!r} has no more than {horizon + 1} points: nothing to backtest on")
    jobs = [BacktestJob(item.values, horizon, season, period) for item in series]
    clock = time.perf_counter()
    results = parallel_map(backtest_one, jobs, workers, progress)
    seconds = time.perf_counter() - clock
    figures = {name: float(np.mean([r[name] for r in results])) for name in results[0] if name != "method"}
    owa = 0.5 * (figures["smape"] / figures["naive2_smape"] + figures["mase"] / figures["naive2_mase"])
    chosen: dict[str, int] = {}
    for result in results:
        chosen[result["method"]] = chosen.get(result["method"], 0) + 1
    return {
        "series": len(results),
        "horizon": horizon,
        "smape": round(figures["smape"], 3),
        "mase": round(figures["mase"], 4),
        "owa": round(owa, 4),
        "naive2_smape": round(figures["naive2_smape"], 3),
        "naive2_mase": round(figures["naive2_mase"], 4),
        "coverage_80": round(figures["coverage_80"], 4),
        "coverage_95": round(figures["coverage_95"], 4),
        "methods": dict(sorted(chosen.items(), key=lambda item: -item[1])),
        "seconds": round(seconds, 2),
        "seconds_per_series": round(figures["seconds"], 4),
    }


def forecast_wide(
    series: Sequence[WideSeries],
    horizon: int,
    *,
    season: int | None = None,
    workers: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Forecast]:
    """The forecast of every series, in order."""
    jobs = [(item.values, horizon, season) for item in series]
    return parallel_map(_forecast_job, jobs, workers, progress)


def _forecast_job(job: tuple[np.ndarray, int, int | None]) -> Forecast:
    values, horizon, season = job
    return AutoForecaster(horizon=horizon, season=season).forecast(values)


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True

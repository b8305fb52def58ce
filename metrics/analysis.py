"""The analysis the Python API, the HTTP API and the CLI share: anomalies of a pattern, and correlated series.

``detect_anomalies`` returns the anomalies the scoring wrote (the
``score-anomalies`` flow keeps them current); with ``refresh`` it first scores
whatever arrived since the last scoring run, so the answer is up to date
without the flow. ``find_correlations`` resamples the primary metric and every
series matching the secondary patterns over the window and correlates them
(:mod:`models.correlation`). ``forecast`` returns the newest forecasts of a
pattern's series (the ``forecast-capacity`` flow writes them); with
``refresh`` it forecasts them now first.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import pandas as pd
import polars as pl

from metrics.errors import ValidationError
from metrics.settings import Settings
from models.correlation import Correlation, correlate
from storage.anomalies import read_anomalies
from storage.forecasts import latest_forecasts
from storage.query import interval_seconds
from storage.store import MetricStore
from tasks.anomalies import AnomalyScorer, sensitivity_threshold
from tasks.anomaly_series import load_series
from tasks.forecasts import CapacityPlanner

MAX_WINDOW_HOURS = 24 * 90
MAX_CORRELATED_SERIES = 1000


def _window(window_hours: float) -> timedelta:
    if isinstance(window_hours, bool) or not isinstance(window_hours, int | float):
        raise ValidationError(f"window_hours: {window_hours!r} is not a number of hours")
    if not 0 < window_hours <= MAX_WINDOW_HOURS:
        raise ValidationError(f"window_hours: {window_hours!r} must be more than 0 and at most {MAX_WINDOW_HOURS}")
    return timedelta(hours=float(window_hours))


def detect_anomalies(
    settings: Settings,
    store: MetricStore,
    metric_pattern: str = "*",
    sensitivity: float = 0.5,
    window_hours: float = 24.0,
    *,
    refresh: bool = False,
    now: datetime | None = None,
) -> pl.DataFrame:
    """Anomalies of metrics matching a glob in the last ``window_hours``, highest score first.

    Args:
        settings: the data directory and the anomaly settings.
        store: the lake.
        metric_pattern: glob over metric names.
        sensitivity: 0 (only the surest, score ≥ 0.9) to 1 (score ≥ 0.5); 0.5 gives score ≥ 0.7.
        window_hours: how far back to look.
        refresh: score what arrived since the last scoring run first (writes the ``anomalies`` table).
        now: the end of the window (default now).

    Returns:
        Columns ``metric, series_id, ts, tags, value, score, is_anomaly, detector, model_version, scored_at``.
    """
    threshold = sensitivity_threshold(sensitivity)
    end = now or datetime.now(UTC)
    start = end - _window(window_hours)
    if refresh:
        AnomalyScorer(settings, store).score([metric_pattern], now=end)
    return read_anomalies(store, metric_pattern, start, end, threshold)


MAX_HORIZON_HOURS = 24 * 366


def forecast(
    settings: Settings,
    store: MetricStore,
    metric_pattern: str = "*",
    horizon: int = 48,
    *,
    refresh: bool = False,
    now: datetime | None = None,
) -> pl.DataFrame:
    """The newest forecast of every series matching a glob, its first ``horizon`` hours.

    Args:
        settings: the data directory and the forecast settings.
        store: the lake.
        metric_pattern: glob over metric names.
        horizon: hours ahead (a refresh forecasts this far; a read returns at most this far).
        refresh: forecast the matching series now (writes the ``forecasts`` table and ``forecast.*`` gauges).
        now: the moment forecast from, with ``refresh`` (default now).

    Returns:
        Columns ``metric, series_id, tags, ts, yhat, lower_80, upper_80, lower_95, upper_95, model, created_at``.
    """
    if isinstance(horizon, bool) or not isinstance(horizon, int) or not 1 <= horizon <= MAX_HORIZON_HOURS:
        raise ValidationError(f"horizon: {horizon!r} must be a whole number of hours from 1 to {MAX_HORIZON_HOURS}")
    if refresh:
        CapacityPlanner(replace(settings, forecast_horizon=horizon), store).run([metric_pattern], now=now)
    found = latest_forecasts(store, metric_pattern)
    return found.filter(pl.int_range(pl.len()).over("series_id") < horizon)


def resampled(store: MetricStore, pattern: str, start: datetime, end: datetime, step: int) -> dict[str, pd.Series]:
    """Every gauge or counter series matching ``pattern`` as bucket means (counters as rates), by label."""
    found: dict[str, pd.Series] = {}
    step_us = step * 1_000_000
    for item in load_series(store, [pattern], start, end, MAX_CORRELATED_SERIES):
        buckets = item.ts // step_us * step_us
        frame = pd.DataFrame({"bucket": buckets, "value": item.values}).groupby("bucket")["value"].mean()
        grid = np.arange(int(start.timestamp() * 1e6) // step_us * step_us, int(end.timestamp() * 1e6), step_us)
        found[f"{item.metric}{item.tags}"] = frame.reindex(grid)
    return found


def find_correlations(
    store: MetricStore,
    primary_metric: str,
    secondary_patterns: Sequence[str],
    correlation_threshold: float = 0.7,
    *,
    window_hours: float = 24.0,
    interval: str = "5m",
    max_lag: int = 12,
    now: datetime | None = None,
) -> list[Correlation]:
    """Series matching ``secondary_patterns`` correlated with ``primary_metric`` (all its series averaged).

    Args:
        store: the lake.
        primary_metric: the metric (or glob) whose series, averaged per bucket, are the primary.
        secondary_patterns: globs of the candidate series (each series judged on its own).
        correlation_threshold: the least absolute Pearson or Spearman coefficient reported.
        window_hours: the window compared.
        interval: the bucket width the series are resampled to.
        max_lag: lags tried in each direction, in buckets.
        now: the end of the window (default now).
    """
    if not secondary_patterns:
        raise ValidationError("secondary_patterns: give at least one metric pattern")
    step = interval_seconds(interval)
    end = now or datetime.now(UTC)
    start = end - _window(window_hours)
    primaries = resampled(store, primary_metric, start, end, step)
    if not primaries:
        raise ValidationError(f"primary_metric: no gauge or counter series of {primary_metric!r} in the window")
    primary = pd.concat(list(primaries.values()), axis=1).mean(axis=1)
    candidates: dict[str, pd.Series] = {}
    for pattern in secondary_patterns:
        for label, series in resampled(store, pattern, start, end, step).items():
            if label not in primaries:
                candidates[label] = series
    try:
        return correlate(
            primary, candidates, threshold=correlation_threshold, max_lag=max_lag, bucket_seconds=float(step)
        )
    except ValueError as exc:
        raise ValidationError(str(exc)) from None

"""Forecasting the lake's gauges every hour: the ``forecasts`` table, capacity risks and ``forecast.*`` gauges.

**Which series.** Gauges and counters (as rates) whose metric matches
``forecast_metrics`` (default ``system.*`` and
``crypto.key.days_since_rotation``), at most ``forecast_max_series`` a run,
most recently active first, read over the last ``forecast_history_days``
and averaged per hour. Each is forecast ``forecast_horizon`` hours ahead by
:class:`models.forecast.forecaster.AutoForecaster` (its own backtest picks
the method), the series spread over ``train_workers`` processes.

**Capacity.** A gauge with a limit (:data:`LIMITS`: disk, memory, swap and
CPU usage at 100 %; ``crypto.key.days_since_rotation`` at the rotation
policy's ``key_max_rotation_days``) also gets its time to that limit from its
recent trend, with an 80 % interval (:func:`models.forecast.capacity.time_to_limit`),
and the probability that its forecast crosses the limit within the horizon.
Both are written back as gauges alert rules can use:
``forecast.days_to_exhaustion`` (only where the trend heads for the limit)
and ``forecast.breach_probability``, tagged with the series' tags plus
``target`` (the metric forecast).

**Scaling.** The hosts reporting ``system.cpu.usage_total`` are taken as one
fleet: its mean CPU forecast (the hosts' means and 80 % bounds averaged, a
conservative bound) against ``scaling_target_utilisation`` gives the replicas
to run next (:func:`models.forecast.capacity.scaling_advice`).

**Chart.** The summary carries up to :data:`CHART_PANELS` panels (the most
urgent risks first, then the other series) for
:func:`metrics.charts.forecast_chart`.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from metrics.charts import ForecastPanel, forecast_chart
from metrics.processes import parallel_map
from metrics.settings import Settings
from models.forecast.capacity import ScalingAdvice, breach_probability, scaling_advice, time_to_limit
from models.forecast.forecaster import AutoForecaster, Forecast
from storage.forecasts import forecast_frame, write_forecasts
from storage.store import MetricStore
from tasks.anomaly_series import US, SeriesData, load_series, parse_tags, tags_label

HOUR_US = 3600 * US
LIMITS = {
    "system.disk.usage_percent": 100.0,
    "system.memory.usage_percent": 100.0,
    "system.swap.usage_percent": 100.0,
    "system.cpu.usage_total": 100.0,
}
ROTATION_METRIC = "crypto.key.days_since_rotation"
DAYS_METRIC = "forecast.days_to_exhaustion"
PROBABILITY_METRIC = "forecast.breach_probability"
SCALING_METRIC = "system.cpu.usage_total"
MIN_HOURS = 3  # fewer hourly points: not forecast
CHART_PANELS = 4


@dataclass(frozen=True)
class CapacityRisk:
    """A series with a limit: when its trend reaches it (days, 80 % bounds) and how likely a breach is."""

    metric: str
    tags: str
    limit: float
    level: float
    days: float | None
    earliest_days: float | None
    latest_days: float | None
    breach_probability: float
    summary: str

    def to_dict(self) -> dict[str, Any]:
        """The row of the artifact and of ``metrics capacity``."""
        return {
            "metric": self.metric,
            "tags": self.tags,
            "level": round(self.level, 3),
            "limit": self.limit,
            "days": None if self.days is None else round(self.days, 2),
            "days_80_low": None if self.earliest_days is None else round(self.earliest_days, 2),
            "days_80_high": None if self.latest_days is None else round(self.latest_days, 2),
            "breach_probability": round(self.breach_probability, 4),
            "summary": self.summary,
        }


@dataclass
class ForecastSummary:
    """One forecasting run: series forecast, rows written, the capacity risks (soonest first), seconds."""

    series: int = 0
    rows: int = 0
    gauges: int = 0
    methods: dict[str, int] = field(default_factory=dict)
    risks: list[CapacityRisk] = field(default_factory=list)
    scaling: ScalingAdvice | None = None
    panels: list[ForecastPanel] = field(default_factory=list)
    seconds: float = 0.0


def hourly(item: SeriesData) -> tuple[np.ndarray, np.ndarray]:
    """(hour starts in µs, the mean per hour; NaN for an hour without samples) of a series."""
    hours = item.ts // HOUR_US
    first, last = int(hours[0]), int(hours[-1])
    index = hours - first
    total = np.bincount(index, weights=item.values, minlength=last - first + 1)
    count = np.bincount(index, minlength=last - first + 1)
    with np.errstate(invalid="ignore", divide="ignore"):
        means = total / count
    return (np.arange(first, last + 1) * HOUR_US).astype(np.int64), means


def limit_of(metric: str, settings: Settings) -> float | None:
    """The level at which a metric counts as exhausted, if it has one."""
    if metric == ROTATION_METRIC:
        return float(settings.key_max_rotation_days)
    return LIMITS.get(metric)


def forecast_rows(item: SeriesData, future: np.ndarray, forecast: Forecast) -> list[dict[str, Any]]:
    """The ``forecasts`` table's rows of one series: a row per future hour."""
    return [
        {
            "metric": item.metric,
            "series_id": item.series_id,
            "tags": item.tags,
            "ts": int(future[step]),
            "yhat": float(forecast.mean[step]),
            "lower_80": float(forecast.lower_80[step]),
            "upper_80": float(forecast.upper_80[step]),
            "lower_95": float(forecast.lower_95[step]),
            "upper_95": float(forecast.upper_95[step]),
            "model": forecast.method,
        }
        for step in range(len(forecast))
    ]


def _forecast_job(job: tuple[np.ndarray, int]) -> Forecast:
    values, horizon = job
    return AutoForecaster(horizon=horizon).forecast(values)


class CapacityPlanner:
    """Forecasts the configured series of one data directory and judges their capacity."""

    def __init__(self, settings: Settings, store: MetricStore) -> None:
        self.settings = settings
        self.store = store

    def run(
        self,
        patterns: Sequence[str] | None = None,
        *,
        now: datetime | None = None,
        write: bool = True,
        progress: Callable[[int, int], None] | None = None,
    ) -> ForecastSummary:
        """Forecast every chosen series; write the forecasts table and forecast.* gauges (unless not ``write``)."""
        started = time.perf_counter()
        end = now or datetime.now(UTC)
        begin = end - timedelta(days=self.settings.forecast_history_days)
        chosen = patterns or self.settings.forecast_metrics
        items = load_series(self.store, chosen, begin, end, self.settings.forecast_max_series)
        items = [item for item in items if not item.metric.startswith("forecast.")]  # not our own gauges
        prepared = [(item, *hourly(item)) for item in items]
        prepared = [entry for entry in prepared if np.isfinite(entry[2]).sum() >= MIN_HOURS]
        horizon = self.settings.forecast_horizon
        jobs = [(values, horizon) for _, _, values in prepared]
        forecasts = parallel_map(_forecast_job, jobs, self.settings.train_workers or None, progress, cost=len)
        summary = ForecastSummary(series=len(prepared))
        rows: list[dict[str, Any]] = []
        gauges: list[dict[str, Any]] = []
        panels: dict[int, ForecastPanel] = {}
        risk_panels: list[tuple[CapacityRisk, ForecastPanel]] = []
        cpu: list[Forecast] = []
        for (item, hours, values), forecast in zip(prepared, forecasts, strict=True):
            summary.methods[forecast.method] = summary.methods.get(forecast.method, 0) + 1
            future = int(hours[-1]) + HOUR_US * np.arange(1, horizon + 1)
            limit = limit_of(item.metric, self.settings) if item.kind == "gauge" else None
            title = f"{item.metric} {tags_label(item.tags)}".strip()
            panels[item.series_id] = ForecastPanel(title, values, forecast, hours, future, limit)
            if item.metric == SCALING_METRIC:
                cpu.append(forecast)
            rows += forecast_rows(item, future, forecast)
            if limit is None:
                continue
            risk = self._risk(item, title, values, forecast, limit)
            risk_panels.append((risk, panels.pop(item.series_id)))
            tags = {**parse_tags(item.tags), "target": item.metric}
            gauges.append({"metric": PROBABILITY_METRIC, "value": risk.breach_probability, **tags})
            if risk.days is not None:
                gauges.append({"metric": DAYS_METRIC, "value": risk.days, **tags})
        risk_panels.sort(key=lambda pair: (pair[0].days is None, pair[0].days or 0.0, -pair[0].breach_probability))
        summary.risks = [risk for risk, _ in risk_panels]
        summary.panels = [panel for _, panel in risk_panels] + list(panels.values())
        del summary.panels[CHART_PANELS:]
        if cpu:
            summary.scaling = self._scaling(cpu)
        if write:
            summary.rows = write_forecasts(self.store, forecast_frame(rows, end))
            summary.gauges = self._write_gauges(gauges, end)
        summary.seconds = time.perf_counter() - started
        return summary

    def _risk(
        self, item: SeriesData, subject: str, values: np.ndarray, forecast: Forecast, limit: float
    ) -> CapacityRisk:
        exhaustion = time_to_limit(values, 3600.0, limit)
        return CapacityRisk(
            metric=item.metric,
            tags=item.tags,
            limit=limit,
            level=exhaustion.level,
            days=exhaustion.days,
            earliest_days=None if exhaustion.earliest_seconds is None else exhaustion.earliest_seconds / 86_400,
            latest_days=None if exhaustion.latest_seconds is None else exhaustion.latest_seconds / 86_400,
            breach_probability=breach_probability(forecast, limit),
            summary=exhaustion.describe(subject),
        )

    def _scaling(self, hosts: list[Forecast]) -> ScalingAdvice:
        """The fleet's advice: the mean of its hosts' CPU forecasts against the target utilisation."""
        fleet = replace(
            hosts[0],
            **{name: np.mean([getattr(f, name) for f in hosts], axis=0) for name in ("mean", "upper_80")},
        )
        return scaling_advice(
            fleet,
            current_replicas=len(hosts),
            target_utilisation=self.settings.scaling_target_utilisation,
            subject="CPU across the fleet",
        )

    def _write_gauges(self, gauges: list[dict[str, Any]], moment: datetime) -> int:
        if not gauges:
            return 0
        frame = pl.DataFrame(gauges).with_columns(
            pl.lit(moment).cast(pl.Datetime("us", "UTC")).alias("ts"), pl.lit("gauge").alias("type")
        )
        self.store.ingest_frame(frame)
        self.store.flush()
        return len(gauges)


@task(
    name="forecast-capacity",
    retries=1,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    cache_policy=NO_CACHE,
)
def forecast_capacity_task(settings: Settings) -> ForecastSummary:
    """Prefect task: forecast the configured series, write the forecasts table and the forecast.* gauges."""
    store = MetricStore(settings).open(background_flush=False)
    try:
        return CapacityPlanner(settings, store).run()
    finally:
        store.close()


@task(name="forecast-chart", cache_policy=NO_CACHE)
def forecast_chart_task(summary: ForecastSummary) -> bytes | None:
    """Prefect task: the run's forecast chart as PNG (None without series); the flow publishes and keeps it."""
    if not summary.panels:
        return None
    return forecast_chart(summary.panels)

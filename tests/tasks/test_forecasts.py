"""Hourly forecasts of the lake's gauges: the forecasts table, capacity risks and forecast.* gauges."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from metrics.settings import Settings
from storage.forecasts import latest_forecasts
from storage.store import MetricStore
from tasks.anomaly_series import SeriesData
from tasks.forecasts import CapacityPlanner, hourly, limit_of

NOW = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
STEP = timedelta(minutes=10)
ROWS = 10 * 24 * 6  # ten days, every ten minutes


def gauge(metric: str, values: np.ndarray, **tags: str) -> pl.DataFrame:
    stamps = [NOW - STEP * (len(values) - i) for i in range(len(values))]
    return pl.DataFrame(
        {"ts": stamps, "metric": metric, "value": values, "type": "gauge", **tags},
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )


def filling_disk(per_day: float = 2.0) -> np.ndarray:
    hours = np.arange(ROWS) / 6
    noise = np.random.default_rng(0).normal(0, 0.3, ROWS)
    return 70 + per_day * hours / 24 + 1.5 * np.sin(2 * np.pi * hours / 24) + noise


@pytest.fixture
def planner_settings(settings: Settings) -> Settings:
    return replace(settings, train_workers=1, forecast_horizon=24)


def test_hourly_means_leave_empty_hours_missing() -> None:
    hour = 3_600_000_000
    item = SeriesData(1, "m", "{}", "gauge", np.array([0, 10, hour * 2 + 5]), np.array([1.0, 3.0, 7.0]))
    hours, means = hourly(item)
    assert hours.tolist() == [0, hour, 2 * hour]
    assert means[0] == 2.0
    assert np.isnan(means[1])
    assert means[2] == 7.0


def test_limits(settings: Settings) -> None:
    assert limit_of("system.disk.usage_percent", settings) == 100.0
    assert limit_of("crypto.key.days_since_rotation", replace(settings, key_max_rotation_days=90)) == 90.0
    assert limit_of("app.latency", settings) is None


def test_a_filling_disk_is_a_capacity_risk_with_gauges_and_forecast_rows(planner_settings: Settings) -> None:
    store = MetricStore(planner_settings).open(background_flush=False)
    try:
        store.ingest_frame(gauge("system.disk.usage_percent", filling_disk(), host="h3", mount="/"))
        store.ingest_frame(gauge("system.disk.usage_percent", np.full(ROWS, 40.0), host="h4", mount="/"))
        store.ingest_frame(gauge("system.load.1m", 1 + np.random.default_rng(1).normal(0, 0.1, ROWS), host="h3"))
        store.flush()
        summary = CapacityPlanner(planner_settings, store).run(now=NOW)
        assert summary.series == 3
        assert summary.rows == 3 * 24
        soonest = summary.risks[0]
        assert soonest.tags == '{"host":"h3","mount":"/"}'
        level = 70 + 2 * (ROWS / 6) / 24  # about 90 % now
        assert soonest.days == pytest.approx((100 - level) / 2, abs=0.5)
        assert soonest.earliest_days is not None
        assert soonest.latest_days is not None
        assert soonest.earliest_days < soonest.days < soonest.latest_days
        assert "reaches 100 in" in soonest.summary
        assert summary.risks[1].days is None  # the flat disk
        forecasts = latest_forecasts(store, "system.disk.*")
        assert forecasts.height == 2 * 24
        assert (forecasts["lower_95"] <= forecasts["yhat"]).all()
        assert forecasts["ts"].min() > NOW - timedelta(hours=1)
        days = store.sql("SELECT value, tags FROM samples WHERE metric = 'forecast.days_to_exhaustion'")
        assert days.height == 1  # only the disk heading for its limit
        assert days["value"][0] == pytest.approx(soonest.days)
        assert '"target":"system.disk.usage_percent"' in days["tags"][0]
        odds = store.sql("SELECT count(*) AS n FROM samples WHERE metric = 'forecast.breach_probability'")
        assert odds["n"][0] == 2
        again = CapacityPlanner(planner_settings, store).run(now=NOW + timedelta(hours=1))
        assert again.series == 3  # its own forecast.* gauges are not forecast
        assert latest_forecasts(store, "system.disk.*").height == 2 * 24  # the newest run only
    finally:
        store.close()


def test_a_dry_run_writes_nothing(planner_settings: Settings) -> None:
    store = MetricStore(planner_settings).open(background_flush=False)
    try:
        store.ingest_frame(gauge("system.disk.usage_percent", filling_disk(), host="h3", mount="/"))
        store.flush()
        summary = CapacityPlanner(planner_settings, store).run(now=NOW, write=False)
        assert (summary.rows, summary.gauges) == (0, 0)
        assert summary.risks[0].days is not None
        assert latest_forecasts(store).is_empty()
    finally:
        store.close()

"""The ``forecast-capacity`` flow under Prefect's test server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from flows.forecast_capacity import forecast_capacity
from metrics.settings import Settings
from storage.store import MetricStore
from tests.flows.conftest import RunFlow


def test_forecast_capacity(flow_settings: Settings, run_flow: RunFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_TRAIN_WORKERS", "1")
    monkeypatch.setenv("METRICS_FORECAST_HORIZON", "12")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    rows = 7 * 24 * 4
    values = 50 + 3 * np.arange(rows) / 96 + np.random.default_rng(0).normal(0, 0.2, rows)  # 3 % a day
    stamps = [now - timedelta(minutes=15) * (rows - i) for i in range(rows)]
    frame = pl.DataFrame(
        {"ts": stamps, "metric": "system.disk.usage_percent", "value": values, "host": "h1", "mount": "/data"},
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )
    store = MetricStore(flow_settings).open(background_flush=False)
    try:
        store.ingest_frame(frame)
        store.flush()
    finally:
        store.close()
    result, artifacts = run_flow(forecast_capacity)
    assert result["series"] == 1
    assert result["rows"] == 12
    assert result["risks"][0]["days"] == pytest.approx((100 - values[-1]) / 3, abs=1.0)
    assert artifacts[0].key == "forecast-capacity"
    assert "capacity risks: 1" in (artifacts[0].description or "")

"""``GET /api/v1/anomalies`` and ``GET /api/v1/correlations`` of the real app over a temporary lake."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient

from metrics.api import create_app
from metrics.settings import Settings
from storage.store import MetricStore
from tasks.anomalies import AnomalyScorer


@pytest.fixture
def lake(tmp_path: Path) -> Settings:
    """A lake holding a spiky latency and a load its CPU follows, already scored once."""
    settings = Settings(data_dir=tmp_path / "data", insecure_dev=True, anomaly_detector="zscore")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    rng = np.random.default_rng(2)
    latency = 50 + rng.normal(0, 1, 600)
    latency[-30] += 40
    load = np.cumsum(rng.normal(0, 1, 600)) + 100
    rows = []
    for name, values in (("app.latency", latency), ("app.load", load), ("app.cpu", np.roll(load, 1) * 3)):
        for i, value in enumerate(values):
            stamp = (now - timedelta(minutes=5) * (600 - i)).isoformat()
            rows.append({"metric_id": name, "value": float(value), "timestamp": stamp, "tags": {"host": "h1"}})
    store = MetricStore(settings).open(background_flush=False)
    try:
        store.ingest_points(rows)
        store.flush()
        AnomalyScorer(settings, store).score()
    finally:
        store.close()
    return settings


@pytest.fixture
def client(lake: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(lake), raise_server_exceptions=False) as test_client:
        yield test_client


def test_anomalies(client: TestClient) -> None:
    found = client.get("/api/v1/anomalies", params={"metric_pattern": "app.*", "window_hours": 72}).json()
    assert found["rows"] >= 1
    assert {row["metric"] for row in found["data"]} == {"app.latency"}
    assert found["data"][0]["tags"] == {"host": "h1"}
    assert isinstance(found["data"][0]["series_id"], str)
    strict = client.get("/api/v1/anomalies", params={"metric_pattern": "app.*", "window_hours": 72, "sensitivity": 0})
    assert strict.json()["rows"] <= found["rows"]
    bad = client.get("/api/v1/anomalies", params={"sensitivity": 3})
    assert bad.status_code == 422


def test_correlations(client: TestClient) -> None:
    response = client.get(
        "/api/v1/correlations",
        params={"primary_metric": "app.load", "secondary": ["app.*"], "window_hours": 60, "correlation_threshold": 0.9},
    )
    assert response.status_code == 200, response.text
    pairs = response.json()["pairs"]
    assert [pair["series"].split("{")[0] for pair in pairs] == ["app.cpu"]
    assert pairs[0]["lag_buckets"] == 1
    missing = client.get("/api/v1/correlations", params={"primary_metric": "nothing.here", "secondary": ["app.*"]})
    assert missing.status_code == 422
    assert "no gauge or counter series" in missing.json()["error"]


def test_forecasts_read_what_the_flow_wrote(lake: Settings, client: TestClient) -> None:
    from dataclasses import replace

    from tasks.forecasts import CapacityPlanner

    empty = client.get("/api/v1/forecasts", params={"metric_pattern": "app.*"}).json()
    assert empty["rows"] == 0  # nothing forecast yet, and a GET never forecasts
    store = MetricStore(lake).open(background_flush=False)
    try:
        CapacityPlanner(replace(lake, forecast_metrics=("app.*",), forecast_horizon=12, train_workers=1), store).run()
    finally:
        store.close()
    found = client.get("/api/v1/forecasts", params={"metric_pattern": "app.load", "horizon": 6}).json()
    assert found["rows"] == 6
    row = found["data"][0]
    assert row["metric"] == "app.load"
    assert row["lower_95"] <= row["lower_80"] <= row["yhat"] <= row["upper_80"] <= row["upper_95"]
    assert client.get("/api/v1/forecasts", params={"horizon": 0}).status_code == 422

"""The ``forecast-capacity`` flow under Prefect's test server."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from PIL import Image

from flows.forecast_capacity import forecast_capacity
from metrics.settings import Settings
from storage.store import MetricStore
from tests.flows.conftest import RunFlow, dashboard_links


def test_forecast_capacity(flow_settings: Settings, run_flow: RunFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_TRAIN_WORKERS", "1")
    monkeypatch.setenv("METRICS_FORECAST_HORIZON", "12")
    now = datetime.now(UTC).replace(minute=0, second=0, microsecond=0)
    rows = 7 * 24 * 4
    values = 50 + 3 * np.arange(rows) / 96 + np.random.default_rng(0).normal(0, 0.2, rows)  # 3 % a day
    stamps = [now - timedelta(minutes=15) * (rows - i) for i in range(rows)]
    disk = pl.DataFrame(
        {"ts": stamps, "metric": "system.disk.usage_percent", "value": values, "host": "h1", "mount": "/data"},
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )
    cpu = pl.DataFrame(
        {"ts": stamps, "metric": "system.cpu.usage_total", "value": 84.0 + np.sin(np.arange(rows) / 10), "host": "h1"},
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )
    frame = pl.concat([disk, cpu], how="diagonal")
    store = MetricStore(flow_settings).open(background_flush=False)
    try:
        store.ingest_frame(frame)
        store.flush()
    finally:
        store.close()
    result, artifacts = run_flow(forecast_capacity)
    assert result["series"] == 2
    assert result["rows"] == 24
    assert result["risks"][0]["days"] == pytest.approx((100 - values[-1]) / 3, abs=1.0)
    assert result["scaling"]["current"] == 1
    assert result["scaling"]["recommended"] == 2  # a peak near 85 % on one host, at a 70 % target
    by_key = {artifact.key: artifact for artifact in artifacts}
    assert "capacity risks: 1" in (by_key["forecast-capacity"].description or "")
    assert dashboard_links(by_key["forecast-capacity"]) == {"system": {"range": "14d"}}  # the history forecast on
    assert dashboard_links(by_key["forecast-capacity-chart"]) == {"system": {"range": "14d"}}
    chart = str(by_key["forecast-capacity-chart"].data)
    assert "](data:image/png;base64,iVBORw0KGgo" in chart  # a PNG's signature, base64
    assert "scale up to 2" in chart
    png = flow_settings.data_dir / "charts" / "forecast-capacity.png"
    assert png.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    assert base64.b64encode(png.read_bytes()).decode() in chart  # the file is the picture in the artifact
    with Image.open(png) as image:
        assert (image.format, image.size) == ("PNG", (1280, 300))  # two series side by side
        image.load()

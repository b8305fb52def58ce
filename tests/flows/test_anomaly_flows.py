"""The ``train-models`` and ``score-anomalies`` flows under Prefect's test server."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest
from PIL import Image

from flows.score_anomalies import score_anomalies
from flows.train_models import train_models
from metrics.settings import Settings
from storage.store import MetricStore
from tests.flows.conftest import RunFlow, dashboard_links

PNG = b"\x89PNG\r\n\x1a\n"


def test_train_then_score(flow_settings: Settings, run_flow: RunFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_ANOMALY_DETECTOR", "zscore")
    monkeypatch.setenv("METRICS_TRAIN_MIN_POINTS", "300")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    values = 50 + np.random.default_rng(0).normal(0, 1, 700)
    values[-3] += 40
    stamps = [now - timedelta(minutes=5) * (700 - i) for i in range(700)]
    frame = pl.DataFrame(
        {"ts": stamps, "metric": "application.api.response_time", "value": values, "host": "h1"},
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )

    def ingest(part: pl.DataFrame) -> None:
        store = MetricStore(flow_settings).open(background_flush=False)
        try:
            store.ingest_frame(part)
            store.flush()
        finally:
            store.close()

    ingest(frame.head(690))  # history
    trained, artifacts = run_flow(train_models)
    assert trained["trained"] == 1
    (artifact,) = artifacts
    assert artifact.key == "train-models"
    assert dashboard_links(artifact) == {"performance": {}}
    ingest(frame.tail(10))  # new rows, one of them a spike
    scored, artifacts = run_flow(score_anomalies)
    assert scored["with_model"] == 1
    assert scored["anomalies"] >= 1
    assert scored["top"][0]["metric"] == "application.api.response_time"
    by_key = {artifact.key: artifact for artifact in artifacts}
    assert set(by_key) == {"score-anomalies", "score-anomalies-chart"}
    assert "anomalies:" in (by_key["score-anomalies"].description or "")
    # Both link to the dashboard of the top anomaly's metric, filtered by its host, over the scoring window.
    expected = {"performance": {"range": "3d", "host": "h1"}}
    assert dashboard_links(by_key["score-anomalies"]) == expected
    chart = by_key["score-anomalies-chart"]
    assert chart.type == "markdown"
    assert dashboard_links(chart) == expected
    markdown = str(chart.data)
    assert "](data:image/png;base64,iVBORw0KGgo" in markdown  # a PNG's signature, base64
    embedded = base64.b64decode(markdown.split("](data:image/png;base64,")[1].split(")")[0])
    png = flow_settings.data_dir / "charts" / "anomalies.png"
    assert png.read_bytes() == embedded
    assert embedded.startswith(PNG)
    assert scored["chart_bytes"] == len(embedded)
    with Image.open(png) as image:
        assert image.format == "PNG"
        assert image.size == (640, 300)  # one series, one panel
        image.load()

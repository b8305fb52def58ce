"""The ``train-models`` and ``score-anomalies`` flows under Prefect's test server."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import polars as pl
import pytest

from flows.score_anomalies import score_anomalies
from flows.train_models import train_models
from metrics.settings import Settings
from storage.store import MetricStore
from tests.flows.conftest import RunFlow


def test_train_then_score(flow_settings: Settings, run_flow: RunFlow, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("METRICS_ANOMALY_DETECTOR", "zscore")
    monkeypatch.setenv("METRICS_TRAIN_MIN_POINTS", "300")
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    values = 50 + np.random.default_rng(0).normal(0, 1, 700)
    values[-3] += 40
    stamps = [now - timedelta(minutes=5) * (700 - i) for i in range(700)]
    frame = pl.DataFrame(
        {"ts": stamps, "metric": "app.latency", "value": values, "host": "h1"},
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
    assert artifacts[0].key == "train-models"
    ingest(frame.tail(10))  # new rows, one of them a spike
    scored, artifacts = run_flow(score_anomalies)
    assert scored["with_model"] == 1
    assert scored["anomalies"] >= 1
    assert scored["top"][0]["metric"] == "app.latency"
    assert "anomalies:" in (artifacts[0].description or "")

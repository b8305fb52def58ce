"""Flow ``train-models``: fit an anomaly model for every series with enough history and store it in the registry."""

from __future__ import annotations

from typing import Any

from prefect import flow

from metrics.settings import get_settings
from tasks.anomalies import train_models_task
from tasks.artifacts import dashboard_link, publish_table

ARTIFACT = "train-models"


@flow(name="train-models", log_prints=True)
def train_models() -> dict[str, Any]:
    """Train the configured detector (``anomaly.detector``) per series on its last ``anomaly.train_days`` days."""
    settings = get_settings()
    summary = train_models_task(settings)
    figures = {
        "models trained": len(summary.trained),
        "series skipped": summary.skipped,
        "versions pruned": summary.pruned,
        "dashboard": dashboard_link(settings, "performance"),
    }
    publish_table(ARTIFACT, summary.trained, "Anomaly models", figures)
    return {
        "trained": len(summary.trained),
        "skipped": summary.skipped,
        "pruned": summary.pruned,
        "seconds": round(summary.seconds, 2),
    }

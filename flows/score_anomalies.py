"""Flow ``score-anomalies``: score every series' new rows and write the ``anomalies`` table; artifact: the top ones."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow

from metrics.settings import get_settings
from tasks.anomalies import score_anomalies_task
from tasks.artifacts import publish_table

ARTIFACT = "score-anomalies"


@flow(name="score-anomalies", log_prints=True)
def score_anomalies() -> dict[str, Any]:
    """Score what arrived since the last run (models where trained, streaming detectors elsewhere)."""
    summary = score_anomalies_task(get_settings())
    for error in summary.model_errors:
        print(f"scored without a model: {error}")
    figures = {
        "series": summary.series,
        "rows scored": summary.rows,
        "anomalies": summary.anomalies,
        "with a model": summary.with_model,
    }
    publish_table(ARTIFACT, summary.top, "Top anomalies", figures)
    return asdict(summary)

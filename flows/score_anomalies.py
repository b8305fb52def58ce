"""Flow ``score-anomalies``: score every series' new rows and write the ``anomalies`` table.

Artifacts: the top ones as a table, and a chart of the series with anomalies (also
``<data_dir>/charts/anomalies.png``), each linking to the dashboard of the top anomaly's metric.
"""

from __future__ import annotations

from typing import Any

from prefect import flow

from metrics.settings import Settings, get_settings
from tasks.anomalies import ScoreSummary, anomaly_chart_task, score_anomalies_task
from tasks.anomaly_series import parse_tags
from tasks.artifacts import dashboard_filters, dashboard_for, dashboard_link, publish_chart, publish_table, range_param

ARTIFACT = "score-anomalies"
CHART_ARTIFACT = "score-anomalies-chart"
CHART_FILE = "anomalies.png"


@flow(name="score-anomalies", log_prints=True)
def score_anomalies() -> dict[str, Any]:
    """Score what arrived since the last run (models where trained, streaming detectors elsewhere)."""
    settings = get_settings()
    summary = score_anomalies_task(settings)
    for error in summary.model_errors:
        print(f"scored without a model: {error}")
    link = top_dashboard_link(settings, summary)
    figures = {
        "series": summary.series,
        "rows scored": summary.rows,
        "anomalies": summary.anomalies,
        "with a model": summary.with_model,
        "dashboard": link,
    }
    publish_table(ARTIFACT, summary.top, "Top anomalies", figures)
    png = anomaly_chart_task(summary)
    if png is not None:
        titles = ", ".join(panel.title for panel in summary.panels)
        publish_chart(
            settings, CHART_ARTIFACT, png, filename=CHART_FILE, title="Top anomalous series",
            description=f"Anomaly chart: {titles}", alt=f"anomalies: {titles}", footer=f"{link}\n",
        )  # fmt: skip
    return {**summary.to_dict(), "chart_bytes": 0 if png is None else len(png)}


def top_dashboard_link(settings: Settings, summary: ScoreSummary) -> str:
    """The dashboard of the top anomaly's metric, filtered by its host, key or algorithm, over the scoring window."""
    window = range_param(settings.score_warmup_hours * 3600)
    if not summary.top:
        return dashboard_link(settings, "system", range=window)
    top = summary.top[0]
    tags = parse_tags(str(top["tags"]))
    return dashboard_link(settings, dashboard_for(str(top["metric"])), range=window, **dashboard_filters(tags))

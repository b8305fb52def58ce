"""Flow ``forecast-capacity``: forecast the configured gauges; artifacts: the capacity risks and a chart."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow

from metrics.settings import get_settings
from tasks.artifacts import dashboard_link, publish_chart, publish_table, range_param
from tasks.forecasts import forecast_capacity_task, forecast_chart_task

ARTIFACT = "forecast-capacity"
CHART_ARTIFACT = "forecast-capacity-chart"
CHART_FILE = "forecast-capacity.png"


@flow(name="forecast-capacity", log_prints=True)
def forecast_capacity() -> dict[str, Any]:
    """Forecast every configured series ``forecast_horizon`` hours ahead and judge the capacity of those with limits."""
    settings = get_settings()
    summary = forecast_capacity_task(settings)
    soonest = [risk.to_dict() for risk in summary.risks[:10]]
    link = dashboard_link(settings, "system", range=range_param(settings.forecast_history_days * 86_400))
    figures = {
        "series forecast": summary.series,
        "forecast rows": summary.rows,
        "capacity risks": sum(1 for risk in summary.risks if risk.days is not None),
        "dashboard": link,
    }
    publish_table(ARTIFACT, soonest, "Capacity risks", figures)
    png = forecast_chart_task(summary)
    advice = summary.scaling.reason if summary.scaling else "no CPU series to size the fleet by."
    if png is not None:
        titles = ", ".join(panel.title for panel in summary.panels)
        publish_chart(
            settings, CHART_ARTIFACT, png, filename=CHART_FILE, title=f"Forecasts, {settings.forecast_horizon} h ahead",
            description=f"Forecast chart: {titles}", alt=f"forecasts: {titles}",
            footer=f"**Scaling:** {advice}\n\n{link}\n",
        )  # fmt: skip
    for risk in summary.risks[:3]:
        print(risk.summary)
    print(f"Scaling: {advice}")
    return {
        "series": summary.series,
        "rows": summary.rows,
        "gauges": summary.gauges,
        "methods": summary.methods,
        "risks": [risk.to_dict() for risk in summary.risks],
        "scaling": None if summary.scaling is None else asdict(summary.scaling),
        "chart_bytes": 0 if png is None else len(png),
        "seconds": round(summary.seconds, 2),
    }

"""Flow ``forecast-capacity``: forecast the configured gauges; artifact: the capacity risks, soonest first."""

from __future__ import annotations

from typing import Any

from prefect import flow

from metrics.settings import get_settings
from tasks.artifacts import publish_table
from tasks.forecasts import forecast_capacity_task

ARTIFACT = "forecast-capacity"


@flow(name="forecast-capacity", log_prints=True)
def forecast_capacity() -> dict[str, Any]:
    """Forecast every configured series ``forecast_horizon`` hours ahead and judge the capacity of those with limits."""
    summary = forecast_capacity_task(get_settings())
    soonest = [risk.to_dict() for risk in summary.risks[:10]]
    figures = {
        "series forecast": summary.series,
        "forecast rows": summary.rows,
        "capacity risks": sum(1 for risk in summary.risks if risk.days is not None),
    }
    publish_table(ARTIFACT, soonest, "Capacity risks", figures)
    for risk in summary.risks[:3]:
        print(risk.summary)
    return {
        "series": summary.series,
        "rows": summary.rows,
        "gauges": summary.gauges,
        "methods": summary.methods,
        "risks": [risk.to_dict() for risk in summary.risks],
        "seconds": round(summary.seconds, 2),
    }

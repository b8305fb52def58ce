"""Flow ``health-checks``: check every health target once (HTTP(S) or TCP) and store ``health.target.*``."""

from __future__ import annotations

from typing import Any

from prefect import flow

from metrics.settings import get_settings
from tasks.artifacts import dashboard_link, publish_table
from tasks.collect.health import check_health_task

ARTIFACT = "health-checks"


@flow(name="health-checks", log_prints=True)
def health_checks() -> dict[str, Any]:
    """Check the configured and registered targets; a target that is down is data, not a failed run."""
    settings = get_settings()
    summary = check_health_task(settings)
    link = dashboard_link(settings, "performance")
    if not summary.results:
        print("no health targets (monitoring.health_targets, METRICS_HEALTH_TARGETS, or the Python API)")
        publish_table(ARTIFACT, [{"result": "no health targets"}], "No health targets", {"dashboard": link})
        return summary.to_dict()
    counts = summary.counts
    figures = {
        "up": counts["up"],
        "degraded": counts["degraded"],
        "down": counts["down"],
        "rows written": summary.stored,
        "dashboard": link,
    }
    publish_table(ARTIFACT, [result.row() for result in summary.results], "Health checks", figures)
    return summary.to_dict()

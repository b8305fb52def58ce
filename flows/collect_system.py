"""Flow ``collect-system-metrics``: one collection window of this host's system metrics."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from prefect import flow

from metrics.settings import get_settings
from tasks.artifacts import dashboard_link, publish_table
from tasks.collect.system import collect_system_samples


@flow(name="collect-system-metrics", log_prints=True)
def collect_system_metrics(window_seconds: float | None = None) -> dict[str, Any]:
    """Collect this host's metrics over one window (default: ``collector.system_interval``) and store them."""
    settings = get_settings()
    summary = collect_system_samples(settings, window_seconds)
    figures = {
        "readings": summary.readings,
        "rows written": summary.samples_stored,
        "saved by adaptive sampling": summary.samples_saved,
        "rejected": summary.rejected,
        "dashboard": dashboard_link(settings, "system", range="1h", host=summary.host),
    }
    publish_table("collect-system-metrics", [asdict(summary)], f"System metrics of {summary.host}", figures)
    return {**asdict(summary), "samples_saved": summary.samples_saved}

"""Flow ``scrape-targets``: scrape the configured Prometheus targets once and store their samples."""

from __future__ import annotations

from typing import Any

from prefect import flow

from metrics.settings import get_settings
from tasks.artifacts import dashboard_link, publish_table
from tasks.collect.prometheus import scrape_targets

ARTIFACT = "scrape-targets"


@flow(name="scrape-targets", log_prints=True)
def scrape_targets_flow(targets: list[str] | None = None) -> dict[str, Any]:
    """Scrape each target once (``collector.scrape_targets``, or ``job=url`` strings given) and store the samples."""
    settings = get_settings()
    summary = scrape_targets(settings, targets)
    link = dashboard_link(settings, "performance")
    if not summary.targets:
        print("no targets configured (METRICS_SCRAPE_TARGETS / collector.scrape_targets): nothing scraped")
        publish_table(
            ARTIFACT, [{"result": "no targets configured"}], "No Prometheus targets configured", {"dashboard": link}
        )
        return summary.to_dict()
    figures = {
        "targets up": f"{summary.up}/{len(summary.targets)}",
        "rows written": summary.stored,
        "rejected": summary.rejected,
        "dashboard": link,
    }
    publish_table(ARTIFACT, [result.row() for result in summary.targets], "Prometheus scrape", figures)
    return summary.to_dict()

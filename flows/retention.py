"""Flow ``retention-cleanup``: drop (or archive) partitions past the retention period."""

from __future__ import annotations

from typing import Any

from prefect import flow

from metrics.settings import get_settings
from tasks.artifacts import dashboard_link, human_bytes, publish_table
from tasks.maintenance import drop_expired_partitions


@flow(name="retention-cleanup", log_prints=True)
def retention_cleanup(dry_run: bool = False) -> dict[str, Any]:
    """Remove every day partition older than ``retention_days`` (archive it when ``archive`` is on)."""
    settings = get_settings()
    result = drop_expired_partitions(settings, dry_run)
    action = "would remove" if dry_run else ("archived" if result.archived else "removed")
    figures = {
        "cutoff": result.cutoff.isoformat(),
        f"partitions {action}": len(result.partitions),
        "bytes freed": human_bytes(result.bytes_freed),
        "dashboard": dashboard_link(settings, "performance"),
    }
    publish_table(
        "retention-cleanup",
        [{"partition": p, "action": action} for p in result.partitions],
        f"Retention ({settings.retention_days} days)",
        figures,
    )
    return {
        "cutoff": result.cutoff.isoformat(),
        "partitions": result.partitions,
        "bytes_freed": result.bytes_freed,
        "archived": result.archived,
        "dry_run": dry_run,
    }

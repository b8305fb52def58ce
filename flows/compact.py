"""Flow ``compact-lake``: compact, validate and roll up the day partitions that need it."""

from __future__ import annotations

from datetime import date
from typing import Any

from prefect import flow

from metrics.settings import get_settings
from tasks.artifacts import dashboard_link, human_bytes, publish_table
from tasks.maintenance import compact_partitions


@flow(name="compact-lake", log_prints=True)
def compact_lake(days: list[date] | None = None) -> dict[str, Any]:
    """Merge each day's small files into one sorted, validated file with rollups (every day, or ``days``)."""
    settings = get_settings()
    results = compact_partitions(settings, days)
    rows = [
        {
            "day": r.day.isoformat(),
            "files before": r.files_before,
            "files after": r.files_after,
            "rows": r.rows,
            "bytes before": r.bytes_before,
            "bytes after": r.bytes_after,
            "quarantined": r.quarantined,
        }
        for r in results
    ]
    totals = {
        "partitions": len(results),
        "rows": sum(r.rows for r in results),
        "files_removed": sum(r.files_before - r.files_after for r in results),
        "bytes_before": sum(r.bytes_before for r in results),
        "bytes_after": sum(r.bytes_after for r in results),
        "quarantined": sum(r.quarantined for r in results),
    }
    figures = {
        "partitions compacted": totals["partitions"],
        "rows": totals["rows"],
        "files removed": totals["files_removed"],
        "bytes": f"{human_bytes(totals['bytes_before'])} → {human_bytes(totals['bytes_after'])}",
        "quarantined": totals["quarantined"],
        "dashboard": dashboard_link(settings, "performance"),
    }
    publish_table("compact-lake", rows, "Compaction", figures)
    return totals

"""Flow ``backup-lake``: a verified backup of the data directory, keeping the newest ``backup_keep``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prefect import flow

from metrics.settings import get_settings
from tasks.artifacts import dashboard_link, human_bytes, publish_table
from tasks.maintenance import prune_old_backups, write_backup


@flow(name="backup-lake", log_prints=True)
def backup_lake(output: Path | None = None) -> dict[str, Any]:
    """Back up the lake, WALs, state and models (default: into ``backup_dir``), then prune old backups."""
    settings = get_settings()
    result = write_backup(settings, output)
    removed = prune_old_backups(settings, result.path.parent)
    summary = {
        "path": str(result.path),
        "files": result.files,
        "bytes_in": result.bytes_in,
        "bytes_out": result.bytes_out,
        "seconds": round(result.seconds, 3),
        "megabytes_per_second": round(result.megabytes_per_second, 1),
        "sha256": result.sha256,
        "pruned": [str(p) for p in removed],
    }
    figures = {
        "archive": result.path.name,
        "size": human_bytes(result.bytes_out),
        "sha256": f"`{result.sha256[:16]}…`",
        "old backups removed": len(removed),
        "dashboard": dashboard_link(settings, "performance"),
    }
    publish_table("backup-lake", [{k: v for k, v in summary.items() if k != "pruned"}], "Backup", figures)
    return summary

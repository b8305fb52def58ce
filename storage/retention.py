"""Retention: drop (or archive) whole day partitions older than the retention period."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

from storage.lake import QUARANTINE, TABLES, Lake


@dataclass
class RetentionResult:
    """What a cleanup removed or archived."""

    cutoff: date
    partitions: list[str] = field(default_factory=list)
    bytes_freed: int = 0
    archived: bool = False


def cleanup(
    lake: Lake,
    older_than: timedelta,
    *,
    archive_dir: Path | None = None,
    now: datetime | None = None,
    dry_run: bool = False,
) -> RetentionResult:
    """Drop every partition whose whole day ends before ``now - older_than``.

    With ``archive_dir`` the partitions are moved there (same layout) instead
    of deleted. With ``dry_run`` nothing changes; the result lists what would go.
    """
    moment = now or datetime.now(UTC)
    cutoff = (moment - older_than).date()
    result = RetentionResult(cutoff=cutoff, archived=archive_dir is not None)
    with lake.maintenance():
        lake.recover()
        for table in (*TABLES, QUARANTINE):
            for day in lake.partitions(table):
                if day >= cutoff:
                    continue
                result.partitions.append(f"{table}/date={day.isoformat()}")
                if not dry_run:
                    result.bytes_freed += lake.drop_partition(table, day, archive_to=archive_dir)
    return result

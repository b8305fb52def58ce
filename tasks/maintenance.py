"""Prefect tasks that keep the lake healthy: compaction, retention, backup. Each one opens the store it needs.

They are I/O: each retries with exponential backoff (a lock held by a
concurrent compaction or a full disk clearing up), and none is cached, since
each run must look at the lake as it is now.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from metrics.settings import Settings
from storage.backup import BackupResult, create_backup, prune_backups
from storage.compaction import CompactionResult
from storage.retention import RetentionResult
from storage.store import MetricStore

RETRIES = 2
BACKOFF = exponential_backoff(backoff_factor=10)


@task(name="compact-partitions", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def compact_partitions(settings: Settings, days: list[date] | None = None) -> list[CompactionResult]:
    """Compact, validate and roll up every day partition that needs it (or just ``days``)."""
    store = MetricStore(settings).open(background_flush=False)
    try:
        return store.compact(days=days)
    finally:
        store.close()


@task(name="drop-expired-partitions", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def drop_expired_partitions(settings: Settings, dry_run: bool = False) -> RetentionResult:
    """Drop (or archive) the partitions older than the retention period."""
    store = MetricStore(settings, read_only=True).open(background_flush=False)
    try:
        return store.cleanup(dry_run=dry_run)
    finally:
        store.close()


def backup_name(moment: datetime | None = None) -> str:
    """``metrics-20261128T020000Z.tar.gz``: sorts by time, unique per second."""
    return f"metrics-{(moment or datetime.now(UTC)).strftime('%Y%m%dT%H%M%SZ')}.tar.gz"


@task(name="write-backup", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def write_backup(settings: Settings, output: Path | None = None) -> BackupResult:
    """Write a backup of the data directory (default: ``<backups_dir>/metrics-<time>.tar.gz``)."""
    return create_backup(settings, output or settings.backups_dir / backup_name())


@task(name="prune-backups", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def prune_old_backups(settings: Settings, folder: Path | None = None) -> list[Path]:
    """Delete all but the newest ``backup_keep`` backups; return what went."""
    return prune_backups(folder or settings.backups_dir, settings.backup_keep, pattern="metrics-*.tar.gz")

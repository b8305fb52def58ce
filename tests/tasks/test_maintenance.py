"""The maintenance task bodies (``.fn``) over a real temporary lake, and the artifact helpers."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from metrics.settings import Settings
from storage.backup import verify_backup
from storage.store import MetricStore
from tasks.artifacts import headline, human_bytes, publish_table
from tasks.maintenance import (
    backup_name,
    compact_partitions,
    drop_expired_partitions,
    prune_old_backups,
    write_backup,
)
from tests.conftest import FrameFactory


@pytest.mark.parametrize(
    ("size", "text"),
    [(0, "0 B"), (999, "999 B"), (1_000, "1.0 kB"), (1_536, "1.5 kB"), (2_500_000, "2.5 MB"), (3e12, "3.0 TB")],
)
def test_human_bytes(size: float, text: str) -> None:
    assert human_bytes(size) == text


def test_headline_lists_the_figures() -> None:
    assert headline("Backup", {"size": "1 kB", "files": 3}) == "**Backup** — size: 1 kB · files: 3"
    assert headline("Nothing", {}) == "**Nothing**"


def test_publishing_outside_a_flow_run_does_nothing() -> None:
    assert publish_table("some-key", [{"a": 1}], "Title", {}) is None


def test_backup_names_sort_by_time() -> None:
    early = backup_name(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    assert early == "metrics-20260102T030405Z.tar.gz"
    assert early < backup_name(datetime(2026, 1, 2, 3, 4, 6, tzinfo=UTC))


def test_compact_partitions_compacts_each_day_once(settings: Settings, make_frame: FrameFactory) -> None:
    with MetricStore(settings).open(background_flush=False) as store:
        for seed in range(2):
            store.ingest_frame(make_frame(seed=seed, end=datetime.now(UTC) - timedelta(minutes=30 * seed)))
    results = compact_partitions.fn(settings)
    assert sum(r.rows for r in results) == 2 * 2 * 3 * 60
    assert all(r.files_after == 1 for r in results)
    assert compact_partitions.fn(settings) == []


def test_drop_expired_partitions_dry_run_changes_nothing(
    settings: Settings, make_frame: FrameFactory, noon: datetime
) -> None:
    old = noon - timedelta(days=4)  # one day's partition, whatever the time of the run
    with MetricStore(settings).open(background_flush=False) as store:
        store.ingest_frame(make_frame(end=old))
    settings = replace(settings, retention_days=2)
    preview = drop_expired_partitions.fn(settings, dry_run=True)
    assert preview.partitions == [f"samples/date={old.date().isoformat()}"]
    assert drop_expired_partitions.fn(settings).bytes_freed > 0
    assert drop_expired_partitions.fn(settings).partitions == []


def test_backups_are_written_and_pruned_to_the_newest(settings: Settings, make_frame: FrameFactory) -> None:
    settings = Settings(data_dir=settings.data_dir, backup_keep=2)
    with MetricStore(settings).open(background_flush=False) as store:
        store.ingest_frame(make_frame())
    paths = []
    for age in (3, 2, 1):
        result = write_backup.fn(settings, settings.backups_dir / f"metrics-{age}.tar.gz")
        os.utime(result.path, (time.time() - age * 60, time.time() - age * 60))
        paths.append(result.path)
    verify_backup(paths[0])
    removed = prune_old_backups.fn(settings)
    assert removed == [paths[0]]
    assert sorted(settings.backups_dir.iterdir()) == sorted(paths[1:])


def test_a_default_backup_lands_in_the_backup_dir(tmp_path: Path, settings: Settings) -> None:
    settings = Settings(data_dir=settings.data_dir, backup_dir=tmp_path / "elsewhere")
    result = write_backup.fn(settings)
    assert result.path.parent == (tmp_path / "elsewhere").resolve()
    assert result.path.name.startswith("metrics-")

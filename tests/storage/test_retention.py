"""Tests of storage.retention: dropping or archiving whole day partitions past the retention period (real files)."""

from __future__ import annotations

import os
import time
from dataclasses import replace
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import polars as pl
import pyarrow as pa
import pytest

from metrics.settings import Settings
from storage.encoding import decode_values, plain_values
from storage.lake import QUARANTINE, SERIES_TABLE, TMP_SUFFIX, Lake
from storage.retention import cleanup
from storage.rollups import ROLLUP_TABLES, build_rollup, stored_rollup
from storage.series import SERIES_SCHEMA
from storage.store import MetricStore

NOW = datetime(2024, 6, 30, 15, 0, tzinfo=UTC)
OLDER_THAN = timedelta(days=30)  # cutoff day: 2024-05-31; days before it go
TABLES = ("samples", "rollups_1m", "rollups_1h", "anomalies", QUARANTINE)
AGES = {40: True, 31: True, 30: False, 29: False, 1: False, 0: False}  # age in days -> expired


def day_of_age(age: int, now: datetime = NOW) -> date:
    return now.date() - timedelta(days=age)


def samples(day: date, rows: int) -> pa.Table:
    """Rows in the stored sample layout (what the store's views read)."""
    start = datetime(day.year, day.month, day.day, 12, tzinfo=UTC)
    frame = pl.DataFrame(
        {
            "metric": ["m"] * rows,
            "series_id": [1] * rows,
            "ts": [start + timedelta(seconds=i) for i in range(rows)],
            "value": [float(i) for i in range(rows)],
            "type": ["gauge"] * rows,
            "tags": ["{}"] * rows,
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )
    return plain_values(frame).to_arrow()


def fill(lake: Lake, now: datetime = NOW) -> dict[str, int]:
    """One or two files in every table for every age; return the size of each partition by 'table/date=...'."""
    sizes: dict[str, int] = {}
    for table in TABLES:
        for age in AGES:
            day = day_of_age(age, now)
            if table == "samples":
                data = samples(day, age + 1)
            elif table in ROLLUP_TABLES:  # rollups in their stored layout, as compaction writes them
                data = stored_rollup(
                    build_rollup(decode_values(pl.DataFrame(samples(day, age + 1))), ROLLUP_TABLES[table])
                )
            else:
                data = pa.table({"v": [float(age)] * (age + 1)})
            paths = [lake.write(table, day, data, "a.parquet")]
            if table == QUARANTINE:  # quarantine holds the bad rows and a JSON report
                report = lake.partition_dir(table, day) / "a.json"
                report.write_text('{"bad_rows": 1}', encoding="utf-8")
                paths.append(report)
            sizes[f"{table}/date={day.isoformat()}"] = sum(p.stat().st_size for p in paths)
    catalog = pa.table(
        {"series_id": [1], "metric": ["m"], "type": ["gauge"], "tags": ["{}"], "first_seen": [datetime.now(UTC)]},
        schema=SERIES_SCHEMA,
    )
    lake.write(SERIES_TABLE, None, catalog, "s.parquet")
    return sizes


def expired(sizes: dict[str, int]) -> list[str]:
    days = {day_of_age(age).isoformat() for age, gone in AGES.items() if gone}
    return [key for key in sizes if key.split("date=")[1] in days]


def listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.name != ".lock")


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    return Lake(tmp_path / "lake")


def test_partitions_older_than_the_cutoff_are_removed(lake: Lake) -> None:
    sizes = fill(lake)

    result = cleanup(lake, OLDER_THAN, now=NOW)

    assert result.cutoff == date(2024, 5, 31)
    assert result.archived is False
    assert sorted(result.partitions) == sorted(expired(sizes))
    assert len(result.partitions) == 2 * len(TABLES)
    assert result.bytes_freed == sum(sizes[key] for key in expired(sizes))
    for table in TABLES:
        assert lake.partitions(table) == sorted(day_of_age(age) for age, gone in AGES.items() if not gone)
    assert lake.flat_files(SERIES_TABLE) != []  # the catalog is not a day table


def test_quarantine_partitions_are_cleaned_too(lake: Lake) -> None:
    fill(lake)
    cleanup(lake, OLDER_THAN, now=NOW)
    folder = lake.table_dir(QUARANTINE)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        f"date={day_of_age(age).isoformat()}" for age, gone in AGES.items() if not gone
    )
    assert not (folder / f"date={day_of_age(40).isoformat()}").exists()


def test_dry_run_changes_nothing(lake: Lake) -> None:
    sizes = fill(lake)
    before = listing(lake.root)

    result = cleanup(lake, OLDER_THAN, now=NOW, dry_run=True)

    assert sorted(result.partitions) == sorted(expired(sizes))
    assert result.bytes_freed == 0
    assert listing(lake.root) == before


def test_archive_moves_partitions_with_the_same_layout(lake: Lake, tmp_path: Path) -> None:
    sizes = fill(lake)
    archive = tmp_path / "archive"
    gone = expired(sizes)
    contents = {key: {p.name: p.read_bytes() for p in (lake.root / key).iterdir()} for key in gone}

    result = cleanup(lake, OLDER_THAN, now=NOW, archive_dir=archive)

    assert result.archived is True
    assert sorted(result.partitions) == sorted(gone)
    assert result.bytes_freed == sum(sizes[key] for key in gone)
    for key in gone:
        assert not (lake.root / key).exists()
        assert {p.name: p.read_bytes() for p in (archive / key).iterdir()} == contents[key]
    assert sorted(str(p.relative_to(archive)) for p in archive.glob("*/*")) == sorted(gone)
    assert Lake(archive).partitions("samples") == [day_of_age(40), day_of_age(31)]


@pytest.mark.parametrize(
    ("older_than", "kept_ages"),
    [
        (timedelta(days=1), [1, 0]),
        (timedelta(days=100), [40, 31, 30, 29, 1, 0]),
        (timedelta(hours=15, minutes=1), [1, 0]),  # cutoff 2024-06-29 23:59: that day has not ended yet
        (timedelta(hours=15), [0]),  # cutoff exactly at midnight: 2024-06-29 has ended
    ],
)
def test_only_days_that_ended_before_the_cutoff_go(lake: Lake, older_than: timedelta, kept_ages: list[int]) -> None:
    fill(lake)
    cleanup(lake, older_than, now=NOW)
    assert lake.partitions("samples") == sorted(day_of_age(age) for age in kept_ages)


def test_an_empty_lake_has_nothing_to_clean(lake: Lake) -> None:
    result = cleanup(lake, OLDER_THAN, now=NOW)
    assert result.partitions == []
    assert result.bytes_freed == 0


# -- through the store (the CLI's `metrics cleanup`) --------------------------------------------------------------


def store_cleanup(settings: Settings, older_than: timedelta) -> tuple[list[str], Path]:
    lake = Lake(settings.lake_dir)
    now = datetime.now(UTC)
    fill(lake, now)
    stale = lake.root / "samples" / ("x.parquet" + TMP_SUFFIX)
    stale.write_bytes(b"left by a crash")
    two_hours_ago = time.time() - 7200
    os.utime(stale, (two_hours_ago, two_hours_ago))
    store = MetricStore(settings).open(background_flush=False)
    try:
        result = store.cleanup(older_than)
        assert store.sql("SELECT count(DISTINCT date) AS n FROM samples").item() == 4  # the views see what is left
    finally:
        store.close()
    assert not stale.exists()  # cleanup also removes old leftovers of interrupted writes
    assert sorted(lake.partitions("samples")) == sorted(day_of_age(age, now) for age in (30, 29, 1, 0))
    return result.partitions, lake.root


def test_store_cleanup_deletes_without_archive(settings: Settings) -> None:
    partitions, _ = store_cleanup(settings, timedelta(days=30))
    assert len(partitions) == 2 * len(TABLES)
    assert not settings.archive_dir.exists()


def test_store_cleanup_archives_under_data_archive(settings: Settings) -> None:
    archiving = replace(settings, archive=True)
    partitions, root = store_cleanup(archiving, timedelta(days=30))
    assert archiving.archive_dir == archiving.data_dir / "archive"
    assert len(partitions) == 2 * len(TABLES)
    for key in partitions:
        assert (archiving.archive_dir / key / "a.parquet").is_file()
        assert not (root / key).exists()
    assert (archiving.archive_dir / QUARANTINE).is_dir()

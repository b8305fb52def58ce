"""Compaction: merge a day's small files into one large sorted file and (re)build its rollups.

For each day partition of ``samples``: read every committed file (leaving out
writer files whose WAL segment still exists: their writer has not finished
with them), validate the rows with the data-quality suite (failures go to
``quarantine/``), sort by (metric, series_id, ts), write one ``c-<generation>``
file plus the matching 1-minute and 1-hour rollups, then swap them in with
:meth:`Lake.replace` (exclusive lock, journaled), so concurrent queries never
fail or double count. The series catalog's small files are merged the same way.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import polars as pl

from metrics.model import POLARS_SAMPLE_SCHEMA, SAMPLE_COLUMNS, SORT_KEY
from storage.encoding import decimal_values, decode_values
from storage.lake import COMPACTED_PREFIX, QUARANTINE, SERIES_TABLE, UNREADABLE_ERRORS, Lake, LakeFile
from storage.rollups import ROLLUP_TABLES, build_rollup, covered_days, rollup_name, stored_rollup
from storage.series import catalog_table, read_catalog
from storage.wal import intent_name, segment_name
from storage.writer import parse_sample_file_name

log = logging.getLogger(__name__)

# Compacted files are written once and read many times: spend more CPU on compression.
COMPACTED_ZSTD_LEVEL = 9


@dataclass
class CompactionResult:
    """What compacting one day did."""

    day: date
    files_before: int
    files_after: int
    rows: int
    bytes_before: int
    bytes_after: int
    quarantined: int = 0
    skipped_files: int = 0
    corrupt_files: list[str] = field(default_factory=list)
    validation: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        data = asdict(self)
        data["day"] = self.day.isoformat()
        return data


def _pending_files(lake: Lake, wal_root: Path, files: Iterable[LakeFile]) -> tuple[list[LakeFile], int]:
    """Files safe to merge, and how many were left out because their WAL segment still exists."""
    ready: list[LakeFile] = []
    skipped = 0
    for item in files:
        parsed = parse_sample_file_name(item.name)
        folder = wal_root / parsed[0] if parsed is not None else None
        if (
            parsed is not None
            and folder is not None
            and ((folder / segment_name(parsed[1])).exists() or (folder / intent_name(parsed[1])).exists())
        ):
            skipped += 1
            continue
        ready.append(item)
    return ready, skipped


def _read_inputs(lake: Lake, day: date, inputs: list[LakeFile]) -> tuple[list[pl.DataFrame], list[LakeFile], list[str]]:
    """Read each input file; move unreadable ones to quarantine (with a note of why) and go on."""
    frames: list[pl.DataFrame] = []
    readable: list[LakeFile] = []
    corrupt: list[str] = []
    for item in inputs:
        try:
            frames.append(decode_values(pl.read_parquet(item.path)).select(SAMPLE_COLUMNS))
            readable.append(item)
        except UNREADABLE_ERRORS as exc:
            lake.quarantine_file(item.path, "samples", exc, day)
            corrupt.append(f"{item.name}: {str(exc).splitlines()[0]}")
    return frames, readable, corrupt


def _rollups_match(lake: Lake, day: date, name: str) -> bool:
    return all({f.name for f in lake.files(table, day, day)} == {name} for table in ROLLUP_TABLES)


def needs_compaction(lake: Lake, day: date) -> bool:
    """True when a day has raw writer files or its rollups do not cover it."""
    files = lake.files("samples", day, day)
    if not files:
        return False
    if len(files) > 1 or not files[0].compacted:
        return True
    return any(day not in covered_days(lake, table, [day]) for table in ROLLUP_TABLES)


def compact_day(
    lake: Lake,
    day: date,
    *,
    wal_root: Path,
    validate: bool = True,
    now: datetime | None = None,
    max_future_seconds: int = 600,
    force: bool = False,
) -> CompactionResult | None:
    """Compact one day of ``samples`` and rebuild its rollups; None when there was nothing to do.

    Holds the lake's maintenance lock, so two compactions (or a compaction and
    retention) never work on the same files at once.
    """
    with lake.maintenance():
        return _compact_day(lake, day, wal_root, validate, now, max_future_seconds, force)


def _compact_day(
    lake: Lake,
    day: date,
    wal_root: Path,
    validate: bool,
    now: datetime | None,
    max_future_seconds: int,
    force: bool,
) -> CompactionResult | None:
    lake.recover()  # under the maintenance lock: a swap a dead compaction left half done
    if not force and not needs_compaction(lake, day):
        return None
    inputs, skipped = _pending_files(lake, wal_root, lake.files("samples", day, day))
    if not inputs:
        return None
    if not force and len(inputs) == 1 and inputs[0].compacted and _rollups_match(lake, day, inputs[0].name):
        return None  # only files still owned by a live writer are new: nothing to merge yet
    bytes_before = sum(f.path.stat().st_size for f in inputs)
    frames, inputs, corrupt = _read_inputs(lake, day, inputs)
    if not frames and not corrupt:
        return None
    frame = pl.concat(frames, how="vertical_relaxed") if frames else pl.DataFrame(schema=POLARS_SAMPLE_SCHEMA)
    generation = f"{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}"
    quarantined = 0
    report: dict[str, Any] = {}
    if validate and frame.height:
        from storage.validate import quarantine, validate_batch  # imports Great Expectations: slow

        outcome = validate_batch(frame, now=now or datetime.now(UTC), max_future_seconds=max_future_seconds)
        report = outcome.report
        if outcome.failed_rows:
            folder = lake.partition_dir(QUARANTINE, day)
            quarantine(outcome, folder, batch_name=generation)
            quarantined = outcome.failed_rows
            log.warning("%s: %d rows failed validation, quarantined under %s", day, quarantined, folder)
        frame = outcome.good
    frame = frame.sort(list(SORT_KEY))
    name = f"{COMPACTED_PREFIX}{generation}.parquet"
    staged: list[Path] = []
    old = [f.path for f in inputs]
    if frame.height:
        stored = decimal_values(frame).to_arrow()
        staged.append(lake.stage("samples", day, stored, name, compression_level=COMPACTED_ZSTD_LEVEL))
        for table, width in ROLLUP_TABLES.items():
            rollup = stored_rollup(build_rollup(frame, width))
            staged.append(lake.stage(table, day, rollup, rollup_name(generation)))
    # Old rollups of the day are replaced as well (they described the files being merged).
    old += [f.path for table in ROLLUP_TABLES for f in lake.files(table, day, day)]
    lake.replace(staged, old)
    bytes_after = sum(p.with_name(p.name.removesuffix(".tmp")).stat().st_size for p in staged[:1])
    return CompactionResult(
        day=day,
        files_before=len(inputs),
        files_after=1 if frame.height else 0,
        rows=frame.height,
        bytes_before=bytes_before,
        bytes_after=bytes_after,
        quarantined=quarantined,
        skipped_files=skipped,
        corrupt_files=corrupt,
        validation=report,
    )


def compact_series(lake: Lake) -> int:
    """Merge the series catalog's files into one; return how many files were merged."""
    with lake.maintenance():
        return _compact_series(lake)


def _compact_series(lake: Lake) -> int:
    lake.recover()
    files = lake.flat_files(SERIES_TABLE)
    if len(files) <= 1:
        return 0
    catalog = read_catalog(lake)
    files = [f for f in files if f.exists()]  # read_catalog may have quarantined some
    name = f"{COMPACTED_PREFIX}{datetime.now(UTC):%Y%m%dT%H%M%S}-{uuid.uuid4().hex[:8]}.parquet"
    staged = lake.stage(SERIES_TABLE, None, catalog_table(catalog), name)
    lake.replace([staged], files)
    return len(files)


def compact(
    lake: Lake,
    *,
    wal_root: Path,
    days: Iterable[date] | None = None,
    validate: bool = True,
    force: bool = False,
    max_future_seconds: int = 600,
    progress: Callable[[date], None] | None = None,
) -> list[CompactionResult]:
    """Compact every day (or the given days) that needs it, then the series catalog."""
    lake.recover()
    results: list[CompactionResult] = []
    for day in list(days) if days is not None else lake.partitions("samples"):
        result = compact_day(
            lake, day, wal_root=wal_root, validate=validate, force=force, max_future_seconds=max_future_seconds
        )
        if result is not None:
            results.append(result)
        if progress is not None:
            progress(day)
    compact_series(lake)
    return results


def rebuild_rollups(lake: Lake, *, wal_root: Path, days: Iterable[date] | None = None) -> list[CompactionResult]:
    """Rebuild every day's compacted file and rollups from its samples (``metrics reindex``)."""
    return compact(lake, wal_root=wal_root, days=days, validate=False, force=True)

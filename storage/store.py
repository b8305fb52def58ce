"""MetricStore: the lake, its writer and its query engine behind one synchronous object.

The async Python API (``metrics.system``), the CLI and (later) the HTTP API
and Prefect tasks all call these methods; nothing is implemented twice.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pyarrow as pa

from metrics.model import MetricDataPoint, Rejection, SampleBatch, prepare_frame, prepare_points
from metrics.pii import Pseudonymiser
from metrics.settings import Settings
from storage.compaction import CompactionResult, compact, rebuild_rollups
from storage.lake import Lake
from storage.query import QueryEngine
from storage.retention import RetentionResult, cleanup
from storage.writer import RecoveryReport, Writer

log = logging.getLogger(__name__)


@dataclass
class IngestResult:
    """Outcome of storing a batch: rows stored, rows refused (index and reason), time taken."""

    stored: int = 0
    rejected: list[Rejection] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def samples_per_second(self) -> float:
        """Stored rows per second of wall time."""
        return self.stored / self.seconds if self.seconds > 0 else 0.0

    def merge(self, other: IngestResult) -> None:
        """Add another result (its rejection indices already count over the whole input)."""
        self.stored += other.stored
        self.rejected.extend(other.rejected)
        self.seconds += other.seconds

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "stored": self.stored,
            "rejected": len(self.rejected),
            "errors": [r.to_dict() for r in self.rejected],
            "seconds": round(self.seconds, 6),
        }


class MetricStore:
    """Synchronous access to one lake: ingest, query, maintenance."""

    def __init__(self, settings: Settings, *, read_only: bool = False) -> None:
        self.settings = settings
        self.lake = Lake(
            settings.lake_dir, compression=settings.compression, compression_level=settings.compression_level
        )
        self.engine = QueryEngine(
            self.lake, database_file=settings.duckdb_path, cache_bytes=settings.query_cache_mb * 2**20
        )
        self.read_only = read_only
        self.pii = Pseudonymiser.from_settings(settings)  # PII tag values never reach the WAL or the lake
        self._writer: Writer | None = None
        self._writer_lock = threading.Lock()
        self.recovery = RecoveryReport()

    # -- life cycle ------------------------------------------------------------
    def open(self, *, background_flush: bool = True) -> MetricStore:
        """Recover interrupted swaps and dead writers' WALs; start this process's writer (once)."""
        self.lake.recover()
        if not self.read_only:
            self._open_writer(background_flush)
        return self

    def _open_writer(self, background_flush: bool = True) -> Writer:
        with self._writer_lock:
            if self._writer is None:
                # Each commit may give a table its first file: keep the views (and metrics.duckdb) current.
                writer = Writer(self.settings, self.lake, on_commit=self.engine.refresh_views)
                self.recovery = writer.open(background_flush=background_flush)
                self._writer = writer
            return self._writer

    def close(self) -> None:
        """Flush and release the writer; close the engine."""
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.engine.close()

    def __enter__(self) -> MetricStore:
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def writer(self) -> Writer:
        """This process's writer (opened lazily for read-only stores that start writing)."""
        return self._writer if self._writer is not None else self._open_writer()

    # -- ingest ------------------------------------------------------------------
    def _limits(self) -> dict[str, Any]:
        """Validation limits for a batch arriving now."""
        return {
            "now": datetime.now(UTC),
            "retention_days": self.settings.retention_days,
            "max_future_seconds": self.settings.max_future_seconds,
        }

    def store_batch(self, batch: SampleBatch, started: float) -> IngestResult:
        """Pseudonymise PII tags of a validated batch and write it; the result carries its rejections."""
        stored = self.writer.write(self.pii.batch(batch))
        return IngestResult(stored=stored, rejected=batch.rejected, seconds=time.perf_counter() - started)

    def ingest_points(self, points: Iterable[MetricDataPoint | Mapping[str, Any]]) -> IngestResult:
        """Validate and store points (objects or the spec's JSON dicts)."""
        started = time.perf_counter()
        return self.store_batch(prepare_points(points, **self._limits()), started)

    def ingest_frame(self, frame: pl.DataFrame | pa.Table) -> IngestResult:
        """Validate and store a columnar frame (the bulk path)."""
        started = time.perf_counter()
        return self.store_batch(prepare_frame(frame, **self._limits()), started)

    def ingest_file(self, path: Path, progress: Callable[[int], None] | None = None) -> IngestResult:
        """Read, validate and store one file (CSV, Parquet, NDJSON or the spec's JSON batch)."""
        from metrics.files import read_file

        result = IngestResult()
        for batch in read_file(path, **self._limits()):
            started = time.perf_counter()
            part = self.store_batch(batch, started)
            result.merge(part)
            if progress is not None:
                progress(batch.stored + len(batch.rejected))
        return result

    def flush(self) -> int:
        """Write buffered rows to Parquet now; return how many."""
        return self._writer.flush() if self._writer is not None else 0

    # -- queries -----------------------------------------------------------------
    def _read_your_writes(self) -> None:
        if self._writer is not None and self._writer.buffered_rows:
            self._writer.flush()

    def query_metrics(
        self,
        pattern: str = "*",
        start: datetime | None = None,
        end: datetime | None = None,
        tags: Mapping[str, str | Sequence[str]] | None = None,
        **options: Any,
    ) -> pl.DataFrame:
        """Raw samples; see :meth:`QueryEngine.query_metrics`."""
        self._read_your_writes()
        return self.engine.query_metrics(pattern, start, end, self.pii.filters(tags), **options)

    def query_aggregated(
        self,
        pattern: str = "*",
        aggregation: str = "avg",
        interval: str | int | timedelta = "1m",
        start: datetime | None = None,
        end: datetime | None = None,
        group_by: Sequence[str] | None = None,
        tags: Mapping[str, str | Sequence[str]] | None = None,
        **options: Any,
    ) -> pl.DataFrame:
        """Bucketed aggregates; see :meth:`QueryEngine.query_aggregated`."""
        self._read_your_writes()
        tags = self.pii.filters(tags)
        return self.engine.query_aggregated(pattern, aggregation, interval, start, end, group_by, tags, **options)

    def aggregated_sql(
        self,
        pattern: str = "*",
        aggregation: str = "avg",
        interval: str | int | timedelta = "1m",
        start: datetime | None = None,
        end: datetime | None = None,
        group_by: Sequence[str] | None = None,
        tags: Mapping[str, str | Sequence[str]] | None = None,
        **options: Any,
    ) -> str | None:
        """The SQL of :meth:`query_aggregated`, over the views, ready for :meth:`sql`; see ``QueryEngine``."""
        self._read_your_writes()
        tags = self.pii.filters(tags)
        return self.engine.aggregated_sql(pattern, aggregation, interval, start, end, group_by, tags, **options)

    def latest(self, pattern: str = "*", tags: Mapping[str, str | Sequence[str]] | None = None) -> pl.DataFrame:
        """Latest sample per series; see :meth:`QueryEngine.latest`."""
        self._read_your_writes()
        return self.engine.latest(pattern, self.pii.filters(tags))

    def sql(self, text: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """Ad-hoc SQL over the lake views."""
        self._read_your_writes()
        return self.engine.sql(text, params)

    # -- maintenance --------------------------------------------------------------
    def compact(
        self,
        days: Iterable[date] | None = None,
        *,
        validate: bool = True,
        progress: Callable[[date], None] | None = None,
    ) -> list[CompactionResult]:
        """Compact day partitions, validate them and rebuild their rollups."""
        self.flush()
        results = compact(
            self.lake,
            wal_root=self.settings.wal_dir,
            days=days,
            validate=validate,
            max_future_seconds=self.settings.max_future_seconds,
            progress=progress,
        )
        self.engine.refresh_views(force=True)
        return results

    def reindex(self, days: Iterable[date] | None = None) -> list[CompactionResult]:
        """Rebuild compacted files and rollups of every day from its samples."""
        self.flush()
        results = rebuild_rollups(self.lake, wal_root=self.settings.wal_dir, days=days)
        self.engine.refresh_views(force=True)
        return results

    def cleanup(self, older_than: timedelta | None = None, *, dry_run: bool = False) -> RetentionResult:
        """Drop (or archive, when ``METRICS_ARCHIVE`` is on) partitions older than retention."""
        age = older_than or timedelta(days=self.settings.retention_days)
        archive = self.settings.archive_dir if self.settings.archive else None
        result = cleanup(self.lake, age, archive_dir=archive, dry_run=dry_run)
        self.lake.clean_temporary()
        self.engine.refresh_views(force=True)
        return result

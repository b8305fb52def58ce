"""The async Python API: ``get_metrics_system("lake")`` and :class:`MetricsSystem`.

Example::

    from metrics import get_metrics_system, MetricDataPoint, MetricType
    metrics = get_metrics_system("lake")
    await metrics.start()
    await metrics.collect_metric(MetricDataPoint(metric_id="crypto.key.access_count", value=42.0,
        metric_type=MetricType.COUNTER, tags={"key_type": "encryption", "algorithm": "AES-256"}))
    df = await metrics.query_metrics(metric_pattern="crypto.key.*", start_time=datetime.now() - timedelta(hours=1))

Every method runs the blocking work in a worker thread, so the event loop
stays responsive. Naive datetimes are local time and are converted to UTC.
Results are polars DataFrames.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

import polars as pl
import pyarrow as pa

from metrics.errors import MetricsError, UnsupportedStorageError, ValidationError
from metrics.model import MetricDataPoint
from metrics.settings import STORAGE_TYPES, Settings
from storage.compaction import CompactionResult
from storage.retention import RetentionResult
from storage.store import IngestResult, MetricStore

if TYPE_CHECKING:
    from metrics.monitor import HealthMonitor
    from tasks.collect.keys import KeyCollectionSummary


class MetricsSystem:
    """Collect and query metrics asynchronously over one lake."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._store: MetricStore | None = None
        self._health_monitor: HealthMonitor | None = None

    @property
    def store(self) -> MetricStore:
        """The synchronous store (raises when the system is not started)."""
        if self._store is None:
            raise MetricsError("the metrics system is not started; call `await metrics.start()` first")
        return self._store

    async def start(self) -> None:
        """Open the lake: replay dead writers' WALs, start the timed flusher."""
        if self._store is None:
            store = MetricStore(self.settings)
            await asyncio.to_thread(store.open)
            self._store = store

    async def stop(self) -> None:
        """Flush what is buffered and release the lake."""
        if self._store is not None:
            store, self._store = self._store, None
            await asyncio.to_thread(store.close)

    async def __aenter__(self) -> MetricsSystem:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def collect_metric(self, point: MetricDataPoint) -> IngestResult:
        """Store one sample durably; the result says whether it was rejected and why."""
        return await asyncio.to_thread(self.store.ingest_points, [point])

    async def collect_metrics(
        self, batch: Iterable[MetricDataPoint | Mapping[str, Any]] | Mapping[str, Any]
    ) -> IngestResult:
        """Store many samples: points, the spec's dicts, or ``{"metrics": [...]}``; bad rows are reported."""
        if isinstance(batch, Mapping):
            items = batch.get("metrics")
            if not isinstance(items, list):
                raise ValidationError('metrics: expected {"metrics": [...]} with a list of samples')
            batch = items
        return await asyncio.to_thread(self.store.ingest_points, list(batch))

    async def collect_frame(self, frame: pl.DataFrame | pa.Table) -> IngestResult:
        """Store a columnar frame (``ts``, ``metric``, ``value``, optional ``type``, ``tags`` or tag columns)."""
        return await asyncio.to_thread(self.store.ingest_frame, frame)

    async def query_metrics(
        self,
        metric_pattern: str = "*",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        tags: Mapping[str, str | Sequence[str]] | None = None,
        limit: int | None = None,
    ) -> pl.DataFrame:
        """Raw samples of metrics matching a glob in [start_time, end_time) (default: the last hour)."""
        return await asyncio.to_thread(
            self.store.query_metrics, metric_pattern, start_time, end_time, tags, limit=limit
        )

    async def query_aggregated(
        self,
        metric_pattern: str = "*",
        aggregation: str = "avg",
        interval: str | timedelta = "1m",
        start_time: datetime | None = None,
        end_time: datetime | None = None,
        group_by: Sequence[str] | None = None,
        tags: Mapping[str, str | Sequence[str]] | None = None,
    ) -> pl.DataFrame:
        """Bucketed aggregates (avg, min, max, sum, count, last, rate, increase, p50, p95, p99)."""
        return await asyncio.to_thread(
            self.store.query_aggregated, metric_pattern, aggregation, interval, start_time, end_time, group_by, tags
        )

    async def latest(
        self, metric_pattern: str = "*", tags: Mapping[str, str | Sequence[str]] | None = None
    ) -> pl.DataFrame:
        """The latest sample of every matching series."""
        return await asyncio.to_thread(self.store.latest, metric_pattern, tags)

    async def sql(self, text: str, params: Sequence[Any] | None = None) -> pl.DataFrame:
        """Ad-hoc DuckDB SQL over the lake views (``samples``, ``series``, ``rollups_1m``, ``rollups_1h``)."""
        return await asyncio.to_thread(self.store.sql, text, params)

    async def compact(self) -> list[CompactionResult]:
        """Compact, validate and roll up every day that needs it."""
        return await asyncio.to_thread(self.store.compact)

    async def cleanup(self, older_than: timedelta | None = None) -> RetentionResult:
        """Apply retention (default ``METRICS_RETENTION_DAYS``)."""
        return await asyncio.to_thread(self.store.cleanup, older_than)

    async def detect_anomalies(
        self, metric_pattern: str = "*", sensitivity: float = 0.5, window_hours: float = 24.0
    ) -> pl.DataFrame:
        """Anomalies of metrics matching a glob in the last ``window_hours`` (new rows are scored first).

        ``sensitivity`` 0 reports only the surest (score ≥ 0.9), 1 everything the detectors doubt (≥ 0.5).
        """
        from metrics.analysis import detect_anomalies

        return await asyncio.to_thread(
            detect_anomalies, self.settings, self.store, metric_pattern, sensitivity, window_hours, refresh=True
        )

    async def forecast(self, metric_pattern: str = "*", horizon: int = 48) -> pl.DataFrame:
        """Forecasts of the series matching a glob, ``horizon`` hours ahead, with 80 % and 95 % intervals.

        The series are forecast now (and the ``forecasts`` table and ``forecast.*`` gauges written).
        """
        from metrics.analysis import forecast

        return await asyncio.to_thread(forecast, self.settings, self.store, metric_pattern, horizon, refresh=True)

    async def find_correlations(
        self,
        primary_metric: str,
        secondary_patterns: Sequence[str],
        correlation_threshold: float = 0.7,
        window_hours: float = 24.0,
    ) -> list[dict[str, Any]]:
        """Series correlated with ``primary_metric`` (Pearson and Spearman at the best lag), strongest first."""
        from metrics.analysis import find_correlations

        found = await asyncio.to_thread(
            find_correlations,
            self.store,
            primary_metric,
            list(secondary_patterns),
            correlation_threshold,
            window_hours=window_hours,
        )
        return [item.to_dict() for item in found]

    @property
    def health_monitor(self) -> HealthMonitor:
        """The health monitor of this system's data directory (``await health_monitor.add_target(target)``)."""
        if self._health_monitor is None:
            from metrics.monitor import HealthMonitor

            self._health_monitor = HealthMonitor(self.settings)
        return self._health_monitor

    async def collect_key_events(self, source: str, paths: Sequence[str | Path] | None = None) -> KeyCollectionSummary:
        """Read new CloudTrail (``cloudtrail``) or Vault audit (``vault``) events once; each is counted once."""
        from tasks.collect.keys import collect_key_events

        return await asyncio.to_thread(collect_key_events, self.settings, source, paths)

    async def keys_report(self, open_only: bool = False) -> dict[str, Any]:
        """The key inventory and its policy violations (the compliance view), as a JSON-ready dict."""
        from tasks.keys.report import keys_report

        report = await asyncio.to_thread(keys_report, self.settings, open_only=open_only)
        return report.to_dict()


def get_metrics_system(storage: str = "lake", settings: Settings | None = None, **overrides: Any) -> MetricsSystem:
    """Create a metrics system on the given storage (only ``"lake"`` exists); settings come from the environment."""
    if storage not in STORAGE_TYPES:
        raise UnsupportedStorageError(f"storage {storage!r} is not supported; available: {', '.join(STORAGE_TYPES)}")
    resolved = settings or Settings.from_env(None, **overrides)
    return MetricsSystem(resolved)

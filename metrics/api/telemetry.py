"""The API's telemetry: Prometheus metrics for ``/metrics`` and self-metrics for the lake, from one ASGI middleware.

:func:`install_telemetry` gives an app a :class:`Telemetry` (``app.state.telemetry``)
and puts :class:`TelemetryMiddleware` outermost. Per request the middleware
records the route *template* (``/api/v1/query``, never the raw path: label
cardinality stays bounded; unknown paths are ``unmatched``), the method, the
status and the duration, plus what an ingest route left in ``request.state``
(``ingested``, ``rejected_reasons``, ``stale_dropped``). It also follows the
app's lifespan: after startup it hooks the store's writer (flush durations,
rows and bytes written) and starts the self-metrics thread; at shutdown it
stores the last self-metrics before the store closes.

Registries: one :class:`~prometheus_client.CollectorRegistry` per app. With
``PROMETHEUS_MULTIPROC_DIR`` set (several uvicorn workers), prometheus_client
keeps values in files there and ``/metrics`` sums every worker through a
:class:`~prometheus_client.multiprocess.MultiProcessCollector`; the directory
must exist, be empty when the server starts, and be in the environment before
the workers start (prometheus_client reads it at import). Gauges then use the
``livesum`` / ``livemax`` modes, and a worker's files are marked dead when it stops.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from dataclasses import fields
from typing import Any

from fastapi import FastAPI
from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    values,
)
from prometheus_client import multiprocess as prometheus_multiprocess
from prometheus_client.exposition import choose_encoder
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metrics.api.selfmetrics import SelfMetrics
from metrics.errors import ConfigError
from metrics.settings import ENV_NAMES, Settings
from storage.store import MetricStore
from storage.writer import Writer, WriterStats

log = logging.getLogger(__name__)

UNMATCHED = "unmatched"
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})  # others are "other": bounded labels
QUERY_ROUTES = frozenset({"/api/v1/query"})
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
FLUSH_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# Reasons a row is refused, by the prefix the model's messages start with -> the bounded ``reason`` label.
REASON_CATEGORIES = (
    ("metric:", "metric_name"),
    ("tags:", "tags"),
    ("labels:", "tags"),
    ("type:", "type"),
    ("value: NaN", "value_nan"),
    ("value: infinite", "value_infinite"),
    ("value:", "value"),
    ("timestamp: more than", "timestamp_future"),
    ("timestamp: older", "timestamp_too_old"),
    ("timestamp:", "timestamp"),
)
OTHER_REASON = "other"
_COUNTED_STATS = ("rows_written", "files_written", "bytes_written")


def reason_category(reason: str) -> str:
    """The bounded category of a free-text rejection reason (the ``reason`` label)."""
    for prefix, category in REASON_CATEGORIES:
        if reason.startswith(prefix):
            return category
    return OTHER_REASON


def multiprocess_enabled(settings: Settings) -> bool:
    """Whether ``/metrics`` aggregates worker processes; refuses a directory prometheus_client does not use."""
    folder = settings.prometheus_multiproc_dir
    if folder is None:
        return False
    name = ENV_NAMES["prometheus_multiproc_dir"]
    if not folder.is_dir():
        raise ConfigError(f"{name}={str(folder)!r}: no such directory (create it, empty, before starting the API)")
    if values.ValueClass is values.MutexValue:
        raise ConfigError(f"{name}={str(folder)!r}: must be in the environment before the process starts")
    return True


class ObservedWriterStats(WriterStats):
    """Writer statistics that report each flush and each written row, file and byte to Prometheus as they happen."""

    def __setattr__(self, name: str, value: Any) -> None:
        telemetry: Telemetry | None = self.__dict__.get("_telemetry")
        if telemetry is not None:
            if name == "last_flush_seconds":
                telemetry.flush_seconds.observe(value)
            elif name in _COUNTED_STATS:
                delta = value - self.__dict__.get(name, 0)
                if delta > 0:
                    telemetry.writer_totals[name].inc(delta)
        object.__setattr__(self, name, value)


class Telemetry:
    """The Prometheus metrics of one app, the self-metrics accumulator, and how both meet the store."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.multiprocess = multiprocess_enabled(settings)
        self.registry = CollectorRegistry(auto_describe=True)
        # Multiprocess: values live in files; the registry reads every worker's files at scrape time.
        target = None if self.multiprocess else self.registry
        if self.multiprocess:
            prometheus_multiprocess.MultiProcessCollector(self.registry, path=str(settings.prometheus_multiproc_dir))
        else:
            for collector in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
                self.registry.register(collector)
        self.requests = Counter(
            "metrics_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=target,
        )
        self.duration = Histogram(
            "metrics_http_request_duration_seconds",
            "HTTP request duration by route template and method",
            ["route", "method"],
            buckets=LATENCY_BUCKETS,
            registry=target,
        )
        self.query_duration = Histogram(
            "metrics_query_duration_seconds",
            "Query request duration (GET and POST /api/v1/query)",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=target,
        )
        self.ingested = Counter(
            "metrics_ingested_samples",
            "Samples accepted (durable in the WAL) by ingest route",
            ["route"],
            registry=target,
        )
        self.rejected = Counter(
            "metrics_rejected_samples",
            "Samples refused by ingest route and reason category",
            ["route", "reason"],
            registry=target,
        )
        self.stale_dropped = Counter(
            "metrics_remote_write_stale_markers",
            "Prometheus staleness markers dropped by remote-write",
            registry=target,
        )
        self.wal_bytes = Gauge(
            "metrics_wal_bytes",
            "Bytes in the current write-ahead log segment (summed over live workers)",
            registry=target,
            multiprocess_mode="livesum",
        )
        self.buffered_rows = Gauge(
            "metrics_writer_buffered_rows",
            "Rows acknowledged (in the WAL) but not yet in Parquet",
            registry=target,
            multiprocess_mode="livesum",
        )
        self.last_flush = Gauge(
            "metrics_writer_last_flush_seconds",
            "Duration of the latest flush to Parquet (slowest live worker)",
            registry=target,
            multiprocess_mode="livemax",
        )
        self.flush_seconds = Histogram(
            "metrics_writer_flush_seconds",
            "Duration of each flush (one commit of a WAL segment) to Parquet",
            buckets=FLUSH_BUCKETS,
            registry=target,
        )
        self.cache_hits = Counter(
            "metrics_query_cache_hits", "Long-range query parts answered from the rollup cache", registry=target
        )
        self.cache_misses = Counter(
            "metrics_query_cache_misses", "Long-range query parts read from Parquet (then kept)", registry=target
        )
        self.cache_bytes = Gauge(
            "metrics_query_cache_bytes",
            "Bytes the rollup cache keeps (summed over live workers)",
            registry=target,
            multiprocess_mode="livesum",
        )
        self._cache_seen = (0, 0)
        self._cache_lock = threading.Lock()
        self.writer_totals = {
            name: Counter(
                f"metrics_writer_{name}", f"Parquet {name.split('_')[0]} written by the writer", registry=target
            )
            for name in _COUNTED_STATS
        }
        self.self_metrics = SelfMetrics(settings.self_metrics_interval)
        self.store: MetricStore | None = None
        self._reasons: dict[str, str] = {}
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}

    # -- per request ---------------------------------------------------------------
    def observe(self, route: str, method: str, status: int, seconds: float, state: dict[str, Any] | None) -> None:
        """Record one finished request (and what an ingest route reported in its state)."""
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:
            children = (self.requests.labels(route, method, str(status)), self.duration.labels(route, method))
            if len(self._children) < 4096:
                self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)
        if route in QUERY_ROUTES:
            self.query_duration.labels(method).observe(seconds)
        ingested = state.get("ingested") if state else None
        self.self_metrics.record(route, method, status, seconds, ingested or 0)
        if state:
            if ingested:
                self.ingested.labels(route).inc(ingested)
            reasons = state.get("rejected_reasons")
            if reasons:
                self.count_rejections(route, reasons)
            stale = state.get("stale_dropped")
            if stale:
                self.stale_dropped.inc(stale)
            if ingested or reasons:
                self.sample_writer()

    def count_rejections(self, route: str, reasons: list[str]) -> None:
        """Count refused rows by category."""
        counts: dict[str, int] = {}
        memo = self._reasons
        for reason in reasons:
            category = memo.get(reason)
            if category is None:
                category = reason_category(reason)
                if len(memo) < 4096:
                    memo[reason] = category
            counts[category] = counts.get(category, 0) + 1
        for category, count in counts.items():
            self.rejected.labels(route, category).inc(count)

    # -- the store -----------------------------------------------------------------------
    def attach(self, store: MetricStore) -> None:
        """After startup: watch the store's writer, start storing self-metrics."""
        self.store = store
        if not store.read_only:
            hook_writer(store.writer, self)
        self.self_metrics.start(store)

    def detach(self) -> None:
        """Before the store closes: store the last self-metrics; mark this worker's gauges dead (multiprocess)."""
        self.self_metrics.stop()
        self.store = None
        if self.multiprocess:
            prometheus_multiprocess.mark_process_dead(os.getpid(), str(self.settings.prometheus_multiproc_dir))

    def sample_writer(self) -> None:
        """Set the writer gauges (WAL size, buffered rows, last flush) from the store."""
        store = self.store
        if store is None or store.read_only:
            return
        writer = store.writer
        self.wal_bytes.set(writer.wal_bytes())
        self.buffered_rows.set(writer.buffered_rows)
        self.last_flush.set(writer.stats.last_flush_seconds)

    def sample_cache(self) -> None:
        """Bring the query-cache series up to the store's cache (its counts since the store opened)."""
        store = self.store
        if store is None:
            return
        with self._cache_lock:  # scrapes run in a thread pool: each count is added once
            stats = store.engine.rollup_cache.stats()
            hits, misses = self._cache_seen
            self.cache_hits.inc(max(0, stats.hits - hits))
            self.cache_misses.inc(max(0, stats.misses - misses))
            self._cache_seen = (stats.hits, stats.misses)
            self.cache_bytes.set(stats.bytes)

    def exposition(self, accept: str | None) -> tuple[bytes, str]:
        """The registry in the format the scraper asked for (OpenMetrics or text), and its content type."""
        self.sample_writer()
        self.sample_cache()
        encoder, content_type = choose_encoder(accept or "")
        return encoder(self.registry), content_type


def hook_writer(writer: Writer, telemetry: Telemetry) -> None:
    """Replace the writer's stats with ones that report flushes as they happen (same values, same type)."""
    current = writer.stats
    observed = ObservedWriterStats(**{f.name: getattr(current, f.name) for f in fields(WriterStats)})
    object.__setattr__(observed, "_telemetry", telemetry)
    writer.stats = observed


def route_of(scope: Scope) -> str:
    """The matched route's template (FastAPI leaves the route in the scope), else ``unmatched``."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else UNMATCHED


class TelemetryMiddleware:
    """Pure ASGI middleware: times every request and follows the lifespan (no per-request Request objects)."""

    def __init__(self, app: ASGIApp, telemetry: Telemetry, owner: FastAPI) -> None:
        """Wrap ``app``.

        Args:
            app: the ASGI application inside.
            telemetry: where figures go.
            owner: the FastAPI app whose ``state.store`` the lifespan opens.
        """
        self.app = app
        self.telemetry = telemetry
        self.owner = owner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Record an HTTP request after it ends; start and stop with the lifespan."""
        if scope["type"] == "http":
            await self._http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        status = 500

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            method = scope.get("method", "GET")
            self.telemetry.observe(
                route_of(scope),
                method if method in METHODS else "other",
                status,
                time.perf_counter() - started,
                scope.get("state"),
            )

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        telemetry = self.telemetry

        async def on_receive() -> Message:
            message = await receive()
            if message["type"] == "lifespan.shutdown":  # before the app's lifespan closes the store
                await run_in_threadpool(telemetry.detach)
            return message

        async def on_send(message: Message) -> None:
            if message["type"] == "lifespan.startup.complete":
                store = getattr(self.owner.state, "store", None)
                if store is not None:
                    telemetry.attach(store)
            await send(message)

        await self.app(scope, on_receive, on_send)


def install_telemetry(app: FastAPI, settings: Settings) -> Telemetry:
    """Give ``app`` its telemetry (``app.state.telemetry``) and the middleware, outermost; call once, last."""
    telemetry = Telemetry(settings)
    app.state.telemetry = telemetry
    app.add_middleware(TelemetryMiddleware, telemetry=telemetry, owner=app)
    return telemetry

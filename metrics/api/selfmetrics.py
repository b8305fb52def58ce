"""The API's own figures in the lake: ``application.api.*`` per route, every ``METRICS_SELF_METRICS_INTERVAL`` seconds.

Each request adds to an in-process accumulator (a dict update under a lock);
a background thread turns it into a handful of samples per route and stores
them through the store's writer once per interval — never one write per
request. Per route template and method (tags ``route``, ``method``, ``host``),
over the interval just ended:

- ``application.api.response_time``: mean seconds per request (gauge; only when there were requests);
- ``application.api.request_rate``: requests per second (0 for a route seen before but idle);
- ``application.api.error_rate``: share of responses that were server errors (5xx), 0 to 1;
- ``application.api.client_error_rate``: share of client errors (4xx: bad input, missing credentials, limits);
- ``application.api.auth_failures``: requests refused for missing or bad credentials (401) since the worker
  started — a counter per worker (tags ``host``, ``worker``), for the predefined "authentication failures" rule;
- ``application.ingest.samples``: samples the worker accepted since it started (a counter, tags ``host``,
  ``worker``): ``rate`` of it is the ingest rate the Performance dashboard shows.

``error_rate`` counts only 5xx because a 4xx is the client's mistake and says
nothing about the API's health; ``client_error_rate`` keeps those visible.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from storage.store import MetricStore

log = logging.getLogger(__name__)

RESPONSE_TIME = "application.api.response_time"
REQUEST_RATE = "application.api.request_rate"
ERROR_RATE = "application.api.error_rate"
CLIENT_ERROR_RATE = "application.api.client_error_rate"
AUTH_FAILURES = "application.api.auth_failures"
INGESTED = "application.ingest.samples"
MAX_ROUTES = 1024  # (route, method) pairs tracked; route templates keep this small


@dataclass
class RouteFigures:
    """What one route saw during the current interval."""

    requests: int = 0
    server_errors: int = 0
    client_errors: int = 0
    seconds: float = 0.0


class SelfMetrics:
    """Accumulates per-route request figures and stores them as samples once per interval. Thread-safe."""

    def __init__(
        self,
        interval: float,
        host: str | None = None,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.interval = interval
        self.host = host or socket.gethostname()
        self._clock = clock
        self._wall = wall
        self._figures: dict[tuple[str, str], RouteFigures] = {}
        self._since = clock()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._store: MetricStore | None = None
        self._auth_failures = 0  # cumulative: a counter, as rate() and increase() expect
        self._ingested = 0  # cumulative too
        self.samples_written = 0

    def record(self, route: str, method: str, status: int, seconds: float, ingested: int = 0) -> None:
        """Add one finished request and the samples it stored (called by the telemetry middleware)."""
        key = (route, method)
        with self._lock:
            self._ingested += ingested
            figures = self._figures.get(key)
            if figures is None:
                if len(self._figures) >= MAX_ROUTES:
                    return
                figures = self._figures[key] = RouteFigures()
            figures.requests += 1
            figures.seconds += seconds
            if status >= 500:
                figures.server_errors += 1
            elif status >= 400:
                figures.client_errors += 1
                if status == 401:
                    self._auth_failures += 1

    def collect(self) -> list[dict[str, Any]]:
        """The samples of the interval that ends now (the spec's point dicts), and start the next interval."""
        with self._lock:
            now = self._clock()
            elapsed = max(now - self._since, 1e-9)
            self._since = now
            figures = self._figures
            self._figures = {key: RouteFigures() for key in figures}  # routes seen stay known (rate 0 when idle)
            refused, ingested = self._auth_failures, self._ingested
        stamp = self._wall().isoformat()
        points: list[dict[str, Any]] = []
        if figures:
            worker = {"host": self.host, "worker": str(os.getpid())}
            for metric, total in ((AUTH_FAILURES, refused), (INGESTED, ingested)):
                points.append(
                    {
                        "metric_id": metric,
                        "value": float(total),
                        "metric_type": "counter",
                        "timestamp": stamp,
                        "tags": worker,
                    }
                )
        for (route, method), seen in figures.items():
            tags = {"route": route, "method": method, "host": self.host}

            def point(metric: str, value: float, tags: dict[str, str] = tags) -> dict[str, Any]:
                return {"metric_id": metric, "value": value, "metric_type": "gauge", "timestamp": stamp, "tags": tags}

            points.append(point(REQUEST_RATE, seen.requests / elapsed))
            if seen.requests:
                points.append(point(RESPONSE_TIME, seen.seconds / seen.requests))
                points.append(point(ERROR_RATE, seen.server_errors / seen.requests))
                points.append(point(CLIENT_ERROR_RATE, seen.client_errors / seen.requests))
        return points

    def flush(self, store: MetricStore) -> int:
        """Store the interval's samples through the store's writer; return how many were stored."""
        points = self.collect()
        if not points:
            return 0
        result = store.ingest_points(points)
        for rejection in result.rejected:  # a route template the model refuses as a tag value: say so once per flush
            log.warning("self-metric sample refused: %s", rejection.reason)
            break
        self.samples_written += result.stored
        return result.stored

    # -- the background thread ---------------------------------------------------
    def start(self, store: MetricStore) -> None:
        """Flush into ``store`` every interval from a background thread."""
        self._store = store
        self._stop.clear()
        with self._lock:
            self._since = self._clock()
            self._figures = {}
        self._thread = threading.Thread(target=self._loop, name="self-metrics", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the thread and store what the last, partial interval saw."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None
        if self._store is not None:
            try:
                self.flush(self._store)
            except Exception:
                log.exception("storing the last self-metrics failed")
            self._store = None

    def _loop(self) -> None:
        while not self._stop.wait(self.interval):
            store = self._store
            if store is None:
                return
            try:
                self.flush(store)
            except Exception:  # the next interval tries again; a failing lake must not stop the API
                log.exception("storing self-metrics failed")

"""Health monitoring: HTTP(S) and TCP checks of the services around the keys, stored as ``health.target.*``.

A :class:`MonitoringTarget` (the spec's fields) comes from the configuration
(``monitoring.health_targets`` in ``main.json``, ``METRICS_HEALTH_TARGETS``)
or is registered at run time (:class:`HealthTargets`, SQLite under
``data/state/``; the Python API's ``await health_monitor.add_target(target)``).
Each check ends in one of three states:

``up``
    answered in time: the expected status code (HTTP), or a connection (TCP),
    within ``expected_response_time_ms``;
``degraded``
    answered, but slowly or with another status code;
``down``
    refused, unreachable, failed TLS, or no answer within the timeout
    (``collector.health_timeout``, at most the check interval).

Per target and check, tagged ``target_id``, ``target``, ``target_type`` and
``instance`` (``host:port``): ``health.target.up`` (1 only when up),
``health.target.degraded`` (1 when degraded), ``health.target.response_time_ms``
(when it answered) and ``health.target.status_code`` (HTTP, when it answered).
"""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import urlsplit

import httpx
import polars as pl
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from metrics.errors import ConfigError, ValidationError
from metrics.settings import Settings, check_health_target
from storage.statedb import state_transaction
from storage.store import MetricStore

TARGETS_FILE = "health_targets.sqlite"
_SCHEMA = "CREATE TABLE IF NOT EXISTS targets (target_id TEXT PRIMARY KEY, target TEXT NOT NULL);"
UP, DEGRADED, DOWN = "up", "degraded", "down"
MAX_PARALLEL = 32
USER_AGENT = "metrics-system-health/1"
# target_type -> how it is checked (an endpoint's own scheme, http:// https:// tcp://, wins).
CHECKS = {
    "http": "http",
    "https": "https",
    "tcp": "tcp",
    "api": "http",
    "service": "http",
    "web": "http",
    "vault": "https",
    "kms": "https",
    "database": "tcp",
    "cache": "tcp",
    "queue": "tcp",
    "hsm": "tcp",
}


@dataclass
class MonitoringTarget:
    """A service to check, as the original spec defines it.

    Args:
        target_id: unique id (the ``target_id`` tag).
        name: a readable name (the ``target`` tag).
        target_type: ``http``, ``https``, ``tcp``, or a kind of service checked as one of them:
            api, service, web (HTTP); vault, kms (HTTPS); database, cache, queue, hsm (TCP).
        endpoint: host name or address, or a URL (``https://vault.internal``) whose scheme decides the check.
        port: TCP port.
        health_endpoint: HTTP path to request (default ``/health``).
        expected_status_code: the HTTP status of a healthy answer (default 200).
        expected_response_time_ms: slower answers are ``degraded`` (default 1000).
    """

    target_id: str
    name: str
    target_type: str
    endpoint: str
    port: int
    health_endpoint: str = "/health"
    expected_status_code: int = 200
    expected_response_time_ms: float = 1000.0

    def __post_init__(self) -> None:
        for name in ("target_id", "name", "endpoint"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value.strip():
                raise ValidationError(f"{name}: expected non-empty text, got {value!r}")
        if not isinstance(self.target_type, str) or self.target_type.lower() not in CHECKS:
            raise ValidationError(f"target_type: {self.target_type!r} is not one of {', '.join(CHECKS)}")
        self.target_type = self.target_type.lower()
        if isinstance(self.port, bool) or not isinstance(self.port, int) or not 1 <= self.port <= 65_535:
            raise ValidationError(f"port: {self.port!r} is not a TCP port (1-65535)")
        code = self.expected_status_code
        if isinstance(code, bool) or not isinstance(code, int) or not 100 <= code <= 599:
            raise ValidationError(f"expected_status_code: {code!r} is not an HTTP status (100-599)")
        limit = self.expected_response_time_ms
        if isinstance(limit, bool) or not isinstance(limit, int | float) or not limit > 0:
            raise ValidationError(f"expected_response_time_ms: {limit!r} must be a number > 0")
        self.expected_response_time_ms = float(limit)
        self.health_endpoint = self.health_endpoint or "/"
        if not self.health_endpoint.startswith("/"):
            self.health_endpoint = "/" + self.health_endpoint
        scheme = urlsplit(self.endpoint).scheme if "://" in self.endpoint else ""
        if scheme and scheme not in ("http", "https", "tcp"):
            raise ValidationError(f"endpoint: {self.endpoint!r} has scheme {scheme!r}; allowed: http, https, tcp")
        if not self.host:
            raise ValidationError(f"endpoint: {self.endpoint!r} names no host")

    @classmethod
    def from_dict(cls, item: Mapping[str, Any], where: str = "health target") -> MonitoringTarget:
        """A target from its JSON form (the config file's shape); errors name ``where`` and the field."""
        try:
            return cls(**check_health_target(item, where))
        except ValidationError as exc:
            raise ConfigError(f"{where}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @property
    def check(self) -> str:
        """``http``, ``https`` or ``tcp``."""
        if "://" in self.endpoint:
            return urlsplit(self.endpoint).scheme
        return CHECKS[self.target_type]

    @property
    def host(self) -> str:
        """The host the endpoint names."""
        if "://" in self.endpoint:
            return urlsplit(self.endpoint).hostname or ""
        return self.endpoint.strip().strip("[]")

    @property
    def instance(self) -> str:
        """``host:port``, as Prometheus names an instance."""
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        """What an HTTP check requests."""
        base = urlsplit(self.endpoint).path.rstrip("/") if "://" in self.endpoint else ""
        return f"{self.check}://{self.instance}{base}{self.health_endpoint}"

    def tags(self) -> dict[str, str]:
        """The tags of this target's metrics."""
        return {
            "target_id": self.target_id,
            "target": self.name,
            "target_type": self.target_type,
            "instance": self.instance,
        }


@dataclass
class HealthResult:
    """One check: the state, how long the answer took, the HTTP status, and why it is not up."""

    target_id: str
    name: str
    check: str
    state: str
    response_time_ms: float | None = None
    status_code: int | None = None
    error: str | None = None
    checked_at_us: int = 0

    def row(self) -> dict[str, Any]:
        """One row of a table (the flow's artifact, the CLI)."""
        return {
            "target": self.target_id,
            "check": self.check,
            "state": self.state,
            "response_ms": None if self.response_time_ms is None else round(self.response_time_ms, 1),
            "status": self.status_code,
            "error": self.error or "",
        }


def check_http(target: MonitoringTarget, timeout: float, client: httpx.Client) -> HealthResult:
    """GET the target's health endpoint; the whole answer must arrive within ``timeout``."""
    result = HealthResult(target.target_id, target.name, target.check, DOWN, checked_at_us=time.time_ns() // 1_000)
    started = time.perf_counter()
    try:
        response = client.get(target.url, timeout=timeout, headers={"User-Agent": USER_AGENT})
    except httpx.TimeoutException:
        result.error = f"no answer within {timeout:g} s"
        return result
    except (httpx.HTTPError, httpx.InvalidURL, ssl.SSLError, UnicodeError) as exc:
        result.error = f"{type(exc).__name__}: {exc}".strip().rstrip(":")
        return result
    result.response_time_ms = (time.perf_counter() - started) * 1000
    result.status_code = response.status_code
    result.state = _judge(target, result)
    if response.status_code != target.expected_status_code:
        result.error = f"status {response.status_code}, expected {target.expected_status_code}"
    return result


def check_tcp(target: MonitoringTarget, timeout: float) -> HealthResult:
    """Open (and close) a TCP connection to the target within ``timeout``."""
    result = HealthResult(target.target_id, target.name, "tcp", DOWN, checked_at_us=time.time_ns() // 1_000)
    started = time.perf_counter()
    try:
        with socket.create_connection((target.host, target.port), timeout=timeout):
            result.response_time_ms = (time.perf_counter() - started) * 1000
    except TimeoutError:
        result.error = f"no connection within {timeout:g} s"
        return result
    except OSError as exc:
        result.error = exc.strerror or str(exc)
        return result
    result.state = _judge(target, result)
    return result


def _judge(target: MonitoringTarget, result: HealthResult) -> str:
    """``up`` when the answer is the expected one and in time, else ``degraded``; sets the reason."""
    assert result.response_time_ms is not None
    slow = result.response_time_ms > target.expected_response_time_ms
    wrong = result.status_code is not None and result.status_code != target.expected_status_code
    if slow:
        result.error = (
            f"answered in {result.response_time_ms:.0f} ms, expected within {target.expected_response_time_ms:g}"
        )
    return DEGRADED if slow or wrong else UP


def check_targets(targets: Sequence[MonitoringTarget], timeout: float) -> list[HealthResult]:
    """Check every target at once (at most :data:`MAX_PARALLEL` in flight), results in target order."""
    if not targets:
        return []
    with (
        httpx.Client(follow_redirects=False, trust_env=False) as client,
        ThreadPoolExecutor(max_workers=min(MAX_PARALLEL, len(targets)), thread_name_prefix="health") as pool,
    ):
        return list(
            pool.map(lambda t: check_tcp(t, timeout) if t.check == "tcp" else check_http(t, timeout, client), targets)
        )


def health_frame(targets: Sequence[MonitoringTarget], results: Sequence[HealthResult]) -> pl.DataFrame:
    """The samples of a round of checks (the module's four metrics)."""
    rows: list[tuple[str, int, float, str]] = []
    for target, result in zip(targets, results, strict=True):
        tags = json.dumps(target.tags(), sort_keys=True)
        stamp = result.checked_at_us
        rows.append(("health.target.up", stamp, float(result.state == UP), tags))
        rows.append(("health.target.degraded", stamp, float(result.state == DEGRADED), tags))
        if result.response_time_ms is not None:
            rows.append(("health.target.response_time_ms", stamp, round(result.response_time_ms, 3), tags))
        if result.status_code is not None:
            rows.append(("health.target.status_code", stamp, float(result.status_code), tags))
    return pl.DataFrame(
        rows, schema={"metric": pl.String, "ts": pl.Int64, "value": pl.Float64, "tags": pl.String}, orient="row"
    ).with_columns(pl.col("ts").cast(pl.Datetime("us", "UTC")), pl.lit("gauge").alias("type"))


class HealthTargets:
    """Targets registered at run time, in ``<state_dir>/health_targets.sqlite``, plus the configured ones."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = settings.state_dir / TARGETS_FILE

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return state_transaction(self.path, _SCHEMA, "health targets")

    def configured(self) -> list[MonitoringTarget]:
        """The targets of the configuration (``monitoring.health_targets``)."""
        return [
            MonitoringTarget.from_dict(item, f"health_targets[{i}]")
            for i, item in enumerate(self.settings.health_targets)
        ]

    def registered(self) -> list[MonitoringTarget]:
        """The targets added at run time."""
        with self._connect() as connection:
            rows = connection.execute("SELECT target FROM targets ORDER BY target_id").fetchall()
        return [MonitoringTarget(**json.loads(text)) for (text,) in rows]

    def all(self) -> list[MonitoringTarget]:
        """Configured targets, then registered ones (a registered target replaces a configured one of its id)."""
        registered = {target.target_id: target for target in self.registered()}
        configured = [target for target in self.configured() if target.target_id not in registered]
        return [*configured, *registered.values()]

    def add(self, target: MonitoringTarget) -> None:
        """Register (or replace) a target."""
        text = json.dumps(target.to_dict(), sort_keys=True)
        with self._connect() as connection:
            connection.execute(
                "INSERT OR REPLACE INTO targets (target_id, target) VALUES (?, ?)", (target.target_id, text)
            )

    def remove(self, target_id: str) -> bool:
        """Forget a registered target; False when none has that id."""
        with self._connect() as connection:
            return connection.execute("DELETE FROM targets WHERE target_id = ?", (target_id,)).rowcount > 0


@dataclass
class HealthSummary:
    """One round of checks: results per target, samples stored and rejected."""

    results: list[HealthResult] = field(default_factory=list)
    stored: int = 0
    rejected: int = 0

    @property
    def counts(self) -> dict[str, int]:
        """Targets per state."""
        return {state: sum(r.state == state for r in self.results) for state in (UP, DEGRADED, DOWN)}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {
            "results": [asdict(r) for r in self.results],
            "stored": self.stored,
            "rejected": self.rejected,
            **self.counts,
        }


def run_health_checks(settings: Settings, targets: Sequence[MonitoringTarget] | None = None) -> HealthSummary:
    """Check ``targets`` (default: configured and registered) once and store the results."""
    chosen = list(HealthTargets(settings).all() if targets is None else targets)
    summary = HealthSummary(results=check_targets(chosen, min(settings.health_timeout, settings.health_interval)))
    if not chosen:
        return summary
    store = MetricStore(settings).open(background_flush=False)
    try:
        result = store.ingest_frame(health_frame(chosen, summary.results))
    finally:
        store.close()
    summary.stored, summary.rejected = result.stored, len(result.rejected)
    return summary


@task(name="check-health", retries=1, retry_delay_seconds=exponential_backoff(backoff_factor=2), cache_policy=NO_CACHE)
def check_health_task(settings: Settings) -> HealthSummary:
    """Prefect task: one round of health checks (a failing target is data, not an error: only storing retries)."""
    return run_health_checks(settings)

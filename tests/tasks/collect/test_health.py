"""Health checks against a real loopback HTTP server and TCP ports: up, slow, wrong, refused, silent."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from metrics.errors import ConfigError, ValidationError
from metrics.settings import Settings
from storage.store import MetricStore
from tasks.collect.health import (
    DEGRADED,
    DOWN,
    UP,
    HealthTargets,
    MonitoringTarget,
    check_targets,
    run_health_checks,
)
from tests.exposition import ExpositionServer, Route
from tests.servers import free_port

TIMEOUT = 1.5  # far above the slow route, far below the silent one: a loaded machine stays on the right side


@pytest.fixture
def server() -> Iterator[ExpositionServer]:
    routes = {
        "/health": Route(b"ok\n"),
        "/slow": Route(b"ok\n", delay=0.3),
        "/broken": Route(b"oops\n", status=503),
        "/silent": Route(b"late\n", delay=4.0),  # longer than the timeout
    }
    with ExpositionServer(routes) as running:
        yield running


def http_target(port: int, path: str, **fields: Any) -> MonitoringTarget:
    return MonitoringTarget(path.strip("/"), f"svc {path}", "http", "127.0.0.1", port, path, **fields)


def test_http_checks(server: ExpositionServer) -> None:
    targets = [
        http_target(server.port, "/health"),
        http_target(server.port, "/slow", expected_response_time_ms=100),
        http_target(server.port, "/broken"),
        http_target(server.port, "/broken", expected_status_code=503),
        http_target(server.port, "/silent"),
    ]
    results = check_targets(targets, TIMEOUT)
    assert [r.state for r in results] == [UP, DEGRADED, DEGRADED, UP, DOWN]
    assert results[0].status_code == 200
    assert results[0].error is None
    assert results[1].error is not None and "expected within 100" in results[1].error  # noqa: PT018
    assert results[2].error == "status 503, expected 200"
    assert results[4].error == f"no answer within {TIMEOUT:g} s"
    assert results[4].status_code is None
    assert results[4].response_time_ms is None


def test_a_refused_connection_is_down() -> None:
    port = free_port()  # nothing listens there
    (http,) = check_targets([http_target(port, "/health")], TIMEOUT)
    (tcp,) = check_targets([MonitoringTarget("db", "db", "tcp", "127.0.0.1", port)], TIMEOUT)
    assert (http.state, tcp.state) == (DOWN, DOWN)
    assert "ConnectError" in (http.error or "")
    assert tcp.error == "Connection refused"


def test_tcp_checks() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        fast = MonitoringTarget("db", "Postgres", "database", "127.0.0.1", port)
        strict = MonitoringTarget("hsm", "HSM", "hsm", "127.0.0.1", port, expected_response_time_ms=0.000001)
        results = check_targets([fast, strict], TIMEOUT)
    assert [r.state for r in results] == [UP, DEGRADED]
    assert results[0].check == "tcp"
    assert results[0].response_time_ms is not None


@pytest.mark.parametrize(
    ("fields", "check", "url"),
    [
        ({"target_type": "http", "endpoint": "api.local", "port": 80}, "http", "http://api.local:80/health"),
        (
            {"target_type": "vault", "endpoint": "vault.local", "port": 8200, "health_endpoint": "v1/sys/health"},
            "https",
            "https://vault.local:8200/v1/sys/health",
        ),
        (
            {"target_type": "service", "endpoint": "https://kms.local/base", "port": 443},
            "https",
            "https://kms.local:443/base/health",
        ),
        ({"target_type": "database", "endpoint": "db.local", "port": 5432}, "tcp", "tcp://db.local:5432/health"),
        (
            {"target_type": "http", "endpoint": "tcp://cache.local", "port": 6379},
            "tcp",
            "tcp://cache.local:6379/health",
        ),
    ],
)
def test_how_a_target_is_checked(fields: dict[str, Any], check: str, url: str) -> None:
    target = MonitoringTarget(target_id="t", name="t", **fields)
    assert (target.check, target.url) == (check, url)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"target_type": "ftp"}, "target_type: 'ftp' is not one of"),
        ({"port": 0}, "port: 0 is not a TCP port"),
        ({"expected_status_code": 99}, "expected_status_code: 99 is not an HTTP status"),
        ({"expected_response_time_ms": 0}, "expected_response_time_ms: 0 must be a number > 0"),
        ({"endpoint": "ftp://x"}, "endpoint: 'ftp://x' has scheme 'ftp'"),
        ({"name": ""}, "name: expected non-empty text"),
    ],
)
def test_invalid_targets_are_refused_with_the_field(fields: dict[str, Any], message: str) -> None:
    base: dict[str, Any] = {"target_id": "t", "name": "t", "target_type": "http", "endpoint": "h", "port": 80}
    with pytest.raises(ValidationError, match=message):
        MonitoringTarget(**{**base, **fields})


def test_targets_from_config_and_registered_ones(settings: Settings, server: ExpositionServer) -> None:
    configured = {
        "target_id": "api",
        "name": "API",
        "target_type": "http",
        "endpoint": "127.0.0.1",
        "port": server.port,
    }
    with_config = replace(settings, health_targets=(configured,))
    registry = HealthTargets(with_config)
    registry.add(http_target(server.port, "/broken"))
    registry.add(MonitoringTarget("api", "API again", "http", "127.0.0.1", server.port, "/slow"))
    assert [t.name for t in registry.all()] == ["API again", "svc /broken"]  # a registered id replaces the config's
    assert registry.remove("api") is True
    assert registry.remove("api") is False
    assert [t.target_id for t in registry.all()] == ["api", "broken"]
    with pytest.raises(ConfigError, match=r"health_targets\[0\]: required field 'port' is missing"):
        MonitoringTarget.from_dict({k: v for k, v in configured.items() if k != "port"}, "health_targets[0]")


def test_results_are_stored_as_health_metrics(settings: Settings, server: ExpositionServer) -> None:
    fast = replace(settings, health_timeout=TIMEOUT)
    gone = replace(http_target(free_port(), "/health"), target_id="gone")
    targets = [http_target(server.port, "/health"), http_target(server.port, "/broken"), gone]
    summary = run_health_checks(fast, targets)
    assert summary.counts == {UP: 1, DEGRADED: 1, DOWN: 1}
    assert summary.stored == 2 + 3 + 3 + 2  # up and degraded for all; time and status for those that answered
    store = MetricStore(fast, read_only=True)
    try:
        now = datetime.now(UTC)
        frame = store.query_metrics("health.target.*", now - timedelta(minutes=5), now + timedelta(minutes=1))
    finally:
        store.close()
    by = {(row["metric"], json.loads(row["tags"])["target_id"]): row["value"] for row in frame.iter_rows(named=True)}
    assert by["health.target.up", "health"] == 1.0
    assert by["health.target.up", "broken"] == 0.0
    assert by["health.target.degraded", "broken"] == 1.0
    assert by["health.target.status_code", "broken"] == 503.0
    assert by["health.target.up", "gone"] == 0.0
    assert ("health.target.status_code", "gone") not in by
    tags = json.loads(frame.filter(frame["metric"] == "health.target.up")["tags"][0])
    assert set(tags) == {"target_id", "target", "target_type", "instance"}


def test_no_targets_no_samples(settings: Settings) -> None:
    summary = run_health_checks(settings)
    assert (summary.results, summary.stored) == ([], 0)

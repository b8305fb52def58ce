"""The ``collect-key-audit-logs`` and ``health-checks`` flows under Prefect's test server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from flows.collect_keys import collect_key_audit_logs
from flows.health import health_checks
from metrics.auditgen import cloudtrail_records, vault_entries, write_cloudtrail, write_vault
from metrics.settings import Settings
from tests.exposition import ExpositionServer, Route
from tests.flows.conftest import RunFlow, dashboard_links

NOW = datetime.now(UTC)


def test_key_audit_logs_are_collected_once_per_source(
    flow_settings: Settings, run_flow: RunFlow, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    write_cloudtrail(tmp_path / "ct", cloudtrail_records(NOW - timedelta(minutes=30), NOW, events=80, seed=4))
    write_vault(tmp_path / "vault" / "audit.log", vault_entries(NOW - timedelta(minutes=30), NOW, requests=40))
    monkeypatch.setenv("METRICS_CLOUDTRAIL_PATHS", str(tmp_path / "ct"))
    monkeypatch.setenv("METRICS_VAULT_AUDIT_PATHS", str(tmp_path / "vault"))
    summary, artifacts = run_flow(collect_key_audit_logs)
    assert set(summary) == {"cloudtrail", "vault"}
    assert summary["cloudtrail"]["events"] > 80
    assert summary["vault"]["events"] > 40
    (artifact,) = artifacts
    assert artifact.key == "collect-key-audit-logs"
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert [row["source"] for row in rows] == ["cloudtrail", "vault"]
    violations = summary["cloudtrail"]["violations"] + summary["vault"]["violations"]
    assert violations > 0  # the generated logs break the policies: the security dashboard is linked too
    assert dashboard_links(artifact) == {"keys": {}, "security": {}}
    again, artifacts = run_flow(collect_key_audit_logs)
    assert again["cloudtrail"]["events"] == again["vault"]["events"] == 0
    still = again["cloudtrail"]["violations"] + again["vault"]["violations"]
    assert dashboard_links(artifacts[0]) == ({"keys": {}, "security": {}} if still else {"keys": {}})


def test_without_paths_nothing_is_read(flow_settings: Settings, run_flow: RunFlow) -> None:
    summary, artifacts = run_flow(collect_key_audit_logs)
    assert summary == {}
    assert "No key audit logs configured" in (artifacts[0].description or "")
    assert dashboard_links(artifacts[0]) == {"keys": {}}


@pytest.fixture
def service() -> Iterator[ExpositionServer]:
    with ExpositionServer({"/health": Route(b"ok\n"), "/down": Route(b"no\n", status=500)}) as server:
        yield server


def test_health_checks_report_each_target(
    flow_settings: Settings, run_flow: RunFlow, service: ExpositionServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    targets = [
        {"target_id": "api", "name": "API", "target_type": "http", "endpoint": "127.0.0.1", "port": service.port},
        {
            "target_id": "bad",
            "name": "Bad",
            "target_type": "http",
            "endpoint": "127.0.0.1",
            "port": service.port,
            "health_endpoint": "/down",
        },
    ]
    monkeypatch.setenv("METRICS_HEALTH_TARGETS", json.dumps(targets))
    summary, artifacts = run_flow(health_checks)
    assert (summary["up"], summary["degraded"], summary["down"]) == (1, 1, 0)
    assert summary["stored"] == 8
    (artifact,) = artifacts
    assert artifact.key == "health-checks"
    assert "up: 1 · degraded: 1 · down: 0" in (artifact.description or "")
    assert dashboard_links(artifact) == {"performance": {}}


def test_health_checks_without_targets(flow_settings: Settings, run_flow: RunFlow) -> None:
    summary, artifacts = run_flow(health_checks)
    assert summary["results"] == []
    assert "No health targets" in (artifacts[0].description or "")
    assert dashboard_links(artifacts[0]) == {"performance": {}}

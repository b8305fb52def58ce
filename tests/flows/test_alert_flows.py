"""The ``evaluate-alerts`` flow under Prefect's test server: a breaching sample reaches a Slack webhook once."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from flows.evaluate_alerts import evaluate_alerts
from metrics.settings import Settings
from storage.store import MetricStore
from tests.alerts.channels import Receiver
from tests.flows.conftest import RunFlow, dashboard_links

RULES = """
rules:
  - rule_id: high_cpu_usage
    name: High CPU usage
    metric_pattern: system\\.cpu\\.usage_total
    threshold_value: 90
    duration_seconds: 60
    priority: HIGH
"""


def test_evaluate_alerts_notifies_slack_once(
    flow_settings: Settings, run_flow: RunFlow, receiver: Receiver, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "rules.yaml").write_text(RULES)
    (tmp_path / "routing.yaml").write_text("route: {group_wait: 0}\n")
    (tmp_path / "none.yaml").write_text("actions: {}\n")
    monkeypatch.setenv("METRICS_ALERT_RULES_FILE", str(tmp_path / "rules.yaml"))
    monkeypatch.setenv("METRICS_ALERT_ROUTING_FILE", str(tmp_path / "routing.yaml"))
    monkeypatch.setenv("METRICS_REMEDIATION_FILE", str(tmp_path / "none.yaml"))
    monkeypatch.setenv("SLACK_WEBHOOK_URL", f"{receiver.url}/services/T/B/token")
    now = datetime.now(UTC) - timedelta(seconds=5)
    frame = pl.DataFrame(
        {
            "ts": [now - timedelta(seconds=30 * i) for i in range(6)],
            "metric": "system.cpu.usage_total",
            "value": 97.0,
            "host": "web-1",
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )
    store = MetricStore(Settings.from_env()).open(background_flush=False)
    try:
        store.ingest_frame(frame)
        store.flush()
    finally:
        store.close()
    result, artifacts = run_flow(evaluate_alerts)
    assert (result["firing"], result["notifications"], result["dispatch"]["delivered"]) == (1, 1, 1)
    assert artifacts[0].key == "evaluate-alerts"
    assert "firing: 1" in (artifacts[0].description or "")
    assert dashboard_links(artifacts[0]) == {"alerts": {}}
    (request,) = receiver.wait_for(1)
    text = json.dumps(request.json())
    assert "High CPU usage" in text
    assert "web-1" in text
    again, _ = run_flow(evaluate_alerts)
    assert (again["firing"], again["notifications"], again["dispatch"]["delivered"]) == (1, 0, 0)
    assert len(receiver.requests) == 1

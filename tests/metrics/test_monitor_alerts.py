"""The spec's async alerting API: AlertEngine's add_rule, rules, evaluate, alerts, acknowledge, remove_rule."""

from __future__ import annotations

import asyncio
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from alerts.engine import CycleResult
from alerts.rules import RuleError
from metrics.api.audit import close_audit_logs, read_audit
from metrics.errors import ConflictError, NotFoundError
from metrics.monitor import AlertEngine, AlertPriority, AlertRule
from metrics.settings import Settings
from storage.store import MetricStore

RULE = AlertRule(
    rule_id="high_cpu",
    name="High CPU",
    description="CPU above 90 %",
    metric_pattern=r"facade\.cpu",
    threshold_value=90,
    comparison=">",
    duration_seconds=0,
    priority=AlertPriority.HIGH,
)


@pytest.fixture
def engine_settings(settings: Settings, tmp_path: Path) -> Settings:
    rules = tmp_path / "alert-rules.yaml"
    rules.write_text("rules:\n  - {rule_id: from_file, name: From the file, metric_pattern: 'nothing'}\n")
    routing = tmp_path / "alert-routing.yaml"
    routing.write_text("route: {group_wait: 0, group_interval: 0}\n")
    remediation = tmp_path / "remediation.yaml"
    remediation.write_text("actions: {}\n")
    return replace(settings, alert_rules_file=rules, alert_routing_file=routing, remediation_file=remediation)


def write_cpu(settings: Settings, value: float) -> None:
    now = datetime.now(UTC)
    frame = pl.DataFrame(
        {
            "ts": [now - timedelta(seconds=20 * i) for i in range(5, 0, -1)],
            "metric": "facade.cpu",
            "value": value,
            "type": "gauge",
            "host": "db-1",
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )
    store = MetricStore(settings).open(background_flush=False)
    try:
        assert store.ingest_frame(frame).stored == 5
        store.flush()
    finally:
        store.close()


def test_add_rule_evaluate_list_acknowledge_and_remove(engine_settings: Settings) -> None:
    write_cpu(engine_settings, 97.0)

    async def scenario() -> dict[str, Any]:
        alert_engine = AlertEngine(engine_settings)
        await alert_engine.add_rule(RULE)
        rules = await alert_engine.rules()
        cycle = await alert_engine.evaluate()
        firing = await alert_engine.alerts("firing")
        pending = await alert_engine.alerts("pending")
        await alert_engine.acknowledge(firing[0]["alert_id"], "alice")
        acknowledged = await alert_engine.alerts()
        await alert_engine.remove_rule("high_cpu")
        with pytest.raises(NotFoundError, match="'high_cpu' does not exist"):
            await alert_engine.remove_rule("high_cpu")
        with pytest.raises(ConflictError, match="from_file"):
            await alert_engine.remove_rule("from_file")
        after = await alert_engine.rules()
        again = await alert_engine.evaluate(dispatch=False)
        return {
            "rules": rules,
            "cycle": cycle,
            "firing": firing,
            "pending": pending,
            "acknowledged": acknowledged,
            "after": after,
            "again": again,
            "left": await alert_engine.alerts(),
        }

    found = asyncio.run(scenario())
    assert {rule.rule_id for rule in found["rules"]} == {"from_file", "high_cpu"}
    assert next(rule for rule in found["rules"] if rule.rule_id == "high_cpu") == RULE
    cycle = found["cycle"]
    assert isinstance(cycle, CycleResult)
    assert (cycle.rules, cycle.firing, cycle.pending) == (2, 1, 0)
    assert [(c["rule_id"], c["previous"], c["status"]) for c in cycle.changes] == [("high_cpu", "inactive", "firing")]
    [alert] = found["firing"]
    assert (alert["rule_id"], alert["status"], alert["priority"], alert["value"]) == (
        "high_cpu",
        "firing",
        "HIGH",
        97.0,
    )
    assert alert["series"] == "facade.cpu host=db-1"
    assert found["pending"] == []
    assert [a["acknowledged_by"] for a in found["acknowledged"]] == ["alice"]
    assert [rule.rule_id for rule in found["after"]] == ["from_file"]
    assert (found["again"].rules, found["again"].firing) == (1, 0)
    assert found["left"] == []  # the deleted rule's alert went with it

    close_audit_logs()
    entries = [(e["action"], e["outcome"], e["detail"]) for e in read_audit(engine_settings.state_dir / "audit.log")]
    assert entries == [
        ("rules.add", "ok", {"rule_ids": ["high_cpu"]}),
        ("alerts.acknowledge", "ok", {"alert_id": alert["alert_id"], "by": "alice"}),
        ("rules.delete", "ok", {"rule_id": "high_cpu"}),
    ]


def test_acknowledging_an_alert_that_is_not_firing_is_refused(engine_settings: Settings) -> None:
    async def scenario() -> None:
        alert_engine = AlertEngine(engine_settings)
        with pytest.raises(NotFoundError, match="is not active"):
            await alert_engine.acknowledge("0123456789abcdef", "alice")

    asyncio.run(scenario())
    close_audit_logs()
    log = engine_settings.state_dir / "audit.log"
    assert not log.exists() or read_audit(log) == []  # nothing was acknowledged


def test_an_invalid_rule_is_refused_when_built() -> None:
    with pytest.raises(RuleError, match="comparison"):
        AlertRule(rule_id="x", name="X", comparison="=>")

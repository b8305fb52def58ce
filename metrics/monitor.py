r"""Monitoring names of the original spec: ``MonitoringTarget``, ``HealthMonitor``, ``AlertRule``, ``AlertEngine``.

Example::

    from metrics.monitor import HealthMonitor, MonitoringTarget
    health_monitor = HealthMonitor()
    await health_monitor.add_target(MonitoringTarget(
        target_id="vault", name="Vault", target_type="https", endpoint="vault.internal", port=8200,
        health_endpoint="/v1/sys/health", expected_status_code=200, expected_response_time_ms=500))
    results = await health_monitor.check()

Targets added here are kept under ``data/state/``, so the scheduled
``health-checks`` flow (every ``collector.health_interval``, 30 s) checks them
too. The blocking work runs in a worker thread.

Alert rules likewise::

    from metrics.monitor import AlertEngine, AlertPriority, AlertRule
    alert_engine = AlertEngine()
    await alert_engine.add_rule(AlertRule(
        rule_id="high_cpu", name="High CPU", description="CPU above 90 % for 5 min",
        metric_pattern=r"system\.cpu\.usage_total", threshold_value=90, comparison=">",
        duration_seconds=300, priority=AlertPriority.HIGH))
    cycle = await alert_engine.evaluate()      # what the evaluate-alerts flow runs every minute
    firing = await alert_engine.alerts("firing")
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

from alerts.engine import CycleResult
from alerts.rules import AlertPriority, AlertRule
from metrics.api.audit import audit_admin
from metrics.settings import Settings
from tasks.collect.health import HealthResult, HealthSummary, HealthTargets, MonitoringTarget, run_health_checks

__all__ = ["AlertEngine", "AlertPriority", "AlertRule", "HealthMonitor", "HealthResult", "MonitoringTarget"]


class HealthMonitor:
    """Register health targets and check them, asynchronously.

    Args:
        settings: whose data directory keeps the targets (default: from the environment).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings.from_env()
        self._targets = HealthTargets(self.settings)

    async def add_target(self, target: MonitoringTarget) -> None:
        """Check ``target`` from now on (replacing a target of the same id); the change is audited."""
        await asyncio.to_thread(self._targets.add, target)
        await asyncio.to_thread(audit_admin, self.settings, "health_targets.add", "ok", target.to_dict())

    async def remove_target(self, target_id: str) -> bool:
        """Stop checking a target added at run time; False when there is none of that id."""
        removed = await asyncio.to_thread(self._targets.remove, target_id)
        outcome = "ok" if removed else "not_found"
        await asyncio.to_thread(audit_admin, self.settings, "health_targets.remove", outcome, {"target_id": target_id})
        return removed

    async def targets(self) -> list[MonitoringTarget]:
        """Every target checked: configured ones and those added at run time."""
        return await asyncio.to_thread(self._targets.all)

    async def check(self, targets: list[MonitoringTarget] | None = None) -> HealthSummary:
        """Check the targets (default: all) once now and store ``health.target.*``; returns each result."""
        return await asyncio.to_thread(run_health_checks, self.settings, targets)


class AlertEngine:
    """Manage alert rules and alerts, and run evaluation cycles, asynchronously; every change is audited.

    Args:
        settings: whose data directory keeps rules and alert states (default: from the environment).
    """

    def __init__(self, settings: Settings | None = None) -> None:
        from alerts.store import AlertStore

        self.settings = settings or Settings.from_env()
        self._store = AlertStore(self.settings)

    async def add_rule(self, rule: AlertRule) -> None:
        """Evaluate ``rule`` from the next cycle on (replacing a rule of the same id added this way)."""
        await asyncio.to_thread(self._store.add_rules, [rule])
        await asyncio.to_thread(audit_admin, self.settings, "rules.add", "ok", {"rule_ids": [rule.rule_id]})

    async def remove_rule(self, rule_id: str) -> None:
        """Delete a rule added through the API (``NotFoundError`` when unknown)."""
        await asyncio.to_thread(self._store.delete_rule, rule_id)
        await asyncio.to_thread(audit_admin, self.settings, "rules.delete", "ok", {"rule_id": rule_id})

    async def rules(self) -> list[AlertRule]:
        """Every rule: the rules file's and those added at run time."""
        return [item.rule for item in await asyncio.to_thread(self._store.rules)]

    async def evaluate(self, *, dispatch: bool = True) -> CycleResult:
        """Run one evaluation cycle now (and send the due notifications)."""
        from tasks.alerts import dispatch_notifications, evaluate_alerts

        cycle = await asyncio.to_thread(evaluate_alerts, self.settings)
        if dispatch:
            await asyncio.to_thread(dispatch_notifications, self.settings)
        return cycle

    async def alerts(self, status: str | None = None) -> list[dict[str, Any]]:
        """Alerts pending, firing or recently resolved (only ``status`` when given), most urgent first."""
        frame = await asyncio.to_thread(self._store.listing, status)
        return frame.to_dicts()

    async def acknowledge(self, alert_id: str, by: str) -> None:
        """Acknowledge a firing alert: no repeats or escalation until it resolves."""
        now_us = int(datetime.now(UTC).timestamp() * 1_000_000)
        await asyncio.to_thread(self._store.acknowledge, alert_id, by, now_us)
        await asyncio.to_thread(
            audit_admin, self.settings, "alerts.acknowledge", "ok", {"alert_id": alert_id, "by": by}
        )

"""Monitoring names of the original spec: ``MonitoringTarget`` and the async ``HealthMonitor``.

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
"""

from __future__ import annotations

import asyncio

from metrics.api.audit import audit_admin
from metrics.settings import Settings
from tasks.collect.health import HealthResult, HealthSummary, HealthTargets, MonitoringTarget, run_health_checks

__all__ = ["HealthMonitor", "HealthResult", "MonitoringTarget"]


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

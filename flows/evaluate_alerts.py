"""Flow ``evaluate-alerts`` (every minute): evaluate every rule, send the due notifications; artifact: the changes."""

from __future__ import annotations

from typing import Any

from prefect import flow

from metrics.settings import get_settings
from tasks.alerts import dispatch_notifications_task, evaluate_alerts_task
from tasks.artifacts import dashboard_link, publish_table

ARTIFACT = "evaluate-alerts"


@flow(name="evaluate-alerts", log_prints=True)
def evaluate_alerts() -> dict[str, Any]:
    """One cycle: rules judged on the newest samples, state changes notified through the outbox."""
    settings = get_settings()
    cycle = evaluate_alerts_task(settings)
    sent = dispatch_notifications_task(settings)
    figures = {
        "rules": cycle.rules,
        "firing": cycle.firing,
        "pending": cycle.pending,
        "notifications sent": sent.delivered,
        "waiting": sent.waiting,
        "dashboard": dashboard_link(settings, "alerts"),
    }
    changes = [
        {key: change[key] for key in ("rule_id", "series", "previous", "status", "priority", "value")}
        for change in cycle.changes[:50]
    ]
    publish_table(ARTIFACT, changes, "Alert changes", figures)
    for change in cycle.changes[:10]:
        print(f"{change['rule_id']} {change['series']}: {change['previous']} -> {change['status']}")
    return {**cycle.to_dict(), "dispatch": sent.to_dict()}

"""Prefect tasks of alerting: one evaluation cycle, and one dispatch of the outbox.

Evaluation retries once (it reads the lake, and a cycle is idempotent: the
same data gives the same verdict and the outbox ignores a notification it
already holds); dispatch does not retry as a task — the outbox itself retries
each failed notification with backoff, across runs.
"""

from __future__ import annotations

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from alerts.engine import AlertEvaluator, CycleResult
from alerts.notify import notifiers_from_settings
from alerts.outbox import DispatchResult, Outbox
from alerts.remediate import Remediator
from alerts.store import AlertStore
from metrics.settings import Settings
from storage.store import MetricStore

DISPATCH_WAIT_SECONDS = 35.0  # longest a run waits for notifications falling due (the default group_wait is 30 s)


def evaluate_alerts(settings: Settings) -> CycleResult:
    """Run one evaluation cycle over the lake of ``settings`` (remediation as configured)."""
    alerts = AlertStore(settings)
    store = MetricStore(settings).open(background_flush=False)
    try:
        return AlertEvaluator(settings, store, alerts=alerts, remediate=Remediator(settings, alerts)).evaluate()
    finally:
        store.close()


def dispatch_notifications(settings: Settings, *, wait: float = 0.0) -> DispatchResult:
    """Send the outbox's due notifications through the configured channels, and those falling due within ``wait`` s."""
    outbox = Outbox(AlertStore(settings), notifiers_from_settings(settings))
    return outbox.dispatch_for(wait) if wait > 0 else outbox.dispatch()


@task(
    name="evaluate-alerts",
    retries=1,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    cache_policy=NO_CACHE,
)
def evaluate_alerts_task(settings: Settings) -> CycleResult:
    """Prefect task: one evaluation cycle (states, outbox, alert_events, remediation)."""
    return evaluate_alerts(settings)


@task(name="dispatch-notifications", cache_policy=NO_CACHE)
def dispatch_notifications_task(settings: Settings) -> DispatchResult:
    """Prefect task: send what is due, staying up to half the schedule interval for groups' waits to end."""
    return dispatch_notifications(settings, wait=min(settings.alert_interval / 2, DISPATCH_WAIT_SECONDS))

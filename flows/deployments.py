"""Every scheduled job of the system: one entry per flow, with its schedule from the settings.

A new job is one file in ``flows/`` plus one :class:`Job` line here (and the
matching entry in ``deployments/prefect.yaml``, which a test keeps in step).
``metrics deploy`` serves these deployments; nothing below ``flows/`` knows a
schedule.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from metrics.errors import ConfigError
from metrics.settings import Settings

if TYPE_CHECKING:
    from prefect import Flow
    from prefect.deployments.runner import RunnerDeployment

GROUPS = ("monitoring", "maintenance")


@dataclass(frozen=True)
class Job:
    """One scheduled flow.

    Args:
        name: the flow's and the deployment's name (as shown in the Prefect UI).
        entrypoint: ``path/to/file.py:function``, relative to the project root (Prefect's form).
        interval_setting: the :class:`Settings` field holding the interval in seconds.
        group: ``monitoring`` (collectors, switched by ``--enable-monitoring``) or ``maintenance``.
        description: one line for the UI.
    """

    name: str
    entrypoint: str
    interval_setting: str
    group: str
    description: str

    @property
    def module(self) -> str:
        """The importable module of the entrypoint (``flows.compact``)."""
        return self.entrypoint.split(":")[0].removesuffix(".py").replace("/", ".")

    @property
    def function(self) -> str:
        """The flow function's name in its module."""
        return self.entrypoint.split(":")[1]

    def interval(self, settings: Settings) -> timedelta:
        """How often the job runs under ``settings``."""
        return timedelta(seconds=float(getattr(settings, self.interval_setting)))

    def load(self) -> Flow[Any, Any]:
        """Import the flow object."""
        return getattr(importlib.import_module(self.module), self.function)


JOBS: tuple[Job, ...] = (
    Job(
        "collect-system-metrics",
        "flows/collect_system.py:collect_system_metrics",
        "system_interval",
        "monitoring",
        "CPU, memory, disk, network, load and processes of this host, with adaptive sampling.",
    ),
    Job(
        "scrape-targets",
        "flows/scrape.py:scrape_targets_flow",
        "scrape_interval",
        "monitoring",
        "Scrape the configured Prometheus targets and store their samples with up and scrape_duration_seconds.",
    ),
    Job(
        "collect-key-audit-logs",
        "flows/collect_keys.py:collect_key_audit_logs",
        "security_interval",
        "monitoring",
        "Read new AWS CloudTrail (KMS) and Vault audit events into crypto.key.* metrics, inventory and policy checks.",
    ),
    Job(
        "health-checks",
        "flows/health.py:health_checks",
        "health_interval",
        "monitoring",
        "Check every health target over HTTP(S) or TCP and store health.target.up, response time and status.",
    ),
    Job(
        "score-anomalies",
        "flows/score_anomalies.py:score_anomalies",
        "anomaly_interval",
        "monitoring",
        "Score every series' new rows for anomalies and write the anomalies table; artifact: the top anomalies.",
    ),
    Job(
        "train-models",
        "flows/train_models.py:train_models",
        "train_interval",
        "maintenance",
        "Fit an anomaly model per series with enough history and store it in the model registry.",
    ),
    Job(
        "forecast-capacity",
        "flows/forecast_capacity.py:forecast_capacity",
        "forecast_interval",
        "monitoring",
        "Forecast the configured gauges hourly into the forecasts table; capacity risks and forecast.* gauges.",
    ),
    Job(
        "evaluate-alerts",
        "flows/evaluate_alerts.py:evaluate_alerts",
        "alert_interval",
        "monitoring",
        "Evaluate every alert rule on the newest samples and send the due notifications (Slack, email, …).",
    ),
    Job(
        "compact-lake",
        "flows/compact.py:compact_lake",
        "compact_interval",
        "maintenance",
        "Merge each day's small files into one sorted file, validate it and rebuild its rollups.",
    ),
    Job(
        "retention-cleanup",
        "flows/retention.py:retention_cleanup",
        "retention_interval",
        "maintenance",
        "Drop (or archive) day partitions older than the retention period.",
    ),
    Job(
        "backup-lake",
        "flows/backup.py:backup_lake",
        "backup_interval",
        "maintenance",
        "Write a verified backup of the data directory and keep the newest backup_keep archives.",
    ),
)


def select_jobs(groups: Iterable[str] = GROUPS, names: Sequence[str] = ()) -> list[Job]:
    """The jobs of ``groups`` (or exactly ``names``); unknown names are refused with the known ones."""
    known = {job.name: job for job in JOBS}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ConfigError(f"unknown job {unknown[0]!r}; known jobs: {', '.join(known)}")
    if names:
        return [known[name] for name in names]
    wanted = set(groups)
    return [job for job in JOBS if job.group in wanted]


def runner_deployments(settings: Settings, jobs: Iterable[Job] = JOBS) -> list[RunnerDeployment]:
    """Prefect deployments of ``jobs`` with their schedules, ready for :func:`prefect.serve`."""
    deployments = []
    for job in jobs:
        deployment = job.load().to_deployment(
            name=job.name, interval=job.interval(settings), description=job.description, tags=["metrics", job.group]
        )
        assert not inspect.isawaitable(deployment)  # Prefect returns a coroutine only in async code
        deployments.append(deployment)
    return deployments

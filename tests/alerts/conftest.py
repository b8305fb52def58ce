"""Fixtures of alerting tests: settings whose rules file is the test's own, a lake writer for samples near now."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from alerts.notify import Notification
from alerts.routing import Route, Routing
from alerts.store import AlertStore
from metrics.settings import Settings
from storage.store import MetricStore
from tests.alerts.channels import (  # noqa: F401  (fixtures, for every test under tests/alerts)
    alertmanager_path,
    closed_url,
    make_notification,
    receiver,
    running_alertmanager,
    smtp_server,
    smtp_start,
    smtp_tls_server,
    smtps_server,
    tls_files,
)

WriteSeries = Callable[..., None]


class Recorder:
    """A notifier that keeps what it is sent, and can be told to fail."""

    def __init__(self, name: str = "slack") -> None:
        self.name = name
        self.sent: list[Notification] = []
        self.failing: Exception | None = None

    def send(self, notification: Notification) -> None:
        """Keep the notification (or raise the failure set)."""
        if self.failing is not None:
            raise self.failing
        self.sent.append(notification)


@pytest.fixture
def alert_settings(settings: Settings, tmp_path: Path) -> Settings:
    """Settings whose rules file is empty (tests add their rules) and whose routing is the default."""
    rules = tmp_path / "alert-rules.yaml"
    rules.write_text("rules: []\n")
    routing = tmp_path / "alert-routing.yaml"
    routing.write_text("route: {group_wait: 0, group_interval: 0}\n")
    (tmp_path / "none.yaml").write_text("actions: {}\n")
    # Samples up to a day ahead: cycles of a test step a controllable clock forward.
    return replace(
        settings,
        alert_rules_file=rules,
        alert_routing_file=routing,
        remediation_file=tmp_path / "none.yaml",
        max_future_seconds=86_400,
    )


@pytest.fixture
def alerts(alert_settings: Settings) -> AlertStore:
    """The alerting state of the test's data directory."""
    return AlertStore(alert_settings)


@pytest.fixture
def alert_store(alert_settings: Settings) -> Iterator[MetricStore]:
    """An open lake of the alert settings."""
    opened = MetricStore(alert_settings).open(background_flush=False)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def write_series(alert_store: MetricStore) -> WriteSeries:
    """Write one series' values at ``step`` seconds, the last at ``end``; flushed so readers see them."""

    def write(
        metric: str,
        values: Sequence[float],
        end: datetime,
        *,
        step: float = 30.0,
        kind: str = "gauge",
        **tags: str,
    ) -> None:
        stamps = [end - timedelta(seconds=step * (len(values) - 1 - i)) for i in range(len(values))]
        frame = pl.DataFrame(
            {"ts": stamps, "metric": metric, "value": [float(v) for v in values], "type": kind, **tags},
            schema_overrides={"ts": pl.Datetime("us", "UTC")},
        )
        result = alert_store.ingest_frame(frame)
        assert result.stored == len(values), result
        alert_store.flush()

    return write


def routing_to(*channels: str, **timing: Any) -> Routing:
    """A routing tree sending everything to ``channels`` with no group wait (unless ``timing`` says)."""
    values = {"group_wait": 0.0, "group_interval": 0.0, **timing}
    return Routing(Route(channels=channels, **values), default_channels=channels)

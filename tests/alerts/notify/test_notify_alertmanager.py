"""AlertmanagerNotifier: the alert's shape against a local receiver, then a real Prometheus Alertmanager.

The real one is Debian's ``prometheus-alertmanager``, installed by the test when missing (CI machines are
fresh) and skipped, saying why, only when it cannot be. It runs on loopback with clustering off; its
routing sends alerts labelled ``am_test_recorder="yes"`` to a webhook on a local recorder, so the test
also sees what Alertmanager itself would notify: the firing alert, then its resolution.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from alerts.notify.alertmanager import AlertmanagerNotifier, alertmanager_alert, label_name, label_set
from metrics.errors import ConfigError, DeliveryError
from tests.alerts.channels import NotificationFactory, Receiver, Reply, RunningAlertmanager

pytestmark = pytest.mark.integration
ARRIVAL_TIMEOUT = 30.0


@pytest.mark.parametrize(
    ("name", "cleaned"),
    [("host", "host"), ("host.name", "host_name"), ("k8s-pod", "k8s_pod"), ("9lives", "_9lives"), ("", "_")],
)
def test_label_names_are_made_valid(name: str, cleaned: str) -> None:
    assert label_name(name) == cleaned


def test_label_set_prefers_valid_names_and_drops_empty_values() -> None:
    assert label_set({"host.name": "a", "host_name": "b", "empty": "", "zone": "z"}) == {"host_name": "b", "zone": "z"}


def test_alert_body(make_notification: NotificationFactory) -> None:
    firing = alertmanager_alert(make_notification(labels={"alertname": "High CPU", "k8s.pod": "web-1-abc"}))
    assert firing["labels"] == {
        "alertname": "High CPU",
        "priority": "HIGH",
        "severity": "high",
        "rule_id": "cpu-high",
        "alert_id": "9f86d081884c7d65",
        "k8s_pod": "web-1-abc",
    }
    assert firing["annotations"]["summary"] == "CPU on web-1 is 93.5% (> 90)"
    assert firing["annotations"]["value"] == "93.5"
    assert firing["annotations"]["threshold"] == "> 90"
    assert firing["annotations"]["dashboard"] == "https://grafana.example/d/cpu?var-host=web-1"
    assert firing["annotations"]["runbook"] == "https://runbooks.example/cpu"
    assert firing["startsAt"] == "2024-05-01T12:00:00Z"
    assert "endsAt" not in firing
    assert firing["generatorURL"] == "https://grafana.example/d/cpu?var-host=web-1"
    resolved = alertmanager_alert(make_notification(resolved=True, dashboard_url=None, remediation=None))
    assert resolved["endsAt"] == "2024-05-01T12:15:05Z"
    assert "generatorURL" not in resolved
    assert "dashboard" not in resolved["annotations"]  # empty: left out
    assert "remediation" not in resolved["annotations"]


def test_posts_a_list_of_one_alert(receiver: Receiver, make_notification: NotificationFactory) -> None:
    AlertmanagerNotifier(receiver.url + "/", timeout=5.0).send(make_notification())
    [request] = receiver.wait_for(1)
    assert request.method == "POST"
    assert request.path == "/api/v2/alerts"
    assert request.headers["content-type"] == "application/json"
    assert request.json() == [alertmanager_alert(make_notification())]


@pytest.mark.parametrize(("status", "permanent"), [(500, False), (503, False), (429, False), (400, True), (404, True)])
def test_http_errors_are_mapped(
    receiver: Receiver, make_notification: NotificationFactory, status: int, permanent: bool
) -> None:
    receiver.answer(Reply(status, '"invalid label set"'))
    with pytest.raises(DeliveryError, match=f"alertmanager at {receiver.url} answered HTTP {status}") as caught:
        AlertmanagerNotifier(receiver.url, timeout=5.0).send(make_notification())
    assert caught.value.permanent is permanent


def test_connection_refused_is_retryable(closed_url: str, make_notification: NotificationFactory) -> None:
    url = closed_url.rsplit("/", 2)[0]
    with pytest.raises(DeliveryError, match="ConnectError") as caught:
        AlertmanagerNotifier(url, timeout=5.0).send(make_notification())
    assert not caught.value.permanent


def test_credentials_in_the_url_are_never_shown(receiver: Receiver, make_notification: NotificationFactory) -> None:
    receiver.answer(503)
    url = receiver.url.replace("http://", "http://am:pwSECRET@")
    with pytest.raises(DeliveryError) as caught:
        AlertmanagerNotifier(url, timeout=5.0).send(make_notification())
    assert "pwSECRET" not in str(caught.value)
    assert receiver.requests[0].headers["authorization"].startswith("Basic ")


def test_url_must_be_http() -> None:
    with pytest.raises(ConfigError, match="not an http"):
        AlertmanagerNotifier("alertmanager:9093")


def alerts_in(alertmanager: str, alert_id: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{alertmanager}/api/v2/alerts", params={"filter": f'alert_id="{alert_id}"'}, timeout=5, trust_env=False
    )
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()
    return found


def notified(recorder: Receiver, alert_id: str, status: str) -> dict[str, Any]:
    """The first alert Alertmanager's webhook sent the recorder for ``alert_id`` in ``status``, waiting for it."""
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    while True:
        for request in list(recorder.requests):
            for alert in request.json()["alerts"]:
                if alert["labels"].get("alert_id") == alert_id and alert["status"] == status:
                    return dict(alert)
        assert time.monotonic() < deadline, f"alertmanager sent no {status} notification within {ARRIVAL_TIMEOUT} s"
        time.sleep(0.1)


@pytest.mark.slow
def test_a_real_alertmanager_takes_the_alert_and_its_resolution(
    running_alertmanager: RunningAlertmanager, make_notification: NotificationFactory
) -> None:
    url, recorder = running_alertmanager.url, running_alertmanager.recorder
    started = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=3)
    alert_id = f"{time.time_ns():x}"  # the session's Alertmanager is shared: this alert is ours alone
    labels = {"alertname": "High CPU", "priority": "HIGH", "host.name": "web-1", "am_test_recorder": "yes"}
    firing = make_notification(alert_id=alert_id, labels=labels, starts_at=started)
    notifier = AlertmanagerNotifier(url, timeout=5.0)
    notifier.send(firing)
    [active] = alerts_in(url, alert_id)
    assert active["labels"] == {
        "alertname": "High CPU",
        "priority": "HIGH",
        "severity": "high",
        "rule_id": "cpu-high",
        "alert_id": alert_id,
        "host_name": "web-1",
        "am_test_recorder": "yes",
    }
    assert active["annotations"]["summary"] == firing.summary
    assert active["annotations"]["value"] == "93.5"
    assert active["status"]["state"] == "active"
    assert datetime.fromisoformat(active["startsAt"]) == started
    assert datetime.fromisoformat(active["endsAt"]) > datetime.now(UTC)  # open: its resolve_timeout from now
    assert active["generatorURL"] == firing.dashboard_url
    assert notified(recorder, alert_id, "firing")["annotations"]["description"] == firing.description

    ended = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=1)
    notifier.send(
        make_notification(alert_id=alert_id, labels=labels, starts_at=started, status="resolved", ends_at=ended)
    )
    assert alerts_in(url, alert_id) == []  # resolved alerts leave the list of current ones
    resolution = notified(recorder, alert_id, "resolved")
    assert datetime.fromisoformat(resolution["endsAt"]) == ended
    assert datetime.fromisoformat(resolution["startsAt"]) == started


@pytest.mark.slow
def test_a_real_alertmanager_refuses_what_it_cannot_take(running_alertmanager: RunningAlertmanager) -> None:
    body = [{"labels": {"bad.name": "x"}, "annotations": {}}]  # what we would send without sanitising
    response = httpx.post(f"{running_alertmanager.url}/api/v2/alerts", json=body, timeout=5, trust_env=False)
    assert response.status_code == 400  # a 4xx: AlertmanagerNotifier reports it as permanent

"""Prometheus Alertmanager: ``POST {url}/api/v2/alerts`` with one alert, as Prometheus itself sends them.

Alertmanager groups, deduplicates, silences and routes by labels, so the labels identify the alert:
the notification's labels (rule labels, the group's tags, ``alertname``, ``priority``) plus ``severity``,
``rule_id`` and ``alert_id``, every name made a valid Prometheus label name. A firing alert carries no
``endsAt``: Alertmanager then resolves it by itself after its ``resolve_timeout`` (5 min by default)
unless it is posted again, which is why the engine re-sends firing alerts, as Prometheus does. A
resolved alert carries ``endsAt``. 2xx is delivered; 408, 425, 429, 5xx and connection errors are
retryable; other 4xx answers (a malformed alert) are permanent.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from alerts.notify import Notification, endpoint, format_value, post_json
from metrics.errors import ConfigError

API_PATH = "/api/v2/alerts"
_INVALID = re.compile(r"[^a-zA-Z0-9_]")


def label_name(name: str) -> str:
    """``name`` as a valid Prometheus label name (``[a-zA-Z_][a-zA-Z0-9_]*``): other characters become ``_``."""
    cleaned = _INVALID.sub("_", name)
    if not cleaned or cleaned[0].isdigit():
        cleaned = "_" + cleaned
    return cleaned


def label_set(pairs: Mapping[str, str]) -> dict[str, str]:
    """``pairs`` with valid names and no empty values (Alertmanager reads an empty value as no label).

    Where two names clean to the same one (``host.name``, ``host_name``), the one that was already valid
    wins, else the first in sorted order.
    """
    result: dict[str, str] = {}
    for name in sorted(pairs, key=lambda key: (label_name(key) != key, key)):
        value = pairs[name]
        if value != "":
            result.setdefault(label_name(name), value)
    return result


def alertmanager_alert(notification: Notification) -> dict[str, Any]:
    """One element of the ``POST /api/v2/alerts`` body for ``notification``."""
    n = notification
    labels = label_set(
        {
            **n.labels,
            "alertname": n.labels.get("alertname") or n.rule_name,
            "priority": n.priority,
            "severity": n.priority.lower(),
            "rule_id": n.rule_id,
            "alert_id": n.alert_id,
        }
    )
    ours = {
        "summary": n.summary,
        "description": n.description,
        "value": format_value(n.value),
        "threshold": n.condition,
        "series": n.series,
        "rule_name": n.rule_name,
        "dashboard": n.dashboard_url or "",
        "remediation": n.remediation or "",
    }
    alert: dict[str, Any] = {
        "labels": labels,
        "annotations": label_set({**n.annotations, **ours}),
        "startsAt": _rfc3339(n.starts_at),
    }
    if n.ends_at is not None:
        alert["endsAt"] = _rfc3339(max(n.ends_at, n.starts_at))  # Alertmanager refuses an end before the start
    if n.dashboard_url:
        alert["generatorURL"] = n.dashboard_url
    return alert


class AlertmanagerNotifier:
    """Posts notifications to a Prometheus Alertmanager's v2 API."""

    name = "alertmanager"

    def __init__(self, url: str, timeout: float = 10.0, *, headers: Mapping[str, str] | None = None) -> None:
        """Post to the Alertmanager at ``url``.

        Args:
            url: the Alertmanager's base URL (``http://alertmanager:9093``; ``/api/v2/alerts`` is added).
            timeout: seconds one delivery attempt may take.
            headers: extra request headers, e.g. ``Authorization`` for a proxy in front (never in errors).
        """
        if not url.startswith(("http://", "https://")):
            raise ConfigError(f"AlertmanagerNotifier: {endpoint(url)} is not an http(s):// URL")
        self.url = url.rstrip("/") + API_PATH
        self.timeout = timeout
        self.where = f"alertmanager at {endpoint(url)}"
        self._headers = dict(headers or {})

    def send(self, notification: Notification) -> None:
        """Post ``notification`` as one alert; raises DeliveryError (permanent for 4xx other than 408/425/429)."""
        post_json(self.where, self.url, [alertmanager_alert(notification)], timeout=self.timeout, headers=self._headers)


def _rfc3339(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")

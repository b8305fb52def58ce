"""A generic JSON webhook: ``POST url`` with ``{"version": "1", "notification": Notification.to_dict()}``.

The receiver reads the notification back with ``Notification.from_dict``. 2xx is delivered; 408, 425,
429, 5xx and connection errors are retryable; other answers (4xx, a redirect) are permanent. The URL's
path and query and the header values are treated as secrets: errors show only the scheme, host and port.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from alerts.notify import Notification, endpoint, post_json
from metrics.errors import ConfigError

PAYLOAD_VERSION = "1"


def webhook_payload(notification: Notification) -> dict[str, Any]:
    """The JSON body posted for ``notification``."""
    return {"version": PAYLOAD_VERSION, "notification": notification.to_dict()}


class WebhookNotifier:
    """Posts notifications as JSON to any HTTP endpoint."""

    name = "webhook"

    def __init__(self, url: str, timeout: float = 10.0, headers: Mapping[str, str] | None = None) -> None:
        """Post to ``url``.

        Args:
            url: the endpoint (a secret when its path or query holds a token: never shown in errors).
            timeout: seconds one delivery attempt may take.
            headers: extra request headers, e.g. ``Authorization`` (never shown in errors).
        """
        if not url.startswith(("http://", "https://")):
            raise ConfigError("WebhookNotifier: the URL is not an http(s):// URL")
        self.url = url
        self.timeout = timeout
        self.where = f"webhook at {endpoint(url)}"
        self._headers = dict(headers or {})

    def send(self, notification: Notification) -> None:
        """Post ``notification``; raises DeliveryError (permanent for 4xx other than 408/425/429)."""
        post_json(self.where, self.url, webhook_payload(notification), timeout=self.timeout, headers=self._headers)

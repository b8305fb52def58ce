"""Notifiers: one alert state change (a ``Notification``) delivered to Slack, email, Alertmanager or a webhook.

Every channel implements ``Notifier``: ``send`` delivers one notification or raises
``metrics.errors.DeliveryError``, ``permanent=True`` when retrying cannot help (refused credentials or
recipients, a 4xx answer). The outbox stores ``Notification.to_dict()`` as its payload and retries the
others. Error messages name the channel and the host, never a secret (a webhook URL's path, a token, a
password): ``redact`` and ``endpoint`` are the helpers every channel uses for that.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit

import httpx

from metrics.errors import DeliveryError, ValidationError

if TYPE_CHECKING:
    from metrics.settings import Settings

__all__ = [
    "COMPARISONS",
    "PRIORITIES",
    "STATUSES",
    "Notification",
    "Notifier",
    "endpoint",
    "format_duration",
    "format_value",
    "http_status_error",
    "notifiers_from_settings",
    "post_json",
    "redact",
    "transport_error",
]

STATUSES = ("firing", "resolved")
PRIORITIES = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
COMPARISONS = (">", ">=", "<", "<=", "==", "!=")
RETRYABLE_STATUSES = frozenset({408, 425, 429})  # plus every 5xx
_SPECIAL_FLOATS = {"NaN": math.nan, "+Inf": math.inf, "-Inf": -math.inf}
_BODY_SHOWN = 200  # characters of a refusing server's answer quoted in an error


@dataclass(frozen=True)
class Notification:
    """One alert state change to tell people about."""

    alert_id: str  # the alert's fingerprint (stable per rule + series group), hex
    rule_id: str
    rule_name: str
    status: str  # "firing" or "resolved"
    priority: str  # "LOW" | "MEDIUM" | "HIGH" | "CRITICAL"
    summary: str  # one line, already rendered
    description: str  # longer text, already rendered
    value: float | None  # the value that breached (last value when resolved); None for no-data alerts
    threshold: float
    comparison: str  # one of > >= < <= == !=
    series: str  # e.g. "system.cpu.usage_total host=web-1"
    labels: dict[str, str]  # rule labels + the group's tags + alertname/priority
    annotations: dict[str, str]
    starts_at: datetime  # tz-aware UTC
    ends_at: datetime | None = None  # set when resolved
    dashboard_url: str | None = None
    remediation: str | None = None  # name/description of the remediation action, if any

    def __post_init__(self) -> None:
        """Normalise case, types and time zones; refuse a status, priority, comparison or time that cannot be sent."""
        status = str(self.status).lower()
        priority = str(self.priority).upper()
        comparison = str(self.comparison)
        if status not in STATUSES:
            raise ValidationError(f"notification status={self.status!r} is not one of {', '.join(STATUSES)}")
        if priority not in PRIORITIES:
            raise ValidationError(f"notification priority={self.priority!r} is not one of {', '.join(PRIORITIES)}")
        if comparison not in COMPARISONS:
            raise ValidationError(f"notification comparison={self.comparison!r} is not one of {' '.join(COMPARISONS)}")
        object.__setattr__(self, "status", status)
        object.__setattr__(self, "priority", priority)
        object.__setattr__(self, "comparison", comparison)
        object.__setattr__(self, "threshold", _number(self.threshold, "threshold"))
        if self.value is not None:
            object.__setattr__(self, "value", _number(self.value, "value"))
        object.__setattr__(self, "starts_at", _utc(self.starts_at, "starts_at"))
        if self.ends_at is not None:
            object.__setattr__(self, "ends_at", _utc(self.ends_at, "ends_at"))
        object.__setattr__(self, "labels", {str(k): str(v) for k, v in self.labels.items()})
        object.__setattr__(self, "annotations", {str(k): str(v) for k, v in self.annotations.items()})

    @property
    def firing(self) -> bool:
        """True for a firing notification, False for a resolved one."""
        return self.status == "firing"

    @property
    def duration(self) -> timedelta | None:
        """How long the alert fired (``ends_at - starts_at``), when resolved."""
        return None if self.ends_at is None else self.ends_at - self.starts_at

    @property
    def headline(self) -> str:
        """``[FIRING HIGH] High CPU — system.cpu.usage_total host=web-1``: the subject line of every channel."""
        return _one_line(f"[{self.status.upper()} {self.priority}] {self.rule_name} — {self.series}")

    @property
    def condition(self) -> str:
        """The rule's condition as text, e.g. ``> 90``."""
        return f"{self.comparison} {format_value(self.threshold)}"

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (ISO timestamps; NaN and infinities as ``"NaN"``, ``"+Inf"``, ``"-Inf"``): the outbox payload."""
        data: dict[str, Any] = {item.name: getattr(self, item.name) for item in fields(self)}
        data["value"] = _float_out(self.value)
        data["threshold"] = _float_out(self.threshold)
        data["labels"] = dict(self.labels)
        data["annotations"] = dict(self.annotations)
        data["starts_at"] = self.starts_at.isoformat()
        data["ends_at"] = None if self.ends_at is None else self.ends_at.isoformat()
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Notification:
        """The notification ``to_dict`` returned (the exact inverse); ValidationError names a bad field."""
        names = [item.name for item in fields(cls)]
        missing = [name for name in names if name not in data]
        if missing:
            raise ValidationError(f"notification payload lacks {', '.join(missing)}")
        unknown = sorted(set(data) - set(names))
        if unknown:
            raise ValidationError(f"notification payload has unknown fields {', '.join(unknown)}")
        text_fields = ("alert_id", "rule_id", "rule_name", "status", "priority", "summary", "description")
        for name in (*text_fields, "comparison", "series"):
            _expect(data, name, str)
        for name in ("dashboard_url", "remediation"):
            _expect(data, name, (str, type(None)))
        value = data["value"]
        return cls(
            alert_id=data["alert_id"],
            rule_id=data["rule_id"],
            rule_name=data["rule_name"],
            status=data["status"],
            priority=data["priority"],
            summary=data["summary"],
            description=data["description"],
            value=None if value is None else _float_in(value, "value"),
            threshold=_float_in(data["threshold"], "threshold"),
            comparison=data["comparison"],
            series=data["series"],
            labels=_string_map(data["labels"], "labels"),
            annotations=_string_map(data["annotations"], "annotations"),
            starts_at=_time_in(data["starts_at"], "starts_at"),
            ends_at=None if data["ends_at"] is None else _time_in(data["ends_at"], "ends_at"),
            dashboard_url=data["dashboard_url"],
            remediation=data["remediation"],
        )


class Notifier(Protocol):
    """A channel that delivers notifications."""

    name: str  # channel name, e.g. "slack", "email", "alertmanager", "webhook"

    def send(self, notification: Notification) -> None:
        """Deliver ``notification``; raises ``metrics.errors.DeliveryError`` on failure."""
        ...


def notifiers_from_settings(settings: Settings) -> dict[str, Notifier]:
    """The channels configured by settings alone (no routing), by channel name.

    slack when SLACK_WEBHOOK_URL (or SLACK_BOT_TOKEN + SLACK_CHANNEL) is set (the webhook wins when both
    are), email when SMTP_SERVER and METRICS_ALERT_EMAIL_TO are set, alertmanager when
    METRICS_ALERTMANAGER_URL is, webhook when METRICS_ALERT_WEBHOOK_URL is.
    """
    from alerts.notify.alertmanager import AlertmanagerNotifier
    from alerts.notify.email import EmailNotifier, default_sender
    from alerts.notify.slack import SlackNotifier
    from alerts.notify.webhook import WebhookNotifier

    timeout = settings.notify_timeout
    found: dict[str, Notifier] = {}
    if settings.slack_webhook_url:
        found["slack"] = SlackNotifier(webhook_url=settings.slack_webhook_url, timeout=timeout)
    elif settings.slack_bot_token and settings.slack_channel:
        found["slack"] = SlackNotifier(token=settings.slack_bot_token, channel=settings.slack_channel, timeout=timeout)
    if settings.smtp_server and settings.alert_email_to:
        found["email"] = EmailNotifier(
            server=settings.smtp_server,
            port=settings.smtp_port,
            sender=settings.alert_email_from or default_sender(),
            recipients=settings.alert_email_to,
            username=settings.smtp_username,
            password=settings.smtp_password,
            require_tls=settings.smtp_require_tls,
            timeout=timeout,
        )
    if settings.alertmanager_url:
        found["alertmanager"] = AlertmanagerNotifier(settings.alertmanager_url, timeout=timeout)
    if settings.alert_webhook_url:
        found["webhook"] = WebhookNotifier(settings.alert_webhook_url, timeout=timeout)
    return found


def format_value(value: float | None) -> str:
    """A value for people: ``90``, ``93.4568``, ``1.5e+09``, ``NaN``; ``no data`` for None."""
    if value is None:
        return "no data"
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value.is_integer() and abs(value) < 1e15:
        return str(int(value))
    return f"{value:.6g}"


def format_duration(duration: timedelta) -> str:
    """``2h 5m``, ``12m 5s``, ``40s``: the two largest units of a duration (never negative)."""
    seconds = max(0, round(duration.total_seconds()))
    parts: list[str] = []
    for unit, size in (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size or (unit == "s" and not parts):
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return " ".join(parts[:2])


def redact(text: str, secrets: Iterable[str | None]) -> str:
    """``text`` with every secret (and a URL's path and query, when a secret is a URL) replaced by ``<hidden>``."""
    hidden: set[str] = set()
    for secret in secrets:
        if not secret:
            continue
        hidden.add(secret)
        parts = urlsplit(secret)
        if parts.scheme and parts.netloc:
            for piece in (parts.path, parts.query, parts.username, parts.password):
                if piece and len(piece) > 1:
                    hidden.add(piece)
    for secret in sorted(hidden, key=len, reverse=True):
        text = text.replace(secret, "<hidden>")
    return text


def endpoint(url: str) -> str:
    """``scheme://host[:port]`` of ``url``: where a delivery went, without path, query or credentials."""
    parts = urlsplit(url)
    host = parts.hostname or "?"
    if ":" in host:
        host = f"[{host}]"
    try:
        port = parts.port
    except ValueError:
        port = None
    return f"{parts.scheme}://{host}" + (f":{port}" if port else "")


def http_status_error(where: str, status: int, body: str, secrets: Iterable[str | None] = ()) -> DeliveryError:
    """The DeliveryError for an HTTP answer that is not 2xx: 408, 425, 429 and 5xx retryable, the rest permanent."""
    retryable = status >= 500 or status in RETRYABLE_STATUSES
    shown = redact(_one_line(body)[:_BODY_SHOWN], secrets)
    reason = f": {shown}" if shown else ""
    if 300 <= status < 400:
        reason = " (a redirect, not followed)"
    return DeliveryError(f"{where} answered HTTP {status}{reason}", permanent=not retryable)


def transport_error(where: str, error: BaseException, secrets: Iterable[str | None] = ()) -> DeliveryError:
    """The retryable DeliveryError for a connection that failed, timed out or broke off."""
    reason = getattr(error, "reason", None)  # urllib's URLError wraps the socket error
    cause = reason if isinstance(reason, BaseException) else error
    text = str(cause) or type(cause).__name__
    return DeliveryError(f"{where}: {type(cause).__name__}: {redact(text, secrets)}", permanent=False)


def post_json(
    where: str,
    url: str,
    payload: Any,
    *,
    timeout: float,
    headers: Mapping[str, str] | None = None,
    secrets: Iterable[str | None] = (),
) -> httpx.Response:
    """POST ``payload`` as JSON to ``url``; return a 2xx response, else raise the DeliveryError it maps to."""
    body = json.dumps(payload, allow_nan=False, separators=(",", ":")).encode()
    sent = {"Content-Type": "application/json", "User-Agent": "metrics-alerts/1", **(headers or {})}
    hidden = [url, *secrets, *(headers or {}).values()]
    try:
        response = httpx.post(url, content=body, headers=sent, timeout=timeout, follow_redirects=False)
    except httpx.TransportError as exc:  # connect, read, write, pool, timeout and protocol errors
        raise transport_error(where, exc, hidden) from None
    except httpx.InvalidURL as exc:
        raise DeliveryError(f"{where}: the URL is not valid ({redact(str(exc), hidden)})", permanent=True) from None
    if not response.is_success:
        raise http_status_error(where, response.status_code, response.text, hidden)
    return response


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _utc(moment: Any, name: str) -> datetime:
    if not isinstance(moment, datetime):
        raise ValidationError(f"notification {name}={moment!r} is not a datetime")
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise ValidationError(f"notification {name}={moment.isoformat()} has no time zone (give UTC)")
    return moment.astimezone(UTC)


def _number(value: Any, name: str) -> float:
    if isinstance(value, bool):
        raise ValidationError(f"notification {name}={value!r} is not a number")
    try:
        return float(value)  # numpy and Decimal values too, so that to_dict is plain JSON
    except (TypeError, ValueError):
        raise ValidationError(f"notification {name}={value!r} is not a number") from None


def _float_out(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return format_value(value)


def _float_in(value: Any, name: str) -> float:
    if isinstance(value, str) and value in _SPECIAL_FLOATS:
        return _SPECIAL_FLOATS[value]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValidationError(f"notification payload {name}={value!r} is not a number")
    return float(value)


def _time_in(value: Any, name: str) -> datetime:
    if not isinstance(value, str):
        raise ValidationError(f"notification payload {name}={value!r} is not an ISO 8601 time")
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise ValidationError(f"notification payload {name}={value!r} is not an ISO 8601 time") from None
    return _utc(moment, name)


def _string_map(value: Any, name: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ValidationError(f"notification payload {name} is not an object of strings")
    return dict(value)


def _expect(data: Mapping[str, Any], name: str, kinds: type | tuple[type, ...]) -> None:
    if not isinstance(data[name], kinds):
        raise ValidationError(f"notification payload {name}={data[name]!r} has the wrong type")

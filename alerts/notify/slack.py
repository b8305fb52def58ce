"""Slack: a Block Kit message through an incoming webhook or the Web API's ``chat.postMessage`` (``slack_sdk``).

One attempt per ``send`` (the SDK's own retry handlers are off: the outbox retries). HTTP 429, 5xx and
connection errors are retryable; other 4xx answers and Web API errors such as ``invalid_auth`` or
``channel_not_found`` are permanent. The SDK logs through a logger of its own held at CRITICAL, because
its debug lines carry the webhook URL.
"""

from __future__ import annotations

import http.client
import logging
import re
import ssl
from typing import Any

from slack_sdk import WebClient
from slack_sdk.errors import SlackApiError, SlackClientError
from slack_sdk.webhook import WebhookClient

from alerts.notify import Notification, endpoint, format_duration, format_value, http_status_error, transport_error
from metrics.errors import ConfigError, DeliveryError

SLACK_API_URL = WebClient.BASE_URL  # https://slack.com/api/
EMOJI = {"LOW": ":information_source:", "MEDIUM": ":warning:", "HIGH": ":rotating_light:", "CRITICAL": ":fire:"}
RESOLVED_EMOJI = ":white_check_mark:"
HEADER_LIMIT = 150  # Block Kit: header text
FIELD_LIMIT = 2000  # section field text
SECTION_LIMIT = 3000  # section text
TEXT_LIMIT = 3000  # the notification text (fallback) we send
# Web API errors retrying can cure; every other ``ok: false`` answer is permanent for this request.
RETRYABLE_API_ERRORS = frozenset(
    {"ratelimited", "rate_limited", "internal_error", "fatal_error", "service_unavailable", "request_timeout"}
)
_SDK_LOGGER = logging.getLogger(__name__ + ".sdk")
_SDK_LOGGER.setLevel(logging.CRITICAL)  # its debug output holds the webhook URL, its errors are ours to report
_API_ERROR = re.compile(r"[a-z0-9_]{1,80}")


class SlackNotifier:
    """Posts notifications to Slack as Block Kit messages."""

    name = "slack"

    def __init__(
        self,
        *,
        webhook_url: str | None = None,
        token: str | None = None,
        channel: str | None = None,
        base_url: str = SLACK_API_URL,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        """Post through an incoming webhook, or through the Web API as a bot.

        Args:
            webhook_url: the incoming webhook's URL (a secret: never shown); give it, or ``token`` and ``channel``.
            token: a bot token (``xoxb-…``) for ``chat.postMessage``.
            channel: the channel the bot posts to (an ID such as ``C0123`` or a name such as ``#ops``).
            base_url: the Web API's base URL (Slack's by default; tests point it at a local server).
            timeout: seconds one delivery attempt may take.
            ssl_context: the TLS context for HTTPS (default: the system's trust store).
        """
        if (webhook_url is None) == (token is None):
            raise ConfigError("SlackNotifier: give either webhook_url or token (with channel), not both or neither")
        if token is not None and not channel:
            raise ConfigError("SlackNotifier: a bot token needs the channel to post to")
        self.channel = channel
        self.timeout = timeout
        self._secrets = (webhook_url, token)
        self._webhook: WebhookClient | None = None
        self._client: WebClient | None = None
        seconds: Any = timeout  # the SDK annotates its timeout as int; urllib takes float seconds
        if webhook_url is not None:
            self.where = f"slack webhook at {endpoint(webhook_url)}"
            self._webhook = WebhookClient(
                webhook_url, timeout=seconds, ssl=ssl_context, logger=_SDK_LOGGER, retry_handlers=[]
            )
        else:
            self.where = f"slack chat.postMessage at {endpoint(base_url)}"
            self._client = WebClient(
                token=token, base_url=base_url, timeout=seconds, ssl=ssl_context, logger=_SDK_LOGGER, retry_handlers=[]
            )

    def send(self, notification: Notification) -> None:
        """Post ``notification``; raises DeliveryError (permanent for 4xx other than 429 and Slack API errors)."""
        blocks = slack_blocks(notification)
        text = slack_text(notification)
        if self._webhook is not None:
            self._send_webhook(self._webhook, blocks, text)
        elif self._client is not None and self.channel is not None:
            self._post_message(self._client, self.channel, blocks, text)

    def _send_webhook(self, client: WebhookClient, blocks: list[dict[str, Any]], text: str) -> None:
        try:
            response = client.send(text=text, blocks=blocks)
        except (OSError, http.client.HTTPException) as exc:  # URLError, refused, reset, timed out, bad status line
            raise transport_error(self.where, exc, self._secrets) from None
        except SlackClientError as exc:  # a URL the SDK refuses to open
            raise DeliveryError(f"{self.where}: {type(exc).__name__} (check the webhook URL)", permanent=True) from None
        if response.status_code != 200:
            raise http_status_error(self.where, response.status_code, response.body or "", self._secrets)

    def _post_message(self, client: WebClient, channel: str, blocks: list[dict[str, Any]], text: str) -> None:
        try:
            client.chat_postMessage(channel=channel, blocks=blocks, text=text, unfurl_links=False)
        except SlackApiError as exc:
            raise self._api_error(exc) from None
        except (OSError, http.client.HTTPException) as exc:
            raise transport_error(self.where, exc, self._secrets) from None
        except SlackClientError as exc:
            raise DeliveryError(f"{self.where}: {type(exc).__name__} (check the base URL)", permanent=True) from None

    def _api_error(self, exc: SlackApiError) -> DeliveryError:
        """The DeliveryError for a Web API call Slack answered with an error."""
        status = int(getattr(exc.response, "status_code", 0) or 0)
        data = getattr(exc.response, "data", None)
        error = data.get("error") if isinstance(data, dict) else None
        code = error if isinstance(error, str) and _API_ERROR.fullmatch(error) else None
        if status != 200 and status != 0:
            failure = http_status_error(self.where, status, code or "", self._secrets)
            return DeliveryError(str(failure), permanent=failure.permanent and code not in RETRYABLE_API_ERRORS)
        if code is None:  # not Slack's JSON (a proxy's page?): nothing says retrying is hopeless
            return DeliveryError(f"{self.where} answered something that is not a Slack API response")
        return DeliveryError(f"{self.where} refused the message: {code}", permanent=code not in RETRYABLE_API_ERRORS)


def slack_blocks(notification: Notification) -> list[dict[str, Any]]:
    """The Block Kit blocks of a notification: header, fields, description, remediation, context, dashboard button."""
    n = notification
    emoji = EMOJI[n.priority] if n.firing else RESOLVED_EMOJI
    header = f"{emoji} {n.status.upper()}: {n.rule_name}"
    value_label = "Value" if n.firing else "Last value"
    fields = [
        ("Priority", n.priority),
        (value_label, format_value(n.value)),
        ("Threshold", n.condition),
        ("Series", n.series),
    ]
    if n.duration is not None:
        fields.append(("Resolved after", format_duration(n.duration)))
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": _cut(header, HEADER_LIMIT), "emoji": True}},
        {"type": "section", "text": _mrkdwn(f"*{_escape(n.summary)}*", SECTION_LIMIT)},
        {
            "type": "section",
            "fields": [_mrkdwn(f"*{label}*\n{_escape(value)}", FIELD_LIMIT) for label, value in fields],
        },
    ]
    if n.description.strip():
        blocks.append({"type": "section", "text": _mrkdwn(_escape(n.description), SECTION_LIMIT)})
    if n.remediation:
        blocks.append({"type": "section", "text": _mrkdwn(f"*Remediation:* {_escape(n.remediation)}", SECTION_LIMIT)})
    started = n.starts_at.strftime("%Y-%m-%d %H:%M:%S UTC")
    context = f"rule `{_escape(n.rule_id)}` · alert `{_escape(n.alert_id)}` · since {started}"
    blocks.append({"type": "context", "elements": [_mrkdwn(context, SECTION_LIMIT)]})
    if n.dashboard_url:
        button = {
            "type": "button",
            "text": {"type": "plain_text", "text": "Open dashboard"},
            "url": n.dashboard_url[:3000],
            "action_id": "open_dashboard",
        }
        blocks.append({"type": "actions", "elements": [button]})
    return blocks


def slack_text(notification: Notification) -> str:
    """The plain notification text (fallback, and what push notifications show)."""
    n = notification
    if n.duration is None:
        text = f"{n.headline}: {n.summary} (value {format_value(n.value)}, threshold {n.condition})"
    else:
        text = f"{n.headline}: resolved after {format_duration(n.duration)}: {n.summary}"
    link = f" <{n.dashboard_url}|Open dashboard>" if n.dashboard_url else ""
    return _cut(_escape(text), TEXT_LIMIT - len(link)) + link


def _escape(text: str) -> str:
    """Slack's mrkdwn control characters escaped (``&``, ``<``, ``>``)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _mrkdwn(text: str, limit: int) -> dict[str, str]:
    return {"type": "mrkdwn", "text": _cut(text, limit)}


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"

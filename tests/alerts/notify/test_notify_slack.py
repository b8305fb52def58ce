"""SlackNotifier through the real slack_sdk against a local stand-in for Slack (webhook and Web API)."""

from __future__ import annotations

from typing import Any

import pytest
from slack_sdk.models.blocks import Block

from alerts.notify.slack import SlackNotifier, slack_blocks, slack_text
from metrics.errors import ConfigError, DeliveryError
from tests.alerts.channels import NotificationFactory, Receiver, Reply

pytestmark = pytest.mark.integration
HOOK_PATH = "/services/T0ABC/B0DEF/hookSECRET123xyz"
TOKEN = "xoxb-1234-5678-tokenSECRETabc"


def webhook(receiver: Receiver) -> SlackNotifier:
    return SlackNotifier(webhook_url=receiver.url + HOOK_PATH, timeout=5.0)


def bot(receiver: Receiver) -> SlackNotifier:
    return SlackNotifier(token=TOKEN, channel="C0ALERTS", base_url=f"{receiver.url}/api/", timeout=5.0)


def no_secrets(error: DeliveryError) -> None:
    text = str(error)
    for secret in (HOOK_PATH, "hookSECRET123xyz", TOKEN, "tokenSECRETabc"):
        assert secret not in text


def texts(blocks: list[dict[str, Any]]) -> str:
    """Every text of the blocks, joined."""
    found: list[str] = []

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            if isinstance(node.get("text"), str):
                found.append(node["text"])
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(blocks)
    return "\n".join(found)


def test_webhook_posts_a_block_kit_message(receiver: Receiver, make_notification: NotificationFactory) -> None:
    webhook(receiver).send(make_notification())
    [request] = receiver.wait_for(1)
    assert request.method == "POST"
    assert request.path == HOOK_PATH
    body = request.json()
    blocks = body["blocks"]
    for block in blocks:  # the SDK's own Block Kit models accept every block, within Slack's limits
        parsed = Block.parse(block)
        assert parsed is not None
        parsed.validate_json()
    assert [block["type"] for block in blocks] == [
        "header",
        "section",
        "section",
        "section",
        "section",
        "context",
        "actions",
    ]
    header = blocks[0]["text"]["text"]
    assert header == ":rotating_light: FIRING: High CPU"
    fields = {field["text"].split("\n")[0]: field["text"].split("\n")[1] for field in blocks[2]["fields"]}
    assert fields == {
        "*Priority*": "HIGH",
        "*Value*": "93.5",
        "*Threshold*": "&gt; 90",
        "*Series*": "system.cpu.usage_total host=web-1",
    }
    everything = texts(blocks)
    assert "Check the &lt;top&gt; processes &amp; recent deploys." in everything  # mrkdwn escaped
    assert "*Remediation:* restart-service" in everything
    [button] = blocks[-1]["elements"]
    assert button["type"] == "button"
    assert button["text"]["text"] == "Open dashboard"
    assert button["url"] == "https://grafana.example/d/cpu?var-host=web-1"
    assert body["text"].startswith("[FIRING HIGH] High CPU — system.cpu.usage_total host=web-1: ")
    assert "value 93.5" in body["text"]
    assert "<https://grafana.example/d/cpu?var-host=web-1|Open dashboard>" in body["text"]


def test_resolved_message_says_resolved_with_the_duration(make_notification: NotificationFactory) -> None:
    notification = make_notification(resolved=True, dashboard_url=None, remediation=None)
    blocks = slack_blocks(notification)
    assert blocks[0]["text"]["text"] == ":white_check_mark: RESOLVED: High CPU"
    fields = [field["text"] for field in blocks[2]["fields"]]
    assert "*Resolved after*\n15m 5s" in fields
    assert "*Last value*\n42" in fields
    assert "actions" not in [block["type"] for block in blocks]  # no dashboard, no button
    assert "Remediation" not in texts(blocks)
    assert slack_text(notification).startswith("[RESOLVED HIGH] High CPU — ")
    assert "resolved after 15m 5s" in slack_text(notification)


def test_priorities_have_their_emoji_and_no_data_shows(make_notification: NotificationFactory) -> None:
    critical = slack_blocks(make_notification(priority="CRITICAL", value=None))
    assert critical[0]["text"]["text"].startswith(":fire: FIRING")
    assert "*Value*\nno data" in [field["text"] for field in critical[2]["fields"]]
    assert slack_blocks(make_notification(priority="LOW"))[0]["text"]["text"].startswith(":information_source:")


def test_long_texts_are_cut_to_slack_limits(make_notification: NotificationFactory) -> None:
    blocks = slack_blocks(make_notification(rule_name="R" * 400, description="d" * 5000, series="s" * 3000))
    assert len(blocks[0]["text"]["text"]) == 150
    for block in blocks:
        parsed = Block.parse(block)
        assert parsed is not None
        parsed.validate_json()


@pytest.mark.parametrize(
    ("reply", "permanent", "shown"),
    [
        (Reply(500, "internal_error"), False, "HTTP 500"),
        (Reply(503, "<html>busy</html>"), False, "HTTP 503"),
        (Reply(429, "rate_limited", {"Retry-After": "1"}), False, "HTTP 429"),
        (Reply(404, "no_service"), True, "HTTP 404: no_service"),
        (Reply(403, "invalid_token"), True, "HTTP 403: invalid_token"),
        (Reply(400, "invalid_blocks"), True, "HTTP 400: invalid_blocks"),
        (Reply(410, "channel_is_archived"), True, "HTTP 410"),
    ],
)
def test_webhook_errors_are_mapped(
    receiver: Receiver, make_notification: NotificationFactory, reply: Reply, permanent: bool, shown: str
) -> None:
    receiver.answer(reply)
    with pytest.raises(DeliveryError, match=shown) as caught:
        webhook(receiver).send(make_notification())
    assert caught.value.permanent is permanent
    no_secrets(caught.value)
    assert len(receiver.requests) == 1  # one attempt: the outbox retries


def test_webhook_500_then_200(receiver: Receiver, make_notification: NotificationFactory) -> None:
    receiver.answer(500, 200)
    notifier = webhook(receiver)
    with pytest.raises(DeliveryError):
        notifier.send(make_notification())
    notifier.send(make_notification())
    assert len(receiver.wait_for(2)) == 2


def test_webhook_connection_refused_is_retryable(closed_url: str, make_notification: NotificationFactory) -> None:
    with pytest.raises(DeliveryError, match="ConnectionRefusedError") as caught:
        SlackNotifier(webhook_url=closed_url, timeout=5.0).send(make_notification())
    assert not caught.value.permanent
    assert "secret-path-T0KEN" not in str(caught.value)
    assert "/hook" not in str(caught.value)


def test_webhook_timeout_is_retryable(receiver: Receiver, make_notification: NotificationFactory) -> None:
    receiver.answer(Reply(200, "ok", delay=3.0))
    with pytest.raises(DeliveryError) as caught:
        SlackNotifier(webhook_url=receiver.url + HOOK_PATH, timeout=0.3).send(make_notification())
    assert not caught.value.permanent
    assert "timed out" in str(caught.value)
    no_secrets(caught.value)


def test_web_api_posts_with_the_bot_token(receiver: Receiver, make_notification: NotificationFactory) -> None:
    receiver.default = Reply(200, {"ok": True, "channel": "C0ALERTS", "ts": "1714564800.000100"})
    bot(receiver).send(make_notification())
    [request] = receiver.wait_for(1)
    assert request.path == "/api/chat.postMessage"
    assert request.headers["authorization"] == f"Bearer {TOKEN}"
    body = request.json()
    assert body["channel"] == "C0ALERTS"
    assert body["blocks"][0]["type"] == "header"
    assert "FIRING" in body["text"]


@pytest.mark.parametrize(
    ("reply", "permanent", "shown"),
    [
        (Reply(200, {"ok": False, "error": "channel_not_found"}), True, "refused the message: channel_not_found"),
        (Reply(200, {"ok": False, "error": "invalid_auth"}), True, "invalid_auth"),
        (Reply(200, {"ok": False, "error": "not_in_channel"}), True, "not_in_channel"),
        (Reply(200, {"ok": False, "error": "internal_error"}), False, "internal_error"),
        (Reply(429, {"ok": False, "error": "ratelimited"}, {"Retry-After": "3"}), False, "HTTP 429"),
        (Reply(500, "oops"), False, "HTTP 500"),
        (Reply(404, "<html>not found</html>"), True, "HTTP 404"),
        (Reply(200, "<html>a captive portal</html>"), False, "not a Slack API response"),
    ],
)
def test_web_api_errors_are_mapped(
    receiver: Receiver, make_notification: NotificationFactory, reply: Reply, permanent: bool, shown: str
) -> None:
    receiver.answer(reply)
    with pytest.raises(DeliveryError, match=shown) as caught:
        bot(receiver).send(make_notification())
    assert caught.value.permanent is permanent
    no_secrets(caught.value)
    assert len(receiver.requests) == 1


def test_web_api_connection_refused_is_retryable(closed_url: str, make_notification: NotificationFactory) -> None:
    notifier = SlackNotifier(token=TOKEN, channel="C0ALERTS", base_url=closed_url.rsplit("/", 2)[0] + "/api/")
    with pytest.raises(DeliveryError, match="ConnectionRefusedError") as caught:
        notifier.send(make_notification())
    assert not caught.value.permanent
    no_secrets(caught.value)


def test_configuration_must_name_one_way() -> None:
    with pytest.raises(ConfigError, match="either webhook_url or token"):
        SlackNotifier()
    with pytest.raises(ConfigError, match="either webhook_url or token"):
        SlackNotifier(webhook_url="https://hooks.slack.com/services/x", token=TOKEN, channel="C1")
    with pytest.raises(ConfigError, match="needs the channel"):
        SlackNotifier(token=TOKEN)

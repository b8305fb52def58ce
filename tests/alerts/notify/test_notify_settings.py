"""notifiers_from_settings: which channels each combination of settings configures, and with what."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from alerts.notify import notifiers_from_settings
from alerts.notify.alertmanager import AlertmanagerNotifier
from alerts.notify.email import EmailNotifier
from alerts.notify.slack import SlackNotifier
from alerts.notify.webhook import WebhookNotifier
from metrics.settings import Settings

HOOK = "https://hooks.slack.com/services/T0/B0/secret"


@pytest.mark.parametrize(
    ("env", "channels"),
    [
        ({}, []),
        ({"SLACK_WEBHOOK_URL": HOOK}, ["slack"]),
        ({"SLACK_BOT_TOKEN": "xoxb-1", "SLACK_CHANNEL": "#ops"}, ["slack"]),
        ({"SLACK_CHANNEL": "#ops"}, []),  # a channel without a token posts nowhere
        ({"SMTP_SERVER": "mail.example"}, []),  # nobody to mail
        ({"METRICS_ALERT_EMAIL_TO": "oncall@example.com"}, []),  # no server to mail through
        ({"SMTP_SERVER": "mail.example", "METRICS_ALERT_EMAIL_TO": "oncall@example.com"}, ["email"]),
        ({"METRICS_ALERTMANAGER_URL": "http://127.0.0.1:9093"}, ["alertmanager"]),
        ({"METRICS_ALERT_WEBHOOK_URL": "https://hooks.example/in/abc"}, ["webhook"]),
        (
            {
                "SLACK_WEBHOOK_URL": HOOK,
                "SMTP_SERVER": "mail.example",
                "METRICS_ALERT_EMAIL_TO": "a@example.com,b@example.com",
                "METRICS_ALERTMANAGER_URL": "http://127.0.0.1:9093",
                "METRICS_ALERT_WEBHOOK_URL": "https://hooks.example/in/abc",
            },
            ["alertmanager", "email", "slack", "webhook"],
        ),
    ],
)
def test_channels_follow_the_settings(tmp_path: Path, env: dict[str, str], channels: list[str]) -> None:
    settings = Settings.from_env({"METRICS_DATA_DIR": str(tmp_path), **env})
    found = notifiers_from_settings(settings)
    assert sorted(found) == channels
    for name, notifier in found.items():
        assert notifier.name == name


def test_each_channel_gets_its_settings(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        slack_bot_token="xoxb-1",
        slack_channel="C0ALERTS",
        smtp_server="mail.example",
        smtp_port=587,
        smtp_username="alerts",
        smtp_password="pw",
        smtp_require_tls=True,
        alert_email_to=("oncall@example.com",),
        alertmanager_url="http://127.0.0.1:9093/",
        alert_webhook_url="https://hooks.example/in/abc",
        notify_timeout=3.5,
    )
    found = notifiers_from_settings(settings)
    slack, mail = found["slack"], found["email"]
    assert isinstance(slack, SlackNotifier)
    assert slack.channel == "C0ALERTS"
    assert slack.timeout == 3.5
    assert isinstance(mail, EmailNotifier)
    assert (mail.server, mail.port, mail.username, mail.require_tls) == ("mail.example", 587, "alerts", True)
    assert mail.recipients == ("oncall@example.com",)
    assert mail.sender == f"metrics@{socket.getfqdn()}"  # the default From
    assert not mail.implicit_tls
    manager, hook = found["alertmanager"], found["webhook"]
    assert isinstance(manager, AlertmanagerNotifier)
    assert manager.url == "http://127.0.0.1:9093/api/v2/alerts"
    assert isinstance(hook, WebhookNotifier)
    assert hook.timeout == 3.5


def test_the_slack_webhook_wins_over_the_bot_and_the_sender_is_configurable(tmp_path: Path) -> None:
    settings = Settings(
        data_dir=tmp_path,
        slack_webhook_url=HOOK,
        slack_bot_token="xoxb-1",
        slack_channel="C0ALERTS",
        smtp_server="mail.example",
        alert_email_to=("oncall@example.com",),
        alert_email_from="alerts@example.com",
    )
    found = notifiers_from_settings(settings)
    slack, mail = found["slack"], found["email"]
    assert isinstance(slack, SlackNotifier)
    assert slack.where.startswith("slack webhook at https://hooks.slack.com")
    assert isinstance(mail, EmailNotifier)
    assert mail.sender == "alerts@example.com"

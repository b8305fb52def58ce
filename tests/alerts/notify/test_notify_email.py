"""EmailNotifier against real SMTP servers (aiosmtpd on loopback): parts, headers, STARTTLS, AUTH, SMTPS, failures."""

from __future__ import annotations

import email
import ssl
from email.message import EmailMessage
from email.policy import default as default_policy
from typing import Any

import pytest

from alerts.notify.email import EmailNotifier, email_message
from metrics.errors import ConfigError, DeliveryError
from tests.alerts.channels import SMTP_PASSWORD, SMTP_USER, NotificationFactory, SmtpServer
from tests.servers import LOOPBACK, free_port

pytestmark = pytest.mark.integration
SENDER = "metrics@alerts.example"
TO = ("oncall@example.com", "sre@example.com")


def notifier(smtp: SmtpServer, **options: Any) -> EmailNotifier:
    settings: dict[str, Any] = {
        "server": smtp.host,
        "port": smtp.port,
        "sender": SENDER,
        "recipients": TO,
        "timeout": 5.0,
        "ssl_context": smtp.client_context,
    }
    settings.update(options)
    return EmailNotifier(**settings)


def parsed(content: bytes) -> EmailMessage:
    message = email.message_from_bytes(content, policy=default_policy)
    assert isinstance(message, EmailMessage)
    return message


def test_plain_and_html_parts_arrive_with_the_headers(
    smtp_server: SmtpServer, make_notification: NotificationFactory
) -> None:
    notifier(smtp_server).send(make_notification())
    [mail] = smtp_server.mailbox.mails
    assert mail.mail_from == SENDER
    assert mail.rcpt_tos == list(TO)
    assert not mail.tls  # not offered by this server, not required
    message = parsed(mail.content)
    assert message["Subject"] == "[FIRING HIGH] High CPU — system.cpu.usage_total host=web-1"
    assert message["From"] == SENDER
    assert message["To"] == ", ".join(TO)
    assert message["Date"] is not None
    assert message["Message-ID"].endswith("@alerts.example>")
    assert message["X-Alert-ID"] == "9f86d081884c7d65"
    assert message.get_content_type() == "multipart/alternative"
    plain = message.get_body(("plain",))
    rich = message.get_body(("html",))
    assert plain is not None
    assert rich is not None
    text = plain.get_content()
    assert "CPU on web-1 is 93.5% (> 90)" in text
    assert "Value:" in text
    assert "93.5" in text
    assert "Threshold:" in text
    assert "> 90" in text
    assert "Check the <top> processes & recent deploys." in text  # plain text is not escaped
    assert "Dashboard: https://grafana.example/d/cpu?var-host=web-1" in text
    assert "restart-service" in text
    assert "host=web-1" in text
    page = rich.get_content()
    assert "Check the &lt;top&gt; processes &amp; recent deploys." in page
    assert "<top>" not in page
    assert '<a href="https://grafana.example/d/cpu?var-host=web-1">Open dashboard</a>' in page
    assert "&gt; 90" in page


def test_resolved_mail_says_so_and_threads_with_the_firing_one(
    smtp_server: SmtpServer, make_notification: NotificationFactory
) -> None:
    sender = notifier(smtp_server)
    sender.send(make_notification())
    sender.send(make_notification(resolved=True))
    firing, resolved = (parsed(mail.content) for mail in smtp_server.mailbox.mails)
    assert resolved["Subject"].startswith("[RESOLVED HIGH] High CPU — ")
    assert resolved["References"] == firing["References"]
    assert resolved["Message-ID"] != firing["Message-ID"]
    body = resolved.get_body(("plain",))
    assert body is not None
    text = body.get_content()
    assert "after 15m 5s" in text
    assert "Last value:" in text
    assert "42" in text


def test_message_headers_stay_on_one_line(make_notification: NotificationFactory) -> None:
    message = email_message(
        make_notification(rule_name="High\r\nBcc: victim@example.com"), sender=SENDER, recipients=TO
    )
    assert "Bcc" not in message
    assert "\n" not in str(message["Subject"])


def test_starttls_is_used_when_offered_and_login_works(
    smtp_tls_server: SmtpServer, make_notification: NotificationFactory
) -> None:
    notifier(smtp_tls_server, username=SMTP_USER, password=SMTP_PASSWORD, require_tls=True).send(make_notification())
    [mail] = smtp_tls_server.mailbox.mails
    assert mail.tls
    assert mail.authenticated
    assert parsed(mail.content)["Subject"].startswith("[FIRING HIGH]")


def test_smtps_port_speaks_tls_from_the_start(smtps_server: SmtpServer, make_notification: NotificationFactory) -> None:
    notifier(smtps_server, implicit_tls=True).send(make_notification())  # the certificate is checked, name and all
    [mail] = smtps_server.mailbox.mails
    assert mail.tls


def test_required_tls_not_offered_is_permanent(smtp_server: SmtpServer, make_notification: NotificationFactory) -> None:
    with pytest.raises(DeliveryError, match="does not offer STARTTLS") as caught:
        notifier(smtp_server, require_tls=True).send(make_notification())
    assert caught.value.permanent
    assert smtp_server.mailbox.mails == []


def test_bad_password_is_permanent_and_never_shown(
    smtp_tls_server: SmtpServer, make_notification: NotificationFactory
) -> None:
    wrong = "wrong-Pa55word-xyz"
    with pytest.raises(DeliveryError, match="login as 'alerts' refused: 535") as caught:
        notifier(smtp_tls_server, username=SMTP_USER, password=wrong).send(make_notification())
    assert caught.value.permanent
    assert wrong not in str(caught.value)
    assert SMTP_PASSWORD not in str(caught.value)
    assert smtp_tls_server.mailbox.mails == []


def test_login_without_auth_offered_is_permanent(
    smtp_server: SmtpServer, make_notification: NotificationFactory
) -> None:
    with pytest.raises(DeliveryError, match="offers no AUTH") as caught:
        notifier(smtp_server, username=SMTP_USER, password=SMTP_PASSWORD).send(make_notification())
    assert caught.value.permanent
    assert SMTP_PASSWORD not in str(caught.value)


def test_untrusted_certificate_is_permanent(
    smtp_tls_server: SmtpServer, make_notification: NotificationFactory
) -> None:
    with pytest.raises(DeliveryError, match="certificate is not trusted") as caught:
        notifier(smtp_tls_server, ssl_context=ssl.create_default_context()).send(make_notification())
    assert caught.value.permanent


def test_server_down_is_retryable(make_notification: NotificationFactory) -> None:
    down = EmailNotifier(
        server=LOOPBACK, port=free_port(), sender=SENDER, recipients=TO, username=SMTP_USER, password=SMTP_PASSWORD
    )
    with pytest.raises(DeliveryError, match="ConnectionRefusedError") as caught:
        down.send(make_notification())
    assert not caught.value.permanent
    assert SMTP_PASSWORD not in str(caught.value)


def test_every_recipient_refused_is_permanent(smtp_server: SmtpServer, make_notification: NotificationFactory) -> None:
    smtp_server.mailbox.refused = set(TO)
    with pytest.raises(DeliveryError, match=r"every recipient was refused: oncall@example\.com: 550") as caught:
        notifier(smtp_server).send(make_notification())
    assert caught.value.permanent


def test_some_recipients_refused_still_delivers(
    smtp_server: SmtpServer, make_notification: NotificationFactory, caplog: pytest.LogCaptureFixture
) -> None:
    smtp_server.mailbox.refused = {"sre@example.com"}
    notifier(smtp_server).send(make_notification())
    [mail] = smtp_server.mailbox.mails
    assert mail.rcpt_tos == ["oncall@example.com"]
    assert "sre@example.com: 550" in caplog.text


@pytest.mark.parametrize(("reply", "permanent"), [("451 4.3.0 try again later", False), ("554 5.6.0 rejected", True)])
def test_smtp_answers_4xx_retryable_5xx_permanent(
    smtp_server: SmtpServer, make_notification: NotificationFactory, reply: str, permanent: bool
) -> None:
    smtp_server.mailbox.data_reply = reply
    with pytest.raises(DeliveryError, match=reply.split()[0]) as caught:
        notifier(smtp_server).send(make_notification())
    assert caught.value.permanent is permanent


def test_no_recipients_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="at least one recipient"):
        EmailNotifier(server=LOOPBACK, sender=SENDER, recipients=())

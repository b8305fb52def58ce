"""Email: a plain-text and HTML message over SMTP (``smtplib``), with STARTTLS whenever the server offers it.

The connection says EHLO, upgrades with STARTTLS when offered (refusing to go on in clear text when
``require_tls``), logs in when a username is set and sends one message to every recipient. Port 465 is
SMTP over TLS from the first byte (SMTPS). Refused credentials or recipients, an untrusted certificate and
5xx answers are permanent failures; connection errors, timeouts and 4xx answers are retryable. Messages of
one alert episode share a ``References`` header, so mail clients thread the firing and resolved mails.
"""

from __future__ import annotations

import html
import logging
import re
import smtplib
import socket
import ssl
from collections.abc import Sequence
from datetime import UTC, datetime
from email.message import EmailMessage
from email.utils import format_datetime, make_msgid

from alerts.notify import Notification, format_duration, format_value, redact
from metrics.errors import ConfigError, DeliveryError

SMTPS_PORT = 465
log = logging.getLogger(__name__)
_DOMAIN = re.compile(r"[A-Za-z0-9.-]+")


def default_sender() -> str:
    """``metrics@<this host's fully qualified name>``: the From address when none is configured."""
    return f"metrics@{socket.getfqdn()}"


class EmailNotifier:
    """Mails notifications through an SMTP server."""

    name = "email"

    def __init__(
        self,
        *,
        server: str,
        sender: str,
        recipients: Sequence[str],
        port: int = 25,
        username: str | None = None,
        password: str | None = None,
        require_tls: bool = False,
        timeout: float = 10.0,
        ssl_context: ssl.SSLContext | None = None,
        implicit_tls: bool | None = None,
    ) -> None:
        """Send through ``server:port`` from ``sender`` to ``recipients``.

        Args:
            server: the SMTP server's host name or address.
            sender: the From address (and envelope sender).
            recipients: the To addresses; at least one.
            port: the SMTP port (25, 587 for submission, 465 for SMTPS).
            username: log in as this user (after STARTTLS) when set.
            password: the user's password (a secret: never in an error message).
            require_tls: refuse to send (a permanent failure) when the server does not offer STARTTLS.
            timeout: seconds each SMTP step (connect, command, data) may take.
            ssl_context: the TLS context for STARTTLS and SMTPS (default: ``ssl.create_default_context()``).
            implicit_tls: TLS from the first byte (SMTPS); default: when ``port`` is 465.
        """
        if not recipients:
            raise ConfigError("EmailNotifier: give at least one recipient (METRICS_ALERT_EMAIL_TO)")
        self.server = server
        self.port = port
        self.sender = sender
        self.recipients = tuple(recipients)
        self.username = username
        self.require_tls = require_tls
        self.timeout = timeout
        self.implicit_tls = port == SMTPS_PORT if implicit_tls is None else implicit_tls
        self.where = f"email via {server}:{port}"
        self._password = password
        self._context = ssl_context

    def send(self, notification: Notification) -> None:
        """Mail ``notification`` to every recipient; raises DeliveryError (see the module for which are permanent)."""
        try:
            message = email_message(notification, sender=self.sender, recipients=self.recipients)
        except (ValueError, TypeError) as exc:  # an address or header email cannot encode
            raise DeliveryError(f"{self.where}: the message could not be built: {exc}", permanent=True) from None
        try:
            refused = self._deliver(message)
        except DeliveryError as exc:
            raise DeliveryError(redact(str(exc), [self._password]), permanent=exc.permanent) from None
        if refused:
            log.warning("%s: delivered, but these recipients were refused: %s", self.where, _refusals(refused))

    def _deliver(self, message: EmailMessage) -> dict[str, tuple[int, bytes]]:
        """Connect, secure, log in and send; the recipients refused while others took the message."""
        context = self._context or ssl.create_default_context()
        try:
            smtp = (
                smtplib.SMTP_SSL(self.server, self.port, timeout=self.timeout, context=context)
                if self.implicit_tls
                else smtplib.SMTP(self.server, self.port, timeout=self.timeout)
            )
            with smtp:
                smtp.ehlo()
                if not self.implicit_tls:
                    if smtp.has_extn("starttls"):
                        smtp.starttls(context=context)
                        smtp.ehlo()
                    elif self.require_tls:
                        raise DeliveryError(
                            f"{self.where}: the server does not offer STARTTLS and TLS is required (SMTP_REQUIRE_TLS)",
                            permanent=True,
                        )
                if self.username:
                    smtp.login(self.username, self._password or "")
                return smtp.send_message(message, from_addr=self.sender, to_addrs=list(self.recipients))
        except DeliveryError:
            raise
        except smtplib.SMTPAuthenticationError as exc:
            raise DeliveryError(
                f"{self.where}: login as {self.username!r} refused: {_answer(exc.smtp_code, exc.smtp_error)}",
                permanent=True,
            ) from None
        except smtplib.SMTPNotSupportedError:
            raise DeliveryError(
                f"{self.where}: the server offers no AUTH here, so {self.username!r} cannot log in", permanent=True
            ) from None
        except smtplib.SMTPRecipientsRefused as exc:
            codes = [code for code, _ in exc.recipients.values()]
            raise DeliveryError(
                f"{self.where}: every recipient was refused: {_refusals(exc.recipients)}",
                permanent=not any(400 <= code < 500 for code in codes),
            ) from None
        except smtplib.SMTPSenderRefused as exc:
            raise DeliveryError(
                f"{self.where}: sender {exc.sender!r} refused: {_answer(exc.smtp_code, exc.smtp_error)}",
                permanent=exc.smtp_code >= 500,
            ) from None
        except smtplib.SMTPResponseException as exc:  # a refused HELO, DATA or greeting
            raise DeliveryError(
                f"{self.where}: the server answered {_answer(exc.smtp_code, exc.smtp_error)}",
                permanent=exc.smtp_code >= 500,
            ) from None
        except ssl.SSLCertVerificationError as exc:
            raise DeliveryError(
                f"{self.where}: the server's TLS certificate is not trusted ({exc.verify_message})", permanent=True
            ) from None
        except (OSError, smtplib.SMTPException) as exc:  # refused, unreachable, timed out, disconnected, TLS failed
            raise DeliveryError(f"{self.where}: {type(exc).__name__}: {exc or 'connection failed'}") from None


def email_subject(notification: Notification) -> str:
    """``[FIRING HIGH] High CPU — system.cpu.usage_total host=web-1``."""
    return notification.headline


def email_message(notification: Notification, *, sender: str, recipients: Sequence[str]) -> EmailMessage:
    """The whole message: headers, a plain-text part and its HTML alternative."""
    n = notification
    domain = sender.rpartition("@")[2]
    domain = domain if _DOMAIN.fullmatch(domain) else "metrics.invalid"
    message = EmailMessage()
    message["Subject"] = email_subject(n)
    message["From"] = sender
    message["To"] = ", ".join(recipients)
    message["Date"] = format_datetime(datetime.now(UTC))
    message["Message-ID"] = make_msgid(idstring=f"alert.{n.alert_id}.{n.status}", domain=domain)
    thread = f"<alert.{n.alert_id}.{int(n.starts_at.timestamp())}@{domain}>"  # one thread per alert episode
    message["References"] = thread
    message["In-Reply-To"] = thread
    message["X-Alert-ID"] = n.alert_id
    message["X-Alert-Status"] = n.status
    message["X-Alert-Priority"] = n.priority
    message.set_content(plain_body(n))
    message.add_alternative(html_body(n), subtype="html")
    return message


def _facts(notification: Notification) -> list[tuple[str, str]]:
    """(label, text) rows every body shows."""
    n = notification
    rows = [
        ("Status", n.status.upper()),
        ("Priority", n.priority),
        ("Value" if n.firing else "Last value", format_value(n.value)),
        ("Threshold", n.condition),
        ("Series", n.series),
        ("Started", _when(n.starts_at)),
    ]
    if n.ends_at is not None and n.duration is not None:
        rows.append(("Resolved", f"{_when(n.ends_at)} (after {format_duration(n.duration)})"))
    if n.remediation:
        rows.append(("Remediation", n.remediation))
    rows.append(("Rule", f"{n.rule_name} ({n.rule_id})"))
    rows.append(("Alert", n.alert_id))
    return rows


def plain_body(notification: Notification) -> str:
    """The text/plain part."""
    n = notification
    lines = [n.summary, ""]
    if n.description.strip():
        lines += [n.description.strip(), ""]
    width = max(len(label) for label, _ in _facts(n)) + 2
    lines += [f"{label + ':':<{width}}{text}" for label, text in _facts(n)]
    if n.dashboard_url:
        lines += ["", f"Dashboard: {n.dashboard_url}"]
    for title, pairs in (("Labels", n.labels), ("Annotations", n.annotations)):
        if pairs:
            lines += ["", f"{title}:", *(f"  {key}={value}" for key, value in sorted(pairs.items()))]
    return "\n".join(lines) + "\n"


def html_body(notification: Notification) -> str:
    """The text/html part; every value escaped."""
    n = notification
    e = html.escape
    colour = {"LOW": "#2f6fbd", "MEDIUM": "#c98a00", "HIGH": "#d0451b", "CRITICAL": "#a3001b"}[n.priority]
    colour = colour if n.firing else "#2b8a3e"
    rows = "".join(
        f'<tr><th align="left" style="padding:2px 12px 2px 0">{e(label)}</th><td>{e(text)}</td></tr>'
        for label, text in _facts(n)
    )
    parts = [
        '<!DOCTYPE html><html><body style="font-family:sans-serif">',
        f'<h2 style="color:{colour}">{e(n.status.upper())} {e(n.priority)}: {e(n.rule_name)}</h2>',
        f"<p><strong>{e(n.summary)}</strong></p>",
    ]
    if n.description.strip():
        parts.append(f"<p>{e(n.description.strip()).replace(chr(10), '<br>')}</p>")
    parts.append(f"<table>{rows}</table>")
    if n.dashboard_url and n.dashboard_url.startswith(("https://", "http://")):
        parts.append(f'<p><a href="{e(n.dashboard_url, quote=True)}">Open dashboard</a></p>')
    for title, pairs in (("Labels", n.labels), ("Annotations", n.annotations)):
        if pairs:
            items = "".join(f"<li><code>{e(k)}={e(v)}</code></li>" for k, v in sorted(pairs.items()))
            parts.append(f"<h4>{e(title)}</h4><ul>{items}</ul>")
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _when(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M:%S UTC")


def _answer(code: int, text: bytes | str) -> str:
    shown = text.decode(errors="replace") if isinstance(text, bytes) else str(text)
    return f"{code} {' '.join(shown.split())}"[:300]


def _refusals(refused: dict[str, tuple[int, bytes]]) -> str:
    return "; ".join(f"{address}: {_answer(code, text)}" for address, (code, text) in sorted(refused.items()))

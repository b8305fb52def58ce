"""Channels for alerting tests: notifications, a recording HTTP server, real SMTP servers, a real Alertmanager.

Everything listens on 127.0.0.1 only. The HTTP receiver answers from a queue of replies (then 200), so a
test can script "500, then 200"; the SMTP servers are aiosmtpd controllers (plain; STARTTLS + AUTH with a
self-signed certificate; SMTPS); the Alertmanager is Debian's ``prometheus-alertmanager``, installed when
missing (the tests using it are skipped, saying why, only when it cannot be).
"""

from __future__ import annotations

import ipaddress
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from alerts.notify import Notification
from tests.servers import LOOPBACK, alertmanager, alertmanager_binary, alertmanager_config, free_port

SMTP_USER = "alerts"
SMTP_PASSWORD = "pw-Zq8!never-shown"
WAIT = 10.0  # seconds any wait for a request or a message may take


# --- notifications -----------------------------------------------------------------------------------------------

NotificationFactory = Callable[..., Notification]


@pytest.fixture
def make_notification() -> NotificationFactory:
    """A firing HIGH CPU notification; keyword arguments replace fields (``resolved=True`` resolves it 15 min later)."""

    def make(*, resolved: bool = False, **changes: Any) -> Notification:
        started = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
        base = Notification(
            alert_id="9f86d081884c7d65",
            rule_id="cpu-high",
            rule_name="High CPU",
            status="firing",
            priority="HIGH",
            summary="CPU on web-1 is 93.5% (> 90)",
            description="CPU usage has been above 90% for 5 minutes.\nCheck the <top> processes & recent deploys.",
            value=93.5,
            threshold=90.0,
            comparison=">",
            series="system.cpu.usage_total host=web-1",
            labels={"alertname": "High CPU", "priority": "HIGH", "host": "web-1", "team": "sre"},
            annotations={"runbook": "https://runbooks.example/cpu"},
            starts_at=started,
            ends_at=None,
            dashboard_url="https://grafana.example/d/cpu?var-host=web-1",
            remediation="restart-service: restart the web service on the host",
        )
        if resolved:
            base = replace(base, status="resolved", value=42.0, ends_at=started + timedelta(minutes=15, seconds=5))
        return replace(base, **changes)

    return make


# --- a recording HTTP server ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recorded:
    """One request the receiver got."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON."""
        return json.loads(self.body)


@dataclass(frozen=True)
class Reply:
    """What the receiver answers to one request: a status, a body, headers, and how long to wait first."""

    status: int = 200
    body: bytes | str | dict[str, Any] | list[Any] = b"ok"
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0


class Receiver:
    """A threaded HTTP server on loopback that records every request and answers from a queue of replies."""

    def __init__(self) -> None:
        self.requests: list[Recorded] = []
        self.default = Reply()
        self._replies: list[Reply] = []
        self._lock = threading.Lock()
        self._arrived = threading.Condition(self._lock)
        self._closing = threading.Event()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                receiver._handle(self)

            do_GET = do_PUT = do_POST  # noqa: N815 (http.server's names)

            def log_message(self, format: str, *args: Any) -> None:  # quiet
                pass

        self._server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self._server.daemon_threads = True
        self.port = int(self._server.server_address[1])
        self.url = f"http://{LOOPBACK}:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()

    def answer(self, *replies: Reply | int) -> None:
        """Answer the next requests with these replies (a bare int: that status), in order; then the default."""
        with self._lock:
            self._replies.extend(Reply(status=item) if isinstance(item, int) else item for item in replies)

    def wait_for(self, count: int, timeout: float = WAIT) -> list[Recorded]:
        """The first ``count`` requests, waiting at most ``timeout`` s for them to arrive."""
        deadline = time.monotonic() + timeout
        with self._arrived:
            while len(self.requests) < count:
                left = deadline - time.monotonic()
                assert left > 0, f"{len(self.requests)} of {count} requests arrived within {timeout} s"
                self._arrived.wait(left)
            return list(self.requests[:count])

    def close(self) -> None:
        """Stop serving (requests waiting on a delay are let go)."""
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=WAIT)

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        length = int(handler.headers.get("Content-Length") or 0)
        body = handler.rfile.read(length) if length else b""
        recorded = Recorded(handler.command, handler.path, {k.lower(): v for k, v in handler.headers.items()}, body)
        with self._arrived:
            self.requests.append(recorded)
            reply = self._replies.pop(0) if self._replies else self.default
            self._arrived.notify_all()
        if reply.delay:
            self._closing.wait(reply.delay)
        content = reply.body
        if isinstance(content, dict | list):
            content, kind = json.dumps(content).encode(), "application/json"
        elif isinstance(content, str):
            content, kind = content.encode(), "text/plain; charset=utf-8"
        else:
            kind = "text/plain"
        try:
            handler.send_response(reply.status)
            handler.send_header("Content-Type", kind)
            handler.send_header("Content-Length", str(len(content)))
            for name, value in reply.headers.items():
                handler.send_header(name, value)
            handler.end_headers()
            handler.wfile.write(content)
        except OSError:  # the client gave up (a timeout test)
            pass


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A recording HTTP server on loopback, answering 200 ``ok`` unless told otherwise."""
    server = Receiver()
    try:
        yield server
    finally:
        server.close()


@pytest.fixture
def closed_url() -> str:
    """An http:// URL on a loopback port nobody listens on (connection refused)."""
    return f"http://{LOOPBACK}:{free_port()}/hook/secret-path-T0KEN"


# --- SMTP servers ----------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Mail:
    """One message an SMTP server accepted."""

    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    authenticated: bool


class Mailbox:
    """An aiosmtpd handler that keeps every message; it can refuse recipients or answer DATA with an error."""

    def __init__(self) -> None:
        self.mails: list[Mail] = []
        self.refused: set[str] = set()
        self.data_reply: str | None = None

    async def handle_RCPT(  # noqa: N802 (aiosmtpd's hook names)
        self, server: SMTP, session: Session, envelope: Envelope, address: str, rcpt_options: list[str]
    ) -> str:
        """Refuse the addresses in ``refused`` (550), accept the others."""
        if address in self.refused:
            return f"550 5.1.1 <{address}>: no such user"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:  # noqa: N802
        """Keep the message, or answer ``data_reply``."""
        if self.data_reply is not None:
            return self.data_reply
        content = envelope.original_content or b""
        transport = server.transport
        implicit_tls = transport is not None and transport.get_extra_info("ssl_object") is not None
        self.mails.append(
            Mail(
                mail_from=str(envelope.mail_from),
                rcpt_tos=list(envelope.rcpt_tos),
                content=content,
                tls=session.ssl is not None or implicit_tls,
                authenticated=bool(session.authenticated),
            )
        )
        return "250 2.0.0 Message accepted"


def authenticate(server: SMTP, session: Session, envelope: Envelope, mechanism: str, auth_data: Any) -> AuthResult:
    """Accept ``SMTP_USER`` with ``SMTP_PASSWORD`` only."""
    ok = (
        isinstance(auth_data, LoginPassword)
        and auth_data.login == SMTP_USER.encode()
        and auth_data.password == SMTP_PASSWORD.encode()
    )
    return AuthResult(success=ok, handled=False)


@dataclass
class SmtpServer:
    """A running SMTP server: where it listens, what it received, and the TLS context that trusts it."""

    host: str
    port: int
    mailbox: Mailbox
    client_context: ssl.SSLContext | None = None


@dataclass(frozen=True)
class TlsFiles:
    """A self-signed certificate for 127.0.0.1 and localhost, and its key."""

    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        """A server-side TLS context with this certificate."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(self.cert, self.key)
        return context

    def client_context(self) -> ssl.SSLContext:
        """A client TLS context trusting (only) this certificate, host names checked."""
        return ssl.create_default_context(cafile=str(self.cert))


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    """A self-signed EC certificate valid for 127.0.0.1 and localhost, written once per session."""
    directory = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    files = TlsFiles(directory / "cert.pem", directory / "key.pem")
    files.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    files.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return files


@pytest.fixture
def smtp_start() -> Iterator[Callable[..., SmtpServer]]:
    """Start aiosmtpd controllers on free loopback ports (keyword arguments go to ``Controller``); all stop after."""
    started: list[Controller] = []

    def start(**options: Any) -> SmtpServer:
        mailbox = Mailbox()
        port = free_port()
        controller = Controller(mailbox, hostname=LOOPBACK, port=port, ready_timeout=WAIT, **options)
        controller.start()
        started.append(controller)
        return SmtpServer(LOOPBACK, port, mailbox)

    try:
        yield start
    finally:
        for controller in started:
            controller.stop()


@pytest.fixture
def smtp_server(smtp_start: Callable[..., SmtpServer]) -> SmtpServer:
    """A plain SMTP server: no STARTTLS, no AUTH."""
    return smtp_start()


@pytest.fixture
def smtp_tls_server(smtp_start: Callable[..., SmtpServer], tls_files: TlsFiles) -> SmtpServer:
    """An SMTP server offering STARTTLS (self-signed certificate) and AUTH after it, for ``SMTP_USER`` only."""
    server = smtp_start(
        tls_context=tls_files.server_context(),
        require_starttls=True,
        authenticator=authenticate,
        auth_require_tls=True,
        auth_required=True,
    )
    server.client_context = tls_files.client_context()
    return server


@pytest.fixture
def smtps_server(smtp_start: Callable[..., SmtpServer], tls_files: TlsFiles) -> SmtpServer:
    """An SMTPS server: TLS from the first byte (as on port 465)."""
    server = smtp_start(ssl_context=tls_files.server_context(), server_hostname="localhost")
    server.client_context = tls_files.client_context()
    return server


# --- a real Alertmanager ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunningAlertmanager:
    """A Prometheus Alertmanager on loopback and the receiver its ``am_test_recorder="yes"`` alerts notify."""

    url: str
    recorder: Receiver


@pytest.fixture(scope="session")
def alertmanager_path() -> str:
    """The Alertmanager executable (installed from Debian's package now if need be); else the test is skipped."""
    found, how = alertmanager_binary()
    if found is None:
        pytest.skip(how)
    print(f"alertmanager: {found} ({how})")
    return found


@pytest.fixture(scope="session")
def running_alertmanager(
    alertmanager_path: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningAlertmanager]:
    """One Alertmanager for the session: a null receiver, plus a webhook to a recorder for labelled alerts."""
    recorder = Receiver()
    directory = tmp_path_factory.mktemp("alertmanager")
    config = alertmanager_config(webhook_url=f"{recorder.url}/alertmanager")
    try:
        with alertmanager(alertmanager_path, directory, config=config) as url:
            yield RunningAlertmanager(url, recorder)
    finally:
        recorder.close()

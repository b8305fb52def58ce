"""``metrics serve`` over TLS, as a real subprocess: HTTPS with a self-signed certificate, TLS 1.2+ only."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from metrics.api.audit import close_audit_logs
from metrics.api.keys import close_key_stores, create_key
from metrics.settings import Settings
from tests.servers import free_port, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STARTUP_SECONDS = 90.0
STOP_SECONDS = 30.0


@dataclass
class Tls:
    cert: Path
    key: Path


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory) -> Tls:
    """A self-signed certificate for 127.0.0.1 and localhost."""
    folder = tmp_path_factory.mktemp("tls")
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "metrics-test")])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    paths = Tls(folder / "cert.pem", folder / "key.pem")
    paths.cert.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    paths.key.chmod(0o600)
    return paths


def client_context(tls: Tls, *, lowest: ssl.TLSVersion, highest: ssl.TLSVersion) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(tls.cert))
    context.minimum_version = lowest
    context.maximum_version = highest
    return context


@dataclass
class Server:
    url: str
    port: int
    process: subprocess.Popen[bytes]
    settings: Settings
    log: Path


@pytest.fixture(scope="module")
def server(tls: Tls, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """``python -m metrics serve`` with TLS on a free loopback port, healthy before the tests run."""
    folder = tmp_path_factory.mktemp("serve")
    settings = Settings(data_dir=folder / "data")
    port = free_port()
    log = (folder / "serve.log").open("wb")
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "metrics",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--workers",
            "1",
            "--tls-cert",
            str(tls.cert),
            "--tls-key",
            str(tls.key),
        ],
        cwd=folder,
        env={**os.environ, "METRICS_DATA_DIR": str(settings.data_dir), "METRICS_INSECURE_DEV": "false"},
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    url = f"https://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + STARTUP_SECONDS
        verify = client_context(tls, lowest=ssl.TLSVersion.TLSv1_2, highest=ssl.TLSVersion.MAXIMUM_SUPPORTED)
        while True:
            if process.poll() is not None:
                pytest.fail(f"metrics serve exited with {process.returncode}:\n{(folder / 'serve.log').read_text()}")
            try:
                if httpx.get(f"{url}/health", verify=verify, timeout=2).status_code in (200, 503):
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"metrics serve not healthy in {STARTUP_SECONDS} s:\n{(folder / 'serve.log').read_text()}")
            time.sleep(0.2)
        yield Server(url, port, process, settings, folder / "serve.log")
    finally:
        stop_process(process, STOP_SECONDS)
        log.close()
        close_key_stores()
        close_audit_logs()


def test_health_is_served_over_https_with_the_certificate(server: Server, tls: Tls) -> None:
    verify = client_context(tls, lowest=ssl.TLSVersion.TLSv1_2, highest=ssl.TLSVersion.MAXIMUM_SUPPORTED)
    response = httpx.get(f"{server.url}/health", verify=verify, timeout=10)
    assert response.status_code == 200
    assert response.json()["status"] == "ok"


def test_credentials_work_over_https(server: Server, tls: Tls) -> None:
    _, token = create_key(server.settings, "tls-reader", "reader")
    verify = client_context(tls, lowest=ssl.TLSVersion.TLSv1_2, highest=ssl.TLSVersion.MAXIMUM_SUPPORTED)
    query = f"{server.url}/api/v1/query?metric_pattern=*&start_time=1h"
    assert httpx.get(query, verify=verify, timeout=10).status_code == 401
    assert httpx.get(query, headers={"X-API-Key": token}, verify=verify, timeout=30).status_code == 200


@pytest.mark.parametrize("version", [ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3])
def test_tls_1_2_and_1_3_clients_connect(server: Server, tls: Tls, version: ssl.TLSVersion) -> None:
    context = client_context(tls, lowest=version, highest=version)
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
    ):
        assert wrapped.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


def tls11_client(tls: Tls) -> ssl.SSLContext:
    """A client that offers TLS 1.1 only (skips when the local OpenSSL cannot be made to speak it at all)."""
    try:
        with warnings.catch_warnings():  # TLS 1.1 is deprecated: that is the point of this client
            warnings.simplefilter("ignore", DeprecationWarning)
            context = client_context(tls, lowest=ssl.TLSVersion.TLSv1_1, highest=ssl.TLSVersion.TLSv1_1)
        context.set_ciphers("DEFAULT:@SECLEVEL=0")  # TLS 1.1 needs SHA-1 signatures, below the default level
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL cannot build a TLS 1.1 client: {exc}")
    return context


def tls11_control(tls: Tls, client: ssl.SSLContext) -> None:
    """Prove the client really speaks TLS 1.1: a local server that allows it must accept it (else skip)."""
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(tls.cert, tls.key)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            context.minimum_version = context.maximum_version = ssl.TLSVersion.TLSv1_1
        context.set_ciphers("DEFAULT:@SECLEVEL=0")
    except (ValueError, ssl.SSLError) as exc:
        pytest.skip(f"this OpenSSL cannot build a TLS 1.1 server for the control: {exc}")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(10)

        def accept() -> None:
            try:
                connection, _ = listener.accept()
                with context.wrap_socket(connection, server_side=True):
                    pass
            except (OSError, ssl.SSLError):
                pass

        thread = threading.Thread(target=accept, daemon=True)
        thread.start()
        try:
            with (
                socket.create_connection(listener.getsockname(), timeout=10) as raw,
                client.wrap_socket(raw, server_hostname="127.0.0.1") as wrapped,
            ):
                assert wrapped.version() == "TLSv1.1"
        except (OSError, ssl.SSLError) as exc:
            pytest.skip(f"this OpenSSL refuses TLS 1.1 even between consenting parties: {exc}")
        finally:
            thread.join(timeout=10)


def test_a_tls_1_1_client_is_refused(server: Server, tls: Tls) -> None:
    client = tls11_client(tls)
    tls11_control(tls, client)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw, pytest.raises(ssl.SSLError):
        client.wrap_socket(raw, server_hostname="127.0.0.1")


def test_plain_http_is_not_served_on_the_tls_port(server: Server) -> None:
    try:
        status = httpx.get(f"http://127.0.0.1:{server.port}/health", timeout=5).status_code
    except httpx.HTTPError:
        status = None  # the connection is dropped
    assert status in (None, 400)  # never the health report in the clear


def test_sigterm_stops_the_server(server: Server) -> None:
    # Last in the module: stopping is the fixture's job; this checks it ends cleanly and promptly.
    server.process.send_signal(signal.SIGTERM)
    # uvicorn shuts down gracefully, then ends by the signal it caught (so a supervisor sees why).
    assert server.process.wait(timeout=STOP_SECONDS) in (0, -signal.SIGTERM)
    log = server.log.read_text()
    assert "Finished server process" in log, log

"""The audit log: what is recorded, its line format, concurrent appends, rotation, and that no secret leaks."""

from __future__ import annotations

import logging
import re
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from fastapi import Depends
from fastapi.testclient import TestClient

from metrics.api import audit as audit_module
from metrics.api.app import create_app
from metrics.api.audit import AuditLog, close_audit_logs, read_audit, scrub
from metrics.api.auth import Principal, Role, requires
from metrics.api.keys import close_key_stores, create_key
from metrics.cli import main
from metrics.settings import Settings

JWT_SECRET = "audit-test-secret-that-is-long-enough-for-hs256"
BATCH = {"metrics": [{"metric_id": "audit.test", "value": 1.0}, {"metric_id": "bad name!", "value": 1.0}]}
FIELDS = ["ts", "principal", "role", "key_id", "auth", "ip", "method", "path", "action", "outcome", "detail"]


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    yield
    close_key_stores()
    close_audit_logs()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", flush_seconds=0.1, jwt_secret=JWT_SECRET)


def entries(settings: Settings) -> list[dict[str, Any]]:
    return read_audit(settings.state_dir / "audit.log")


def test_a_write_is_recorded_with_who_what_where_and_the_outcome(settings: Settings) -> None:
    key_id, token = create_key(settings, "ingest-bot", "writer")
    with TestClient(create_app(settings), client=("10.9.8.7", 4000)) as client:
        assert client.post("/api/v1/metrics?x=1", json=BATCH, headers={"X-API-Key": token}).status_code == 200
    [entry] = entries(settings)
    assert list(entry) == FIELDS
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", entry["ts"])
    assert entry | {"ts": None} == {
        "ts": None,
        "principal": "ingest-bot",
        "role": "writer",
        "key_id": key_id,
        "auth": "key",
        "ip": "10.9.8.7",
        "method": "POST",
        "path": "/api/v1/metrics",  # never the query string
        "action": "ingest_batch",
        "outcome": 200,
        "detail": {"stored": 1, "rejected": 1},
    }
    assert stat.S_IMODE((settings.state_dir / "audit.log").stat().st_mode) == 0o600


@pytest.mark.parametrize(
    ("role", "method", "path", "body", "audited", "outcome"),
    [
        (None, "GET", "/api/v1/query", None, True, 401),  # every refusal, reads included
        ("writer", "GET", "/api/v1/query", None, True, 403),
        ("reader", "GET", "/api/v1/query", None, False, 200),  # a successful read is not a write
        ("reader", "POST", "/api/v1/query", {"metric_pattern": "*"}, True, 200),  # every POST is
        ("reader", "POST", "/api/v1/metrics", BATCH, True, 403),
        (None, "GET", "/health", None, False, 200),
    ],
)
def test_what_is_recorded(
    settings: Settings, role: str | None, method: str, path: str, body: Any, audited: bool, outcome: int
) -> None:
    headers = {"X-API-Key": create_key(settings, f"{role}-key", role)[1]} if role else {}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        assert client.request(method, path, json=body, headers=headers).status_code == outcome
    recorded = entries(settings) if (settings.state_dir / "audit.log").exists() else []
    assert [(e["method"], e["path"], e["outcome"]) for e in recorded] == ([(method, path, outcome)] if audited else [])
    if audited and role:
        assert recorded[0]["principal"] == f"{role}-key"  # a refused principal is still named
    if audited and outcome >= 400:
        assert recorded[0]["detail"]  # the error message


def test_an_unexpected_error_is_recorded_as_500(settings: Settings) -> None:
    app = create_app(settings)

    async def boom() -> None:
        raise RuntimeError("boom")

    app.add_api_route("/api/v1/boom", boom, methods=["POST"], dependencies=[Depends(requires(Role.WRITER))])
    _, token = create_key(settings, "bot", "writer")
    with TestClient(app, raise_server_exceptions=False) as client:
        response = client.post("/api/v1/boom", headers={"X-API-Key": token})
    assert response.status_code == 500
    assert "boom" not in response.text  # no internals in the body
    assert [(e["action"], e["outcome"], e["principal"]) for e in entries(settings)] == [("boom", 500, "bot")]


def test_admin_command_line_actions_are_recorded(
    settings: Settings, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_DATA_DIR", str(settings.data_dir))
    assert main(["keys", "create", "--role", "reader", "--name", "dash"]) == 0
    key_id = capsys.readouterr().out.strip().splitlines()[-1].split("_")[1]
    assert main(["keys", "revoke", key_id]) == 0
    assert main(["keys", "revoke", "000000000000"]) == 1
    recorded = [(e["action"], e["outcome"], e["method"], e["role"], e["detail"]["key_id"]) for e in entries(settings)]
    assert recorded == [
        ("keys.create", "ok", "CLI", "admin", key_id),
        ("keys.revoke", "ok", "CLI", "admin", key_id),
        ("keys.revoke", "error", "CLI", "admin", "000000000000"),
    ]
    assert all(e["principal"].startswith("cli:") for e in entries(settings))


def test_no_secret_reaches_the_audit_log_the_error_bodies_or_the_server_log(
    settings: Settings, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]
) -> None:
    caplog.set_level(logging.DEBUG)
    _, writer = create_key(settings, "writer-bot", "writer")
    _, reader = create_key(settings, "reader-bot", "reader")
    good_jwt = jwt.encode({"sub": "svc", "role": "reader", "exp": int(time.time()) + 60}, JWT_SECRET)
    expired_jwt = jwt.encode({"sub": "svc", "role": "admin", "exp": int(time.time()) - 3600}, JWT_SECRET)
    forged_jwt = jwt.encode({"sub": "svc", "role": "admin", "exp": int(time.time()) + 60}, "x" * 40)
    wrong_key = writer[:-4] + "AAAA"
    secrets = [writer, reader, good_jwt, expired_jwt, forged_jwt, wrong_key, JWT_SECRET]
    requests: list[tuple[str, str, dict[str, str], Any]] = [
        ("POST", "/api/v1/metrics", {"Authorization": f"Bearer {writer}"}, BATCH),
        ("POST", "/api/v1/metrics", {"X-API-Key": reader}, BATCH),  # 403
        ("POST", "/api/v1/metrics", {"X-API-Key": wrong_key}, BATCH),  # 401
        ("POST", f"/api/v1/metrics?api_key={writer}", {}, BATCH),  # a key in the query string: 401, not logged
        ("GET", "/api/v1/query", {"Authorization": f"Bearer {good_jwt}"}, None),
        ("GET", "/api/v1/query", {"Authorization": f"Bearer {expired_jwt}"}, None),
        ("POST", "/api/v1/query", {"Authorization": f"Bearer {forged_jwt}"}, {}),
        ("GET", "/api/v1/query", {"Authorization": f"Basic {writer}"}, None),
        ("GET", "/api/v1/query", {"Authorization": f"Token {good_jwt}"}, None),
        ("POST", "/api/v1/metrics", {"X-API-Key": f"{writer} extra"}, BATCH),
    ]
    bodies: list[str] = []
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for method, path, headers, body in requests:
            bodies.append(client.request(method, path, headers=headers, json=body).text)
    assert main(["--data-dir", str(settings.data_dir), "keys", "list"]) == 0
    listing = capsys.readouterr().out
    audit_text = (settings.state_dir / "audit.log").read_text()
    assert len(audit_text.splitlines()) == len(requests) - 1  # all but the successful read
    # The server's log records (the test client's own httpx log shows the URL it was given, query string and all).
    server_log = "\n".join(r.getMessage() for r in caplog.records if not r.name.startswith(("httpx", "httpcore")))
    places = {"audit log": audit_text, "server log": server_log, "keys list": listing, **dict(enumerate(bodies))}
    for place, text in places.items():
        for secret in secrets:
            assert secret not in str(text), f"a secret leaked into {place}"
        assert writer.split("_", 2)[2][:12] not in str(text), f"part of a key leaked into {place}"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("key mk_0123456789ab_SECRETsecret-_x9 used", "key mk_0123456789ab_[redacted] used"),
        ("Bearer eyJhbGciOi.eyJzdWIi.c2lnbmF0dXJl", "Bearer [redacted-token]"),
        ("unsigned eyJhbGciOi.eyJzdWIi.", "unsigned [redacted-token]"),
        ("mk_ alone, and eyJ alone", "mk_ alone, and eyJ alone"),
        ("key id 0123456789ab", "key id 0123456789ab"),
    ],
)
def test_scrub(text: str, expected: str) -> None:
    assert scrub(text.encode()).decode() == expected


def test_a_secret_in_a_detail_is_scrubbed_on_the_way_out(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.log")
    log.record(action="keys.revoke", outcome="error", detail={"key_id": "mk_0123456789ab_" + "s" * 43})
    log.close()
    [entry] = read_audit(tmp_path / "audit.log")
    assert entry["detail"] == {"key_id": "mk_0123456789ab_[redacted]"}


def test_concurrent_writers_in_several_processes_never_interleave_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.log"
    logs = [AuditLog(path), AuditLog(path)]  # two open file descriptions, as two processes have
    principal = Principal("p" * 200, Role.WRITER, key_id="0123456789ab")

    def hammer(index: int) -> None:
        log = logs[index % 2]
        for i in range(300):
            log.record(action="ingest_batch", outcome=200, principal=principal, detail={"thread": index, "i": i})

    threads = [threading.Thread(target=hammer, args=(n,)) for n in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    for log in logs:
        log.close()
    recorded = read_audit(path)  # every line parses
    assert len(recorded) == 8 * 300
    assert sorted((e["detail"]["thread"], e["detail"]["i"]) for e in recorded) == [
        (t, i) for t in range(8) for i in range(300)
    ]


def test_the_log_follows_a_rotation(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(audit_module, "REOPEN_CHECK_SECONDS", 0.0)
    path = tmp_path / "audit.log"
    log = AuditLog(path)
    log.record(action="first", outcome=200)
    path.rename(tmp_path / "audit.log.1")  # what logrotate does before it creates a new file
    log.record(action="second", outcome=200)
    log.close()
    assert [e["action"] for e in read_audit(tmp_path / "audit.log.1")] == ["first"]
    assert [e["action"] for e in read_audit(path)] == ["second"]
    assert stat.S_IMODE(path.stat().st_mode) == 0o600

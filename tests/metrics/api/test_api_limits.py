"""Limits of the real app: the client allow-list, the request body size, the per-principal rate limit."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from metrics.api.app import create_app
from metrics.api.audit import close_audit_logs, read_audit
from metrics.api.auth import Principal, Role
from metrics.api.keys import close_key_stores, create_key
from metrics.api.limits import AllowListMiddleware, BodyLimitMiddleware, RateLimiter
from metrics.errors import RateLimitedError
from metrics.settings import Settings

BATCH = {"metrics": [{"metric_id": "limits.test", "value": 1.0}]}


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    yield
    close_key_stores()
    close_audit_logs()


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", flush_seconds=0.1, **overrides)


def audit_entries(settings: Settings) -> list[dict[str, Any]]:
    return read_audit(settings.state_dir / "audit.log")


# -- allow-list ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("networks", "client", "path", "status"),
    [
        ((), "203.0.113.9", "/health", 200),
        (("10.0.0.0/8",), "10.1.2.3", "/health", 200),
        (("10.0.0.0/8",), "192.168.1.1", "/health", 403),  # /health is behind the allow-list too
        (("10.0.0.0/8",), "192.168.1.1", "/api/v1/query", 403),  # refused before authentication (not 401)
        (("10.0.0.0/8",), "10.1.2.3", "/api/v1/query", 401),  # allowed in, then asked for credentials
        (("127.0.0.1", "::1"), "::1", "/health", 200),
        (("127.0.0.1",), "127.0.0.2", "/health", 403),
        (("10.0.0.0/8",), "::ffff:10.0.0.5", "/health", 200),  # IPv4-mapped IPv6
        (("2001:db8::/32",), "2001:db8::1", "/health", 200),
        (("2001:db8::/32",), "2001:db9::1", "/health", 403),
        (("10.0.0.0/8",), "testclient", "/health", 403),  # not an address: refused
        (("10.0.0.1/8",), "10.200.0.1", "/health", 200),  # host bits are ignored, as the settings allow
    ],
)
def test_the_allow_list(tmp_path: Path, networks: tuple[str, ...], client: str, path: str, status: int) -> None:
    settings = settings_for(tmp_path, allowed_ips=networks)
    with TestClient(create_app(settings), client=(client, 50000), raise_server_exceptions=False) as test_client:
        response = test_client.get(path)
    assert response.status_code == status
    if status == 403:
        assert "not allowed" in response.json()["error"]
        entry = audit_entries(settings)[-1]
        assert (entry["action"], entry["outcome"], entry["ip"], entry["path"]) == ("allow-list", 403, client, path)


def test_allow_list_decisions_are_remembered_per_address() -> None:
    middleware = AllowListMiddleware(app=lambda *a: None, networks=["10.0.0.0/8"])  # type: ignore[arg-type,return-value]
    assert [middleware.allows(h) for h in ("10.0.0.1", "10.0.0.1", "11.0.0.1", None)] == [True, True, False, False]
    assert middleware._decided == {"10.0.0.1": True, "11.0.0.1": False}


# -- body size ---------------------------------------------------------------------------------------------------
class Recorder:
    """An ASGI app that reads the whole body, answering 200 with its size (or what it made of an error)."""

    def __init__(self) -> None:
        self.called = False
        self.received = 0

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        self.called = True
        while True:
            message = await receive()
            self.received += len(message.get("body", b""))
            if not message.get("more_body"):
                break
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": str(self.received).encode()})


def run_limited(limit: int, declared: int | None, chunks: list[bytes], app: Any) -> tuple[int, bytes, int]:
    """Send ``chunks`` through a BodyLimitMiddleware; return (status, body, chunks the client had to send)."""
    headers = [(b"content-length", str(declared).encode())] if declared is not None else []
    scope = {"type": "http", "method": "POST", "path": "/x", "headers": headers}
    pending = list(chunks)
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        body = pending.pop(0)
        return {"type": "http.request", "body": body, "more_body": bool(pending)}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(BodyLimitMiddleware(app, max_bytes=limit)(scope, receive, send))
    status = next(m["status"] for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return status, body, len(chunks) - len(pending)


@pytest.mark.parametrize(
    ("declared", "chunks", "status", "app_called", "chunks_read"),
    [
        (1000, [b"x" * 1000], 200, True, 1),
        (1024, [b"x" * 512, b"x" * 512], 200, True, 2),  # exactly the limit
        (5000, [b"x" * 1000] * 5, 413, False, 0),  # declared too large: refused before reading anything
        (None, [b"x" * 1000] * 5, 413, True, 2),  # streamed: refused once the count passes the limit
        (100, [b"x" * 100, b"x" * 2000], 413, True, 2),  # a lying Content-Length is caught by the count
        (None, [b""], 200, True, 1),
    ],
)
def test_the_body_limit(
    declared: int | None, chunks: list[bytes], status: int, app_called: bool, chunks_read: int
) -> None:
    app = Recorder()
    got_status, body, read = run_limited(1024, declared, chunks, app)
    assert got_status == status
    assert app.called is app_called
    assert read == chunks_read
    if status == 413:
        assert "larger than 1024 bytes" in json.loads(body)["error"]


def test_an_oversized_body_is_refused_by_the_app_with_413_declared_or_streamed(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, max_body_bytes=2048, insecure_dev=True)
    big = json.dumps({"metrics": [{"metric_id": "limits.test", "value": float(i)} for i in range(200)]}).encode()
    assert len(big) > 2048
    headers = {"content-type": "application/json"}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        declared = client.post("/api/v1/metrics", content=big, headers=headers)
        streamed = client.post(
            "/api/v1/metrics", content=iter([big[i : i + 500] for i in range(0, len(big), 500)]), headers=headers
        )
        query = client.post("/api/v1/query", content=iter([b'{"metric_pattern": "' + b"a" * 3000, b'"}']))
        small = client.post("/api/v1/metrics", json=BATCH)
    assert (declared.status_code, streamed.status_code, query.status_code, small.status_code) == (413, 413, 413, 200)
    assert "METRICS_MAX_BODY_BYTES" in declared.json()["error"]
    assert "METRICS_MAX_BODY_BYTES" in streamed.json()["error"]
    outcomes = [(e["action"], e["outcome"]) for e in audit_entries(settings)]
    assert outcomes[:3] == [("body-limit", 413)] * 3


# -- rate limit -------------------------------------------------------------------------------------------------
class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


ALICE = Principal("alice", Role.WRITER, key_id="a" * 12)
BOB = Principal("bob", Role.WRITER, key_id="b" * 12)


@pytest.mark.parametrize(
    ("rate", "burst", "steps", "expected"),
    [
        # (seconds to advance, principal) -> allowed, or the Retry-After it was refused with
        (2.0, None, [(0, ALICE), (0, ALICE), (0, ALICE)], [True, True, 0.5]),
        (2.0, None, [(0, ALICE), (0, ALICE), (0.5, ALICE), (0, ALICE)], [True, True, True, 0.5]),
        (2.0, None, [(0, ALICE), (0, ALICE), (0, BOB), (0, BOB), (0, BOB)], [True, True, True, True, 0.5]),
        (0.5, None, [(0, ALICE), (0, ALICE), (1.0, ALICE), (1.0, ALICE)], [True, 2.0, 1.0, True]),
        (1.0, 3.0, [(0, ALICE)] * 4, [True, True, True, 1.0]),
        (100.0, None, [(0, ALICE)] * 100 + [(0, ALICE)], [True] * 100 + [0.01]),
    ],
)
def test_the_token_bucket(
    rate: float, burst: float | None, steps: list[tuple[float, Principal]], expected: list[bool | float]
) -> None:
    clock = Clock()
    limiter = RateLimiter(rate, burst, clock=clock)
    outcomes: list[bool | float] = []
    for advance, principal in steps:
        clock.now += advance
        try:
            limiter.check(principal)
            outcomes.append(True)
        except RateLimitedError as exc:
            outcomes.append(round(exc.retry_after, 6))
    assert outcomes == expected


def test_rate_limited_requests_get_429_with_retry_after_per_key(tmp_path: Path) -> None:
    settings = settings_for(tmp_path, rate_limit=0.01)  # one request, then 100 s to wait
    _, first = create_key(settings, "busy-bot", "writer")
    _, second = create_key(settings, "quiet-bot", "writer")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        ok = client.post("/api/v1/metrics", json=BATCH, headers={"X-API-Key": first})
        limited = client.post("/api/v1/metrics", json=BATCH, headers={"X-API-Key": first})
        other = client.post("/api/v1/metrics", json=BATCH, headers={"X-API-Key": second})
    assert (ok.status_code, limited.status_code, other.status_code) == (200, 429, 200)
    assert 90 <= int(limited.headers["retry-after"]) <= 100
    assert "rate limit" in limited.json()["error"]
    assert first not in limited.text
    refused = [e for e in audit_entries(settings) if e["outcome"] == 429]
    assert [(e["principal"], e["action"]) for e in refused] == [("busy-bot", "ingest_batch")]

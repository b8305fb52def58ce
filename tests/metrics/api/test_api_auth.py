"""Authentication and authorisation of the real app: API keys, JWTs (HS256, RS256), roles, and the route table."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastapi.routing
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import FastAPI
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from starlette.requests import Request
from starlette.routing import Mount

from metrics.api.app import create_app
from metrics.api.audit import close_audit_logs
from metrics.api.auth import Role, authenticate
from metrics.api.keys import close_key_stores, create_key, revoke_key
from metrics.settings import Settings

SECRET = "test-only-hs256-secret-with-32-bytes-or-more"
PUBLIC_PATHS = {"/health", "/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"}
# The web UI: the login itself, the script and styles it loads, and "/" (a redirect) are public;
# a dashboard page sends a visitor without a session to the login page (see test_api_dashboards).
PUBLIC_PATHS |= {"/", "/login", "/logout", "/static", "/static/", "/dashboards"}
PAGE_PATHS = {"/dashboards/{name}"}
INGEST = ("POST", "/api/v1/metrics")
QUERY = ("GET", "/api/v1/query")


@pytest.fixture(autouse=True)
def _fresh_state() -> Iterator[None]:
    yield
    close_key_stores()
    close_audit_logs()


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[rsa.RSAPrivateKey, bytes, rsa.RSAPrivateKey]:
    """The signing key whose public half the server trusts (PEM), and a stranger's key."""
    trusted = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public = trusted.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return trusted, public, stranger


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    return Settings(data_dir=tmp_path / "data", flush_seconds=0.1, **overrides)


@pytest.fixture
def jwt_settings(tmp_path: Path, rsa_keys: tuple[rsa.RSAPrivateKey, bytes, rsa.RSAPrivateKey]) -> Settings:
    pem = tmp_path / "jwt-public.pem"
    pem.write_bytes(rsa_keys[1])
    return settings_for(tmp_path, jwt_secret=SECRET, jwt_public_key=pem)


@pytest.fixture
def client(jwt_settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(jwt_settings), raise_server_exceptions=False) as test_client:
        yield test_client


def call(client: TestClient, route: tuple[str, str], headers: dict[str, str] | None = None) -> Any:
    """One request to ``route`` that succeeds when authorised (a tiny valid batch, or a query)."""
    method, path = route
    if method == "POST":
        body = {"metrics": [{"metric_id": "auth.test", "value": 1.0}]}
        return client.post(path, json=body, headers=headers or {})
    return client.get(path, params={"metric_pattern": "auth.*", "start_time": "1h"}, headers=headers or {})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def claims(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"sub": "svc-a", "role": "reader", "exp": int(time.time()) + 600}
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def hand_signed(header: dict[str, Any], payload: dict[str, Any], key: bytes | None) -> str:
    """A JWT built by hand (PyJWT refuses to make the malicious ones): HS256 with ``key``, or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b"" if key is None else hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return f"{signing_input}.{b64(signature)}"


@dataclass(frozen=True)
class JwtCase:
    name: str
    status: int
    reason: str = ""
    route: tuple[str, str] = QUERY


def make_token(case: str, keys: tuple[rsa.RSAPrivateKey, bytes, rsa.RSAPrivateKey]) -> str:
    trusted, public_pem, stranger = keys
    now = int(time.time())
    tokens = {
        "hs256 reader": lambda: jwt.encode(claims(), SECRET, algorithm="HS256"),
        "rs256 reader": lambda: jwt.encode(claims(), trusted, algorithm="RS256"),
        "rs256 writer ingests": lambda: jwt.encode(claims(role="writer"), trusted, algorithm="RS256"),
        "hs256 admin ingests": lambda: jwt.encode(claims(role="admin"), SECRET, algorithm="HS256"),
        "alg none": lambda: hand_signed({"alg": "none", "typ": "JWT"}, claims(role="admin"), None),
        "alg None spelled oddly": lambda: hand_signed({"alg": "None"}, claims(role="admin"), None),
        "alg missing": lambda: hand_signed({"typ": "JWT"}, claims(), SECRET.encode()),
        "hs512 not configured": lambda: jwt.encode(claims(), SECRET * 2, algorithm="HS512"),
        "hs256 keyed with the rsa public key": lambda: hand_signed({"alg": "HS256"}, claims(), public_pem),
        "hs256 wrong secret": lambda: jwt.encode(claims(), "another-secret-of-sufficient-length!!", algorithm="HS256"),
        "rs256 stranger": lambda: jwt.encode(claims(), stranger, algorithm="RS256"),
        "expired": lambda: jwt.encode(claims(exp=now - 3600), SECRET, algorithm="HS256"),
        "not yet valid": lambda: jwt.encode(claims(nbf=now + 3600), SECRET, algorithm="HS256"),
        "no sub": lambda: jwt.encode(claims(sub=None), SECRET, algorithm="HS256"),
        "no role": lambda: jwt.encode(claims(role=None), SECRET, algorithm="HS256"),
        "no exp": lambda: jwt.encode(claims(exp=None), SECRET, algorithm="HS256"),
        "unknown role": lambda: jwt.encode(claims(role="root"), SECRET, algorithm="HS256"),
        "role not text": lambda: jwt.encode(claims(role=["admin"]), SECRET, algorithm="HS256"),
        "empty sub": lambda: jwt.encode(claims(sub=" "), SECRET, algorithm="HS256"),
        "reader ingests": lambda: jwt.encode(claims(), SECRET, algorithm="HS256"),
        "malformed": lambda: "abc.def.ghi",
        "tampered payload": lambda: _tampered(jwt.encode(claims(), SECRET, algorithm="HS256")),
    }
    return tokens[case]()


def _tampered(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64(json.dumps(claims(role='admin')).encode())}.{signature}"


JWT_CASES = [
    JwtCase("hs256 reader", 200),
    JwtCase("rs256 reader", 200),
    JwtCase("rs256 writer ingests", 200, route=INGEST),
    JwtCase("hs256 admin ingests", 200, route=INGEST),
    JwtCase("alg none", 401, "algorithm not accepted"),
    JwtCase("alg None spelled oddly", 401, "algorithm not accepted"),
    JwtCase("alg missing", 401, "algorithm not accepted"),
    JwtCase("hs512 not configured", 401, "algorithm not accepted"),
    JwtCase("hs256 keyed with the rsa public key", 401, "signature invalid"),
    JwtCase("hs256 wrong secret", 401, "signature invalid"),
    JwtCase("rs256 stranger", 401, "signature invalid"),
    JwtCase("tampered payload", 401, "signature invalid"),
    JwtCase("expired", 401, "token expired"),
    JwtCase("not yet valid", 401, "not yet valid"),
    JwtCase("no sub", 401, "required claim 'sub'"),
    JwtCase("no role", 401, "required claim 'role'"),
    JwtCase("no exp", 401, "required claim 'exp'"),
    JwtCase("unknown role", 401, "'role' is not a role"),
    JwtCase("role not text", 401, "'role' is not a role"),
    JwtCase("empty sub", 401, "'sub' must be"),
    JwtCase("malformed", 401, "token malformed"),
    JwtCase("reader ingests", 403, "needs 'writer'", route=INGEST),
]


@pytest.mark.parametrize("case", JWT_CASES, ids=[c.name for c in JWT_CASES])
def test_jwts(
    client: TestClient,
    jwt_settings: Settings,
    rsa_keys: tuple[rsa.RSAPrivateKey, bytes, rsa.RSAPrivateKey],
    case: JwtCase,
) -> None:
    token = make_token(case.name, rsa_keys)
    response = call(client, case.route, {"Authorization": f"Bearer {token}"})
    assert response.status_code == case.status, response.text
    if case.status != 200:
        assert case.reason in response.json()["error"]
        assert token not in response.text
    if case.status == 401:
        assert response.headers["www-authenticate"] == "Bearer"
    assert token not in (jwt_settings.state_dir / "audit.log").read_text()


def test_a_jwt_is_refused_when_jwts_are_not_configured(tmp_path: Path) -> None:
    token = jwt.encode(claims(), SECRET, algorithm="HS256")
    with TestClient(create_app(settings_for(tmp_path)), raise_server_exceptions=False) as client:
        response = call(client, QUERY, {"Authorization": f"Bearer {token}"})
    assert response.status_code == 401
    assert "JWT authentication is off" in response.json()["error"]


def test_a_jwt_principal_is_named_by_its_subject_in_the_audit_log(client: TestClient, jwt_settings: Settings) -> None:
    token = jwt.encode(claims(sub="deploy-bot", role="writer", jti="run-42"), SECRET, algorithm="HS256")
    assert call(client, INGEST, {"Authorization": f"Bearer {token}"}).status_code == 200
    entry = json.loads((jwt_settings.state_dir / "audit.log").read_text().splitlines()[-1])
    assert (entry["principal"], entry["role"], entry["key_id"], entry["auth"]) == (
        "deploy-bot",
        "writer",
        "run-42",
        "jwt",
    )


@pytest.fixture
def tokens(jwt_settings: Settings) -> dict[str, str]:
    """One API key per role."""
    return {role.value: create_key(jwt_settings, f"{role.value}-key", role)[1] for role in Role}


@pytest.mark.parametrize(
    ("role", "route", "status"),
    [
        ("reader", QUERY, 200),
        ("reader", INGEST, 403),
        ("writer", QUERY, 403),
        ("writer", INGEST, 200),
        ("admin", QUERY, 200),
        ("admin", INGEST, 200),
    ],
)
def test_roles_decide_what_a_key_may_do(
    client: TestClient, tokens: dict[str, str], role: str, route: tuple[str, str], status: int
) -> None:
    assert call(client, route, {"Authorization": f"Bearer {tokens[role]}"}).status_code == status


@pytest.mark.parametrize(
    ("headers", "status", "reason"),
    [
        (lambda t: {"Authorization": f"Bearer {t}"}, 200, ""),
        (lambda t: {"Authorization": f"bearer {t}"}, 200, ""),
        (lambda t: {"X-API-Key": t}, 200, ""),
        (lambda t: {"Authorization": f"Basic {t}"}, 401, "expected 'Bearer"),
        (lambda t: {"Authorization": "Bearer "}, 401, "expected 'Bearer"),
        (lambda t: {"Authorization": f"Bearer {t}", "X-API-Key": t}, 401, "not both"),
        (lambda t: {"X-API-Key": "letmein"}, 401, "not an API key"),
        (lambda t: {"X-API-Key": t[:-2]}, 401, "API key"),
        (lambda t: {}, 401, "credentials required"),
    ],
)
def test_api_key_headers(client: TestClient, tokens: dict[str, str], headers: Any, status: int, reason: str) -> None:
    token = tokens["admin"]
    response = call(client, QUERY, headers(token))
    assert response.status_code == status
    if status != 200:
        assert reason in response.json()["error"]
        assert token[:-2] not in response.text


def test_a_revoked_key_is_refused_by_the_running_app(client: TestClient, jwt_settings: Settings) -> None:
    key_id, token = create_key(jwt_settings, "soon-gone", "reader")
    assert call(client, QUERY, {"X-API-Key": token}).status_code == 200
    revoke_key(jwt_settings, key_id)
    response = call(client, QUERY, {"X-API-Key": token})
    assert response.status_code == 401
    assert "revoked" in response.json()["error"]


def test_insecure_dev_admits_requests_without_credentials(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path, insecure_dev=True))) as client:
        assert call(client, INGEST).status_code == 200
        assert call(client, QUERY).status_code == 200


# -- the route table: nothing but the public pages is reachable without credentials --------------------------
def dependency_roles(dependant: Any) -> list[Role]:
    """Every ``requires(role)`` in a route's dependency tree."""
    found = [dependant.call.required_role] if hasattr(dependant.call, "required_role") else []
    for child in dependant.dependencies:
        found.extend(dependency_roles(child))
    return found


def routes_of(app: FastAPI) -> list[tuple[str, set[str], Any]]:
    """(path, methods, route) of every route, included routers flattened; mounts probed at and below their path."""
    # FastAPI >= 0.150 keeps included routers as branches of app.routes; iter_route_contexts walks them.
    flatten = getattr(fastapi.routing, "iter_route_contexts", None)
    routes = list(flatten(app.routes)) if flatten is not None else list(app.routes)
    table: list[tuple[str, set[str], Any]] = []
    for route in routes:
        path = route.path or ""
        if isinstance(getattr(route, "original_route", route), Mount):
            table.append((path or "/", {"GET"}, route))
            table.append((f"{path}/", {"GET"}, route))
        else:
            table.append((path, set(route.methods or {"GET"}) - {"HEAD"}, route))
    return table


def unprotected_routes(app: FastAPI) -> list[str]:
    """Every route but the public pages that lacks a requires(role) dependency or answers without credentials."""
    problems: list[str] = []
    probed = 0
    with TestClient(app, raise_server_exceptions=False, follow_redirects=False) as client:
        for path, methods, route in routes_of(app):
            if path in PUBLIC_PATHS:
                continue
            page = path in PAGE_PATHS
            if (
                isinstance(getattr(route, "original_route", route), APIRoute)
                and not dependency_roles(route.dependant)
                and not page
            ):
                problems.append(f"{path}: no requires(role) dependency")
            url = re.sub(r"\{[^}/]+(:[^}]+)?\}", "x", path)
            for method in sorted(methods):
                response = client.request(method, url, json={})
                probed += 1
                if path in PAGE_PATHS:
                    if response.status_code != 303 or not response.headers["location"].startswith("/login?next="):
                        problems.append(f"{method} {url}: {response.status_code}, expected 303 to the login page")
                elif response.status_code != 401:
                    problems.append(f"{method} {url}: {response.status_code} without credentials, expected 401")
    assert probed >= 3  # ingest, query GET and POST at least
    return problems


def test_every_route_but_the_public_pages_requires_credentials(tmp_path: Path) -> None:
    problems = unprotected_routes(create_app(settings_for(tmp_path)))
    assert not problems, "\n".join(problems)


def test_the_route_walk_catches_an_unprotected_route(tmp_path: Path) -> None:
    app = create_app(settings_for(tmp_path))

    async def oops() -> dict[str, bool]:
        return {"ok": True}

    app.add_api_route("/api/v1/oops/{item}", oops, methods=["DELETE"])
    assert unprotected_routes(app) == [
        "/api/v1/oops/{item}: no requires(role) dependency",
        "DELETE /api/v1/oops/x: 200 without credentials, expected 401",
    ]


def test_the_public_pages_stay_public(tmp_path: Path) -> None:
    with TestClient(create_app(settings_for(tmp_path))) as client:
        for path in ("/health", "/openapi.json", "/docs"):
            assert client.get(path).status_code == 200, path


# -- cost of authenticating one request with a cached key ----------------------------------------------------
@pytest.mark.performance
def test_cost_of_authenticating_with_a_cached_key(tmp_path: Path) -> None:
    settings = settings_for(tmp_path)
    app = create_app(settings)
    _, token = create_key(settings, "bench", "writer")
    scope = {
        "type": "http",
        "app": app,
        "method": "POST",
        "path": "/api/v1/metrics",
        "headers": [(b"authorization", f"Bearer {token}".encode())],
        "state": {},
    }

    async def measure(rounds: int) -> float:
        await authenticate(Request(scope))  # the one KDF
        started = time.perf_counter()
        for _ in range(rounds):
            principal = await authenticate(Request(dict(scope, state={})))
        elapsed = time.perf_counter() - started
        assert principal.role is Role.WRITER
        return elapsed / rounds

    per_request = asyncio.run(measure(20_000))
    print(f"\nauthenticate() with a cached API key: {per_request * 1e6:.1f} µs per request")  # printed, not asserted

"""The web UI's login, session cookie and CSRF rules, and ``/api/v1/dashboards``, on the real app (TestClient)."""

from __future__ import annotations

import re
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import jwt
import polars as pl
import pytest
from fastapi.testclient import TestClient

from metrics.api.app import create_app
from metrics.api.audit import close_audit_logs, read_audit
from metrics.api.auth import Principal, Role
from metrics.api.keys import close_key_stores, create_key, revoke_key
from metrics.api.sessions import LOGIN_COOKIE, SESSION_COOKIE, RevokedSessions, Session, SessionSigner
from metrics.errors import AuthenticationError
from metrics.settings import Settings
from metrics.web.boards import DASHBOARDS
from storage.store import MetricStore

JWT_SECRET = "a-test-secret-of-at-least-32-bytes!!"


@dataclass
class Web:
    """A browser-like client of the real app, the settings and a key per role."""

    client: TestClient
    settings: Settings
    tokens: dict[str, str]
    key_ids: dict[str, str]

    def login(self, credential: str, next_page: str = "/dashboards/system") -> object:
        """Fill in and send the login form as a browser would (nonce cookie and hidden field)."""
        page = self.client.get("/login", params={"next": next_page})
        nonce = re.search(r'name="csrf" value="([^"]+)"', page.text)
        assert nonce is not None
        return self.client.post(
            "/login",
            content=f"credential={credential}&csrf={nonce.group(1)}&next={next_page}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )

    def csrf(self) -> str:
        page = self.client.get("/dashboards/system")
        found = re.search(r'data-csrf="([^"]+)"', page.text)
        assert found is not None
        return found.group(1)


def fill(settings: Settings) -> None:
    """Two hosts of CPU over the last 20 minutes."""
    now = datetime.now(UTC)
    frame = pl.DataFrame(
        {
            "ts": [now - timedelta(seconds=10 * i) for i in range(120, 0, -1)] * 2,
            "metric": "system.cpu.usage_total",
            "value": [float(i % 50) for i in range(240)],
            "type": "gauge",
            "host": ["web-1"] * 120 + ["web-2"] * 120,
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )
    store = MetricStore(settings).open(background_flush=False)
    try:
        store.ingest_frame(frame)
        store.flush()
    finally:
        store.close()


def make_web(tmp_path: Path, **options: object) -> Iterator[Web]:
    settings = Settings(data_dir=tmp_path / "data", flush_seconds=0.1, jwt_secret=JWT_SECRET, **options)  # type: ignore[arg-type]
    fill(settings)
    tokens, key_ids = {}, {}
    for role in ("reader", "writer"):
        key_ids[role], tokens[role] = create_key(settings, f"{role}-person", role)
    base = "https://testserver" if settings.tls_cert else "http://testserver"
    with TestClient(create_app(settings), base_url=base, raise_server_exceptions=False) as client:
        yield Web(client, settings, tokens, key_ids)
    close_key_stores()
    close_audit_logs()


@pytest.fixture
def web(tmp_path: Path) -> Iterator[Web]:
    yield from make_web(tmp_path)


def test_pages_need_a_login_and_wrong_credentials_get_the_login_page_not_data(web: Web) -> None:
    page = web.client.get("/dashboards/security?range=6h", follow_redirects=False)
    assert page.status_code == 303
    assert page.headers["location"] == "/login?next=%2Fdashboards%2Fsecurity%3Frange%3D6h"
    assert web.client.get("/api/v1/dashboards/system/panels/cpu").status_code == 401
    for wrong in ("mk_000000000000_nope", "not-a-token", "", jwt.encode({"sub": "x"}, "wrong" * 8, "HS256")):
        answer = web.login(wrong)
        assert answer.status_code == 401  # type: ignore[attr-defined]
        assert "was not accepted" in answer.text  # type: ignore[attr-defined]
        assert "<form" in answer.text  # type: ignore[attr-defined]
        assert SESSION_COOKIE not in web.client.cookies
    assert web.client.get("/api/v1/dashboards/system/panels/cpu").status_code == 401
    refused = [line for line in read_audit(web.settings.state_dir / "audit.log") if line["action"] == "login"]
    assert [line["outcome"] for line in refused] == [401] * 4
    assert all("nope" not in str(line) for line in refused)  # the credential tried is never logged


def test_login_sets_a_strict_http_only_cookie_and_opens_the_page(web: Web) -> None:
    answer = web.login(web.tokens["reader"], "/dashboards/keys?range=24h")
    assert answer.status_code == 303  # type: ignore[attr-defined]
    assert answer.headers["location"] == "/dashboards/keys?range=24h"  # type: ignore[attr-defined]
    cookie = answer.headers["set-cookie"]  # type: ignore[attr-defined]
    assert f"{SESSION_COOKIE}=" in cookie
    assert "HttpOnly" in cookie
    assert "SameSite=strict" in cookie
    assert "Secure" not in cookie  # plain HTTP here; see the TLS test
    assert web.tokens["reader"].split("_")[2] not in cookie  # the key's secret never goes in the cookie
    page = web.client.get("/dashboards/keys")
    assert page.status_code == 200
    assert "reader-person" in page.text
    policy = page.headers["content-security-policy"]
    assert "script-src 'self'" in policy
    assert "frame-ancestors 'none'" in policy
    assert "unsafe-inline" not in policy
    panel = web.client.get("/api/v1/dashboards/system/panels/cpu", params={"start": "30m"})
    assert panel.status_code == 200
    assert {line["label"] for line in panel.json()["series"]} == {"web-1", "web-2"}
    logins = [line for line in read_audit(web.settings.state_dir / "audit.log") if line["action"] == "login"]
    assert [(line["outcome"], line["principal"]) for line in logins] == [(303, "reader-person")]


def test_the_cookie_is_secure_when_the_api_serves_tls(tmp_path: Path) -> None:
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_text("unused here"), key.write_text("unused here")
    for web in make_web(tmp_path, tls_cert=cert, tls_key=key):
        answer = web.login(web.tokens["reader"])
        assert "Secure" in answer.headers["set-cookie"]  # type: ignore[attr-defined]


def test_changes_through_a_session_need_the_csrf_token(web: Web) -> None:
    web.login(web.tokens["writer"])
    silence = {"matchers": ["host=web-1"], "comment": "deploy", "duration_seconds": 600}
    refused = web.client.post("/api/v1/alerts/silences", json=silence)
    assert refused.status_code == 403
    assert "CSRF" in refused.json()["error"]
    wrong = web.client.post("/api/v1/alerts/silences", json=silence, headers={"X-CSRF-Token": "guess"})
    assert wrong.status_code == 403
    made = web.client.post("/api/v1/alerts/silences", json=silence, headers={"X-CSRF-Token": web.csrf()})
    assert made.status_code == 201
    # reading needs no token; an API key needs none either (no cookie, no CSRF)
    assert web.client.get("/api/v1/alerts/silences").status_code == 200
    keyed = TestClient(web.client.app, raise_server_exceptions=False)
    assert (
        keyed.post("/api/v1/alerts/silences", json=silence, headers={"X-API-Key": web.tokens["writer"]}).status_code
        == 201
    )


def test_a_session_keeps_its_role(web: Web) -> None:
    web.login(web.tokens["reader"])
    silence = {"matchers": ["host=web-1"], "comment": "deploy", "duration_seconds": 600}
    answer = web.client.post("/api/v1/alerts/silences", json=silence, headers={"X-CSRF-Token": web.csrf()})
    assert answer.status_code == 403
    assert "needs 'writer'" in answer.json()["error"]


def test_revoking_the_key_ends_its_sessions_at_once(web: Web) -> None:
    web.login(web.tokens["reader"])
    assert web.client.get("/api/v1/dashboards").status_code == 200
    revoke_key(web.settings, web.key_ids["reader"])
    assert web.client.get("/api/v1/dashboards").status_code == 401
    assert web.client.get("/dashboards/system", follow_redirects=False).status_code == 303


@pytest.mark.parametrize(
    "mangle",
    [
        lambda c: c[:-2] + ("AA" if not c.endswith("AA") else "BB"),  # signature changed
        lambda c: "e30" + c[c.index(".") :],  # payload swapped
        lambda c: c.split(".")[0],  # no signature
        lambda c: "x" * 3000,  # too long
    ],
)
def test_a_forged_or_mangled_cookie_is_refused(web: Web, mangle: object) -> None:
    web.login(web.tokens["reader"])
    cookie = web.client.cookies[SESSION_COOKIE]
    web.client.cookies.clear()
    web.client.cookies.set(SESSION_COOKIE, mangle(cookie))  # type: ignore[operator]
    assert web.client.get("/api/v1/dashboards").status_code == 401


def test_signed_sessions_expire_and_cannot_be_raised_in_role(tmp_path: Path) -> None:
    signer = SessionSigner(b"k" * 32, ttl=60)
    cookie = signer.issue(Principal("ann", Role.READER, "abc", "key"), now=1000.0)
    assert signer.read(cookie, now=1059.0).principal.role is Role.READER
    with pytest.raises(AuthenticationError, match="expired"):
        signer.read(cookie, now=1061.0)
    other = SessionSigner(b"z" * 32, ttl=60)
    with pytest.raises(AuthenticationError, match="not valid"):
        other.read(cookie, now=1001.0)
    bounded = signer.issue(Principal("ann", Role.READER), now=1000.0, not_after=1010.0)
    assert signer.read(bounded, now=1000.0).expires == 1010.0


def test_a_jwt_session_ends_with_the_token(web: Web) -> None:
    expires = int(time.time()) + 120
    token = jwt.encode({"sub": "sso-user", "role": "reader", "exp": expires}, JWT_SECRET, "HS256")
    assert web.login(token).status_code == 303  # type: ignore[attr-defined]
    session = SessionSigner.from_settings(web.settings).read(web.client.cookies[SESSION_COOKIE])
    assert session.principal.name == "sso-user"
    assert session.expires == pytest.approx(expires, abs=1)


@pytest.mark.parametrize("target", ["//evil.example/x", "https://evil.example/", "\\\\evil", "javascript:alert(1)"])
def test_login_never_redirects_off_site(web: Web, target: str) -> None:
    answer = web.login(web.tokens["reader"], target)
    assert answer.headers["location"] == "/"  # type: ignore[attr-defined]


def test_the_login_form_needs_its_own_nonce(web: Web) -> None:
    web.client.get("/login")
    forged = web.client.post(
        "/login",
        content=f"credential={web.tokens['reader']}&csrf=made-up",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert forged.status_code == 403
    assert SESSION_COOKIE not in forged.headers.get("set-cookie", "")
    assert LOGIN_COOKIE in web.client.cookies


def test_logout_needs_the_token_and_clears_the_cookie(web: Web) -> None:
    web.login(web.tokens["reader"])
    csrf = web.csrf()
    refused = web.client.post(
        "/logout", content="csrf=wrong", headers={"Content-Type": "application/x-www-form-urlencoded"}
    )
    assert refused.status_code == 403
    done = web.client.post(
        "/logout",
        content=f"csrf={csrf}",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
        follow_redirects=False,
    )
    assert done.status_code == 303
    assert f'{SESSION_COOKIE}=""' in done.headers["set-cookie"]
    assert web.client.get("/api/v1/dashboards").status_code == 401


def test_a_copy_of_the_cookie_is_refused_after_logout_by_every_worker(web: Web) -> None:
    web.login(web.tokens["reader"])
    cookie = web.client.cookies[SESSION_COOKIE]
    csrf = web.csrf()
    with TestClient(create_app(web.settings), raise_server_exceptions=False) as other_worker:
        other_worker.cookies.set(SESSION_COOKIE, cookie)
        assert other_worker.get("/api/v1/dashboards").status_code == 200
        web.client.post(
            "/logout",
            content=f"csrf={csrf}",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
            follow_redirects=False,
        )
        web.client.cookies.set(SESSION_COOKIE, cookie)  # as if copied before the logout
        for client in (web.client, other_worker):
            refused = client.get("/api/v1/dashboards")
            assert refused.status_code == 401
            assert "logging out" in refused.json()["error"]
            page = client.get("/dashboards/system", follow_redirects=False)
            assert page.status_code == 303
            assert page.headers["location"].startswith("/login")
    web.client.cookies.clear()
    again = web.login(web.tokens["reader"])  # a new login is a new session
    assert again.status_code == 303  # type: ignore[attr-defined]
    assert web.client.get("/api/v1/dashboards").status_code == 200


def test_revocations_end_with_their_sessions(tmp_path: Path) -> None:
    revoked = RevokedSessions(tmp_path / "sessions.sqlite")
    assert not revoked.revoked("never")  # no file until the first logout
    who = Principal("p", Role.READER, "k1", "session:key")
    now = time.time()
    revoked.revoke(Session(who, now + 10, "c1", "old"), now=now)
    revoked.revoke(Session(who, now + 1000, "c2", "new"), now=now + 20)  # "old" has expired by then
    assert revoked.revoked("new")
    assert not revoked.revoked("old")
    with sqlite3.connect(tmp_path / "sessions.sqlite") as connection:
        assert connection.execute("SELECT sid FROM revoked").fetchall() == [("new",)]


def test_dashboard_definitions_and_filters(web: Web) -> None:
    headers = {"X-API-Key": web.tokens["reader"]}
    listed = web.client.get("/api/v1/dashboards", headers=headers).json()["dashboards"]
    assert [board["name"] for board in listed] == ["system", "security", "keys", "performance", "alerts"]
    assert all(board["panels"] for board in listed)
    assert web.client.get("/api/v1/dashboards/system/filters", headers=headers).json() == {"host": ["web-1", "web-2"]}
    for name in DASHBOARDS:
        assert web.client.get(f"/api/v1/dashboards/{name}", headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("path", "params", "status", "message"),
    [
        ("/api/v1/dashboards/nope", {}, 404, "no dashboard 'nope'"),
        ("/api/v1/dashboards/system/panels/nope", {}, 404, "has no panel 'nope'"),
        ("/api/v1/dashboards/system/panels/cpu", {"tag": "key_id=k1"}, 422, "does not filter by 'key_id'"),
        ("/api/v1/dashboards/system/panels/cpu", {"tag": "host"}, 422, "is not key=value"),
        ("/api/v1/dashboards/system/panels/cpu", {"start": "1h", "end": "2h"}, 422, "is not before end"),
        ("/api/v1/dashboards/system/panels/cpu", {"start": "400d"}, 422, "at most 90 days"),
        ("/api/v1/dashboards/system/panels/cpu", {"start": "yesterday"}, 422, "start"),
        ("/api/v1/dashboards/system/panels/cpu", {"view": "png"}, 422, "view"),
    ],
)
def test_bad_panel_requests_are_4xx_json(
    web: Web, path: str, params: dict[str, str], status: int, message: str
) -> None:
    answer = web.client.get(path, params=params, headers={"X-API-Key": web.tokens["reader"]})
    assert answer.status_code == status
    assert message in str(answer.json())


def test_the_shown_sql_runs_in_metrics_sql_and_gives_the_panel(web: Web) -> None:
    headers = {"X-API-Key": web.tokens["reader"]}
    params = {"start": "2026-01-01T00:00:00Z", "end": datetime.now(UTC).isoformat(), "tag": "host=web-2"}
    params["start"] = (datetime.now(UTC) - timedelta(minutes=30)).isoformat()
    data = web.client.get("/api/v1/dashboards/system/panels/cpu", params=params, headers=headers).json()
    sql = web.client.get("/api/v1/dashboards/system/panels/cpu", params={**params, "view": "sql"}, headers=headers)
    text = sql.json()["sql"]
    store = MetricStore(web.settings, read_only=True)
    try:
        rows = store.sql(text)
    finally:
        store.close()
    assert rows.get_column("host").unique().to_list() == ["web-2"]
    assert [line["label"] for line in data["series"]] == ["web-2"]
    shown = {x: v for x, v in zip(data["x"], data["series"][0]["values"], strict=True) if v is not None}
    pasted = {int(row["ts"].timestamp()): row["value"] for row in rows.iter_rows(named=True)}
    assert shown == pytest.approx(pasted)


def test_a_missing_chart_library_is_named_on_the_page(web: Web, monkeypatch: pytest.MonkeyPatch) -> None:
    import metrics.web.pages as pages

    web.login(web.tokens["reader"])
    assert "chart library is not installed" not in web.client.get("/dashboards/system").text
    assert web.client.get("/static/vendor/uPlot.iife.min.js").status_code == 200
    monkeypatch.setattr(pages, "VENDOR_FILES", ("uPlot.iife.min.js", "not-installed.js"))
    page = web.client.get("/dashboards/system").text
    assert "chart library is not installed (not-installed.js missing" in page
    assert "make setup" in page


def test_odd_cookies_and_forms_are_refused_not_errors(web: Web) -> None:
    odd_cookie = {"Cookie": f"{SESSION_COOKIE}=\xe9bc.AAAA".encode("latin-1")}
    assert web.client.get("/api/v1/dashboards", headers=odd_cookie).status_code == 401  # type: ignore[arg-type]
    page = web.client.get("/dashboards/system", headers=odd_cookie, follow_redirects=False)  # type: ignore[arg-type]
    assert page.status_code == 303
    with pytest.raises(AuthenticationError, match="malformed"):
        SessionSigner(b"k" * 32, ttl=60).read("ébc.AAAA")
    web.client.get("/login")
    odd = web.client.post(
        "/login",
        content="credential=x&csrf=%C3%A9",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert odd.status_code == 403


def test_a_refused_session_change_names_its_principal_in_the_audit_log(web: Web) -> None:
    web.login(web.tokens["writer"])
    silence = {"matchers": ["host=web-1"], "comment": "deploy", "duration_seconds": 600}
    assert web.client.post("/api/v1/alerts/silences", json=silence).status_code == 403
    refused = [line for line in read_audit(web.settings.state_dir / "audit.log") if line["outcome"] == 403]
    assert [line["principal"] for line in refused] == ["writer-person"]


def test_an_expired_or_expiring_jwt_gets_no_session(web: Web) -> None:
    token = jwt.encode({"sub": "late", "role": "reader", "exp": int(time.time()) - 10}, JWT_SECRET, "HS256")
    answer = web.login(token)  # within the 30 s leeway the API allows, but no session would outlive it
    assert answer.status_code == 401  # type: ignore[attr-defined]
    assert "expired" in answer.text  # type: ignore[attr-defined]
    assert SESSION_COOKIE not in web.client.cookies


def test_a_proxy_basic_auth_header_leaves_the_session_usable(web: Web) -> None:
    web.login(web.tokens["reader"])
    assert web.client.get("/api/v1/dashboards", headers={"Authorization": "Basic cHJveHk6cHc="}).status_code == 200
    bearer = web.client.get("/api/v1/dashboards", headers={"Authorization": "Bearer mk_000000000000_nope"})
    assert bearer.status_code == 401  # an explicit credential is judged on its own


def test_too_many_tag_filters_are_refused(web: Web) -> None:
    headers = {"X-API-Key": web.tokens["reader"]}
    many = [("tag", f"host=h{i}") for i in range(21)]
    assert web.client.get("/api/v1/dashboards/system/panels/cpu", params=many, headers=headers).status_code == 422
    long = {"tag": "host=" + "x" * 300}
    assert web.client.get("/api/v1/dashboards/system/panels/cpu", params=long, headers=headers).status_code == 422

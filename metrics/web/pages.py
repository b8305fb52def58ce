"""The web UI's pages: ``/`` and ``/dashboards/<name>`` behind a login, ``/login``, ``/logout`` and ``/static``.

Pages are server-rendered HTML (Jinja2, autoescaped) that load one ES module
(``static/app.js``) and the chart library (uPlot, from ``static/vendor``);
the module fetches each panel from ``/api/v1/dashboards/...`` with the
session cookie. Every page is served with a strict Content-Security-Policy
(scripts, styles and connections from this origin only, no inline script,
no framing), so an injected string can never run.

Logging in takes the same credentials as the API (an API key or a JWT) and
sets the session cookie of :mod:`metrics.api.sessions`; a wrong one gets the
login page again with a 401, never data.
"""

from __future__ import annotations

import logging
import secrets
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

import jwt
import orjson
from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from jinja2 import Environment, FileSystemLoader, select_autoescape

from metrics.api.auth import INSECURE_DEV, Principal, verify_credential
from metrics.api.sessions import LOGIN_COOKIE, SESSION_COOKIE, check_csrf, request_session, revoked_of, signer_of
from metrics.errors import AuthenticationError
from metrics.web.boards import DASHBOARDS, dashboard

log = logging.getLogger(__name__)
HERE = Path(__file__).parent
STATIC_DIR = HERE / "static"
VENDOR_FILES = ("uPlot.iife.min.js", "uPlot.min.css")
MAX_FORM_BYTES = 16 * 1024
CONTENT_SECURITY_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}

router = APIRouter(include_in_schema=False)
templates = Environment(loader=FileSystemLoader(HERE / "templates"), autoescape=select_autoescape(), auto_reload=False)


def missing_vendor_files() -> list[str]:
    """The chart library's files not installed (``make setup`` copies them from npm); empty when all are there."""
    return [name for name in VENDOR_FILES if not (STATIC_DIR / "vendor" / name).is_file()]


def static_files() -> StaticFiles:
    """The ``/static`` app. Without the chart library the API still runs; the pages say what to do."""
    missing = missing_vendor_files()
    if missing:
        log.warning("%s missing: dashboards cannot draw charts; run `make setup`", ", ".join(missing))
    return StaticFiles(directory=STATIC_DIR)


def render(template: str, status: int = 200, **context: Any) -> HTMLResponse:
    """A page from ``templates/`` with the security headers."""
    body = templates.get_template(template).render(dashboards=list(DASHBOARDS.values()), **context)
    return HTMLResponse(body, status_code=status, headers=PAGE_HEADERS)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https" or request.app.state.settings.tls_cert is not None


def _safe_next(target: str | None) -> str:
    """Only a path of this site (never ``//elsewhere``, a full URL or control characters): no open redirect."""
    if (
        target
        and target.startswith("/")
        and not target.startswith("//")
        and "\\" not in target
        and all(" " < char != "\x7f" for char in target)
    ):
        return target
    return "/"


def _session(request: Request) -> Principal | None:
    """The logged-in principal of a page request, or None (pages redirect to the login instead of a 401)."""
    if request.app.state.insecure_dev:
        return INSECURE_DEV
    try:
        return request_session(request).principal
    except AuthenticationError:
        return None


def _to_login(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


async def _form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body (small: a login form), first value per field."""
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        return {}
    fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


def _login_page(request: Request, status: int = 200, error: str | None = None, target: str = "/") -> HTMLResponse:
    nonce = secrets.token_urlsafe(18)
    response = render("login.html", status, error=error, csrf=nonce, next=target)
    response.set_cookie(
        LOGIN_COOKIE, nonce, max_age=600, httponly=True, samesite="strict", secure=_secure(request), path="/login"
    )
    return response


@router.get("/")
async def home(request: Request) -> Response:
    """The System dashboard (or the login page first)."""
    return RedirectResponse("/dashboards/system", status_code=303)


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    """The login form."""
    return _login_page(request, target=_safe_next(next))


@router.post("/login")
async def login(request: Request) -> Response:
    """Check the credential as the API would, then set the session cookie and go where the person was going."""
    request.state.audit_action = "login"
    form = await _form(request)
    target = _safe_next(form.get("next"))
    nonce = request.cookies.get(LOGIN_COOKIE)
    if not nonce or not secrets.compare_digest(nonce.encode(), form.get("csrf", "").encode()):
        return _login_page(request, 403, "The form expired; please log in again.", target)
    credential = form.get("credential", "").strip()
    try:
        if not credential:
            raise AuthenticationError("no credential given")
        principal = await verify_credential(request, credential)
    except AuthenticationError:
        return _login_page(request, 401, "That API key or token was not accepted.", target)
    request.state.principal = principal
    not_after = None
    if principal.source == "jwt":  # verified above: only its expiry is read here
        try:
            not_after = float(jwt.decode(credential, options={"verify_signature": False})["exp"])
        except (jwt.InvalidTokenError, KeyError, TypeError, ValueError, OverflowError):
            return _login_page(request, 401, "That token has no usable expiry.", target)
        if not_after <= time.time() + 5:
            return _login_page(request, 401, "That token has expired.", target)
    cookie = signer_of(request).issue(principal, now=time.time(), not_after=not_after)
    response = RedirectResponse(target, status_code=303, headers={"Cache-Control": "no-store"})
    response.set_cookie(
        SESSION_COOKIE,
        cookie,
        max_age=int(signer_of(request).ttl),
        httponly=True,
        samesite="strict",
        secure=_secure(request),
        path="/",
    )
    response.delete_cookie(LOGIN_COOKIE, path="/login")
    return response


@router.post("/logout")
async def logout(request: Request) -> Response:
    """End the session (the form carries its CSRF token)."""
    request.state.audit_action = "logout"
    principal = _session(request)
    if principal is not None and getattr(request.state, "session", None) is not None:
        request.state.principal = principal
        check_csrf(request.state.session, (await _form(request)).get("csrf"))
        revoked_of(request).revoke(request.state.session)
    response = RedirectResponse("/login", status_code=303)
    response.delete_cookie(SESSION_COOKIE, path="/")
    return response


@router.get("/dashboards")
async def dashboards_index(request: Request) -> Response:
    """The first dashboard."""
    return RedirectResponse("/dashboards/system", status_code=303)


@router.get("/dashboards/{name}")
async def dashboard_page(request: Request, name: str) -> Response:
    """One dashboard: its panels are drawn in the browser from the panel API."""
    principal = _session(request)
    if principal is None:
        return _to_login(request)
    from metrics.api.routes.dashboards import describe

    board = dashboard(name)
    session = getattr(request.state, "session", None)
    return render(
        "dashboard.html",
        board=board,
        definition=orjson.dumps(describe(board)).decode(),
        principal=principal,
        csrf=session.csrf if session is not None else "",
        missing=missing_vendor_files(),
    )

"""Browser sessions for the dashboards: a signed cookie standing for the API key or JWT a person logged in with.

``POST /login`` checks the credential exactly as the API does (:mod:`metrics.api.auth`)
and sets ``metrics_session``: HttpOnly, SameSite=Strict, Secure when the API
serves TLS, valid for ``METRICS_SESSION_TTL`` seconds (and never past a JWT's
own expiry). The cookie holds the principal's name, role and key id, an
expiry and a CSRF nonce, signed with HMAC-SHA256 under ``METRICS_SESSION_SECRET``
(or a random key kept in ``state/session.key``, mode 0600, shared by every
worker of the data directory). It never holds the credential itself.

Every request a session authenticates is re-checked: a revoked API key ends
its sessions at once, and so does logging out — the session's id is kept in
``state/sessions.sqlite`` until its expiry, so a copy of the cookie (stolen,
or in another tab) is refused by every worker from then on. Requests that change something (POST, PUT, PATCH,
DELETE) must also send the session's CSRF token in ``X-CSRF-Token`` (the
dashboards' scripts do; the logout form sends it as a ``csrf`` field, which
its route checks); a cross-site page can do neither, and SameSite=Strict
keeps the cookie off its requests anyway.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import secrets
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import orjson
from fastapi import Request

from metrics.api.auth import SESSION_COOKIE, Principal, Role, keys_of
from metrics.errors import AuthenticationError, ConfigError, PermissionDeniedError
from metrics.settings import Settings
from storage.statedb import state_transaction

LOGIN_COOKIE = "metrics_login"  # the login form's own CSRF nonce (double submit), before any session exists
CSRF_HEADER = "x-csrf-token"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
SECRET_FILE = "session.key"
REVOKED_FILE = "sessions.sqlite"
_REVOKED_SCHEMA = "CREATE TABLE IF NOT EXISTS revoked (sid TEXT PRIMARY KEY, expires REAL NOT NULL);"
MAX_COOKIE_BYTES = 2048


@dataclass(frozen=True)
class Session:
    """A verified session: who, until when, its id, and the CSRF token its forms and scripts must send back."""

    principal: Principal
    expires: float
    csrf: str
    sid: str


class SessionSigner:
    """Issues and verifies session cookies under one secret."""

    def __init__(self, secret: bytes, ttl: float) -> None:
        """Sign with ``secret``; sessions last ``ttl`` seconds.

        Args:
            secret: at least 32 bytes of key material.
            ttl: how long a login lasts (``METRICS_SESSION_TTL``).
        """
        if len(secret) < 32:
            raise ConfigError("METRICS_SESSION_SECRET: at least 32 bytes are needed")
        self._key = hashlib.sha256(b"metrics-session\0" + secret).digest()
        self.ttl = ttl

    @classmethod
    def from_settings(cls, settings: Settings) -> SessionSigner:
        """The signer of a data directory (``METRICS_SESSION_SECRET``, else ``state/session.key``)."""
        if settings.session_secret:
            return cls(settings.session_secret.encode(), settings.session_ttl)
        return cls(_stored_secret(settings.state_dir / SECRET_FILE), settings.session_ttl)

    def issue(self, principal: Principal, *, now: float | None = None, not_after: float | None = None) -> str:
        """A cookie value for ``principal``, valid for the TTL (or until ``not_after`` when that is sooner)."""
        now = time.time() if now is None else now
        expires = now + self.ttl if not_after is None else min(now + self.ttl, not_after)
        payload = orjson.dumps(
            {
                "sub": principal.name,
                "role": principal.role.value,
                "kid": principal.key_id,
                "src": principal.source,
                "exp": round(expires, 3),
                "csrf": secrets.token_urlsafe(18),
                "sid": secrets.token_urlsafe(12),
            }
        )
        body = _b64(payload)
        return f"{body}.{_b64(self._sign(body))}"

    def read(self, cookie: str, *, now: float | None = None) -> Session:
        """The session a cookie stands for; raises :class:`AuthenticationError` when forged, mangled or expired."""
        now = time.time() if now is None else now
        body, _, signature = cookie.partition(".")
        if not body or not signature or len(cookie) > MAX_COOKIE_BYTES or not cookie.isascii():
            raise AuthenticationError("session cookie malformed; log in again")
        try:
            given = _unb64(signature)
        except ValueError:
            raise AuthenticationError("session cookie malformed; log in again") from None
        if not hmac.compare_digest(given, self._sign(body)):
            raise AuthenticationError("session cookie not valid; log in again")
        try:
            claims = orjson.loads(_unb64(body))
            principal = Principal(str(claims["sub"]), Role(claims["role"]), claims["kid"], f"session:{claims['src']}")
            expires, csrf, sid = float(claims["exp"]), str(claims["csrf"]), str(claims["sid"])
        except (ValueError, KeyError, TypeError):
            raise AuthenticationError("session cookie malformed; log in again") from None
        if expires <= now:
            raise AuthenticationError("session expired; log in again")
        return Session(principal, expires, csrf, sid)

    def _sign(self, body: str) -> bytes:
        return hmac.new(self._key, body.encode("ascii"), hashlib.sha256).digest()


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _unb64(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (ValueError, UnicodeEncodeError) as exc:
        raise ValueError(str(exc)) from None


def _stored_secret(path: Path) -> bytes:
    """The data directory's session key, created (0600, atomically: the first worker wins) when missing."""
    try:
        return _read_secret(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    scratch = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    descriptor = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(descriptor, secrets.token_bytes(32).hex().encode("ascii"))
        os.fsync(descriptor)
    finally:
        os.close(descriptor)
    try:
        os.link(scratch, path)  # fails when another worker was first: then its key is the key
    except FileExistsError:
        pass
    except OSError:  # a file system without hard links: exclusive creation decides instead
        with contextlib.suppress(FileExistsError):
            descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(descriptor, scratch.read_bytes())
                os.fsync(descriptor)
            finally:
                os.close(descriptor)
    finally:
        scratch.unlink()
    return _read_secret(path)


def _read_secret(path: Path) -> bytes:
    text = path.read_text(encoding="ascii").strip()
    try:
        secret = bytes.fromhex(text)
    except ValueError:
        raise ConfigError(f"{path}: not a session key (64 hex digits); delete it to make a new one") from None
    if len(secret) < 32:
        raise ConfigError(f"{path}: the session key is too short; delete it to make a new one")
    return secret


class RevokedSessions:
    """Sessions ended by logout before their expiry, shared by the workers of a data directory.

    Kept in SQLite (``state/sessions.sqlite``); each process keeps the set in memory and reads it again
    when the file changes (one ``stat`` per request), so a check costs microseconds.
    """

    def __init__(self, path: Path) -> None:
        """The revocations in ``path`` (created by the first logout)."""
        self.path = path
        self._lock = threading.Lock()
        self._signature: tuple[tuple[int, int, int], ...] | None = None
        self._revoked: frozenset[str] = frozenset()

    def revoke(self, session: Session, *, now: float | None = None) -> None:
        """End ``session`` for every worker; revocations past their session's expiry are dropped."""
        now = time.time() if now is None else now
        with state_transaction(self.path, _REVOKED_SCHEMA, "revoked sessions", immediate=True) as connection:
            connection.execute("DELETE FROM revoked WHERE expires <= ?", (now,))
            connection.execute("INSERT OR REPLACE INTO revoked VALUES (?, ?)", (session.sid, session.expires))
        with self._lock:
            self._signature = None

    def revoked(self, sid: str) -> bool:
        """Whether the session ``sid`` was ended by a logout."""
        signature = self._stat()
        if not signature:
            return False  # nobody has logged out here yet
        with self._lock:
            if signature != self._signature:
                with state_transaction(self.path, _REVOKED_SCHEMA, "revoked sessions") as connection:
                    rows = connection.execute("SELECT sid FROM revoked WHERE expires > ?", (time.time(),))
                    self._revoked = frozenset(row[0] for row in rows)
                self._signature = signature
            return sid in self._revoked

    def _stat(self) -> tuple[tuple[int, int, int], ...]:
        """(inode, size, mtime) of the database and its write-ahead log: what a commit changes."""
        found = []
        for path in (self.path, self.path.with_name(self.path.name + "-wal")):
            with contextlib.suppress(FileNotFoundError):
                info = path.stat()
                found.append((info.st_ino, info.st_size, info.st_mtime_ns))
        return tuple(found)


def check_csrf(session: Session, sent: str | None) -> None:
    """Refuse a state change whose CSRF token is missing or not the session's."""
    if not sent or not hmac.compare_digest(sent.encode("utf-8", "replace"), session.csrf.encode()):
        raise PermissionDeniedError("CSRF token missing or wrong: reload the page and try again")


def request_session(request: Request) -> Session:
    """The request's session, re-checked (signature, expiry, its API key not revoked); raises when there is none.

    Sets ``request.state.session``, and ``request.state.principal`` as soon as the cookie is read, so the
    audit log names who was refused by any later check.
    """
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        raise AuthenticationError(
            "credentials required: send an API key (Authorization: Bearer … or X-API-Key) or a JWT, or log in at /login"
        )
    session = signer_of(request).read(cookie)
    principal = session.principal
    request.state.principal = principal
    if principal.source == "session:key" and principal.key_id and not keys_of(request).active(principal.key_id):
        raise AuthenticationError("the API key of this session was revoked; log in again")
    if revoked_of(request).revoked(session.sid):
        raise AuthenticationError("this session was ended by logging out; log in again")
    request.state.session = session
    return session


def session_principal(request: Request) -> Principal:
    """The principal of the request's session (:func:`request_session`); a state change needs the CSRF token."""
    session = request_session(request)
    if request.method not in SAFE_METHODS:
        check_csrf(session, request.headers.get(CSRF_HEADER))
    return session.principal


def signer_of(request: Request) -> SessionSigner:
    """The app's session signer (made on first use: reading the key file needs the data directory)."""
    state = request.app.state
    signer: SessionSigner | None = getattr(state, "sessions", None)
    if signer is None:
        signer = state.sessions = SessionSigner.from_settings(state.settings)
    return signer


def revoked_of(request: Request) -> RevokedSessions:
    """The app's revoked sessions (made on first use, like the signer)."""
    state = request.app.state
    revoked: RevokedSessions | None = getattr(state, "revoked_sessions", None)
    if revoked is None:
        revoked = state.revoked_sessions = RevokedSessions(state.settings.state_dir / REVOKED_FILE)
    return revoked

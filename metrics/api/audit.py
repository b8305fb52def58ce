"""The audit log: append-only JSON lines in ``data/state/audit.log``, one line per write, admin action or refusal.

Each line is one ``write()`` on a file opened with ``O_APPEND``, so lines of
several threads and processes (API workers, ``metrics keys``) never interleave.
A line reads::

    {"ts": "2026-11-28T03:00:00.123456Z", "principal": "ingest-bot", "role": "writer",
     "key_id": "3f2a9c01d4e5", "auth": "key", "ip": "10.0.0.7", "method": "POST",
     "path": "/api/v1/metrics", "action": "ingest_batch", "outcome": 200, "detail": {"stored": 500}}

Secrets never reach it: paths are logged without their query string, headers
are never logged, details come from the API's own error messages, and every
line is scrubbed of anything shaped like an API key or a JWT on the way out.
"""

from __future__ import annotations

import contextlib
import getpass
import os
import re
import threading
import time
from collections.abc import MutableMapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metrics.api.auth import Principal, Role
from metrics.settings import Settings

AUDIT_FILE = "audit.log"
WRITE_METHODS = frozenset({"POST", "PUT", "PATCH", "DELETE"})
REFUSALS = frozenset({401, 403, 429})
MAX_ERROR_BODY = 4096  # bytes of an error response kept to read its message
REOPEN_CHECK_SECONDS = 1.0  # how often to notice that logrotate moved the file away
# Anything shaped like a credential, replaced before a line is written (defence in depth).
_SECRET_RE = re.compile(rb"(mk_[0-9a-f]{12})_[A-Za-z0-9_\-]+|eyJ[A-Za-z0-9_\-]*\.[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]*")


def _redact(match: re.Match[bytes]) -> bytes:
    return match.group(1) + b"_[redacted]" if match.group(1) else b"[redacted-token]"


def scrub(line: bytes) -> bytes:
    """``line`` with every API-key secret and JWT replaced by a marker (key ids are kept)."""
    return _SECRET_RE.sub(_redact, line) if b"mk_" in line or b"eyJ" in line else line


class AuditLog:
    """One audit file, shared by the threads of a process."""

    def __init__(self, path: Path) -> None:
        """Open (creating with mode 0600) the audit log at ``path`` for appending.

        Args:
            path: the log file, normally ``<data>/state/audit.log``.
        """
        self.path = path
        self._lock = threading.Lock()
        self._fd = -1
        self._inode = 0
        self._checked = 0.0
        with self._lock:
            self._open()

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        if self._fd >= 0:
            os.close(self._fd)
        self._fd = fd
        self._inode = os.fstat(fd).st_ino
        self._checked = time.monotonic()

    def _reopen_if_moved(self) -> None:
        """Follow logrotate's rename-and-create (checked at most once a second; lock held)."""
        now = time.monotonic()
        if now - self._checked < REOPEN_CHECK_SECONDS:
            return
        self._checked = now
        try:
            moved = os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            moved = True
        if moved:
            self._open()

    def record(
        self,
        *,
        action: str,
        outcome: int | str,
        principal: Principal | None = None,
        ip: str | None = None,
        method: str | None = None,
        path: str | None = None,
        detail: Any = None,
    ) -> None:
        """Append one entry (thread-safe; one ``write()``).

        Args:
            action: what was attempted (the route's name, ``keys.create``, ``allow-list``…).
            outcome: the HTTP status, or ``ok`` / ``error`` for command-line actions.
            principal: who (None when nobody was authenticated).
            ip: the client address.
            method: the HTTP method, or ``CLI``.
            path: the request path (never its query string).
            detail: a short JSON-ready explanation (an error message, counts, the key id created).
        """
        entry = {
            "ts": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ"),
            "principal": principal.name if principal else None,
            "role": principal.role.value if principal else None,
            "key_id": principal.key_id if principal else None,
            "auth": principal.source if principal else None,
            "ip": ip,
            "method": method,
            "path": path,
            "action": action,
            "outcome": outcome,
            "detail": detail,
        }
        line = scrub(orjson.dumps(entry, default=str) + b"\n")
        with self._lock:
            self._reopen_if_moved()
            written = os.write(self._fd, line)
            if written < len(line):  # not expected on a local file; never lose the rest of a line
                os.write(self._fd, line[written:])

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._fd >= 0:
                os.close(self._fd)
                self._fd = -1


_LOGS: dict[Path, AuditLog] = {}
_LOGS_LOCK = threading.Lock()


def audit_log(settings: Settings) -> AuditLog:
    """This process's audit log of ``settings``' data directory."""
    path = (settings.state_dir / AUDIT_FILE).resolve()
    with _LOGS_LOCK:
        log = _LOGS.get(path)
        if log is None:
            log = _LOGS[path] = AuditLog(path)
        return log


os.register_at_fork(after_in_child=_LOGS.clear)  # a forked child opens its own (its parent's lock may be held)


def close_audit_logs() -> None:
    """Close every audit log this process opened (tests)."""
    with _LOGS_LOCK:
        for log in _LOGS.values():
            log.close()
        _LOGS.clear()


def cli_principal() -> Principal:
    """The local operator running an admin command (whoever can write the data directory is its admin)."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    return Principal(f"cli:{user}", Role.ADMIN, source="cli")


def audit_admin(settings: Settings, action: str, outcome: str, detail: Any = None) -> None:
    """Record an administrative command-line action (``keys.create``, ``keys.revoke``).

    Args:
        settings: whose data directory holds the audit log.
        action: what was done.
        outcome: ``ok`` or ``error``.
        detail: what it was done to (a key id and name; never a secret).
    """
    audit_log(settings).record(
        action=action, outcome=outcome, principal=cli_principal(), method="CLI", path=None, detail=detail
    )


def read_audit(path: Path) -> list[dict[str, Any]]:
    """Every entry of an audit file, oldest first."""
    return [orjson.loads(line) for line in path.read_bytes().splitlines() if line.strip()]


class AuditMiddleware:
    """Pure ASGI middleware recording writes, admin-only requests and refusals (401, 403, 429) after they end.

    Routes may add a detail by setting ``request.state.audit_detail``; the ingest
    route's ``request.state.ingested`` is recorded as ``{"stored": n, "rejected": m}``.
    """

    def __init__(self, app: ASGIApp, log: AuditLog) -> None:
        """Wrap ``app``.

        Args:
            app: the ASGI application.
            log: where entries go.
        """
        self.app = app
        self.log = log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request through; record it afterwards when it is auditable."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 0
        error_body = bytearray()

        async def watch(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            elif message["type"] == "http.response.body" and status >= 400 and len(error_body) < MAX_ERROR_BODY:
                error_body.extend(message.get("body", b"")[: MAX_ERROR_BODY - len(error_body)])
            await send(message)

        try:
            await self.app(scope, receive, watch)
        except Exception:
            self._record(scope, 500, b"")
            raise
        self._record(scope, status, bytes(error_body))

    def _record(self, scope: Scope, status: int, error_body: bytes) -> None:
        method = scope.get("method", "")
        route = scope.get("route")
        if method not in WRITE_METHODS and status not in REFUSALS and required_role(route) is not Role.ADMIN:
            return
        state = scope.get("state") or {}
        principal = state.get("principal")
        client = scope.get("client")
        self.log.record(
            action=state.get("audit_action") or getattr(route, "name", None) or "-",
            outcome=status,
            principal=principal if isinstance(principal, Principal) else None,
            ip=client[0] if client else None,
            method=method,
            path=scope.get("path"),
            detail=_detail(state, status, error_body),
        )


def _detail(state: MutableMapping[str, Any], status: int, error_body: bytes) -> Any:
    """What to say about a request: the error message of a failure, else what the route reported."""
    if status >= 400:
        try:
            body = orjson.loads(error_body)
        except orjson.JSONDecodeError:
            return None
        return body.get("error") if isinstance(body, dict) else None
    if "audit_detail" in state:
        return state["audit_detail"]
    if "ingested" in state:
        return {"stored": state["ingested"], "rejected": len(state.get("rejected_reasons") or ())}
    return None


_UNKNOWN = object()
_ROLE_ATTRIBUTE = "_metrics_required_role"  # cached on the route object (routes are not hashable)


def required_role(route: Any) -> Role | None:
    """The role a route's ``requires(...)`` dependency demands (None for public routes); cached per route."""
    if route is None:
        return None
    role = getattr(route, _ROLE_ATTRIBUTE, _UNKNOWN)
    if role is _UNKNOWN:
        role = _find_role(getattr(route, "dependant", None))
        with contextlib.suppress(AttributeError):  # a route class with __slots__: looked up every time
            setattr(route, _ROLE_ATTRIBUTE, role)
    return role if isinstance(role, Role) else None


def _find_role(dependant: Any) -> Role | None:
    if dependant is None:
        return None
    role = getattr(dependant.call, "required_role", None)
    if isinstance(role, Role):
        return role
    for child in dependant.dependencies:
        found = _find_role(child)
        if found is not None:
            return found
    return None

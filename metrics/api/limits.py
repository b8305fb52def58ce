"""The API's limits: client IP allow-list, request body size, per-principal rate limit; and the installer.

:func:`install_security` wires everything of ``metrics.api`` security into an
app (``create_app`` calls it once). Outermost first, a request meets:

1. :class:`~metrics.api.audit.AuditMiddleware` — records writes, admin-only
   requests and refusals after they end (so it sees the refusals below);
2. :class:`AllowListMiddleware` — 403 unless the client address is in
   ``METRICS_ALLOWED_IPS`` (every path, ``/health`` included; empty = all);
3. :class:`BodyLimitMiddleware` — 413 when ``Content-Length`` exceeds
   ``METRICS_MAX_BODY_BYTES``, or as soon as a streamed body does;
4. the routes' ``requires(role)`` dependency — 401 / 403, then the
   :class:`RateLimiter` (``METRICS_RATE_LIMIT`` requests/s per principal) — 429.

Middlewares here are pure ASGI (no per-request Request objects): cheap enough
for ingest at thousands of requests per second.
"""

from __future__ import annotations

import ipaddress
import threading
import time
from collections.abc import Callable, Sequence

import orjson
from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from metrics.api.audit import AuditMiddleware, audit_log
from metrics.api.auth import JwtVerifier, Principal
from metrics.api.keys import key_store
from metrics.errors import RateLimitedError, RequestTooLargeError
from metrics.settings import Settings

MAX_REMEMBERED_ADDRESSES = 4096  # allow-list decisions cached per client address
MAX_BUCKETS = 10_000  # rate-limit buckets kept before idle ones are dropped

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


async def send_error(send: Send, status: int, message: str, headers: Sequence[tuple[bytes, bytes]] = ()) -> None:
    """Answer with the API's error body shape (``{"error": message}``) from a middleware."""
    body = orjson.dumps({"error": message})
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


def _mark(scope: Scope, action: str) -> None:
    """Name the refusal for the audit log (the request never reaches a route)."""
    state = scope.get("state")
    if state is None:
        state = scope["state"] = {}
    state["audit_action"] = action


class AllowListMiddleware:
    """403 for clients whose address is outside the allowed networks (every path, ``/health`` included)."""

    def __init__(self, app: ASGIApp, networks: Sequence[str]) -> None:
        """Wrap ``app``.

        Args:
            app: the ASGI application.
            networks: addresses or CIDR networks (``10.0.0.0/8``, ``::1``); empty allows every client.
        """
        self.app = app
        self.networks: tuple[IPNetwork, ...] = tuple(ipaddress.ip_network(n, strict=False) for n in networks)
        self._decided: dict[str, bool] = {}

    def allows(self, host: str | None) -> bool:
        """Whether a client address may call the API (unknown or unparseable addresses may not)."""
        if not self.networks:
            return True
        if host is None:
            return False
        decided = self._decided.get(host)
        if decided is None:
            decided = self._decide(host)
            if len(self._decided) >= MAX_REMEMBERED_ADDRESSES:
                self._decided.clear()
            self._decided[host] = decided
        return decided

    def _decide(self, host: str) -> bool:
        try:
            address = ipaddress.ip_address(host.split("%")[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.networks)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse clients outside the allow-list; pass everyone else through."""
        if scope["type"] in ("http", "websocket"):
            client = scope.get("client")
            host = client[0] if client else None
            if not self.allows(host):
                _mark(scope, "allow-list")
                if scope["type"] == "websocket":
                    await send({"type": "websocket.close", "code": 1008})
                else:
                    await send_error(send, 403, f"client address {host} is not allowed (METRICS_ALLOWED_IPS)")
                return
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 for request bodies above a size: at once by ``Content-Length``, else when the stream passes it."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        """Wrap ``app``.

        Args:
            app: the ASGI application.
            max_bytes: the largest body accepted (``METRICS_MAX_BODY_BYTES``).
        """
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self) -> str:
        return f"request body larger than {self.max_bytes} bytes (METRICS_MAX_BODY_BYTES); send smaller batches"

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Refuse oversized bodies before they are read (declared) or as they arrive (streamed)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope["headers"]:
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = -1
                if declared > self.max_bytes:
                    _mark(scope, "body-limit")
                    await send_error(send, 413, self._too_large())
                    return
                break
        received = 0
        exceeded = False
        replaced = False
        started = False

        async def counting_receive() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise RequestTooLargeError(self._too_large())
            return message

        async def guarded_send(message: Message) -> None:
            # Whatever the app made of the exception (FastAPI's body parser turns it into a 400), answer 413.
            nonlocal replaced, started
            if exceeded and not started and message["type"] == "http.response.start":
                replaced = started = True
                _mark(scope, "body-limit")
                await send_error(send, 413, self._too_large())
                return
            if replaced:
                return
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counting_receive, guarded_send)
        except Exception:
            if not (exceeded and not started):
                raise
            _mark(scope, "body-limit")
            await send_error(send, 413, self._too_large())


class RateLimiter:
    """A token bucket per principal: ``rate`` requests per second, bursts of up to ``burst`` (thread-safe)."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        """A limiter of ``rate`` requests/s per principal.

        Args:
            rate: sustained requests per second per principal (``METRICS_RATE_LIMIT``).
            burst: the bucket size (default: one second's worth, at least 1 request).
            clock: monotonic seconds (tests pass a fake).
        """
        self.rate = rate
        self.capacity = max(1.0, burst if burst is not None else rate)
        self._clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def check(self, principal: Principal) -> None:
        """Take one token from ``principal``'s bucket; raises :class:`RateLimitedError` (429) when it is empty."""
        key = f"key:{principal.key_id}" if principal.key_id else f"{principal.source}:{principal.name}"
        with self._lock:
            now = self._clock()
            tokens, updated = self._buckets.get(key, (self.capacity, now))
            tokens = min(self.capacity, tokens + (now - updated) * self.rate)
            if tokens < 1.0:
                self._buckets[key] = (tokens, now)
                wait = (1.0 - tokens) / self.rate
                raise RateLimitedError(
                    f"rate limit of {self.rate:g} requests/s exceeded for {principal.name}; retry in {wait:.2f} s",
                    retry_after=wait,
                )
            if len(self._buckets) >= MAX_BUCKETS and key not in self._buckets:
                self._forget_idle(now)
            self._buckets[key] = (tokens - 1.0, now)

    def _forget_idle(self, now: float) -> None:
        """Drop buckets that have refilled (their principals are idle): they would start full anyway."""
        full = [
            k for k, (tokens, updated) in self._buckets.items() if tokens + (now - updated) * self.rate >= self.capacity
        ]
        for key in full:
            del self._buckets[key]


def install_security(app: FastAPI, settings: Settings) -> None:
    """Wire authentication (API keys, JWT), the limits and the audit log into ``app``; call once per app.

    Sets ``app.state.keys`` (:class:`~metrics.api.keys.KeyStore`), ``app.state.jwt``
    (:class:`~metrics.api.auth.JwtVerifier` or None), ``app.state.rate_limiter``
    (:class:`RateLimiter` or None) and ``app.state.audit``, and adds the middlewares.

    Args:
        app: the FastAPI application (``create_app`` builds it).
        settings: ``allowed_ips``, ``max_body_bytes``, ``rate_limit``, ``jwt_secret``,
            ``jwt_public_key`` and the data directory (keys and audit log under ``state/``).
    """
    app.state.keys = key_store(settings)
    app.state.jwt = JwtVerifier.from_settings(settings)
    app.state.rate_limiter = RateLimiter(settings.rate_limit) if settings.rate_limit else None
    app.state.audit = audit_log(settings)
    # add_middleware puts each one outside the previous: the audit log ends up outermost.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.allowed_ips:
        app.add_middleware(AllowListMiddleware, networks=settings.allowed_ips)
    app.add_middleware(AuditMiddleware, log=app.state.audit)

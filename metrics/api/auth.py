"""Who is calling, and may they: roles, principals and the ``requires(role)`` dependency every route declares.

Roles: ``reader`` (queries, reading alerts), ``writer`` (ingest), ``admin``
(everything: rules, keys). ``admin`` may do what any role may.

Credentials, in this order:

- an API key (``mk_<key id>_<secret>``, see :mod:`metrics.api.keys`) as
  ``Authorization: Bearer mk_…`` or ``X-API-Key: mk_…``;
- a JWT as ``Authorization: Bearer <jwt>`` when ``METRICS_JWT_SECRET`` (HS256)
  or ``METRICS_JWT_PUBLIC_KEY`` (RS256, a PEM file) is set. Claims ``sub``,
  ``role`` and ``exp`` are required; the algorithm must be the one configured
  (never ``none``).

Without either header, the dashboards' session cookie (:mod:`metrics.api.sessions`)
stands for the key or token its owner logged in with.

Every refusal is an :class:`AuthenticationError` (401) or
:class:`PermissionDeniedError` (403) whose message never repeats the credential.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from metrics.errors import AuthenticationError, ConfigError, PermissionDeniedError
from metrics.settings import Settings


class Role(StrEnum):
    """What a principal may do."""

    READER = "reader"
    WRITER = "writer"
    ADMIN = "admin"


@dataclass(frozen=True)
class Principal:
    """An authenticated caller: a name for the audit log, its role, and the key or token it used."""

    name: str
    role: Role
    key_id: str | None = None
    source: str = "key"  # "key", "jwt", "cli" or "insecure-dev"

    def may(self, role: Role) -> bool:
        """Whether this principal may act in ``role``."""
        return self.role is Role.ADMIN or self.role is role


INSECURE_DEV = Principal("insecure-dev", Role.ADMIN, source="insecure-dev")
KEY_PREFIX = "mk_"
JWT_LEEWAY_SECONDS = 30  # clock skew tolerated on exp / nbf / iat
_JWT_ERRORS: tuple[tuple[type[jwt.InvalidTokenError], str], ...] = (  # most specific first; fixed texts only
    (jwt.ExpiredSignatureError, "token expired"),
    (jwt.ImmatureSignatureError, "token not yet valid"),
    (jwt.InvalidSignatureError, "token signature invalid"),
    (jwt.InvalidAlgorithmError, "token algorithm not accepted"),
    (jwt.InvalidAudienceError, "token audience not accepted"),
    (jwt.InvalidIssuerError, "token issuer not accepted"),
    (jwt.DecodeError, "token malformed"),
)


class JwtVerifier:
    """Checks bearer JWTs against the configured HS256 secret and/or RS256 public key."""

    def __init__(self, secret: str | None = None, public_key: str | None = None) -> None:
        """Accept HS256 tokens signed with ``secret`` and RS256 tokens signed by ``public_key``'s private key.

        Args:
            secret: the shared HS256 secret (at least 32 bytes recommended).
            public_key: an RSA public key in PEM form.
        """
        self.keys: dict[str, Any] = {}
        if secret:
            self.keys["HS256"] = secret
        if public_key:
            try:
                key = serialization.load_pem_public_key(public_key.encode("ascii"))
            except (ValueError, TypeError, UnicodeEncodeError):
                key = None
            if not isinstance(key, rsa.RSAPublicKey):
                raise ConfigError("METRICS_JWT_PUBLIC_KEY: not an RSA public key in PEM form") from None
            self.keys["RS256"] = key

    @classmethod
    def from_settings(cls, settings: Settings) -> JwtVerifier | None:
        """The verifier ``settings`` configure, or None when JWTs are off."""
        public_key = _read_pem(settings.jwt_public_key) if settings.jwt_public_key else None
        if not settings.jwt_secret and public_key is None:
            return None
        return cls(settings.jwt_secret, public_key)

    def verify(self, token: str) -> Principal:
        """The principal a valid token names; raises :class:`AuthenticationError` with a reason otherwise."""
        try:
            algorithm = jwt.get_unverified_header(token).get("alg")
        except jwt.InvalidTokenError:
            raise AuthenticationError("token malformed") from None
        if not isinstance(algorithm, str) or algorithm not in self.keys:
            raise AuthenticationError(f"token algorithm not accepted; accepted: {', '.join(self.keys)}")
        try:
            claims = jwt.decode(
                token,
                self.keys[algorithm],
                algorithms=[algorithm],
                options={"require": ["sub", "role", "exp"]},
                leeway=JWT_LEEWAY_SECONDS,
            )
        except jwt.MissingRequiredClaimError as exc:
            raise AuthenticationError(f"token lacks the required claim {exc.claim!r}") from None
        except jwt.InvalidTokenError as exc:
            reason = next((text for kind, text in _JWT_ERRORS if isinstance(exc, kind)), "token invalid")
            raise AuthenticationError(reason) from None
        subject, role = claims["sub"], claims["role"]
        if not isinstance(subject, str) or not subject.strip():
            raise AuthenticationError("token claim 'sub' must be a non-empty string")
        if not isinstance(role, str) or role not in Role._value2member_map_:
            raise AuthenticationError(f"token claim 'role' is not a role; allowed: {', '.join(r.value for r in Role)}")
        key_id = claims.get("jti")
        return Principal(subject, Role(role), key_id=key_id if isinstance(key_id, str) else None, source="jwt")


def _read_pem(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"METRICS_JWT_PUBLIC_KEY={str(path)!r}: cannot read the PEM file: {exc}") from None


def bearer_token(request: Request) -> str:
    """The credential of a request (``Authorization: Bearer …`` or ``X-API-Key``); raises when there is none."""
    authorization = request.headers.get("authorization")
    api_key = request.headers.get("x-api-key")
    if authorization is not None and api_key is not None:
        raise AuthenticationError("send one credential: Authorization or X-API-Key, not both")
    if authorization is not None:
        scheme, _, token = authorization.strip().partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthenticationError("Authorization: expected 'Bearer <API key or JWT>'")
        return token
    if api_key is not None:
        token = api_key.strip()
        if not token.startswith(KEY_PREFIX):
            raise AuthenticationError("X-API-Key: not an API key (they start with mk_)")
        return token
    raise AuthenticationError("credentials required: send an API key (Authorization: Bearer … or X-API-Key) or a JWT")


async def authenticate(request: Request) -> Principal:
    """The caller of ``request``; raises :class:`AuthenticationError` when there are no valid credentials.

    Also applies the per-principal rate limit (:class:`metrics.errors.RateLimitedError`) when one is set.
    """
    state = request.app.state
    if state.insecure_dev:
        principal = INSECURE_DEV
    elif "x-api-key" not in request.headers and not _bearer_scheme(request) and SESSION_COOKIE in request.cookies:
        from metrics.api.sessions import session_principal  # a browser: the dashboards' session cookie

        principal = session_principal(request)
    else:
        principal = await verify_credential(request, bearer_token(request))
    request.state.principal = principal  # before any refusal below: the audit log names who was refused
    limiter = getattr(state, "rate_limiter", None)
    if limiter is not None:
        limiter.check(principal)
    return principal


SESSION_COOKIE = "metrics_session"  # the dashboards' session (metrics.api.sessions signs and reads it)


def _bearer_scheme(request: Request) -> bool:
    """Whether the request carries ``Authorization: Bearer …`` (a proxy's Basic auth leaves the session usable)."""
    return request.headers.get("authorization", "").lstrip().lower().startswith("bearer")


async def verify_credential(request: Request, token: str) -> Principal:
    """The principal of an API key (``mk_…``) or JWT; raises :class:`AuthenticationError` when it is not valid."""
    state = request.app.state
    if token.startswith(KEY_PREFIX):
        keys = keys_of(request)
        found = keys.cached(token)  # cheap: no KDF for a key this process already verified
        return found if found is not None else await run_in_threadpool(keys.verify, token)
    verifier: JwtVerifier | None = getattr(state, "jwt", None)
    if verifier is None:
        raise AuthenticationError("bearer token is not an API key (mk_…) and JWT authentication is off")
    return verifier.verify(token)


def keys_of(request: Request) -> Any:
    """The app's :class:`~metrics.api.keys.KeyStore` (opened now for an app built without install_security)."""
    state = request.app.state
    keys = getattr(state, "keys", None)
    if keys is None:
        from metrics.api.keys import key_store

        keys = state.keys = key_store(state.settings)
    return keys


def requires(role: Role, *also: Role) -> Callable[[Request], Awaitable[Principal]]:
    """A FastAPI dependency admitting callers that may act in ``role`` or any of ``also`` (admins always)."""

    async def dependency(request: Request) -> Principal:
        principal = await authenticate(request)
        if not any(principal.may(allowed) for allowed in (role, *also)):
            needed = " or ".join(repr(allowed.value) for allowed in (role, *also))
            raise PermissionDeniedError(f"role {principal.role.value!r} may not do this; it needs {needed}")
        return principal

    dependency.required_role = role  # type: ignore[attr-defined]  # read by the route-table test
    return dependency

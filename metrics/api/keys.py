"""API keys: created once, shown once, stored only as a salted scrypt hash in ``data/state/keys.sqlite``.

A key reads ``mk_<key_id>_<secret>``: the 12-hex-digit ``key_id`` finds its row
in O(1), and only ``scrypt(secret, per-key salt)`` is stored. Verifying a key
costs one scrypt (~40 ms), so a process remembers the keys it has verified
(the token's SHA-256, compared in constant time) and pays the KDF once per key.
Revocation is immediate in every process: before a cached key is trusted the
store asks SQLite whether any other connection changed the database
(``PRAGMA data_version``, ~3 µs) and, when one did, re-reads the revoked flags
of the keys it remembers.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from metrics.api.auth import KEY_PREFIX, Principal, Role
from metrics.errors import AuthenticationError, StorageError, ValidationError
from metrics.settings import Settings

KEYS_FILE = "keys.sqlite"
BOOTSTRAP_NAME = "bootstrap-admin"
# scrypt at n=2**14, r=8, p=1 (16 MiB, ~40 ms here); the parameters are stored per key so they can change.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
# last_used_at is written at most this often per key and process (a write per request would cost a commit).
LAST_USED_RESOLUTION = 60.0
# At most this many scrypt verifications run at once: floods of wrong keys cannot take every core.
MAX_CONCURRENT_KDF = 2
BUSY_MS, TOUCH_BUSY_MS = 30_000, 50  # how long to wait for another process's write lock
MAX_NAME_LENGTH = 100
_TOKEN_RE = re.compile(r"mk_([0-9a-f]{12})_([A-Za-z0-9_\-]{32,128})")
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 _.:@\-]*")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS api_keys (
    key_id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    role TEXT NOT NULL,
    salt BLOB NOT NULL,
    hash BLOB NOT NULL,
    kdf TEXT NOT NULL,
    created_at REAL NOT NULL,
    last_used_at REAL,
    revoked_at REAL
)
"""


@dataclass(frozen=True)
class ApiKey:
    """A key as listed: never its secret."""

    key_id: str
    name: str
    role: Role
    created_at: datetime
    last_used_at: datetime | None = None
    revoked_at: datetime | None = None

    @property
    def revoked(self) -> bool:
        """Whether the key was revoked (it no longer authenticates)."""
        return self.revoked_at is not None

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (ISO 8601 times)."""
        return {
            "key_id": self.key_id,
            "name": self.name,
            "role": self.role.value,
            "created_at": self.created_at.isoformat(),
            "last_used_at": self.last_used_at.isoformat() if self.last_used_at else None,
            "revoked_at": self.revoked_at.isoformat() if self.revoked_at else None,
        }


@dataclass
class _Verified:
    """A key this process has verified: the token's SHA-256 and who it is."""

    digest: bytes
    principal: Principal
    touched: float  # monotonic time of the last last_used_at write


def parse_token(token: str) -> tuple[str, str]:
    """(key_id, secret) of an API key; raises :class:`AuthenticationError` (never echoing it) when malformed."""
    match = _TOKEN_RE.fullmatch(token)
    if match is None:
        raise AuthenticationError("API key malformed: expected mk_<key id>_<secret>")
    return match.group(1), match.group(2)


def _kdf(secret: str, salt: bytes, params: str) -> bytes:
    """The stored hash of ``secret`` under ``params`` (``scrypt:n=…,r=…,p=…``)."""
    name, _, args = params.partition(":")
    if name != "scrypt":
        raise StorageError(f"keys: unknown key derivation {name!r}")
    values = {k: int(v) for k, v in (item.split("=") for item in args.split(","))}
    return hashlib.scrypt(
        secret.encode(), salt=salt, n=values["n"], r=values["r"], p=values["p"], maxmem=64 * 1024 * 1024, dklen=32
    )


def _time(value: float | None) -> datetime | None:
    return None if value is None else datetime.fromtimestamp(value, UTC)


class KeyStore:
    """The API keys of one data directory, with this process's cache of verified keys (thread-safe)."""

    def __init__(self, path: Path) -> None:
        """Open (creating when missing, mode 0600) the key database at ``path``.

        Args:
            path: the SQLite file, normally ``<data>/state/keys.sqlite``.
        """
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists():
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT, 0o600))  # SQLite's -wal/-shm files inherit the mode
        try:
            self._db = sqlite3.connect(path, timeout=BUSY_MS / 1000, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute(_SCHEMA)
        except sqlite3.Error as exc:
            raise StorageError(f"{path}: cannot open the key database: {exc}") from None
        self._lock = threading.RLock()
        self._kdf_slots = threading.BoundedSemaphore(MAX_CONCURRENT_KDF)
        self._verified: dict[str, _Verified] = {}
        self._version = self._data_version()

    def close(self) -> None:
        """Close the database connection."""
        with self._lock:
            self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """An immediate (write-locked) transaction."""
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: key database error: {exc}") from None

    def _data_version(self) -> int:
        version: int = self._db.execute("PRAGMA data_version").fetchone()[0]
        return version

    # -- administration ------------------------------------------------------
    def create(self, name: str, role: Role | str, *, only_if_no_admin: bool = False) -> tuple[str, str] | None:
        """Create a key; return ``(key_id, token)`` — the token exists nowhere else, show it once.

        Args:
            name: who or what uses the key (for listings and the audit log).
            role: ``reader``, ``writer`` or ``admin``.
            only_if_no_admin: create nothing (return None) when an unrevoked admin key exists,
                decided in the same transaction as the insert (safe against concurrent callers).
        """
        role = _role(role)
        name = _name(name)
        secret = secrets.token_urlsafe(32)
        salt = os.urandom(16)
        params = f"scrypt:n={SCRYPT_N},r={SCRYPT_R},p={SCRYPT_P}"
        digest = _kdf(secret, salt, params)
        with self._transaction() as db:
            if only_if_no_admin:
                found = db.execute(
                    "SELECT 1 FROM api_keys WHERE role = ? AND revoked_at IS NULL LIMIT 1", (Role.ADMIN.value,)
                ).fetchone()
                if found:
                    return None
            while True:
                key_id = secrets.token_hex(6)
                if db.execute("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,)).fetchone() is None:
                    break
            db.execute(
                "INSERT INTO api_keys (key_id, name, role, salt, hash, kdf, created_at) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (key_id, name, role.value, salt, digest, params, time.time()),
            )
        return key_id, f"{KEY_PREFIX}{key_id}_{secret}"

    def entries(self) -> list[ApiKey]:
        """Every key, oldest first (revoked ones included)."""
        with self._lock:
            rows = self._db.execute(
                "SELECT key_id, name, role, created_at, last_used_at, revoked_at FROM api_keys ORDER BY created_at"
            ).fetchall()
        return [
            ApiKey(row[0], row[1], Role(row[2]), datetime.fromtimestamp(row[3], UTC), _time(row[4]), _time(row[5]))
            for row in rows
        ]

    def revoke(self, key_id: str) -> ApiKey:
        """Revoke a key at once (in every process); raises :class:`ValidationError` for an unknown id."""
        with self._transaction() as db:
            updated = db.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE key_id = ? AND revoked_at IS NULL", (time.time(), key_id)
            ).rowcount
            exists = updated or db.execute("SELECT 1 FROM api_keys WHERE key_id = ?", (key_id,)).fetchone()
            self._verified.pop(key_id, None)
        if not exists:
            raise ValidationError(f"key id {key_id!r}: no such key (see `metrics keys list`)")
        return next(key for key in self.entries() if key.key_id == key_id)

    # -- verification ------------------------------------------------------------
    def cached(self, token: str) -> Principal | None:
        """The principal of a key this process already verified and that is still valid; None when unknown here.

        Cheap (a dictionary lookup, a SHA-256, one ``PRAGMA data_version``): call it on the event loop,
        and :meth:`verify` (which may run the KDF) in a worker thread only when it returns None.
        """
        key_id = token[3:15]
        digest = hashlib.sha256(token.encode()).digest()
        with self._lock:
            entry = self._verified.get(key_id)
            if entry is None or not hmac.compare_digest(entry.digest, digest):
                return None
            try:
                self._refresh()
                if key_id not in self._verified:
                    return None  # revoked meanwhile
                self._touch(key_id, entry)
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: key database error: {exc}") from None
            return entry.principal

    def verify(self, token: str) -> Principal:
        """The principal of an API key; raises :class:`AuthenticationError` when unknown, wrong or revoked."""
        key_id, secret = parse_token(token)
        found = self.cached(token)
        if found is not None:
            return found
        with self._lock:
            row = self._db.execute(
                "SELECT name, role, salt, hash, kdf, revoked_at FROM api_keys WHERE key_id = ?", (key_id,)
            ).fetchone()
        if row is None:
            raise AuthenticationError("API key not valid")
        name, role, salt, stored, params, revoked_at = row
        with self._kdf_slots:
            digest = _kdf(secret, salt, params)
        if not hmac.compare_digest(digest, stored):
            raise AuthenticationError("API key not valid")
        if revoked_at is not None:
            raise AuthenticationError(f"API key {key_id} was revoked")
        principal = Principal(name, Role(role), key_id=key_id, source="key")
        entry = _Verified(hashlib.sha256(token.encode()).digest(), principal, touched=-LAST_USED_RESOLUTION)
        with self._lock:
            self._refresh()
            self._verified[key_id] = entry
            self._touch(key_id, entry)
        return principal

    def active(self, key_id: str) -> bool:
        """Whether ``key_id`` names a key that exists and is not revoked (a dictionary lookup when verified here)."""
        with self._lock:
            try:
                self._refresh()
                if key_id in self._verified:
                    return True
                row = self._db.execute(
                    "SELECT 1 FROM api_keys WHERE key_id = ? AND revoked_at IS NULL", (key_id,)
                ).fetchone()
            except sqlite3.Error as exc:
                raise StorageError(f"{self.path}: key database error: {exc}") from None
        return row is not None

    def _refresh(self) -> None:
        """Forget remembered keys revoked (or deleted) by any connection since the last look (lock held)."""
        version = self._data_version()
        if version == self._version or not self._verified:
            self._version = version
            return
        self._version = version
        ids = list(self._verified)
        marks = ",".join("?" * len(ids))
        valid = {
            row[0]
            for row in self._db.execute(
                f"SELECT key_id FROM api_keys WHERE key_id IN ({marks}) AND revoked_at IS NULL", ids
            )
        }
        for key_id in ids:
            if key_id not in valid:
                del self._verified[key_id]

    def _touch(self, key_id: str, entry: _Verified) -> None:
        """Record the key's use, at most every :data:`LAST_USED_RESOLUTION` seconds (lock held)."""
        now = time.monotonic()
        if now - entry.touched < LAST_USED_RESOLUTION:
            return
        entry.touched = now
        # Best effort, and never a long wait on the event loop: a busy database skips this minute's mark.
        self._db.execute(f"PRAGMA busy_timeout = {TOUCH_BUSY_MS}")
        try:
            self._db.execute("UPDATE api_keys SET last_used_at = ? WHERE key_id = ?", (time.time(), key_id))
        except sqlite3.OperationalError:
            pass
        finally:
            self._db.execute(f"PRAGMA busy_timeout = {BUSY_MS}")


def _role(role: Role | str) -> Role:
    try:
        return Role(str(role).strip().lower())
    except ValueError:
        allowed = ", ".join(r.value for r in Role)
        raise ValidationError(f"role: {role!r} is not a role; allowed: {allowed}") from None


def _name(name: str) -> str:
    name = name.strip()
    if not name or len(name) > MAX_NAME_LENGTH or not _NAME_RE.fullmatch(name):
        raise ValidationError(
            f"name: {name[:40]!r} must be 1-{MAX_NAME_LENGTH} letters, digits, spaces or _.:@- (starting alphanumeric)"
        )
    return name


_STORES: dict[Path, KeyStore] = {}
_STORES_LOCK = threading.Lock()


def key_store(settings: Settings) -> KeyStore:
    """This process's key store of ``settings``' data directory (one per database, shared by the app and the CLI)."""
    path = (settings.state_dir / KEYS_FILE).resolve()
    with _STORES_LOCK:
        store = _STORES.get(path)
        if store is None:
            store = _STORES[path] = KeyStore(path)
        return store


def close_key_stores() -> None:
    """Close every key store this process opened (tests; process exit closes them anyway)."""
    with _STORES_LOCK:
        for store in _STORES.values():
            store.close()
        _STORES.clear()


os.register_at_fork(after_in_child=_STORES.clear)  # a forked child opens its own connections


def create_key(settings: Settings, name: str, role: Role | str) -> tuple[str, str]:
    """Create an API key; return ``(key_id, token)`` where the token (``mk_<key_id>_…``) is shown once.

    Args:
        settings: whose data directory holds the key database.
        name: who or what uses the key.
        role: ``reader``, ``writer`` or ``admin``.
    """
    created = key_store(settings).create(name, role)
    assert created is not None
    return created


def list_keys(settings: Settings) -> list[ApiKey]:
    """Every API key of ``settings``' data directory (never a secret)."""
    return key_store(settings).entries()


def revoke_key(settings: Settings, key_id: str) -> ApiKey:
    """Revoke a key; it stops working at once in every process. Unknown ids raise :class:`ValidationError`.

    Args:
        settings: whose data directory holds the key database.
        key_id: the id ``metrics keys list`` shows (the 12 hex digits after ``mk_``).
    """
    return key_store(settings).revoke(key_id)


def ensure_admin_key(settings: Settings) -> str | None:
    """Create the ``bootstrap-admin`` key when no unrevoked admin key exists; return its token, else None.

    Safe to call on every start (``metrics deploy`` does): the check and the insert are
    one transaction, so concurrent callers create at most one key.

    Args:
        settings: whose data directory holds the key database.
    """
    created = key_store(settings).create(BOOTSTRAP_NAME, Role.ADMIN, only_if_no_admin=True)
    return None if created is None else created[1]

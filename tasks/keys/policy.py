"""Key policies and their violations: the compliance view of the key estate.

Four policies, configured in the ``key_policy`` section of ``main.json`` (or
``METRICS_KEY_*`` variables):

``rotation_overdue`` (state)
    A key not deleted whose last rotation (else its creation, else when it was
    first seen) is more than ``max_rotation_days`` (365) ago. 0 turns it off.
``forbidden_algorithm`` (state for a key's own algorithm, event for a call's)
    A key whose key spec or type is forbidden (``RSA-1024``), or a call that
    names a forbidden algorithm (Vault signing with ``sha1``). Names match when
    the forbidden name's words and numbers appear together in the algorithm's:
    ``SHA-1`` matches ``sha1``, ``hmac-sha1`` and ``RSASSA_PKCS1_V1_5_SHA_1`` but
    not ``SHA_256``.
``principal_not_allowed`` (event)
    A successful call on a key by a principal not listed for it in
    ``allowed_principals`` (key selector → principal patterns; both are
    shell-style globs over the key id, ARN or ``mount/name``, and the principal).
    AWS services acting for the account (automatic rotation) are exempt.
``disabled_key_use`` (event)
    A use of a key that is disabled, pending deletion, deleted or without
    material: refused for that reason, or succeeding although the inventory
    says the key is not usable.

A *state* violation opens once (one increment of
``crypto.key.policy_violations``) and closes when the key complies again; an
*event* violation counts every occurrence. Violations are stored in the
inventory's ``violations`` table, principals pseudonymised.
"""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from functools import lru_cache
from typing import Any

from tasks.collect.key_events import USE_KINDS, EventKind, KeyEvent
from tasks.keys.inventory import DELETED, UNUSABLE_STATES, KeyRecord

ROTATION_OVERDUE = "rotation_overdue"
FORBIDDEN_ALGORITHM = "forbidden_algorithm"
PRINCIPAL_NOT_ALLOWED = "principal_not_allowed"
DISABLED_KEY_USE = "disabled_key_use"
POLICIES = (ROTATION_OVERDUE, FORBIDDEN_ALGORITHM, PRINCIPAL_NOT_ALLOWED, DISABLED_KEY_USE)
STATE, EVENT = "state", "event"
DEFAULT_FORBIDDEN = ("RSA-1024", "3DES", "SHA-1")
SERVICE_PRINCIPAL_TYPES = frozenset({"AWSService"})
_WORDS = re.compile(r"[a-z]+|[0-9]+")


@lru_cache(maxsize=4096)
def algorithm_words(name: str) -> tuple[str, ...]:
    """``RSASSA_PKCS1_V1_5_SHA_1`` -> ('rsassa', 'pkcs', '1', 'v', '1', '5', 'sha', '1')."""
    return tuple(_WORDS.findall(name.lower()))


@lru_cache(maxsize=65_536)
def matches_algorithm(name: str, forbidden: str) -> bool:
    """Whether ``forbidden``'s words appear, in a row, among ``name``'s."""
    words, wanted = algorithm_words(name), algorithm_words(forbidden)
    if not wanted:
        return False
    return any(words[i : i + len(wanted)] == wanted for i in range(len(words) - len(wanted) + 1))


@dataclass(frozen=True)
class KeyPolicy:
    """The key policies.

    Args:
        max_rotation_days: days allowed between rotations (0: no rotation policy).
        forbidden_algorithms: algorithm names no key may have and no call may use.
        allowed_principals: key selector (glob over key id, key reference or ``mount/name``) → principal globs.
        forbid_disabled_use: report uses of keys that are not usable.
    """

    max_rotation_days: int = 365
    forbidden_algorithms: tuple[str, ...] = DEFAULT_FORBIDDEN
    allowed_principals: Mapping[str, Sequence[str]] = field(default_factory=dict)
    forbid_disabled_use: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.max_rotation_days, bool) or not isinstance(self.max_rotation_days, int):
            raise ValueError(f"max_rotation_days: {self.max_rotation_days!r} is not a whole number of days")
        if self.max_rotation_days < 0:
            raise ValueError(f"max_rotation_days: {self.max_rotation_days!r} must be >= 0 (0 turns it off)")
        for selector, principals in self.allowed_principals.items():
            if isinstance(principals, str) or not all(isinstance(p, str) for p in principals):
                raise ValueError(f"allowed_principals[{selector!r}]: expected a list of principal patterns")

    def forbidden(self, algorithm: str | None) -> str | None:
        """The forbidden name ``algorithm`` matches, or None."""
        if not algorithm:
            return None
        return next((name for name in self.forbidden_algorithms if matches_algorithm(algorithm, name)), None)

    def allowed_for(self, record: KeyRecord) -> list[str] | None:
        """The principal patterns allowed for a key (all selectors that match it), or None when unrestricted."""
        names = (record.key_id, record.key_ref, f"{record.mount}/{record.key_id}" if record.mount else record.key_id)
        allowed: list[str] | None = None
        for selector, principals in self.allowed_principals.items():
            if any(fnmatchcase(name, selector) for name in names):
                allowed = [*(allowed or []), *principals]
        return allowed


@dataclass(frozen=True)
class Violation:
    """One finding: which key, which policy, about what (``subject``), when, and a sentence saying it."""

    key_ref: str
    policy: str
    subject: str
    kind: str
    detail: str
    time_us: int


def check_event(
    policy: KeyPolicy,
    event: KeyEvent,
    record: KeyRecord | None,
    state_before: str | None,
    pseudonym: Callable[[str, str], str],
) -> list[Violation]:
    """The violations one event commits, judged against its key as it was just before the event.

    Args:
        policy: the policies.
        event: the event.
        record: its key after the event (None for an event naming no key).
        state_before: the key's state just before the event.
        pseudonym: ``(tag, value) -> stored text`` for principals (the PII pseudonymiser).
    """
    if record is None or event.key_ref is None:
        return []
    found: list[Violation] = []
    what = f"{event.action} on {record.key_id}"

    def add(name: str, subject: str, detail: str) -> None:
        found.append(Violation(event.key_ref or "", name, subject, EVENT, detail, event.time_us))

    own = record.algorithm if event.kind == EventKind.CREATED else None
    for algorithm in event.algorithms_used:
        forbidden = policy.forbidden(algorithm)
        if forbidden and algorithm != own:
            add(FORBIDDEN_ALGORITHM, algorithm, f"{what} used {algorithm} (forbidden: {forbidden})")
    if event.succeeded and event.principal and event.principal_type not in SERVICE_PRINCIPAL_TYPES:
        allowed = policy.allowed_for(record)
        if allowed is not None and not any(fnmatchcase(event.principal, pattern) for pattern in allowed):
            who = pseudonym("principal", event.principal)
            add(PRINCIPAL_NOT_ALLOWED, who, f"{what} by {who}, not an allowed principal of the key")
    if policy.forbid_disabled_use and event.kind in USE_KINDS:
        if event.key_state_error:
            add(DISABLED_KEY_USE, event.action, f"{what} refused: the key is not usable ({event.error})")
        elif event.succeeded and state_before in UNUSABLE_STATES:
            add(DISABLED_KEY_USE, event.action, f"{what} succeeded while the key was {state_before}")
    return found


def check_estate(policy: KeyPolicy, records: Iterable[KeyRecord], now_us: int) -> list[Violation]:
    """The state violations of the key estate now: overdue rotations and keys of forbidden algorithms."""
    found: list[Violation] = []
    for record in records:
        if record.state == DELETED:
            continue
        days = record.days_since_rotation(now_us)
        if policy.max_rotation_days and days > policy.max_rotation_days:
            since = "rotation" if record.rotated_at else ("creation" if record.created_at else "first seen")
            found.append(
                Violation(
                    record.key_ref,
                    ROTATION_OVERDUE,
                    "",
                    STATE,
                    f"{record.key_id}: {days:.0f} days since {since}, more than {policy.max_rotation_days}",
                    now_us,
                )
            )
        forbidden = policy.forbidden(record.algorithm)
        if forbidden and record.algorithm:
            found.append(
                Violation(
                    record.key_ref,
                    FORBIDDEN_ALGORITHM,
                    record.algorithm,
                    STATE,
                    f"{record.key_id} is a {record.algorithm} key (forbidden: {forbidden})",
                    now_us,
                )
            )
    return found


def record_violations(
    connection: sqlite3.Connection, found: Sequence[Violation], *, checked_keys: Iterable[str] = ()
) -> list[Violation]:
    """Store findings; return those that count as new occurrences (every event one, a state one when it opens).

    Open state violations of ``checked_keys`` (the keys whose estate was checked) that are missing
    from ``found`` are closed: the key complies again.
    """
    counted: list[Violation] = []
    open_state = {
        (row[0], row[1], row[2])
        for row in connection.execute(
            "SELECT key_ref, policy, subject FROM violations WHERE kind = ? AND open = 1", (STATE,)
        )
    }
    current = set()
    for violation in found:
        key = (violation.key_ref, violation.policy, violation.subject)
        if violation.kind == STATE:
            current.add(key)
            if key in open_state:
                connection.execute(
                    "UPDATE violations SET last_at = max(last_at, ?), detail = ? "
                    "WHERE key_ref = ? AND policy = ? AND subject = ?",
                    (violation.time_us, violation.detail, *key),
                )
                continue
            open_state.add(key)
        counted.append(violation)
        connection.execute(
            "INSERT INTO violations (key_ref, policy, subject, kind, detail, first_at, last_at, count, open) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, 1, 1) ON CONFLICT (key_ref, policy, subject) DO UPDATE SET "
            "kind = excluded.kind, detail = excluded.detail, last_at = max(last_at, excluded.last_at), "
            "count = count + 1, open = 1",
            (*key, violation.kind, violation.detail, violation.time_us, violation.time_us),
        )
    checked = set(checked_keys)
    if checked:
        closed = [key for key in open_state if key not in current and key[0] in checked]
        connection.executemany(
            "UPDATE violations SET open = 0 WHERE key_ref = ? AND policy = ? AND subject = ? AND kind = 'state'",
            closed,
        )
    return counted


def violations(connection: sqlite3.Connection, *, open_only: bool = False) -> list[dict[str, Any]]:
    """Stored violations, newest first: key, policy, subject, kind, detail, first/last time, count, open."""
    names = ("key_ref", "policy", "subject", "kind", "detail", "first_at", "last_at", "count", "open")
    where = " WHERE open = 1" if open_only else ""
    rows = connection.execute(f"SELECT {', '.join(names)} FROM violations{where} ORDER BY last_at DESC, key_ref")
    return [{**dict(zip(names, row, strict=True)), "open": bool(row[-1])} for row in rows]

"""Vault / OpenBao file audit entries, from a log written after Vault's documentation, into key events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tasks.collect.key_events import EventKind, KeyEvent
from tasks.collect.vault import VaultAuditSource, principal

LOG = Path(__file__).resolve().parents[2] / "fixtures" / "keylogs" / "vault" / "audit.log"
ENTRIES = [json.loads(line) for line in LOG.read_text().splitlines()]


def events(entries: list[dict[str, Any]], mounts: tuple[str, ...] = ("transit",)) -> list[KeyEvent]:
    source = VaultAuditSource([], mounts)
    return [event for entry in entries for event in source.events(entry)]


def test_the_documented_log_gives_one_event_per_transit_request() -> None:
    found = [(e.action, e.kind, e.key_ref, e.unauthorized) for e in events(ENTRIES)]
    assert found == [
        ("transit/keys", EventKind.CREATED, "vault:transit/orders", False),
        ("transit/encrypt", EventKind.ENCRYPT, "vault:transit/orders", False),
        ("transit/decrypt", EventKind.DECRYPT, "vault:transit/orders", False),
        ("transit/keys/rotate", EventKind.ROTATED, "vault:transit/orders", False),
        ("transit/keys", EventKind.CREATED, "vault:transit/signer", False),
        ("transit/sign", EventKind.SIGN, "vault:transit/signer", False),
        ("transit/verify", EventKind.VERIFY, "vault:transit/signer", False),
        ("transit/hmac", EventKind.MAC, "vault:transit/macs", False),
        ("crypto/encrypt", EventKind.ENCRYPT, "vault:crypto/payments", False),  # a transit engine at crypto/
        ("transit/verify", EventKind.MAC, "vault:transit/macs", False),  # verifying an HMAC
        ("transit/encrypt", EventKind.ENCRYPT, "vault:transit/orders", True),  # permission denied, counted once
        ("crypto/decrypt", EventKind.DECRYPT, "vault:crypto/payments", False),
        ("transit/keys/config", EventKind.POLICY_CHANGED, "vault:transit/orders", False),
        ("transit/keys", EventKind.DELETED, "vault:transit/orders", False),
    ]  # the kv read of secret/data/foo is not about keys


def test_fields_of_an_event() -> None:
    sign = next(e for e in events(ENTRIES) if e.kind == EventKind.SIGN)
    assert sign.algorithms_used == ("sha1",)  # named in the path: transit/sign/signer/sha1
    assert sign.key_id == "signer"
    assert sign.mount == "transit"
    assert sign.principal is not None
    assert sign.principal.startswith("approle")
    assert sign.source_ip is not None
    assert sign.time_us > 0
    assert sign.error is None


def test_hmacd_values_are_left_as_they_are() -> None:
    created = next(e for e in events(ENTRIES) if e.kind == EventKind.CREATED)
    assert created.algorithm is None  # the key type was HMAC'd in the log: unknown, not guessed
    entry = json.loads(json.dumps(ENTRIES[1]))
    entry["request"]["data"] = {"type": "ed25519"}  # logged in the clear (audit_non_hmac_request_keys)
    assert events([entry])[0].algorithm == "ed25519"
    assert events([entry])[0].key_type == "signing"
    entry["request"]["data"] = {}
    assert events([entry])[0].algorithm == "aes256-gcm96"  # no type given: Vault's default


def test_older_vaults_without_mount_type_use_the_configured_mounts() -> None:
    entry = json.loads(json.dumps(ENTRIES[3]))  # the encrypt response
    del entry["request"]["mount_type"]
    assert [e.kind for e in events([entry])] == [EventKind.ENCRYPT]
    assert events([entry], mounts=("other",)) == []


def test_a_refused_request_logged_twice_is_one_event() -> None:
    denied = [entry for entry in ENTRIES if entry.get("error")]
    assert len(denied) == 2
    assert len(events(denied)) == 1
    assert len(events(denied[1:])) == 1  # only the response in this file: still counted


def test_rewrap_is_a_decrypt_and_an_encrypt() -> None:
    entry = json.loads(json.dumps(ENTRIES[3]))
    entry["request"]["path"] = "transit/rewrap/orders"
    assert [e.kind for e in events([entry])] == [EventKind.DECRYPT, EventKind.ENCRYPT]


@pytest.mark.parametrize(
    ("path", "operation", "kind", "key"),
    [
        ("transit/datakey/plaintext/orders", "update", EventKind.ENCRYPT, "orders"),
        ("transit/keys/orders", "read", EventKind.READ, "orders"),
        ("transit/export/encryption-key/orders", "read", EventKind.EXPORTED, "orders"),
        ("transit/backup/orders", "read", EventKind.EXPORTED, "orders"),
        ("transit/keys/orders/trim", "update", EventKind.CONFIGURED, "orders"),
        ("transit/keys/orders/something-new", "update", EventKind.OTHER, "orders"),
        ("transit/keys", "list", None, None),
        ("transit/random/32", "update", None, None),
    ],
)
def test_transit_paths(path: str, operation: str, kind: EventKind | None, key: str | None) -> None:
    entry = json.loads(json.dumps(ENTRIES[3]))
    entry["request"].update(path=path, operation=operation)
    found = events([entry])
    assert [(e.kind, e.key_id) for e in found] == ([(kind, key)] if kind else [])


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"type": "odd"}, "type: 'odd' is not an audit entry type"),
        ({"request": None}, "request: expected an object"),
        ({"time": "soon"}, "time: 'soon' is not an RFC 3339 time"),
    ],
)
def test_bad_entries_are_refused_with_the_field(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        events([{**ENTRIES[3], **change}])


@pytest.mark.parametrize(
    ("auth", "expected"),
    [
        ({"display_name": "userpass-alice"}, "userpass-alice"),
        ({"display_name": "approle", "metadata": {"role_name": "orders-api"}}, "approle:orders-api"),
        ({"entity_id": "e-1"}, "e-1"),
        ({}, None),
    ],
)
def test_principal(auth: dict[str, Any], expected: str | None) -> None:
    assert principal(auth) == expected


def test_refused_rewrap_is_one_event_and_an_existing_key_is_not_created_again() -> None:
    denied = json.loads(json.dumps(ENTRIES[20]))  # the permission-denied request entry
    denied["request"]["path"] = "transit/rewrap/orders"
    (event,) = events([denied])
    assert event.unauthorized
    again = json.loads(json.dumps(ENTRIES[1]))  # the create response
    again["response"] = {"warnings": ["the key already existed; its configuration was not changed"]}
    assert events([again])[0].kind == EventKind.CONFIGURED

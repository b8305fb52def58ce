"""Key events from the HashiCorp Vault / OpenBao file audit device (JSON lines of requests and responses).

Each request Vault serves is logged twice with one ``request.id``: a
``request`` entry before it is handled and a ``response`` entry after. A key
event is taken from the response (which knows the outcome), or from a
request entry that already carries an error (a request refused before it
reached the engine; the response entry that may follow is then skipped). The
event id is ``request.id``, so one request is one event however often its
entries are read.

Only the transit secrets engine is about keys: an entry belongs to it when
``request.mount_type`` is ``transit``, or (older Vaults, which do not log the
mount type) when its path starts with one of the configured transit mounts
(``collector.vault_transit_mounts``, default ``transit``). The path after the
mount says what was done:

=====================================  ===============================
``encrypt/<key>``, ``datakey/…/<key>``  encrypt
``decrypt/<key>``                       decrypt
``rewrap/<key>``                        decrypt and encrypt
``sign/<key>[/<hash>]``                 sign
``verify/<key>[/<hash>]``               verify
``hmac/<key>[/<algorithm>]``            MAC
``keys/<key>``                          create (create/update), delete, read
``keys/<key>/rotate``                   rotate
``keys/<key>/config``                   configuration that changes who may do what
``export/…/<key>``, ``backup/<key>``    export of key material
``restore[/<key>]``, ``keys/<key>/import``  create from outside material
=====================================  ===============================

Vault HMACs the string values of requests and responses in its audit log
unless a mount lists them in ``audit_non_hmac_request_keys``; such values
(``hmac-sha256:…``) are left as they are. A key's type (``aes256-gcm96``,
``rsa-2048``, ``ed25519`` …) is therefore known only when the create request
logs it in the clear, or when it names none (Vault's default,
``aes256-gcm96``). The caller is ``auth.display_name`` (with an AppRole's
``role_name``; else ``auth.entity_id``), the address ``request.remote_address``; an error
containing ``permission denied`` is an unauthorized call.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, ClassVar

from tasks.collect.key_events import EventKind, KeyEvent, KeyEventSource, field_text, parse_time, require_mapping

SOURCE = "vault"
HMAC_PREFIX = "hmac-sha256:"
DEFAULT_KEY_TYPE = "aes256-gcm96"  # what transit creates when no type is given
PERMISSION_DENIED = "permission denied"
REMEMBERED_REFUSALS = 10_000  # refused request ids kept to recognise their response entries
# Vault key types -> our key types.
KEY_TYPES = {
    "aes128-gcm96": "encryption",
    "aes256-gcm96": "encryption",
    "chacha20-poly1305": "encryption",
    "xchacha20-poly1305": "encryption",
    "ed25519": "signing",
    "ecdsa-p256": "signing",
    "ecdsa-p384": "signing",
    "ecdsa-p521": "signing",
    "rsa-2048": "asymmetric",
    "rsa-3072": "asymmetric",
    "rsa-4096": "asymmetric",
    "hmac": "mac",
    "managed_key": "managed",
}
KIND_KEY_TYPES = {
    EventKind.ENCRYPT: "encryption",
    EventKind.DECRYPT: "encryption",
    EventKind.SIGN: "signing",
    EventKind.VERIFY: "signing",
    EventKind.MAC: "mac",
}
# First path segment after the mount -> (kind, index of the key name among the segments).
OPERATIONS: dict[str, tuple[EventKind, int]] = {
    "encrypt": (EventKind.ENCRYPT, 1),
    "decrypt": (EventKind.DECRYPT, 1),
    "rewrap": (EventKind.DECRYPT, 1),  # and an encrypt: see VaultAuditSource.events
    "datakey": (EventKind.ENCRYPT, 2),
    "sign": (EventKind.SIGN, 1),
    "verify": (EventKind.VERIFY, 1),
    "hmac": (EventKind.MAC, 1),
    "export": (EventKind.EXPORTED, 2),
    "backup": (EventKind.EXPORTED, 1),
    "restore": (EventKind.CREATED, 1),
    "byok-export": (EventKind.EXPORTED, 2),
}
KEY_SUBPATHS = {
    "rotate": EventKind.ROTATED,
    "config": EventKind.POLICY_CHANGED,
    "import": EventKind.CREATED,
    "import_version": EventKind.MATERIAL_IMPORTED,
    "trim": EventKind.CONFIGURED,
}


def clear_text(value: Any) -> str | None:
    """A value the audit log shows in the clear (not HMAC'd), else None."""
    if isinstance(value, str) and value and not value.startswith(HMAC_PREFIX):
        return value
    return None


class VaultAuditSource(KeyEventSource):
    """Transit key events from Vault / OpenBao file audit logs.

    Args:
        paths: audit log files (``audit.log``, rotated ``audit.log.1``, ``.gz``) or folders holding them.
        mounts: transit mount paths to recognise when entries do not log ``mount_type`` (older Vaults).
    """

    name: ClassVar[str] = SOURCE
    patterns: ClassVar[tuple[str, ...]] = ("*.log", "*.log.*", "*.json", "*.jsonl", "*.json.gz", "*.jsonl.gz")

    def __init__(self, paths: Iterable[Path | str], mounts: Sequence[str] = ("transit",)) -> None:
        super().__init__(paths)
        self.mounts = tuple(m.strip("/") + "/" for m in mounts if m.strip("/"))
        # Requests refused before handling whose event came from the request entry: their response is skipped.
        self._refused: OrderedDict[str, None] = OrderedDict()

    def _mount(self, request: Mapping[str, Any], path: str) -> str | None:
        """The transit mount (``transit/``) the request went to, or None when it is not a transit request."""
        kind = request.get("mount_type")
        point = field_text(request, "mount_point")
        if kind == "transit" and point and path.startswith(point):
            return point
        if kind is None:
            for mount in self.mounts:
                if path.startswith(mount):
                    return mount
        return None

    def events(self, record: Any) -> list[KeyEvent]:
        """The key event of one audit entry (none for other engines, or a request entry that succeeded)."""
        entry = require_mapping(record, "audit entry")
        entry_type = entry.get("type")
        if entry_type not in ("request", "response"):
            raise ValueError(f"type: {entry_type!r} is not an audit entry type (request or response)")
        error = entry.get("error") if isinstance(entry.get("error"), str) and entry.get("error") else None
        if entry_type == "request" and error is None:
            return []  # its response says how it ended
        request = require_mapping(entry.get("request"), "request")
        path = field_text(request, "path")
        if path is None:
            raise ValueError("request.path: missing")
        mount = self._mount(request, path)
        if mount is None:
            return []
        request_id = field_text(request, "id")
        if request_id is None:
            raise ValueError(f"request.id: missing ({path})")
        if entry_type == "request":
            self._refused[request_id] = None
            if len(self._refused) > REMEMBERED_REFUSALS:
                self._refused.popitem(last=False)
        elif self._refused.pop(request_id, 0) is None:
            return []  # the response of a refused request already counted from its request entry
        time_us = parse_time(entry.get("time"))
        if time_us is None:
            raise ValueError(f"time: {entry.get('time')!r} is not an RFC 3339 time ({path})")
        operation = field_text(request, "operation") or ""
        parts = path[len(mount) :].strip("/").split("/")
        kind, key_name, algorithm_in_path = self._operation(parts, operation)
        if kind is None:
            if error is None:
                return []
            kind = EventKind.OTHER  # a refused call with no key (random, hash, a list of keys)
        data = request.get("data")
        data = data if isinstance(data, Mapping) else {}
        if kind == EventKind.VERIFY and "hmac" in data:
            kind = EventKind.MAC  # verify/<key> checks an HMAC when given one
        if kind == EventKind.CREATED and _already_existed(entry):
            kind = EventKind.CONFIGURED  # Vault answers a create of an existing key with a warning
        auth = entry.get("auth")
        auth = auth if isinstance(auth, Mapping) else {}
        algorithm = None
        if kind == EventKind.CREATED and key_name and parts[0] == "keys":
            algorithm = clear_text(data.get("type")) if "type" in data else DEFAULT_KEY_TYPE
        named = (
            algorithm,
            algorithm_in_path,
            clear_text(data.get("hash_algorithm")),
            clear_text(data.get("algorithm")),
        )
        used = tuple(dict.fromkeys(value for value in named if value))
        mount_name = mount.rstrip("/")
        event = KeyEvent(
            event_id=request_id,
            time_us=time_us,
            source=SOURCE,
            action=f"{mount_name}/{parts[0]}" + (f"/{parts[2]}" if parts[0] == "keys" and len(parts) > 2 else ""),
            kind=kind,
            key_ref=f"vault:{mount_name}/{key_name}" if key_name else None,
            key_id=key_name,
            mount=mount_name,
            principal=principal(auth),
            principal_type=field_text(auth, "token_type"),
            source_ip=field_text(request, "remote_address"),
            error=error,
            unauthorized=error is not None and PERMISSION_DENIED in error.lower(),
            key_state_error=error is not None and _key_state_error(error),
            key_type=KEY_TYPES.get(algorithm or "") or KIND_KEY_TYPES.get(kind),
            algorithm=algorithm,
            algorithms_used=used,
        )
        if parts[0] == "rewrap" and key_name and error is None:
            return [event, replace(event, event_id=request_id + ":rewrap", kind=EventKind.ENCRYPT, continuation=True)]
        return [event]

    @staticmethod
    def _operation(parts: list[str], operation: str) -> tuple[EventKind | None, str | None, str | None]:
        """(kind, key name, algorithm named in the path) of a transit path below its mount."""
        head = parts[0]
        if head == "keys":
            if len(parts) == 1:
                return None, None, None  # listing keys
            name = parts[1]
            if len(parts) > 2:
                return KEY_SUBPATHS.get(parts[2], EventKind.OTHER), name, None
            if operation == "delete":
                return EventKind.DELETED, name, None
            if operation in ("create", "update"):
                return EventKind.CREATED, name, None
            return EventKind.READ, name, None
        known = OPERATIONS.get(head)
        if known is None:
            return None, None, None  # random, hash, cache-config, wrapping keys: no key of ours
        kind, index = known
        if len(parts) <= index or not parts[index]:
            return None, None, None
        extra = parts[index + 1] if head in ("sign", "verify", "hmac") and len(parts) > index + 1 else None
        return kind, parts[index], extra


def principal(auth: Mapping[str, Any]) -> str | None:
    """Who called: ``auth.display_name`` (``userpass-alice``), with the AppRole's ``role_name``
    (``approle:orders-api``) since every AppRole login shares one display name; else ``auth.entity_id``."""
    name = field_text(auth, "display_name", "entity_id")
    metadata = auth.get("metadata")
    role = clear_text(metadata.get("role_name")) if isinstance(metadata, Mapping) else None
    return f"{name}:{role}" if name and role and role not in name else name


def _already_existed(entry: Mapping[str, Any]) -> bool:
    """Whether a response warns that the key it was asked to create already existed."""
    response = entry.get("response")
    warnings = response.get("warnings") if isinstance(response, Mapping) else None
    return isinstance(warnings, list) and any(isinstance(w, str) and "already exist" in w.lower() for w in warnings)


def _key_state_error(error: str) -> bool:
    """A use refused because the key is missing (deleted) or not allowed for the operation right now."""
    text = error.lower()
    return "key not found" in text or "no existing key" in text or "key is disabled" in text

"""Realistic key-management audit logs, generated: AWS CloudTrail (KMS) files and a Vault file-audit log.

For ``metrics demo`` (a newcomer sees key metrics, inventory and policy
findings within a minute) and for the collectors' benchmark. The records
follow the shapes the AWS KMS developer guide and Vault's audit-device
documentation show (tests of the parsers use excerpts of those documents;
this module only has to be realistic, not authoritative).

The estate: a handful of symmetric KMS keys used by services (decrypt-heavy,
with a daily rhythm), a signing key and an HMAC key, an old key created more
than a year before ``now`` and never rotated (rotation overdue), a key
disabled and scheduled for deletion and then still used by a forgotten job
(``DisabledException``), and an unknown principal probing keys it may not use
(``AccessDenied``). Vault transit keys ``orders`` and ``payments`` (AES),
``signer`` (RSA, sometimes asked for SHA-1 signatures: a forbidden algorithm)
and a burst of permission-denied requests.
"""

from __future__ import annotations

import gzip
import math
import random
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from pathlib import Path
from typing import Any

import orjson

ACCOUNT = "111122223333"
REGIONS = ("us-east-1", "eu-west-1")
DELIVERY_SECONDS = 300  # CloudTrail delivers a file about every five minutes per region
SERVICES = ("orders-service", "payments-service", "billing-batch", "reports-api", "ingest-worker")


def _uuid(rng: random.Random) -> str:
    h = f"{rng.getrandbits(128):032x}"
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-a{h[17:20]}-{h[20:]}"


def _time(moment: float) -> str:
    return datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class DemoKey:
    """One generated KMS key."""

    key_id: str
    region: str
    spec: str = "SYMMETRIC_DEFAULT"
    usage: str = "ENCRYPT_DECRYPT"
    users: tuple[str, ...] = ()
    weight: float = 1.0  # share of the traffic

    @property
    def arn(self) -> str:
        """The key's ARN."""
        return f"arn:aws:kms:{self.region}:{ACCOUNT}:key/{self.key_id}"


@dataclass
class CloudTrailMix:
    """A generated estate and the rules of its traffic."""

    keys: list[DemoKey] = field(default_factory=list)
    legacy: DemoKey | None = None  # created long ago, never rotated
    retired: DemoKey | None = None  # disabled and scheduled for deletion, then still used


def cloudtrail_estate(seed: int = 7, keys: int = 12) -> CloudTrailMix:
    """The demo estate: ``keys`` service keys plus a signing, an HMAC, a legacy and a retired key."""
    rng = random.Random(seed)
    mix = CloudTrailMix()
    for i in range(keys):
        service = SERVICES[i % len(SERVICES)]
        mix.keys.append(
            DemoKey(_uuid(rng), REGIONS[i % 2], users=(service,), weight=rng.uniform(0.3, 3.0) / (1 + i % 4))
        )
    mix.keys.append(DemoKey(_uuid(rng), REGIONS[0], "ECC_NIST_P256", "SIGN_VERIFY", ("release-signer",), 0.4))
    mix.keys.append(DemoKey(_uuid(rng), REGIONS[0], "HMAC_256", "GENERATE_VERIFY_MAC", ("session-tokens",), 0.6))
    mix.legacy = DemoKey(_uuid(rng), REGIONS[1], "RSA_2048", "ENCRYPT_DECRYPT", ("archive-job",), 0.05)
    mix.retired = DemoKey(_uuid(rng), REGIONS[0], users=("old-cron",), weight=0.02)
    mix.keys += [mix.legacy, mix.retired]
    return mix


def _address(rng: random.Random, principal: str, network: str = "10.0") -> str:
    """One of a principal's few addresses (services run on a handful of hosts)."""
    subnet, host = _home(principal)
    return f"{network}.{subnet}.{host + rng.randrange(3)}"


@lru_cache(maxsize=1024)
def _home(principal: str) -> tuple[int, int]:
    """A principal's subnet and first host number, the same on every run."""
    return sum(map(ord, principal)) % 8 + 1, random.Random(principal).randrange(2, 200)


def _identity(principal: str) -> dict[str, Any]:
    if principal.startswith("user/"):
        name = principal[len("user/") :]
        return {
            "type": "IAMUser",
            "principalId": "AIDAEXAMPLE" + name.upper()[:8],
            "arn": f"arn:aws:iam::{ACCOUNT}:user/{name}",
            "accountId": ACCOUNT,
            "accessKeyId": "AKIAIOSFODNN7EXAMPLE",
            "userName": name,
        }
    role = f"arn:aws:iam::{ACCOUNT}:role/{principal}"
    return {
        "type": "AssumedRole",
        "principalId": f"AROAEXAMPLEROLEID:{principal}-session",
        "arn": f"arn:aws:sts::{ACCOUNT}:assumed-role/{principal}/{principal}-session",
        "accountId": ACCOUNT,
        "accessKeyId": "ASIAEXAMPLEKEYID",
        "sessionContext": {
            "sessionIssuer": {"type": "Role", "principalId": "AROAEXAMPLEROLEID", "arn": role, "accountId": ACCOUNT},
            "attributes": {"creationDate": "2026-01-01T00:00:00Z", "mfaAuthenticated": "false"},
        },
    }


def _service_identity() -> dict[str, Any]:
    return {"accountId": ACCOUNT, "invokedBy": "kms.amazonaws.com"}


def cloudtrail_record(
    rng: random.Random,
    moment: float,
    name: str,
    key: DemoKey | None,
    principal: str | None,
    *,
    request: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    error: tuple[str, str] | None = None,
    service_event: bool = False,
) -> dict[str, Any]:
    """One KMS event as CloudTrail logs it."""
    record: dict[str, Any] = {
        "eventVersion": "1.09",
        "userIdentity": _service_identity() if service_event or principal is None else _identity(principal),
        "eventTime": _time(moment),
        "eventSource": "kms.amazonaws.com",
        "eventName": name,
        "awsRegion": key.region if key else REGIONS[0],
        "sourceIPAddress": "AWS Internal" if service_event else _address(rng, principal or ""),
        "userAgent": "AWS Internal" if service_event else "aws-sdk-java/2.25.10 Linux/6.1",
        "requestParameters": request,
        "responseElements": response,
        "requestID": _uuid(rng),
        "eventID": _uuid(rng),
        "readOnly": name in ("Decrypt", "Encrypt", "GenerateDataKey", "Sign", "Verify", "GenerateMac", "DescribeKey"),
        "eventType": "AwsServiceEvent" if service_event else "AwsApiCall",
        "managementEvent": True,
        "recipientAccountId": ACCOUNT,
        "eventCategory": "Management",
    }
    if key is not None:
        record["resources"] = [{"accountId": ACCOUNT, "type": "AWS::KMS::Key", "ARN": key.arn}]
    if error is not None:
        record["errorCode"], record["errorMessage"] = error
    if service_event:
        record["serviceEventDetails"] = {"keyOrigin": "AWS_KMS"}
    return record


def _use(rng: random.Random, moment: float, key: DemoKey) -> dict[str, Any]:
    principal = key.users[0] if key.users else "ops"
    if key.usage == "SIGN_VERIFY":
        name = "Sign" if rng.random() < 0.3 else "Verify"
        signing = {"keyId": key.arn, "messageType": "DIGEST", "signingAlgorithm": "ECDSA_SHA_256"}
        return cloudtrail_record(rng, moment, name, key, principal, request=signing)
    if key.usage == "GENERATE_VERIFY_MAC":
        name = "GenerateMac" if rng.random() < 0.7 else "VerifyMac"
        return cloudtrail_record(
            rng, moment, name, key, principal, request={"keyId": key.arn, "macAlgorithm": "HMAC_SHA_256"}
        )
    draw = rng.random()
    if draw < 0.62:
        request: dict[str, Any] = {
            "encryptionAlgorithm": "SYMMETRIC_DEFAULT",
            "encryptionContext": {"service": principal},
        }
        if key.spec != "SYMMETRIC_DEFAULT":
            request = {"keyId": key.arn, "encryptionAlgorithm": "RSAES_OAEP_SHA_256"}
        return cloudtrail_record(rng, moment, "Decrypt", key, principal, request=request)
    if draw < 0.9:
        return cloudtrail_record(
            rng, moment, "GenerateDataKey", key, principal, request={"keyId": key.arn, "keySpec": "AES_256"}
        )
    if draw < 0.98:
        return cloudtrail_record(
            rng,
            moment,
            "Encrypt",
            key,
            principal,
            request={"keyId": key.arn, "encryptionAlgorithm": "SYMMETRIC_DEFAULT"},
        )
    return cloudtrail_record(rng, moment, "DescribeKey", key, principal, request={"keyId": key.arn})


def _create(rng: random.Random, moment: float, key: DemoKey) -> dict[str, Any]:
    request = {"keySpec": key.spec, "keyUsage": key.usage, "origin": "AWS_KMS", "description": "demo key"}
    metadata = {
        "AWSAccountId": ACCOUNT,
        "keyId": key.key_id,
        "arn": key.arn,
        "creationDate": datetime.fromtimestamp(moment, UTC).strftime("%b %d, %Y, %I:%M:%S %p"),
        "enabled": True,
        "keyUsage": key.usage,
        "keyState": "Enabled",
        "origin": "AWS_KMS",
        "keyManager": "CUSTOMER",
        "keySpec": key.spec,
    }
    return cloudtrail_record(
        rng, moment, "CreateKey", None, "user/admin", request=request, response={"keyMetadata": metadata}
    )


def cloudtrail_records(
    start: datetime,
    end: datetime,
    *,
    events: int,
    seed: int = 7,
    mix: CloudTrailMix | None = None,
    lifecycle: bool = True,
) -> Iterator[dict[str, Any]]:
    """About ``events`` KMS records between ``start`` and ``end``.

    Args:
        start, end: the time range.
        events: how many usage events (lifecycle events come on top).
        seed: the traffic's random seed (event ids derive from it: a new range needs a new seed).
        mix: the estate (default :func:`cloudtrail_estate` with seed 7).
        lifecycle: also create the keys, rotate one and retire one (the first range of a log set).
    """
    rng = random.Random(seed)
    mix = mix or cloudtrail_estate()
    t0, t1 = start.timestamp(), end.timestamp()
    span = max(t1 - t0, 1.0)
    assert mix.legacy is not None
    assert mix.retired is not None
    if lifecycle:
        yield from _lifecycle(rng, mix, t0, span)
    retire_at = t0 + span * 0.5 if lifecycle else t0 - 1
    weights = [key.weight for key in mix.keys]
    for _ in range(events):
        moment = t0 + rng.random() * span
        hour = (moment % 86_400) / 3600
        if rng.random() > 0.55 + 0.45 * math.sin(math.pi * (hour - 6) / 12) ** 2:  # busier by day
            moment = t0 + rng.random() * span
        key = rng.choices(mix.keys, weights)[0]
        if rng.random() < 0.004:
            message = f"User: arn:aws:iam::{ACCOUNT}:user/mallory is not authorized to perform: kms:Decrypt"
            request = {"encryptionAlgorithm": "SYMMETRIC_DEFAULT"}
            yield cloudtrail_record(
                rng, moment, "Decrypt", key, "user/mallory", request=request, error=("AccessDenied", message)
            )
        elif key is mix.retired and moment > retire_at:
            request = {"encryptionAlgorithm": "SYMMETRIC_DEFAULT"}
            error = ("DisabledException", f"{key.arn} is pending deletion.")
            yield cloudtrail_record(rng, moment, "Decrypt", key, key.users[0], request=request, error=error)
        else:
            yield _use(rng, moment, key)


def _lifecycle(rng: random.Random, mix: CloudTrailMix, t0: float, span: float) -> Iterator[dict[str, Any]]:
    """Creations (the legacy key's more than a year ago), rotation settings, a rotation and a retirement."""
    assert mix.legacy is not None
    assert mix.retired is not None
    yield _create(rng, t0 - 400 * 86_400, mix.legacy)  # more than a year ago: its rotation is overdue
    for key in mix.keys:
        if key is not mix.legacy:
            yield _create(rng, t0 + rng.uniform(0, min(span * 0.02, 600)), key)
            if key.spec == "SYMMETRIC_DEFAULT":
                yield cloudtrail_record(
                    rng, t0 + 900, "EnableKeyRotation", key, "user/admin", request={"keyId": key.key_id}
                )
    retire_at = t0 + span * 0.5
    yield cloudtrail_record(
        rng, retire_at, "DisableKey", mix.retired, "user/admin", request={"keyId": mix.retired.key_id}
    )
    deletion = datetime.fromtimestamp(retire_at + 7 * 86_400, UTC).strftime("%b %d, %Y, %I:%M:%S %p")
    yield cloudtrail_record(
        rng,
        retire_at + 60,
        "ScheduleKeyDeletion",
        mix.retired,
        "user/admin",
        request={"keyId": mix.retired.key_id, "pendingWindowInDays": 7},
        response={
            "keyId": mix.retired.arn,
            "deletionDate": deletion,
            "keyState": "PendingDeletion",
            "pendingWindowInDays": 7,
        },
    )
    yield cloudtrail_record(rng, t0 + span * 0.3, "RotateKey", mix.keys[1], None, service_event=True)


def write_cloudtrail(folder: Path, records: Iterator[dict[str, Any]]) -> list[Path]:
    """Write records as CloudTrail delivers them: gzip files per region and five minutes, under ``AWSLogs/``."""
    groups: dict[tuple[str, int], list[dict[str, Any]]] = defaultdict(list)
    for record in records:
        stamp = datetime.strptime(record["eventTime"], "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()
        groups[record["awsRegion"], int(stamp // DELIVERY_SECONDS)].append(record)
    written = []
    rng = random.Random(len(groups))
    for (region, slot), items in sorted(groups.items()):
        moment = datetime.fromtimestamp(slot * DELIVERY_SECONDS, UTC)
        parent = folder / "AWSLogs" / ACCOUNT / "CloudTrail" / region / moment.strftime("%Y/%m/%d")
        parent.mkdir(parents=True, exist_ok=True)
        name = f"{ACCOUNT}_CloudTrail_{region}_{moment.strftime('%Y%m%dT%H%MZ')}_{rng.getrandbits(64):016X}.json.gz"
        items.sort(key=lambda r: r["eventTime"])
        path = parent / name
        path.write_bytes(gzip.compress(orjson.dumps({"Records": items}), compresslevel=6))
        written.append(path)
    return written


def _vault_pair(
    rng: random.Random,
    moment: float,
    path: str,
    operation: str,
    principal: str,
    *,
    data: dict[str, Any] | None = None,
    response: dict[str, Any] | None = None,
    error: str = "",
    mount: str = "transit/",
) -> list[dict[str, Any]]:
    request_id = _uuid(rng)
    stamp = datetime.fromtimestamp(moment, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f") + f"{rng.randrange(1000):03d}Z"
    auth = {
        "client_token": "hmac-sha256:" + f"{rng.getrandbits(256):064x}",
        "accessor": "hmac-sha256:" + f"{rng.getrandbits(256):064x}",
        "display_name": principal,
        "policies": ["default", "transit-app"],
        "token_policies": ["default", "transit-app"],
        "entity_id": _uuid(random.Random(principal)),
        "token_type": "service",
        "token_ttl": 2764800,
    }
    request = {
        "id": request_id,
        "client_id": _uuid(random.Random(principal + "client")),
        "operation": operation,
        "mount_point": mount,
        "mount_type": "transit",
        "mount_accessor": "transit_5d6f2a1c",
        "mount_running_version": "v1.17.2+builtin.vault",
        "client_token": auth["client_token"],
        "client_token_accessor": auth["accessor"],
        "namespace": {"id": "root"},
        "path": path,
        "data": data,
        "remote_address": _address(rng, principal, "10.1"),
        "remote_port": rng.randrange(30_000, 60_000),
    }
    entries: list[dict[str, Any]] = [{"time": stamp, "type": "request", "auth": auth, "request": request}]
    if error:
        entries[0]["error"] = error
        denied = {k: v for k, v in auth.items() if k in ("client_token", "accessor")}
        entries[0]["auth"] = denied
    reply: dict[str, Any] = {"time": stamp, "type": "response", "auth": entries[0]["auth"], "request": request}
    reply["response"] = {"mount_point": mount, "mount_type": "transit", "data": response} if response else {}
    if error:
        reply["error"] = error
    entries.append(reply)
    return entries


def vault_entries(
    start: datetime, end: datetime, *, requests: int, seed: int = 11, lifecycle: bool = True
) -> Iterator[dict[str, Any]]:
    """About ``requests`` transit requests (two audit entries each) between ``start`` and ``end``, in time order.

    With ``lifecycle`` the keys are created first and ``orders`` is rotated part way.
    """
    rng = random.Random(seed)
    t0, t1 = start.timestamp(), end.timestamp()
    hashed = "hmac-sha256:" + "0" * 64
    planned: list[tuple[float, list[dict[str, Any]]]] = []
    if lifecycle:
        for offset, (name, kind) in enumerate((("orders", None), ("payments", None), ("signer", "rsa-2048"))):
            data = {"type": kind} if kind else None
            pair = _vault_pair(rng, t0 + offset, f"transit/keys/{name}", "update", "admin", data=data)
            planned.append((t0 + offset, pair))
        rotate_at = t0 + (t1 - t0) * 0.4
        planned.append((rotate_at, _vault_pair(rng, rotate_at, "transit/keys/orders/rotate", "update", "admin")))
    for _ in range(requests):
        moment = t0 + 5 + rng.random() * (t1 - t0 - 5)
        draw = rng.random()
        if draw < 0.45:
            path, data, reply = (
                "transit/encrypt/orders",
                {"plaintext": hashed},
                {"ciphertext": hashed, "key_version": 1},
            )
            who = "approle-orders"
        elif draw < 0.8:
            path, data, reply = "transit/decrypt/payments", {"ciphertext": hashed}, {"plaintext": hashed}
            who = "approle-payments"
        elif draw < 0.97:
            algorithm = "sha1" if rng.random() < 0.05 else "sha2-256"
            path, data, reply = f"transit/sign/signer/{algorithm}", {"input": hashed}, {"signature": hashed}
            who = "release-bot"
        else:
            path, data = "transit/decrypt/payments", {"ciphertext": hashed}
            denied = _vault_pair(rng, moment, path, "update", "userpass-eve", data=data, error="permission denied")
            planned.append((moment, denied))
            continue
        planned.append((moment, _vault_pair(rng, moment, path, "update", who, data=data, response=reply)))
    planned.sort(key=lambda item: item[0])
    for _, entries in planned:
        yield from entries


def write_vault(path: Path, entries: Iterator[dict[str, Any]]) -> Path:
    """Append audit entries as Vault's file device does: one JSON object per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "ab") as handle:
        for entry in entries:
            handle.write(orjson.dumps(entry) + b"\n")
    return path


def _lines(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


@dataclass(frozen=True)
class DemoLogs:
    """Where the demo's audit logs were written."""

    cloudtrail: Path
    vault: Path
    cloudtrail_files: int
    vault_lines: int


def write_demo_logs(folder: Path, *, now: datetime, hours: float = 6.0) -> DemoLogs:
    """A small realistic CloudTrail and Vault log set up to ``now``, under ``folder``.

    The first call writes ``hours`` of history with the keys' creation; a later call continues
    where the previous one stopped (new CloudTrail files, lines appended to Vault's ``audit.log``).
    """
    marker = folder / "generated_until"
    previous = datetime.fromisoformat(marker.read_text().strip()) if marker.is_file() else None
    start = max(previous, now - timedelta(hours=hours)) if previous else now - timedelta(hours=hours)
    span_hours = max((now - start).total_seconds() / 3600, 0.0)
    seed = int(start.timestamp())
    files = write_cloudtrail(
        folder / "cloudtrail",
        cloudtrail_records(start, now, events=int(2_000 * span_hours), seed=seed, lifecycle=previous is None),
    )
    entries = vault_entries(start, now, requests=int(400 * span_hours), seed=seed, lifecycle=previous is None)
    audit = folder / "vault" / "audit.log"
    before = _lines(audit) if audit.is_file() else 0
    vault = write_vault(audit, entries)
    lines = _lines(vault) - before
    marker.write_text(now.isoformat())
    return DemoLogs(folder / "cloudtrail", vault.parent, len(files), lines)

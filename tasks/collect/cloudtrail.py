"""AWS KMS events from CloudTrail log files, as normalised key events.

Reads what CloudTrail delivers (``{"Records": [...]}`` files, gzip or plain,
under the ``AWSLogs/<account>/CloudTrail/<region>/…`` tree or any folder), and
one event per line as CloudTrail Lake and EventBridge exports write them (an
EventBridge envelope's ``detail`` is the event). Only events whose
``eventSource`` is ``kms.amazonaws.com`` become key events; the rest are
counted as records and left alone.

The mapping follows the KMS developer guide's CloudTrail examples:

- the key: ``resources[]`` entries of type ``AWS::KMS::Key`` (their ARN), else
  ``requestParameters.keyId`` (an id, a key ARN or an alias), else, for
  ``CreateKey``, ``responseElements.keyMetadata.arn``. ``ReEncrypt`` names two
  keys and gives two events: a decrypt with the source key and an encrypt with
  the destination key;
- the key's type from ``keyUsage`` and its algorithm from ``keySpec`` (older
  events: ``customerMasterKeySpec``) when the event carries them;
- algorithms the call used (``encryptionAlgorithm``, ``signingAlgorithm``,
  ``macAlgorithm``, ``keyPairSpec``) for the forbidden-algorithm policy;
- the caller: ``userIdentity.arn`` (for an assumed role, the role's ARN from
  ``sessionContext.sessionIssuer``, so sessions of one role are one caller; for
  AWS itself, ``invokedBy``), and ``sourceIPAddress``;
- the event id is ``eventID``, or ``sharedEventID`` when present: a cross-account call is
  delivered to both accounts under two eventIDs and is one call;
- ``errorCode``: ``AccessDenied*`` / ``Unauthorized*`` are unauthorized calls;
  ``DisabledException``, ``KMSInvalidStateException`` and
  ``KeyUnavailableException`` are uses of a key that is not usable.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import replace
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any, ClassVar

from tasks.collect.key_events import EventKind, KeyEvent, KeyEventSource, field_text, parse_time, require_mapping

SOURCE = "cloudtrail"
KMS_EVENT_SOURCE = "kms.amazonaws.com"
EVENTBRIDGE_DETAIL_TYPES = ("AWS API Call via CloudTrail", "AWS Service Event via CloudTrail")

EVENT_KINDS: dict[str, EventKind] = {
    "CreateKey": EventKind.CREATED,
    "RotateKey": EventKind.ROTATED,  # automatic rotation (an AwsServiceEvent)
    "RotateKeyOnDemand": EventKind.ROTATED,
    "DeleteExpiredKeyMaterial": EventKind.EXPIRED,
    "DisableKey": EventKind.DISABLED,
    "EnableKey": EventKind.ENABLED,
    "ScheduleKeyDeletion": EventKind.DELETION_SCHEDULED,
    "CancelKeyDeletion": EventKind.DELETION_CANCELLED,
    "DeleteKey": EventKind.DELETED,  # the end of the waiting period (an AwsServiceEvent)
    "ImportKeyMaterial": EventKind.MATERIAL_IMPORTED,
    "DeleteImportedKeyMaterial": EventKind.MATERIAL_DELETED,
    "EnableKeyRotation": EventKind.ROTATION_ENABLED,
    "DisableKeyRotation": EventKind.ROTATION_DISABLED,
    "PutKeyPolicy": EventKind.POLICY_CHANGED,
    "CreateGrant": EventKind.POLICY_CHANGED,
    "RevokeGrant": EventKind.POLICY_CHANGED,
    "RetireGrant": EventKind.POLICY_CHANGED,
    "UpdatePrimaryRegion": EventKind.POLICY_CHANGED,
    "ReplicateKey": EventKind.POLICY_CHANGED,
    "Encrypt": EventKind.ENCRYPT,
    "GenerateDataKey": EventKind.ENCRYPT,
    "GenerateDataKeyWithoutPlaintext": EventKind.ENCRYPT,
    "GenerateDataKeyPair": EventKind.ENCRYPT,
    "GenerateDataKeyPairWithoutPlaintext": EventKind.ENCRYPT,
    "Decrypt": EventKind.DECRYPT,
    "DeriveSharedSecret": EventKind.DECRYPT,  # key agreement: the private key is used
    "Sign": EventKind.SIGN,
    "Verify": EventKind.VERIFY,
    "GenerateMac": EventKind.MAC,
    "VerifyMac": EventKind.MAC,
    "DescribeKey": EventKind.READ,
    "GetPublicKey": EventKind.READ,
    "GetKeyPolicy": EventKind.READ,
    "GetKeyRotationStatus": EventKind.READ,
    "GetParametersForImport": EventKind.READ,
    "ListGrants": EventKind.READ,
    "ListKeyRotations": EventKind.READ,
    "ListResourceTags": EventKind.READ,
    "ListKeyPolicies": EventKind.READ,
    "TagResource": EventKind.CONFIGURED,
    "UntagResource": EventKind.CONFIGURED,
    "UpdateKeyDescription": EventKind.CONFIGURED,
    "CreateAlias": EventKind.CONFIGURED,
    "UpdateAlias": EventKind.CONFIGURED,
    "DeleteAlias": EventKind.CONFIGURED,
}
KEY_USAGE_TYPES = {
    "ENCRYPT_DECRYPT": "encryption",
    "SIGN_VERIFY": "signing",
    "GENERATE_VERIFY_MAC": "mac",
    "KEY_AGREEMENT": "key_agreement",
}
# The key type a successful call implies when the key's own metadata is not in the event.
KIND_KEY_TYPES = {EventKind.SIGN: "signing", EventKind.VERIFY: "signing", EventKind.MAC: "mac"}
UNAUTHORIZED_CODES = frozenset(
    {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "UnauthorizedException", "NotAuthorized"}
)
KEY_STATE_CODES = frozenset({"DisabledException", "KMSInvalidStateException", "KeyUnavailableException"})
# KMS key states (keyMetadata.keyState) in the inventory's words.
KMS_STATES = {
    "Enabled": "enabled",
    "Creating": "enabled",
    "Updating": "enabled",
    "Disabled": "disabled",
    "Unavailable": "disabled",
    "PendingDeletion": "pending_deletion",
    "PendingReplicaDeletion": "pending_deletion",
    "PendingImport": "pending_import",
}
ALGORITHM_FIELDS = ("encryptionAlgorithm", "signingAlgorithm", "macAlgorithm", "keyPairSpec", "keyAgreementAlgorithm")


_AWS_DATE = re.compile(r"^([A-Z][a-z]{2}) (\d{1,2}), (\d{4}),? (\d{1,2}):(\d{2}):(\d{2})(?: ?([AP]M))?$")
_MONTHS = {
    name: i
    for i, name in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"), 1)
}


def aws_time(value: Any) -> int | None:
    """A time as KMS writes it in responses, in microseconds, or None.

    ISO 8601, or the console form ``Apr 12, 2021 6:58:30 PM`` (the documented examples also show
    ``18:58:30 PM``: an hour past 12 is taken as it is).
    """
    micros = parse_time(value)
    if micros is not None or not isinstance(value, str):
        return micros
    match = _AWS_DATE.match(value.strip())
    if match is None or match.group(1) not in _MONTHS:
        return None
    month, day, year = _MONTHS[match.group(1)], int(match.group(2)), int(match.group(3))
    hour, minute, second = int(match.group(4)), int(match.group(5)), int(match.group(6))
    if match.group(7) and hour <= 12:
        hour = hour % 12 + (12 if match.group(7) == "PM" else 0)
    try:
        moment = datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError:
        return None
    return int(moment.timestamp()) * 1_000_000


@lru_cache(maxsize=65_536)
def split_key_arn(arn: str) -> tuple[str, str, str] | None:
    """``arn:aws:kms:<region>:<account>:key/<id>`` -> (region, account, id); None for anything else."""
    parts = arn.split(":", 5)
    if len(parts) != 6 or parts[0] != "arn" or parts[2] != "kms" or not parts[5].startswith("key/"):
        return None
    return parts[3], parts[4], parts[5][len("key/") :]


_EMPTY: dict[str, Any] = {}


def _obj(value: Any) -> dict[str, Any]:
    """``value`` when it is a JSON object, else an empty one."""
    return value if type(value) is dict else _EMPTY


def _text(record: dict[str, Any], name: str) -> str | None:
    """``record[name]`` when it is non-empty text."""
    value = record.get(name)
    return value if type(value) is str and value else None


def caller(identity: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """(principal, type) of a ``userIdentity``: an assumed role is its role, AWS itself the service."""
    kind = field_text(identity, "type")
    if kind == "AssumedRole":
        issuer = _obj(_obj(identity.get("sessionContext")).get("sessionIssuer"))
        if _text(issuer, "arn"):
            return issuer["arn"], kind
    if kind == "AWSService" or (kind is None and field_text(identity, "invokedBy")):
        return field_text(identity, "invokedBy") or "AWS", kind or "AWSService"
    return field_text(identity, "arn", "principalId", "accountId"), kind


class CloudTrailSource(KeyEventSource):
    """AWS KMS key events from CloudTrail log files (gzip or plain; documents or one event per line)."""

    name: ClassVar[str] = SOURCE
    patterns: ClassVar[tuple[str, ...]] = ("*.json", "*.json.gz", "*.jsonl", "*.jsonl.gz", "*.ndjson", "*.ndjson.gz")

    def records(self, document: Any) -> list[Any] | None:
        """The ``Records`` of a CloudTrail log file; None when the document is a single event."""
        if isinstance(document, Mapping) and "Records" in document:
            records = document["Records"]
            if not isinstance(records, list):
                raise ValueError(f"Records: expected a list, got {type(records).__name__}")
            return records
        return None

    def events(self, record: Any) -> list[KeyEvent]:
        """The key events of one CloudTrail record (none unless it is a KMS event)."""
        # The hot path of the collector: plain dict lookups (orjson gives dicts, lists and str).
        if type(record) is not dict:
            require_mapping(record, "record")
            record = dict(record)
        if record.get("eventSource") != KMS_EVENT_SOURCE:
            if record.get("detail-type") not in EVENTBRIDGE_DETAIL_TYPES:
                return []
            record = dict(require_mapping(record.get("detail"), "detail"))
            if record.get("eventSource") != KMS_EVENT_SOURCE:
                return []
        name = record.get("eventName")
        if type(name) is not str or not name:
            raise ValueError("eventName: missing")
        event_id = record.get("eventID")
        if type(event_id) is not str or not event_id:
            raise ValueError(f"eventID: missing in a {name} event")
        shared = record.get("sharedEventID")
        if type(shared) is str and shared:
            event_id = shared  # one cross-account call, delivered to both accounts under two eventIDs
        time_us = parse_time(record.get("eventTime"))
        if time_us is None:
            raise ValueError(f"eventTime: {record.get('eventTime')!r} is not an ISO 8601 time ({name} {event_id})")
        request = _obj(record.get("requestParameters"))
        response = _obj(record.get("responseElements"))
        identity = _obj(record.get("userIdentity"))
        principal, principal_type = caller(identity)
        error = _text(record, "errorCode")
        kind = EVENT_KINDS.get(name, EventKind.OTHER)
        region = _text(record, "awsRegion")
        account = _text(record, "recipientAccountId") or _text(identity, "accountId")
        metadata = _obj(response.get("keyMetadata"))
        usage = spec = None
        if metadata or kind == EventKind.CREATED:
            usage = _text(metadata, "keyUsage") or _text(request, "keyUsage")
            spec = field_text(metadata, "keySpec", "customerMasterKeySpec") or (
                field_text(request, "keySpec", "customerMasterKeySpec") if kind == EventKind.CREATED else None
            )
            if kind == EventKind.CREATED and spec is None and usage in (None, "ENCRYPT_DECRYPT"):
                spec = "SYMMETRIC_DEFAULT"  # CreateKey's documented default
        used = tuple(v for f in ALGORITHM_FIELDS if type(v := request.get(f)) is str and v)
        if spec is None and request.get("encryptionAlgorithm") == "SYMMETRIC_DEFAULT":
            spec = "SYMMETRIC_DEFAULT"  # only symmetric keys encrypt with it
        key_type = KEY_USAGE_TYPES.get(usage or "") or (
            "encryption" if spec == "SYMMETRIC_DEFAULT" else KIND_KEY_TYPES.get(kind)
        )
        base = KeyEvent(
            event_id,
            time_us,
            SOURCE,
            name,
            kind,
            None,
            None,
            region,
            account,
            None,
            principal,
            principal_type,
            _text(record, "sourceIPAddress"),
            error,
            error is not None and (error in UNAUTHORIZED_CODES or "AccessDenied" in error),
            error in KEY_STATE_CODES,
            key_type,
            spec,
            (spec, *used) if kind == EventKind.CREATED and spec else used,
            aws_time(response.get("deletionDate")) if kind == EventKind.DELETION_SCHEDULED else None,
            KMS_STATES.get(metadata.get("keyState") or response.get("keyState")),  # type: ignore[arg-type]
        )
        keys = self._keys(record, request, metadata, region, account)
        if name == "ReEncrypt":
            return self._reencrypt(base, request, keys)
        if not keys:
            return [base]  # an event naming no key (GenerateRandom, a refused CreateKey): still a call to count
        ref, key_id, key_region, key_account = keys[0]
        base.key_ref, base.key_id = ref, key_id
        base.region, base.account = key_region or region, key_account or account
        return [base]

    @staticmethod
    def _keys(
        record: Mapping[str, Any],
        request: Mapping[str, Any],
        metadata: Mapping[str, Any],
        region: str | None,
        account: str | None,
    ) -> list[tuple[str, str, str | None, str | None]]:
        """The keys an event names: (reference, short id, region, account), in the order it names them."""
        found: list[tuple[str, str, str | None, str | None]] = []
        resources = record.get("resources")
        for resource in resources if type(resources) is list else ():
            if type(resource) is not dict:
                continue
            arn = resource.get("ARN") or resource.get("arn")
            parts = split_key_arn(arn) if isinstance(arn, str) else None
            if isinstance(arn, str) and parts and resource.get("type", "AWS::KMS::Key") == "AWS::KMS::Key":
                found.append((arn, parts[2], parts[0], parts[1]))
        if found:
            return found
        for text in (field_text(metadata, "arn"), field_text(request, "keyId")):
            if text is None:
                continue
            parts = split_key_arn(text)
            if parts:
                return [(text, parts[2], parts[0], parts[1])]
            if text.startswith("arn:"):  # an alias ARN: the alias stands for the key
                return [(text, text.rsplit(":", 1)[-1], region, account)]
            ref = f"arn:aws:kms:{region or ''}:{account or ''}:{text if text.startswith('alias/') else 'key/' + text}"
            return [(ref, text, region, account)]
        return []

    @staticmethod
    def _reencrypt(
        base: KeyEvent, request: Mapping[str, Any], keys: list[tuple[str, str, str | None, str | None]]
    ) -> list[KeyEvent]:
        """ReEncrypt: a decrypt with the source key, and (when it succeeded) an encrypt with the destination key."""
        base.kind = EventKind.DECRYPT
        if not keys:
            return [base]

        def pick(field: str, default: int) -> tuple[str, str, str | None, str | None]:
            wanted = request.get(field)
            for key in keys:
                if isinstance(wanted, str) and wanted in (key[0], key[1]):
                    return key
            return keys[default]

        source, destination = pick("sourceKeyId", 0), pick("destinationKeyId", -1)
        parts = [("", EventKind.DECRYPT, source, "sourceEncryptionAlgorithm")]
        if base.succeeded:  # a refused call is one refused access, whatever it would have done
            parts.append((":destination", EventKind.ENCRYPT, destination, "destinationEncryptionAlgorithm"))
        events = []
        for suffix, kind, (ref, key_id, region, account), algorithm_field in parts:
            used = request.get(algorithm_field)
            events.append(
                replace(
                    base,
                    event_id=base.event_id + suffix,
                    kind=kind,
                    key_ref=ref,
                    key_id=key_id,
                    region=region or base.region,
                    account=account or base.account,
                    algorithms_used=(used,) if isinstance(used, str) and used else (),
                    continuation=bool(suffix) and ref == source[0],  # the same key again: one access
                )
            )
        return events

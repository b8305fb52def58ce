"""CloudTrail KMS events, from excerpts written after AWS's documentation, into normalised key events."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pytest

from tasks.collect.cloudtrail import CloudTrailSource, aws_time, caller, split_key_arn
from tasks.collect.key_events import EventKind, KeyEvent, parse_time

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "keylogs" / "cloudtrail"
K1 = "1234abcd-12ab-34cd-56ef-1234567890ab"
K2 = "0987dcba-09fe-87dc-65ba-ab0987654321"
K3 = "5a6b7c8d-1e2f-4a3b-9c4d-7e8f9a0b1c2d"
K4 = "7f8e9d0c-1b2a-4c3d-8e5f-708192a3b4c5"
K5 = "c0ffee00-1a2b-4c3d-8e4f-0123456789ab"
ALICE = "arn:aws:iam::111122223333:user/Alice"


def record(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def parse(item: Any) -> list[KeyEvent]:
    return CloudTrailSource([]).events(item)


# file -> (kind, key id, error, unauthorized, refused for the key's state)
DOCUMENTED = {
    "CreateKey": (EventKind.CREATED, K5, None, False, False),
    "ImportKeyMaterial": (EventKind.MATERIAL_IMPORTED, K5, None, False, False),
    "DeleteExpiredKeyMaterial": (EventKind.EXPIRED, K5, None, False, False),
    "DeleteImportedKeyMaterial": (EventKind.MATERIAL_DELETED, K5, None, False, False),
    "Encrypt": (EventKind.ENCRYPT, K1, None, False, False),
    "Decrypt": (EventKind.DECRYPT, K1, None, False, False),
    "Decrypt-AccessDenied": (EventKind.DECRYPT, K1, "AccessDeniedException", True, False),
    "GenerateDataKey": (EventKind.ENCRYPT, K1, None, False, False),
    "GenerateDataKeyWithoutPlaintext": (EventKind.ENCRYPT, K1, None, False, False),
    "GenerateDataKeyPair": (EventKind.ENCRYPT, K1, None, False, False),
    "GenerateRandom": (EventKind.OTHER, None, None, False, False),
    "DisableKey": (EventKind.DISABLED, K2, None, False, False),
    "Encrypt-DisabledException": (EventKind.ENCRYPT, K2, "DisabledException", False, True),
    "ScheduleKeyDeletion": (EventKind.DELETION_SCHEDULED, K2, None, False, False),
    "DeleteKey": (EventKind.DELETED, K2, None, False, False),
    "PutKeyPolicy": (EventKind.POLICY_CHANGED, K1, None, False, False),
    "CreateGrant": (EventKind.POLICY_CHANGED, K1, None, False, False),
    "RotateKeyOnDemand": (EventKind.ROTATED, K1, None, False, False),
    "EnableKeyRotation": (EventKind.ROTATION_ENABLED, K1, None, False, False),
    "RotateKey-automatic": (EventKind.ROTATED, K1, None, False, False),
    "Sign": (EventKind.SIGN, K3, None, False, False),
    "Verify": (EventKind.VERIFY, K3, None, False, False),
    "GenerateMac": (EventKind.MAC, K4, None, False, False),
    "VerifyMac": (EventKind.MAC, K4, None, False, False),
}


def test_every_fixture_is_covered() -> None:
    assert {path.stem for path in FIXTURES.glob("*.json")} == {*DOCUMENTED, "ReEncrypt"}


@pytest.mark.parametrize(("name", "expected"), sorted(DOCUMENTED.items()))
def test_documented_event(name: str, expected: tuple[EventKind, str | None, str | None, bool, bool]) -> None:
    kind, key_id, error, unauthorized, state_error = expected
    (event,) = parse(record(name))
    assert (event.kind, event.key_id, event.error) == (kind, key_id, error)
    assert (event.unauthorized, event.key_state_error) == (unauthorized, state_error)
    assert event.source == "cloudtrail"
    assert event.action == record(name)["eventName"]
    assert event.event_id == record(name)["eventID"]
    assert event.time_us == parse_time(record(name)["eventTime"])
    assert event.account == "111122223333"
    if key_id is not None:
        assert event.key_ref == f"arn:aws:kms:{event.region}:111122223333:key/{key_id}"


def test_create_key_reports_type_algorithm_and_state() -> None:
    (event,) = parse(record("CreateKey"))  # an EXTERNAL-origin key: no material yet
    assert (event.key_type, event.algorithm, event.key_state) == ("encryption", "SYMMETRIC_DEFAULT", "pending_import")
    assert event.algorithms_used == ("SYMMETRIC_DEFAULT",)
    assert event.principal == ALICE


def test_service_events_are_aws_itself() -> None:
    (event,) = parse(record("RotateKey-automatic"))
    assert event.principal_type == "AWSService"
    assert event.principal == "AWS Internal"


def test_algorithms_a_call_names() -> None:
    assert parse(record("Sign"))[0].algorithms_used == ("RSASSA_PKCS1_V1_5_SHA_256",)
    assert parse(record("GenerateMac"))[0].algorithms_used == ("HMAC_SHA_512",)
    assert parse(record("GenerateMac"))[0].key_type == "mac"


def test_schedule_key_deletion_reads_the_documented_date_form() -> None:
    (event,) = parse(record("ScheduleKeyDeletion"))
    assert event.deletion_at == parse_time("2021-04-12T18:58:30Z")


def test_reencrypt_is_a_decrypt_with_the_source_and_an_encrypt_with_the_destination() -> None:
    decrypt, encrypt = parse(record("ReEncrypt"))
    assert (decrypt.kind, decrypt.key_id) == (EventKind.DECRYPT, K1)
    assert (encrypt.kind, encrypt.key_id) == (EventKind.ENCRYPT, K2)
    assert encrypt.event_id == decrypt.event_id + ":destination"


def test_assumed_role_is_its_role_not_the_session() -> None:
    identity = {
        "type": "AssumedRole",
        "arn": "arn:aws:sts::111122223333:assumed-role/app/i-0abc",
        "sessionContext": {"sessionIssuer": {"arn": "arn:aws:iam::111122223333:role/app"}},
    }
    assert caller(identity) == ("arn:aws:iam::111122223333:role/app", "AssumedRole")
    assert caller({"type": "AssumedRole", "arn": "arn:aws:sts::1:assumed-role/x/y"}) == (
        "arn:aws:sts::1:assumed-role/x/y",
        "AssumedRole",
    )


def test_eventbridge_envelope_is_unwrapped() -> None:
    envelope = {"version": "0", "detail-type": "AWS API Call via CloudTrail", "source": "aws.kms"}
    (event,) = parse({**envelope, "detail": record("Decrypt")})
    assert event.kind == EventKind.DECRYPT


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ({"eventName": None}, "eventName: missing"),
        ({"eventID": ""}, "eventID: missing"),
        ({"eventTime": "yesterday"}, "eventTime: 'yesterday' is not an ISO 8601 time"),
    ],
)
def test_missing_or_bad_fields_are_refused_with_the_field(change: dict[str, Any], reason: str) -> None:
    with pytest.raises(ValueError, match=reason):
        parse({**record("Decrypt"), **change})


def test_other_services_and_unknown_kms_names() -> None:
    assert parse({**record("Decrypt"), "eventSource": "s3.amazonaws.com"}) == []
    (event,) = parse({**record("Decrypt"), "eventName": "FutureKmsCall"})
    assert (event.kind, event.key_id) == (EventKind.OTHER, K1)  # counted as an access, nothing more
    with pytest.raises(ValueError, match="record: expected an object"):
        parse(["not", "an", "object"])


def test_a_key_named_only_in_the_request() -> None:
    item = {**record("Decrypt"), "resources": []}
    item["requestParameters"] = {"keyId": K1}
    (event,) = parse(item)
    assert event.key_ref == f"arn:aws:kms:us-east-1:111122223333:key/{K1}"
    item["requestParameters"] = {"keyId": "alias/orders"}
    assert parse(item)[0].key_ref == "arn:aws:kms:us-east-1:111122223333:alias/orders"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Apr 12, 2021 18:58:30 PM", "2021-04-12T18:58:30Z"),
        ("Dec 9, 2026, 5:12:42 PM", "2026-12-09T17:12:42Z"),
        ("Dec 9, 2026, 12:01:00 AM", "2026-12-09T00:01:00Z"),
        ("2021-04-12T18:58:30Z", "2021-04-12T18:58:30Z"),
    ],
)
def test_aws_time_forms(text: str, expected: str) -> None:
    assert aws_time(text) == parse_time(expected)


@pytest.mark.parametrize("text", ["junk", "Foo 1, 2020, 1:00:00 AM", "Feb 30, 2021, 1:00:00 AM", None, 5])
def test_aws_time_refuses_what_it_cannot_read(text: Any) -> None:
    assert aws_time(text) is None


def test_split_key_arn() -> None:
    assert split_key_arn(f"arn:aws:kms:eu-west-1:1:key/{K1}") == ("eu-west-1", "1", K1)
    assert split_key_arn("arn:aws:kms:eu-west-1:1:alias/x") is None
    assert split_key_arn("arn:aws:s3:::bucket") is None


def write_log(path: Path, records: list[dict[str, Any]], *, compress: bool = True) -> Path:
    data = json.dumps({"Records": records}).encode()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(data) if compress else data)
    return path


def read_all(folder: Path) -> tuple[list[KeyEvent], list[str], int]:
    source = CloudTrailSource([folder])
    reads = list(source.read({}))
    events = [event for read in reads for event in read.events]
    return events, [str(problem) for read in reads for problem in read.problems], sum(r.records for r in reads)


def test_log_files_gzip_plain_and_json_lines(tmp_path: Path) -> None:
    root = tmp_path / "AWSLogs" / "111122223333" / "CloudTrail" / "us-east-1" / "2021" / "04" / "12"
    write_log(root / "a.json.gz", [record("Encrypt"), record("Decrypt")])
    write_log(root / "b.json", [record("Sign")], compress=False)
    lines = "\n".join(json.dumps(record(name)) for name in ("Verify", "GenerateMac")) + "\n"
    (tmp_path / "lake-export.jsonl").write_text(lines)
    events, problems, records = read_all(tmp_path)
    assert problems == []
    assert records == 5
    assert sorted(e.action for e in events) == ["Decrypt", "Encrypt", "GenerateMac", "Sign", "Verify"]


def test_a_truncated_gzip_file_is_reported_and_the_rest_read(tmp_path: Path) -> None:
    good = write_log(tmp_path / "good.json.gz", [record("Encrypt")])
    whole = gzip.compress(json.dumps({"Records": [record("Decrypt")] * 50}).encode())
    (tmp_path / "cut.json.gz").write_bytes(whole[: len(whole) // 2])
    events, problems, _ = read_all(tmp_path)
    assert [e.action for e in events] == ["Encrypt"]
    assert problems == [f"{tmp_path / 'cut.json.gz'}: truncated gzip file"]
    assert good.exists()


def test_invalid_json_lines_and_bad_records_are_reported_by_line(tmp_path: Path) -> None:
    lines = [
        json.dumps(record("Encrypt")),
        "{not json",
        json.dumps({**record("Decrypt"), "eventID": None}),
        json.dumps(record("Sign")),
    ]
    (tmp_path / "events.jsonl").write_text("\n".join(lines) + "\n")
    events, problems, records = read_all(tmp_path)
    assert [e.action for e in events] == ["Encrypt", "Sign"]
    assert problems[0].startswith(f"{tmp_path / 'events.jsonl'}:2: invalid JSON")
    assert problems[1] == f"{tmp_path / 'events.jsonl'}:3: eventID: missing in a Decrypt event"
    assert records == 3


def test_not_a_gzip_file(tmp_path: Path) -> None:
    (tmp_path / "fake.json.gz").write_bytes(b"plain text, not gzip")
    events, problems, _ = read_all(tmp_path)
    assert events == []
    assert problems[0].startswith(f"{tmp_path / 'fake.json.gz'}: not a valid gzip file")


def test_records_must_be_a_list(tmp_path: Path) -> None:
    (tmp_path / "odd.json").write_text(json.dumps({"Records": {"a": 1}}))
    _, problems, _ = read_all(tmp_path)
    assert problems == [f"{tmp_path / 'odd.json'}:1: Records: expected a list, got dict"]


def test_a_refused_reencrypt_is_one_refused_access() -> None:
    denied = {**record("ReEncrypt"), "errorCode": "AccessDenied", "errorMessage": "not authorized"}
    (event,) = parse(denied)
    assert (event.kind, event.unauthorized, event.continuation) == (EventKind.DECRYPT, True, False)


def test_a_reencrypt_within_one_key_is_one_access() -> None:
    item = record("ReEncrypt")
    item["resources"] = [item["resources"][0]]
    item["requestParameters"] = {"destinationKeyId": K1}
    decrypt, encrypt = parse(item)
    assert (decrypt.key_id, encrypt.key_id, encrypt.continuation) == (K1, K1, True)


def test_a_cross_account_call_is_one_event_in_both_accounts_trails() -> None:
    ours = {**record("Decrypt"), "sharedEventID": "11111111-2222-3333-4444-555555555555"}
    theirs = {**ours, "eventID": "99999999-8888-7777-6666-555555555555", "recipientAccountId": "444455556666"}
    assert parse(ours)[0].event_id == parse(theirs)[0].event_id == ours["sharedEventID"]

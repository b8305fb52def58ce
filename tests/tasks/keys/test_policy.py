"""Key policies: which events and which keys violate them, and how often a violation counts."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.collect.key_events import EventKind, KeyEvent
from tasks.keys import policy
from tasks.keys.inventory import DISABLED, ENABLED, KeyRecord, apply_events
from tasks.keys.ledger import KeyLedger
from tasks.keys.policy import KeyPolicy, check_estate, check_event, matches_algorithm, record_violations

DAY = 86_400_000_000
ROLE = "arn:aws:iam::1:role/app"


@pytest.mark.parametrize(
    ("name", "forbidden", "expected"),
    [
        ("sha1", "SHA-1", True),
        ("hmac-sha1", "SHA-1", True),
        ("RSASSA_PKCS1_V1_5_SHA_1", "SHA-1", True),
        ("RSASSA_PKCS1_V1_5_SHA_256", "SHA-1", False),
        ("sha2-256", "SHA-1", False),
        ("RSA_1024", "RSA-1024", True),
        ("rsa-2048", "RSA-1024", False),
        ("3des", "3DES", True),
        ("SYMMETRIC_DEFAULT", "3DES", False),
        ("anything", "", False),
    ],
)
def test_algorithm_names_match_by_their_words(name: str, forbidden: str, expected: bool) -> None:
    assert matches_algorithm(name, forbidden) is expected


def make(kind: EventKind, time_us: int = DAY, **fields: object) -> KeyEvent:
    return KeyEvent(
        f"e{time_us}{kind}", time_us, "cloudtrail", str(kind), kind, key_ref="arn:k1", key_id="k1", **fields
    )  # type: ignore[arg-type]


def judge(rules: KeyPolicy, events: list[KeyEvent]) -> list[tuple[str, str]]:
    records: dict[str, KeyRecord] = {}
    found = []
    for item, before in zip(events, apply_events(records, events), strict=True):
        found += check_event(rules, item, records["arn:k1"], before, lambda tag, value: f"h({value})")
    return [(v.policy, v.subject) for v in found]


def test_forbidden_algorithms_in_calls() -> None:
    sign = make(EventKind.SIGN, algorithms_used=("sha1",))
    assert judge(KeyPolicy(), [sign]) == [("forbidden_algorithm", "sha1")]
    assert judge(KeyPolicy(forbidden_algorithms=()), [sign]) == []
    created = make(EventKind.CREATED, algorithm="RSA_1024", algorithms_used=("RSA_1024",))
    assert judge(KeyPolicy(forbidden_algorithms=("RSA-1024",)), [created]) == []  # the key itself: a state finding


def test_principals_not_allowed_for_a_key() -> None:
    rules = KeyPolicy(allowed_principals={"k1": [ROLE], "other-*": ["x"]})
    assert judge(rules, [make(EventKind.DECRYPT, principal=ROLE)]) == []
    assert judge(rules, [make(EventKind.DECRYPT, principal="arn:aws:iam::1:user/eve")]) == [
        ("principal_not_allowed", "h(arn:aws:iam::1:user/eve)")
    ]
    service = make(EventKind.ROTATED, principal="AWS Internal", principal_type="AWSService")
    assert judge(rules, [service]) == []  # AWS rotating the key for the account
    refused = make(EventKind.DECRYPT, principal="arn:aws:iam::1:user/eve", error="AccessDenied", unauthorized=True)
    assert judge(rules, [refused]) == []  # refused calls are unauthorized accesses, not violations
    assert (
        judge(
            KeyPolicy(allowed_principals={"arn:*": ["arn:aws:iam::1:role/*"]}), [make(EventKind.SIGN, principal=ROLE)]
        )
        == []
    )


def test_use_of_a_key_that_is_not_usable() -> None:
    events = [make(EventKind.CREATED), make(EventKind.DISABLED, 2 * DAY), make(EventKind.ENCRYPT, 3 * DAY)]
    assert judge(KeyPolicy(), events) == [("disabled_key_use", "encrypt")]
    refused = make(EventKind.DECRYPT, 4 * DAY, error="DisabledException", key_state_error=True)
    assert judge(KeyPolicy(), [refused]) == [("disabled_key_use", "decrypt")]
    assert judge(KeyPolicy(forbid_disabled_use=False), events) == []


def record(**fields: object) -> KeyRecord:
    base = KeyRecord(
        "arn:k1",
        "cloudtrail",
        "k1",
        "encryption",
        "SYMMETRIC_DEFAULT",
        "us-east-1",
        "1",
        None,
        ENABLED,
        0,
        DAY,
        None,
        None,
        None,
        DAY,
        DAY,
        None,
        1,
    )
    for name, value in fields.items():
        setattr(base, name, value)
    return base


def test_estate_checks() -> None:
    rules = KeyPolicy(max_rotation_days=365)
    assert check_estate(rules, [record()], 300 * DAY) == []
    (overdue,) = check_estate(rules, [record()], 400 * DAY)
    assert (overdue.policy, overdue.kind) == ("rotation_overdue", "state")
    assert "399 days since creation" in overdue.detail
    assert check_estate(rules, [record(rotated_at=100 * DAY)], 400 * DAY) == []
    assert check_estate(rules, [record(state="deleted")], 900 * DAY) == []
    assert check_estate(KeyPolicy(max_rotation_days=0), [record()], 900 * DAY) == []
    (weak,) = check_estate(KeyPolicy(forbidden_algorithms=("RSA-1024",)), [record(algorithm="RSA_1024")], 2 * DAY)
    assert (weak.policy, weak.subject) == ("forbidden_algorithm", "RSA_1024")
    assert check_estate(rules, [record(state=DISABLED)], 400 * DAY)  # a disabled key still has to be rotated


def test_a_state_violation_counts_when_it_opens_and_closes_when_fixed(tmp_path: Path) -> None:
    ledger = KeyLedger(tmp_path)
    overdue = check_estate(KeyPolicy(), [record()], 400 * DAY)
    with ledger.transaction() as connection:
        assert len(record_violations(connection, overdue, checked_keys=["arn:k1"])) == 1
        assert record_violations(connection, overdue, checked_keys=["arn:k1"]) == []  # still open: not again
        assert policy.violations(connection, open_only=True)[0]["policy"] == "rotation_overdue"
        assert record_violations(connection, [], checked_keys=["arn:k1"]) == []  # rotated: closes
        assert policy.violations(connection, open_only=True) == []
        assert len(record_violations(connection, overdue, checked_keys=["arn:k1"])) == 1  # overdue again
        (row,) = policy.violations(connection)
        assert (row["count"], row["open"]) == (2, True)


def test_event_violations_count_every_time(tmp_path: Path) -> None:
    ledger = KeyLedger(tmp_path)
    found = check_event(KeyPolicy(), make(EventKind.SIGN, algorithms_used=("sha1",)), record(), ENABLED, lambda t, v: v)
    with ledger.transaction() as connection:
        for _ in range(3):
            assert len(record_violations(connection, found)) == 1
        (row,) = policy.violations(connection)
    assert (row["kind"], row["count"]) == ("event", 3)


def test_bad_policies_are_refused() -> None:
    with pytest.raises(ValueError, match="max_rotation_days"):
        KeyPolicy(max_rotation_days=-1)
    with pytest.raises(ValueError, match="allowed_principals"):
        KeyPolicy(allowed_principals={"k1": "not-a-list"})

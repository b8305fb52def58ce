"""The key inventory follows each key's events: states, times, and who used it from where."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.collect.key_events import EventKind, KeyEvent
from tasks.keys import inventory
from tasks.keys.inventory import (
    DELETED,
    DISABLED,
    ENABLED,
    PENDING_DELETION,
    PENDING_IMPORT,
    KeyRecord,
    apply_events,
)
from tasks.keys.ledger import KeyLedger

DAY = 86_400_000_000


def event(kind: EventKind, time_us: int, **fields: object) -> KeyEvent:
    return KeyEvent(
        f"e{time_us}-{kind}",
        time_us,
        "cloudtrail",
        str(kind),
        kind,
        key_ref="arn:k1",
        key_id="k1",
        region="us-east-1",
        **fields,
    )  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("kinds", "state"),
    [
        ([EventKind.CREATED], ENABLED),
        ([EventKind.CREATED, EventKind.DISABLED], DISABLED),
        ([EventKind.CREATED, EventKind.DISABLED, EventKind.ENABLED], ENABLED),
        ([EventKind.CREATED, EventKind.DELETION_SCHEDULED], PENDING_DELETION),
        ([EventKind.CREATED, EventKind.DELETION_SCHEDULED, EventKind.DELETION_CANCELLED], DISABLED),
        ([EventKind.CREATED, EventKind.DELETION_SCHEDULED, EventKind.DELETED], DELETED),
        ([EventKind.CREATED, EventKind.EXPIRED], PENDING_IMPORT),
        ([EventKind.CREATED, EventKind.MATERIAL_DELETED, EventKind.MATERIAL_IMPORTED], ENABLED),
        ([EventKind.DECRYPT], ENABLED),  # first seen in use: it exists and works
        ([EventKind.CREATED, EventKind.ROTATED, EventKind.ENCRYPT], ENABLED),
    ],
)
def test_states(kinds: list[EventKind], state: str) -> None:
    records: dict[str, KeyRecord] = {}
    apply_events(records, [event(kind, (i + 1) * DAY) for i, kind in enumerate(kinds)])
    assert records["arn:k1"].state == state


def test_times_and_counts() -> None:
    records: dict[str, KeyRecord] = {}
    created = event(EventKind.CREATED, DAY, key_type="encryption", algorithm="SYMMETRIC_DEFAULT")
    events = [
        created,
        event(EventKind.ROTATED, 3 * DAY),
        event(EventKind.DECRYPT, 5 * DAY),
        event(EventKind.ROTATION_ENABLED, 6 * DAY),
        event(EventKind.DECRYPT, 7 * DAY, error="AccessDenied"),
    ]
    apply_events(records, events)
    record = records["arn:k1"]
    assert (record.created_at, record.rotated_at, record.last_used_at) == (DAY, 3 * DAY, 5 * DAY)
    assert (record.first_seen, record.last_seen, record.events) == (DAY, 7 * DAY, 5)
    assert record.rotation_enabled is True
    assert record.age_days(11 * DAY) == 10
    assert record.days_since_rotation(11 * DAY) == 8
    assert record.tags() == {
        "key_id": "k1",
        "key_type": "encryption",
        "algorithm": "SYMMETRIC_DEFAULT",
        "source": "cloudtrail",
        "region": "us-east-1",
    }


def test_a_late_state_change_does_not_undo_a_newer_one() -> None:
    records: dict[str, KeyRecord] = {}
    apply_events(records, [event(EventKind.CREATED, DAY), event(EventKind.ENABLED, 5 * DAY)])
    apply_events(records, [event(EventKind.DISABLED, 3 * DAY)])  # delivered late
    assert records["arn:k1"].state == ENABLED
    assert records["arn:k1"].events == 3


def test_a_key_first_seen_refused_for_its_state_is_not_usable_and_creation_is_unknown() -> None:
    records: dict[str, KeyRecord] = {}
    before = apply_events(records, [event(EventKind.ENCRYPT, 2 * DAY, error="DisabledException", key_state_error=True)])
    assert before == [DISABLED]
    record = records["arn:k1"]
    assert record.created_at is None
    assert record.age_days(4 * DAY) == 2  # from first seen: a lower bound


def test_a_key_created_without_material_is_pending_import() -> None:
    records: dict[str, KeyRecord] = {}
    apply_events(records, [event(EventKind.CREATED, DAY, key_state=PENDING_IMPORT)])
    assert records["arn:k1"].state == PENDING_IMPORT


def test_records_and_access_round_trip_through_sqlite(tmp_path: Path) -> None:
    records: dict[str, KeyRecord] = {}
    apply_events(records, [event(EventKind.CREATED, DAY), event(EventKind.ROTATION_DISABLED, 2 * DAY)])
    ledger = KeyLedger(tmp_path)
    with ledger.transaction() as connection:
        inventory.save(connection, records.values())
        rows = [("arn:k1", "principal", "h1", DAY, 2 * DAY, 3), ("arn:k1", "region", "us-east-1", DAY, DAY, 1)]
        assert inventory.record_access(connection, rows) == rows  # both are new
        assert inventory.record_access(connection, [("arn:k1", "principal", "h1", 0, 9 * DAY, 2)]) == []
    with ledger.transaction(write=False) as connection:
        assert inventory.load(connection) == records
        assert inventory.load(connection, ["arn:k1", "arn:none"]) == records
        (principal, region) = inventory.access(connection, "arn:k1")
    assert records["arn:k1"].rotation_enabled is False
    assert principal == {
        "key_ref": "arn:k1",
        "dimension": "principal",
        "value": "h1",
        "first_seen": 0,
        "last_seen": 9 * DAY,
        "count": 5,
    }
    assert region["value"] == "us-east-1"

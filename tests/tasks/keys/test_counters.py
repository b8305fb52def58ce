"""Cumulative key counters: one sample per series and bucket, never rewritten, late events counted once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from tasks.collect.key_events import EventKind, KeyEvent
from tasks.keys.counters import advance, increments, unknown_key_tags
from tasks.keys.inventory import PENDING_DELETION, KeyRecord, apply_events
from tasks.keys.policy import Violation

STEP = 300_000_000  # 5 minutes in microseconds
NOW = 1_000 * STEP + 17  # a little into bucket 1000


def b(n: int) -> int:
    return n * STEP


CURRENT = b(1000)  # the bucket NOW is in


def test_a_new_series_starts_from_a_zero_before_its_first_bucket() -> None:
    samples, state = advance({b(990): 3, b(995): 2}, None, step_us=STEP, publish_until_us=CURRENT)
    assert samples == [(b(989), 0.0), (b(990), 3.0), (b(994), 3.0), (b(995), 5.0)]  # a gap carries the total
    assert state == (5.0, b(995), 0.0, None)


def test_late_events_count_in_the_bucket_after_the_last_one() -> None:
    state = (10.0, b(995), 0.0, None)
    samples, state = advance({b(990): 4, b(996): 1}, state, step_us=STEP, publish_until_us=CURRENT)
    assert samples == [(b(996), 15.0)]  # the 4 late events join bucket 996, never rewriting 990 or 995
    assert state == (15.0, b(996), 0.0, None)


def test_events_for_a_bucket_not_begun_are_held_for_the_next_run() -> None:
    samples, state = advance({b(999): 2}, (10.0, b(1000), 0.0, None), step_us=STEP, publish_until_us=CURRENT)
    assert samples == []  # bucket 1001 has not begun
    assert state == (10.0, b(1000), 2.0, b(1001))
    samples, state = advance({}, state, step_us=STEP, publish_until_us=CURRENT + STEP)
    assert samples == [(b(1001), 12.0)]
    assert state == (12.0, b(1001), 0.0, None)


def test_a_bucket_held_back_keeps_its_time() -> None:
    # A chunk before a run's last leaves the current bucket open; the last chunk writes it where it belongs.
    samples, state = advance({b(998): 1, b(1000): 2}, None, step_us=STEP, publish_until_us=CURRENT - STEP)
    assert samples == [(b(997), 0.0), (b(998), 1.0)]
    assert state == (1.0, b(998), 2.0, b(1000))
    samples, state = advance({b(1000): 1}, state, step_us=STEP, publish_until_us=CURRENT)
    assert samples == [(b(999), 1.0), (b(1000), 4.0)]


def test_buckets_before_the_retention_period_count_but_write_nothing() -> None:
    samples, state = advance({b(10): 5, b(998): 1}, None, step_us=STEP, publish_until_us=CURRENT, oldest_us=b(900))
    assert samples == [(b(997), 5.0), (b(998), 6.0)]
    assert state == (6.0, b(998), 0.0, None)


@settings(max_examples=200, deadline=None)
@given(
    runs=st.lists(st.lists(st.tuples(st.integers(900, 1010), st.integers(1, 5)), max_size=8), min_size=1, max_size=6),
)
def test_whatever_the_order_of_runs_no_event_is_lost_or_counted_twice(runs: list[list[tuple[int, int]]]) -> None:
    state = None
    written: list[tuple[int, float]] = []
    now = b(1000)
    for run in runs:
        counts: dict[int, float] = {}
        for bucket, count in run:
            counts[b(min(bucket, now // STEP))] = counts.get(b(min(bucket, now // STEP)), 0) + count
        samples, state = advance(counts, state, step_us=STEP, publish_until_us=now - now % STEP)
        written += samples
        now += STEP // 2
    stamps = [stamp for stamp, _ in written]
    assert stamps == sorted(set(stamps))  # strictly increasing: no sample is ever written twice
    values = [value for _, value in written]
    assert values == sorted(values)  # monotonic, as a counter is
    total = sum(count for run in runs for _, count in run)
    assert state is not None
    assert state[0] + state[2] == total  # every event is in the total, or held for the next bucket
    if written:
        assert written[-1][1] == state[0]


def event(kind: EventKind, key: str | None = "k1", **fields: object) -> KeyEvent:
    values: dict[str, object] = {"time_us": b(995) + 1, "principal": "alice"}
    values.update(fields)
    ref = f"vault:transit/{key}" if key else None
    return KeyEvent(
        f"{kind}-{key}-{values['time_us']}",
        source="vault",
        action=f"transit/{kind}",
        kind=kind,
        key_ref=ref,
        key_id=key,
        mount="transit",
        **values,
    )  # type: ignore[arg-type]


def counted(events: list[KeyEvent], violations: tuple[Violation, ...] = ()) -> dict[str, float]:
    records: dict[str, KeyRecord] = {}
    before = apply_events(records, events)
    found = increments(events, before, records, violations, step_us=STEP, now_us=NOW, pseudonym=lambda t, v: f"h({v})")
    totals: dict[str, float] = {}
    for (metric, _tags), buckets in found.items():
        totals[metric] = totals.get(metric, 0) + sum(buckets.values())
    return totals


def test_what_each_event_counts() -> None:
    assert counted([event(EventKind.CREATED), event(EventKind.ENCRYPT, time_us=b(996))]) == {
        "access_count": 2,
        "created_total": 1,
        "encryption_ops": 1,
    }
    refused = event(EventKind.DECRYPT, error="permission denied", unauthorized=True)
    assert counted([refused]) == {"access_count": 1, "unauthorized_access": 1, "security_events": 1}
    assert counted([event(EventKind.DISABLED)]) == {"access_count": 1, "revoked_total": 1, "security_events": 1}
    assert counted([event(EventKind.SIGN), event(EventKind.MAC, time_us=b(996))])["signing_ops"] == 2


def test_a_deletion_after_a_schedule_is_not_a_second_revocation() -> None:
    scheduled = event(EventKind.DELETION_SCHEDULED)
    deleted = event(EventKind.DELETED, time_us=b(997))
    assert counted([scheduled, deleted])["revoked_total"] == 1
    assert counted([event(EventKind.DELETED)])["revoked_total"] == 1  # Vault deletes at once
    records: dict[str, KeyRecord] = {}
    assert apply_events(records, [scheduled, deleted]) == ["enabled", PENDING_DELETION]


def test_tags_of_keyless_calls_and_violations() -> None:
    keyless = event(EventKind.OTHER, key=None, error="permission denied", unauthorized=True)
    records: dict[str, KeyRecord] = {}
    before = apply_events(records, [keyless])
    found = increments([keyless], before, records, (), step_us=STEP, now_us=NOW, pseudonym=lambda t, v: f"h({v})")
    tags = dict(found.keys())  # (metric, tags) pairs
    assert tags["access_count"] == '{"key_id":"unknown","mount":"transit","source":"vault"}'
    assert '"principal":"h(alice)"' in tags["unauthorized_access"]
    assert '"event":"transit/other"' in tags["security_events"]
    assert unknown_key_tags(keyless) == {"key_id": "unknown", "source": "vault", "mount": "transit"}
    violation = Violation("vault:transit/k1", "rotation_overdue", "", "state", "old", b(995))
    assert counted([event(EventKind.READ)], (violation,))["policy_violations"] == 1


def test_the_spec_names_are_the_counters() -> None:
    from tasks.keys.counters import COUNTERS, OPERATION_METRICS

    spec = {
        "created_total",
        "rotated_total",
        "expired_total",
        "revoked_total",
        "access_count",
        "encryption_ops",
        "decryption_ops",
        "signing_ops",
        "unauthorized_access",
        "policy_violations",
        "security_events",
    }
    assert set(COUNTERS) == spec
    assert set(OPERATION_METRICS.values()) <= spec

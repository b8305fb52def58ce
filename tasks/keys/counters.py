"""Key events into ``crypto.key.*`` counters, bucketed at the collection interval, and the inventory's gauges.

Counters are cumulative, as in Prometheus, so ``rate`` and ``increase`` work on
them: a series' sample at a bucket's start holds the total of its events up to
and including that bucket. Per key (tags ``key_id``, ``key_type``,
``algorithm``, ``source``, and ``region`` + ``account`` or ``mount``):

==================================  =============================================
``crypto.key.created_total``        keys created
``crypto.key.rotated_total``        rotations (automatic and on demand)
``crypto.key.expired_total``        imported key material expired
``crypto.key.revoked_total``        disabled, scheduled for deletion, material
                                    deleted, or deleted without a schedule
``crypto.key.access_count``         every call naming the key, refused ones too
``crypto.key.encryption_ops``       encrypt, data keys, the encrypt half of re-encrypt
``crypto.key.decryption_ops``       decrypt, the decrypt half of re-encrypt
``crypto.key.signing_ops``          sign, verify, MAC
``crypto.key.unauthorized_access``  calls refused for permission (+ tag ``principal``)
``crypto.key.security_events``      failures and changes to who may use the key (+ ``event``)
``crypto.key.policy_violations``    policy violations (+ ``policy``)
==================================  =============================================

Calls that name no key (a refused ``CreateKey``, ``GenerateRandom``) count
under ``key_id=unknown``. Failed calls count only as accesses, unauthorized
accesses and security events, never as operations.

Each series' samples have strictly increasing timestamps and a sample, once
written, never changes: an event arriving after its bucket was written (logs
are delivered late) counts in the bucket after the series' last one, and
waits for the next run if that bucket has not begun. Before a series' first
sample, and before a sample that follows a gap, a sample carries the previous
total, so an ``increase`` over any range sees every event after the range's
first bucket, however sparse the series.

Gauges, per key not deleted, at the time of the run: ``crypto.key.age_days``
and ``crypto.key.days_since_rotation``.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence

import polars as pl

from metrics.model import canonical_tags
from tasks.collect.key_events import EventKind, KeyEvent
from tasks.keys.inventory import DELETED, PENDING_DELETION, KeyRecord
from tasks.keys.policy import Violation

PREFIX = "crypto.key."
OPERATION_METRICS: dict[EventKind, str] = {
    EventKind.CREATED: "created_total",
    EventKind.ROTATED: "rotated_total",
    EventKind.EXPIRED: "expired_total",
    EventKind.DISABLED: "revoked_total",
    EventKind.DELETION_SCHEDULED: "revoked_total",
    EventKind.MATERIAL_DELETED: "revoked_total",
    EventKind.DELETED: "revoked_total",  # unless a scheduled deletion already counted (see increments)
    EventKind.ENCRYPT: "encryption_ops",
    EventKind.DECRYPT: "decryption_ops",
    EventKind.SIGN: "signing_ops",
    EventKind.VERIFY: "signing_ops",
    EventKind.MAC: "signing_ops",
}
COUNTERS = (
    "created_total",
    "rotated_total",
    "expired_total",
    "revoked_total",
    "access_count",
    "encryption_ops",
    "decryption_ops",
    "signing_ops",
    "unauthorized_access",
    "security_events",
    "policy_violations",
)
SAMPLE_SCHEMA: dict[str, pl.DataType] = {
    "ts": pl.Datetime("us", "UTC"),
    "metric": pl.String(),
    "value": pl.Float64(),
    "type": pl.String(),
    "tags": pl.String(),
}

Increments = dict[tuple[str, str], dict[int, float]]  # (metric, canonical tags) -> bucket start (µs) -> count
# total, last bucket written, count held back, the bucket it is held for
CounterState = tuple[float, int | None, float, int | None]


def unknown_key_tags(event: KeyEvent) -> dict[str, str]:
    """Tags of calls that name no key."""
    tags = {"key_id": "unknown", "source": event.source}
    for name in ("region", "account", "mount"):
        value = getattr(event, name)
        if value:
            tags[name] = value
    return tags


def increments(
    events: Sequence[KeyEvent],
    states_before: Sequence[str | None],
    records: Mapping[str, KeyRecord],
    violations: Iterable[Violation],
    *,
    step_us: int,
    now_us: int,
    pseudonym: Callable[[str, str], str],
) -> Increments:
    """Counts per counter series and bucket for new events and counted violations.

    Args:
        events: new events (each counted once), in time order.
        states_before: each event's key state just before it (:func:`tasks.keys.inventory.apply_events`).
        records: the inventory after the events (for each key's tags).
        violations: violations to count (each one increment of ``policy_violations``).
        step_us: the bucket width (collection interval) in microseconds.
        now_us: now; later event times count in the current bucket.
        pseudonym: ``(tag, value) -> stored text`` for principals.
    """
    counts: Increments = defaultdict(lambda: defaultdict(float))
    tag_texts: dict[str | None, str] = {}
    latest = now_us - now_us % step_us

    def key_tags(ref: str | None, event: KeyEvent | None) -> dict[str, str]:
        record = records.get(ref) if ref is not None else None
        if record is not None:
            return record.tags()
        return unknown_key_tags(event) if event is not None else {"key_id": "unknown"}

    for event, before in zip(events, states_before, strict=True):
        bucket = min(event.time_us - event.time_us % step_us, latest)
        text = tag_texts.get(event.key_ref)
        if text is None or event.key_ref is None:
            text = canonical_tags(key_tags(event.key_ref, event))
            if event.key_ref is not None:
                tag_texts[event.key_ref] = text
        if not event.continuation:
            counts["access_count", text][bucket] += 1
        if event.succeeded:
            metric = OPERATION_METRICS.get(event.kind)
            if metric and not (event.kind == EventKind.DELETED and before in (PENDING_DELETION, DELETED)):
                counts[metric, text][bucket] += 1
        if event.continuation:
            continue  # the call's first event counted the access and any refusal
        if event.unauthorized:
            extra = {"principal": pseudonym("principal", event.principal or "unknown")}
            counts["unauthorized_access", canonical_tags({**key_tags(event.key_ref, event), **extra})][bucket] += 1
        if event.is_security_event:
            counts["security_events", canonical_tags({**key_tags(event.key_ref, event), "event": event.action})][
                bucket
            ] += 1
    for violation in violations:
        bucket = min(violation.time_us - violation.time_us % step_us, latest)
        tags = {**key_tags(violation.key_ref, None), "policy": violation.policy}
        counts["policy_violations", canonical_tags(tags)][bucket] += 1
    return counts


def series_name(metric: str, tags_text: str) -> str:
    """The counter state's name of a series: ``crypto.key.<metric>`` and its canonical tags."""
    return f"{PREFIX}{metric}{tags_text}"


def split_series_name(name: str) -> tuple[str, str]:
    """(metric without the prefix, canonical tags) of a :func:`series_name` (metric names hold no ``{``)."""
    brace = name.index("{")
    return name[len(PREFIX) : brace], name[brace:]


def advance(
    counts: Mapping[int, float],
    state: CounterState | None,
    *,
    step_us: int,
    publish_until_us: int,
    oldest_us: int = 0,
) -> tuple[list[tuple[int, float]], CounterState]:
    """One series' new samples (bucket start, total) and its new state.

    Args:
        counts: new events per bucket start.
        state: (total, last bucket written, count held, the bucket it is held for), or None for a new series.
        step_us: the bucket width.
        publish_until_us: the last bucket start a sample may be written for (a bucket that has begun);
            counts for later buckets are held in the state until a later call may write them.
        oldest_us: buckets before this (the retention period's start) count in the total but write no
            sample, since the lake would refuse it.
    """
    total, last, held, held_slot = state if state is not None else (0.0, None, 0.0, None)
    slots: dict[int, float] = defaultdict(float)
    for bucket, count in counts.items():
        slots[bucket if last is None or bucket > last else last + step_us] += count
    if held and held_slot is not None:
        slots[held_slot if last is None or held_slot > last else last + step_us] += held
    samples: list[tuple[int, float]] = []
    held, held_slot = 0.0, None
    for slot in sorted(slots):
        if slot > publish_until_us:
            held += slots[slot]
            held_slot = slot if held_slot is None else max(held_slot, slot)  # never before the events happened
            continue
        if slot - step_us >= oldest_us and (last is None or slot - step_us > last):
            samples.append((slot - step_us, total))  # the total before: increase() sees this bucket's events
        total += slots[slot]
        if slot >= oldest_us:
            samples.append((slot, total))
        last = slot
    return samples, (total, last, held, held_slot)


def counter_frame(rows: Iterable[tuple[str, str, int, float]]) -> pl.DataFrame:
    """(metric, canonical tags, bucket start µs, total) rows as a sample frame of counters."""
    metrics, tags, stamps, values = [], [], [], []
    for metric, text, stamp, value in rows:
        metrics.append(PREFIX + metric)
        tags.append(text)
        stamps.append(stamp)
        values.append(value)
    return _frame(metrics, tags, stamps, values, "counter")


def gauge_frame(records: Iterable[KeyRecord], now_us: int) -> pl.DataFrame:
    """``crypto.key.age_days`` and ``days_since_rotation`` of every key not deleted, at ``now_us``."""
    metrics, tags, stamps, values = [], [], [], []
    for record in records:
        if record.state == DELETED:
            continue
        text = canonical_tags(record.tags())
        for metric, value in (
            ("age_days", record.age_days(now_us)),
            ("days_since_rotation", record.days_since_rotation(now_us)),
        ):
            metrics.append(PREFIX + metric)
            tags.append(text)
            stamps.append(now_us)
            values.append(round(value, 4))
    return _frame(metrics, tags, stamps, values, "gauge")


def _frame(metrics: list[str], tags: list[str], stamps: list[int], values: list[float], kind: str) -> pl.DataFrame:
    return pl.DataFrame(
        {
            "ts": pl.Series(stamps, dtype=pl.Int64).cast(pl.Datetime("us", "UTC")),
            "metric": pl.Series(metrics, dtype=pl.String),
            "value": pl.Series(values, dtype=pl.Float64),
            "type": pl.Series([kind] * len(metrics), dtype=pl.String),
            "tags": pl.Series(tags, dtype=pl.String),
        },
        schema=SAMPLE_SCHEMA,
    )

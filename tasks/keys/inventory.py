"""The key inventory: every key the logs have shown, its state and its history, in SQLite.

A key enters the inventory with the first event that names it and follows
its events in time order:

==========================================  =========================
event                                       state afterwards
==========================================  =========================
created, enabled, material imported          ``enabled``
disabled, deletion cancelled                 ``disabled``
deletion scheduled                           ``pending_deletion``
deleted                                      ``deleted``
imported material expired or deleted         ``pending_import``
==========================================  =========================

Only successful events change a key; a state change older than the key's
last one (an event delivered late) updates the timestamps but not the state.
A key first seen in use (its creation predates the logs) is ``enabled`` with
an unknown creation time; its age counts from when it was first seen, a lower
bound. ``key_access`` keeps, per key, every principal, source address and
region that used it, with first and last time and count — the memory that
novelty detection needs. Principals and addresses are stored pseudonymised
(``METRICS_PII_TAGS``), never raw.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable, Sequence
from dataclasses import astuple, dataclass, fields
from typing import Any

from tasks.collect.key_events import USE_KINDS, EventKind, KeyEvent

ENABLED = "enabled"
DISABLED = "disabled"
PENDING_DELETION = "pending_deletion"
DELETED = "deleted"
PENDING_IMPORT = "pending_import"
STATES = (ENABLED, DISABLED, PENDING_DELETION, DELETED, PENDING_IMPORT)
UNUSABLE_STATES = frozenset({DISABLED, PENDING_DELETION, DELETED, PENDING_IMPORT})
TRANSITIONS: dict[EventKind, str] = {
    EventKind.CREATED: ENABLED,
    EventKind.ENABLED: ENABLED,
    EventKind.MATERIAL_IMPORTED: ENABLED,
    EventKind.DISABLED: DISABLED,
    EventKind.DELETION_CANCELLED: DISABLED,
    EventKind.DELETION_SCHEDULED: PENDING_DELETION,
    EventKind.DELETED: DELETED,
    EventKind.EXPIRED: PENDING_IMPORT,
    EventKind.MATERIAL_DELETED: PENDING_IMPORT,
}
ACCESS_DIMENSIONS = ("principal", "source_ip", "region")
US_PER_DAY = 86_400 * 1_000_000


@dataclass
class KeyRecord:
    """One key of the inventory (times in microseconds since the epoch, UTC)."""

    key_ref: str
    source: str
    key_id: str
    key_type: str | None
    algorithm: str | None
    region: str | None
    account: str | None
    mount: str | None
    state: str
    state_at: int
    created_at: int | None
    rotated_at: int | None
    last_used_at: int | None
    deletion_at: int | None
    first_seen: int
    last_seen: int
    rotation_enabled: bool | None
    events: int

    @classmethod
    def first_seen_in(cls, event: KeyEvent) -> KeyRecord:
        """A new record for the key an event names (before the event is applied)."""
        assert event.key_ref is not None
        assert event.key_id is not None
        return cls(
            key_ref=event.key_ref,
            source=event.source,
            key_id=event.key_id,
            key_type=None,
            algorithm=None,
            region=event.region,
            account=event.account,
            mount=event.mount,
            state=ENABLED,
            state_at=0,
            created_at=None,
            rotated_at=None,
            last_used_at=None,
            deletion_at=None,
            first_seen=event.time_us,
            last_seen=event.time_us,
            rotation_enabled=None,
            events=0,
        )

    def age_days(self, now_us: int) -> float:
        """Days since creation (since first seen when the creation is not in the logs)."""
        return max(0.0, (now_us - (self.created_at or self.first_seen)) / US_PER_DAY)

    def days_since_rotation(self, now_us: int) -> float:
        """Days since the last rotation, else since creation (or first seen)."""
        return max(0.0, (now_us - (self.rotated_at or self.created_at or self.first_seen)) / US_PER_DAY)

    def tags(self) -> dict[str, str]:
        """The tags of this key's metrics: ``key_id``, ``key_type``, ``algorithm``, ``source``, ``region``/``mount``."""
        tags = {
            "key_id": self.key_id,
            "key_type": self.key_type or "unknown",
            "algorithm": self.algorithm or "unknown",
            "source": self.source,
        }
        for name in ("region", "account", "mount"):
            value = getattr(self, name)
            if value:
                tags[name] = value
        return tags

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (times as microseconds)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def apply(self, event: KeyEvent) -> None:
        """Update the record with one of its events (in time order)."""
        self.events += 1
        self.first_seen = min(self.first_seen, event.time_us)
        self.last_seen = max(self.last_seen, event.time_us)
        if not event.succeeded:
            return
        if event.kind == EventKind.CREATED:
            self.created_at = event.time_us if self.created_at is None else min(self.created_at, event.time_us)
            self.key_type = event.key_type or self.key_type
            self.algorithm = event.algorithm or self.algorithm
        else:
            self.key_type = self.key_type or event.key_type
            self.algorithm = self.algorithm or event.algorithm
        if event.kind in USE_KINDS:
            self.last_used_at = max(self.last_used_at or 0, event.time_us)
        elif event.kind == EventKind.ROTATED:
            self.rotated_at = max(self.rotated_at or 0, event.time_us)
        elif event.kind == EventKind.ROTATION_ENABLED:
            self.rotation_enabled = True
        elif event.kind == EventKind.ROTATION_DISABLED:
            self.rotation_enabled = False
        state = TRANSITIONS.get(event.kind)
        if event.kind == EventKind.CREATED and event.key_state:
            state = event.key_state  # created without key material: pending_import
        if state is not None and event.time_us >= self.state_at:
            self.state, self.state_at = state, event.time_us
            self.deletion_at = event.deletion_at if state == PENDING_DELETION else None


_COLUMNS = tuple(f.name for f in fields(KeyRecord))


def _record(row: Sequence[Any]) -> KeyRecord:
    record = KeyRecord(*row)
    if record.rotation_enabled is not None:
        record.rotation_enabled = bool(record.rotation_enabled)
    return record


def load(connection: sqlite3.Connection, refs: Iterable[str] | None = None) -> dict[str, KeyRecord]:
    """Records by key reference: those named (that exist), or every one when ``refs`` is None."""
    select = f"SELECT {', '.join(_COLUMNS)} FROM keys"
    if refs is None:
        return {row[0]: _record(row) for row in connection.execute(select + " ORDER BY key_ref")}
    wanted = list(dict.fromkeys(refs))
    found: dict[str, KeyRecord] = {}
    for start in range(0, len(wanted), 500):
        chunk = wanted[start : start + 500]
        marks = ", ".join("?" for _ in chunk)
        for row in connection.execute(f"{select} WHERE key_ref IN ({marks})", chunk):
            found[row[0]] = _record(row)
    return found


def save(connection: sqlite3.Connection, records: Iterable[KeyRecord]) -> None:
    """Insert or replace records."""
    marks = ", ".join("?" for _ in _COLUMNS)
    connection.executemany(
        f"INSERT OR REPLACE INTO keys ({', '.join(_COLUMNS)}) VALUES ({marks})",
        [astuple(record) for record in records],
    )


def apply_events(records: dict[str, KeyRecord], events: Sequence[KeyEvent]) -> list[str | None]:
    """Apply events (sorted by time) to ``records`` (new keys are added); return each key's state before its event.

    Events naming no key change nothing and get None.
    """
    before: list[str | None] = []
    for event in events:
        if event.key_ref is None:
            before.append(None)
            continue
        record = records.get(event.key_ref)
        if record is None:
            record = records[event.key_ref] = KeyRecord.first_seen_in(event)
            if event.key_state_error:  # first seen being refused for its state: it is not usable
                record.state = DISABLED
        before.append(record.state)
        record.apply(event)
    return before


def record_access(
    connection: sqlite3.Connection, rows: Iterable[tuple[str, str, str, int, int, int]]
) -> list[tuple[str, str, str, int, int, int]]:
    """Merge (key_ref, dimension, value, first_seen, last_seen, count) rows; return those never seen before."""
    rows = list(rows)
    if not rows:
        return []
    connection.execute("CREATE TEMP TABLE IF NOT EXISTS batch_access (key_ref TEXT, dimension TEXT, value TEXT)")
    connection.execute("DELETE FROM batch_access")
    connection.executemany("INSERT INTO batch_access VALUES (?, ?, ?)", [row[:3] for row in rows])
    known = set(
        connection.execute(
            "SELECT key_ref, dimension, value FROM batch_access JOIN key_access USING (key_ref, dimension, value)"
        ).fetchall()
    )
    connection.executemany(
        "INSERT INTO key_access (key_ref, dimension, value, first_seen, last_seen, count) VALUES (?, ?, ?, ?, ?, ?) "
        "ON CONFLICT (key_ref, dimension, value) DO UPDATE SET first_seen = min(first_seen, excluded.first_seen), "
        "last_seen = max(last_seen, excluded.last_seen), count = count + excluded.count",
        rows,
    )
    return [row for row in rows if row[:3] not in known]


def access(connection: sqlite3.Connection, key_ref: str | None = None) -> list[dict[str, Any]]:
    """Who, from where and in which region used each key (or one key): first and last time and count."""
    query = "SELECT key_ref, dimension, value, first_seen, last_seen, count FROM key_access"
    rows = connection.execute(
        query + (" WHERE key_ref = ? ORDER BY dimension, value" if key_ref else " ORDER BY key_ref, dimension, value"),
        (key_ref,) if key_ref else (),
    )
    names = ("key_ref", "dimension", "value", "first_seen", "last_seen", "count")
    return [dict(zip(names, row, strict=True)) for row in rows]

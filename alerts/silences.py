"""Silences: mute the notifications of alerts whose labels match, from a start to an end, with who and why.

As in Alertmanager, a silence is a list of matchers (``name``, ``value``,
``regex`` or not, ``equal`` or not), all of which must hold; an alert still
changes state while silenced (the API shows it), but no notification is
written for it. Silences are kept in the alerting SQLite file; an expired
one stays listed until it is a day old.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from alerts.matchers import Matcher
from alerts.store import AlertStore
from metrics.errors import NotFoundError, ValidationError

SILENCE_SCHEMA = """
CREATE TABLE IF NOT EXISTS silences (
    silence_id TEXT PRIMARY KEY,
    matchers TEXT NOT NULL,
    starts_at TEXT NOT NULL,
    ends_at TEXT NOT NULL,
    created_by TEXT NOT NULL,
    comment TEXT NOT NULL,
    created_at TEXT NOT NULL
);
"""
KEEP_EXPIRED = timedelta(days=1)


@dataclass(frozen=True)
class Silence:
    """Matchers and a time range during which matching alerts notify nobody."""

    silence_id: str
    matchers: tuple[Matcher, ...]
    starts_at: datetime
    ends_at: datetime
    created_by: str
    comment: str
    created_at: datetime

    def active(self, now: datetime) -> bool:
        """Whether the silence mutes alerts at ``now``."""
        return self.starts_at <= now < self.ends_at

    def matches(self, labels: Mapping[str, str]) -> bool:
        """Whether every matcher holds for these labels."""
        return all(matcher.matches(labels) for matcher in self.matchers)

    def to_dict(self, now: datetime | None = None) -> dict[str, Any]:
        """JSON-ready, with the silence's ``state`` (pending, active, expired) at ``now``."""
        moment = now or datetime.now(UTC)
        state = "pending" if moment < self.starts_at else ("active" if moment < self.ends_at else "expired")
        return {
            "silence_id": self.silence_id,
            "matchers": [asdict(matcher) for matcher in self.matchers],
            "starts_at": self.starts_at.isoformat(),
            "ends_at": self.ends_at.isoformat(),
            "created_by": self.created_by,
            "comment": self.comment,
            "created_at": self.created_at.isoformat(),
            "state": state,
        }


class Silences:
    """The silences of one data directory."""

    def __init__(self, store: AlertStore) -> None:
        self.store = store

    def create(
        self,
        matchers: Sequence[Matcher],
        *,
        ends_at: datetime,
        created_by: str,
        comment: str,
        starts_at: datetime | None = None,
        now: datetime | None = None,
    ) -> Silence:
        """Add a silence; it needs at least one matcher, an author, a comment and an end after its start."""
        moment = now or datetime.now(UTC)
        start = starts_at or moment
        if not matchers:
            raise ValidationError("matchers: a silence needs at least one matcher (it would silence everything)")
        if not created_by.strip():
            raise ValidationError("created_by: a silence needs an author")
        if not comment.strip():
            raise ValidationError("comment: say why the alerts are silenced")
        for name, value in (("starts_at", start), ("ends_at", ends_at)):
            if value.tzinfo is None:
                raise ValidationError(f"{name}: {value.isoformat()} has no time zone")
        start, ends_at = start.astimezone(UTC), ends_at.astimezone(UTC)  # stored as text: one zone compares right
        if ends_at <= start:
            raise ValidationError(f"ends_at: {ends_at.isoformat()} is not after starts_at {start.isoformat()}")
        silence = Silence(uuid.uuid4().hex[:16], tuple(matchers), start, ends_at, created_by, comment, moment)
        with self.store.transaction(immediate=True) as connection:
            connection.execute(
                "INSERT INTO silences VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    silence.silence_id,
                    json.dumps([asdict(m) for m in silence.matchers]),
                    silence.starts_at.isoformat(),
                    silence.ends_at.isoformat(),
                    created_by,
                    comment,
                    moment.isoformat(),
                ),
            )
        return silence

    def expire(self, silence_id: str, now: datetime | None = None) -> Silence:
        """End a silence now (it stays listed as expired)."""
        moment = now or datetime.now(UTC)
        with self.store.transaction(immediate=True) as connection:
            done = connection.execute(
                "UPDATE silences SET ends_at = ? WHERE silence_id = ? AND ends_at > ?",
                (moment.isoformat(), silence_id, moment.isoformat()),
            )
            if (
                done.rowcount == 0
                and connection.execute("SELECT 1 FROM silences WHERE silence_id = ?", (silence_id,)).fetchone() is None
            ):
                raise NotFoundError(f"silence {silence_id!r} does not exist")
        return next(s for s in self.all(now=moment) if s.silence_id == silence_id)

    def all(self, *, now: datetime | None = None) -> list[Silence]:
        """Every silence not expired for more than a day, newest first (older ones are deleted)."""
        moment = now or datetime.now(UTC)
        with self.store.transaction(immediate=True) as connection:
            connection.execute("DELETE FROM silences WHERE ends_at < ?", ((moment - KEEP_EXPIRED).isoformat(),))
            rows = connection.execute("SELECT * FROM silences ORDER BY created_at DESC").fetchall()
        return [
            Silence(
                row[0],
                tuple(Matcher(**item) for item in json.loads(row[1])),
                datetime.fromisoformat(row[2]),
                datetime.fromisoformat(row[3]),
                row[4],
                row[5],
                datetime.fromisoformat(row[6]),
            )
            for row in rows
        ]

    def active(self, now: datetime | None = None) -> list[Silence]:
        """The silences muting alerts at ``now``."""
        moment = now or datetime.now(UTC)
        return [silence for silence in self.all(now=moment) if silence.active(moment)]


def silenced_by(labels: Mapping[str, str], silences: Sequence[Silence]) -> Silence | None:
    """The first active silence matching these labels, if any (the caller passes the active ones)."""
    return next((silence for silence in silences if silence.matches(labels)), None)

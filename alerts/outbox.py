"""The durable outbox: every notification is written before it is sent, and sent until it is delivered.

A notification is one row per (alert, event, channel) — the ``UNIQUE``
constraint makes writing it twice (a repeated or restarted evaluation) a
no-op. The row is inserted in the same transaction as the state change that
causes it (:mod:`alerts.engine`), so a crash after the change cannot lose
the notification, and one before it cannot send one.

:meth:`Outbox.dispatch` claims due rows (a lease of ``claim_seconds``, so
two dispatchers never send the same row and a dispatcher killed mid-send
gives its rows back when the lease ends), sends each through its channel's
:class:`alerts.notify.Notifier`, and marks it delivered — or, when the
channel fails, schedules the next attempt with exponential backoff
(``base_delay · 2^attempts``, at most ``max_delay``) until ``max_attempts``;
a permanent failure (refused credentials, an unknown channel) stops at once.
The one window where a notification can go out twice is a crash between the
channel accepting it and the row being marked, milliseconds wide.

**Grouping.** A firing or resolved notification joins its group's batch
(:class:`alerts.routing.Delivery`: the route's ``group_by`` values per
channel): the first of a group waits ``group_wait``, later ones join a batch
still waiting or go ``group_interval`` after the group's last message. The
dispatcher sends a batch due together as one message (:func:`combine`) —
except to channels that group alerts themselves (Alertmanager).
"""

from __future__ import annotations

import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from alerts.notify import Notification, Notifier
from alerts.routing import Delivery
from alerts.store import AlertStore
from metrics.errors import DeliveryError

log = logging.getLogger(__name__)

OUTBOX_SCHEMA = """
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    alert_id TEXT NOT NULL,
    event TEXT NOT NULL,
    channel TEXT NOT NULL,
    group_key TEXT NOT NULL DEFAULT '',
    payload TEXT NOT NULL,
    created_at REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_attempt_at REAL NOT NULL,
    claimed_until REAL,
    delivered_at REAL,
    failed_at REAL,
    last_error TEXT,
    UNIQUE (alert_id, event, channel)
);
CREATE INDEX IF NOT EXISTS outbox_due ON outbox (delivered_at, failed_at, next_attempt_at);
CREATE INDEX IF NOT EXISTS outbox_group ON outbox (channel, group_key, id);
"""
KEEP_SECONDS = 7 * 86_400.0  # delivered or given-up notifications kept this long (metrics alerts outbox)
SELF_GROUPING = frozenset({"alertmanager"})  # channels that group alerts themselves: sent one by one


def enqueue(
    connection: sqlite3.Connection,
    notification: Notification,
    event: str,
    channels: Sequence[str],
    now: float,
    delivery: Delivery | None = None,
) -> int:
    """Write one notification per channel in the caller's transaction; returns how many were new.

    With a ``delivery``, a firing or resolved notification is scheduled with its group (see the module);
    other events (repeats, escalations) are due at once.
    """
    payload = json.dumps(notification.to_dict())
    group_key = f"{notification.rule_id}|{delivery.group_key}" if delivery else notification.alert_id
    grouped = delivery is not None and event.startswith(("firing:", "resolved:"))
    before = connection.total_changes
    for channel in channels:
        due = _group_due(connection, channel, group_key, now, delivery) if grouped and delivery else now
        connection.execute(
            "INSERT OR IGNORE INTO outbox (alert_id, event, channel, group_key, payload, created_at, next_attempt_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?)",
            (notification.alert_id, event, channel, group_key, payload, now, due),
        )
    return connection.total_changes - before


def _group_due(connection: sqlite3.Connection, channel: str, group_key: str, now: float, delivery: Delivery) -> float:
    """When a new notification of a group is due: with a waiting batch, after the last message, or after group_wait."""
    waiting, sent = connection.execute(
        "SELECT max(CASE WHEN delivered_at IS NULL AND failed_at IS NULL THEN next_attempt_at END), max(delivered_at) "
        "FROM outbox WHERE channel = ? AND group_key = ?",
        (channel, group_key),
    ).fetchone()
    if waiting is not None and waiting >= now:
        return float(waiting)
    if sent is not None and now - sent < delivery.group_interval:
        return float(sent) + delivery.group_interval
    return now + delivery.group_wait


def combine(notifications: Sequence[Notification]) -> Notification:
    """One message for a batch of a group: the most urgent status and priority, a line per alert."""
    if len(notifications) == 1:
        return notifications[0]
    firing = [n for n in notifications if n.status == "firing"]
    first = (firing or list(notifications))[0]
    order = ("LOW", "MEDIUM", "HIGH", "CRITICAL")
    priority = max((n.priority for n in notifications), key=order.index)
    common = {k: v for k, v in first.labels.items() if all(n.labels.get(k) == v for n in notifications)}
    lines = [f"[{n.status.upper()}] {n.series}: {n.summary}" for n in notifications]
    counts = f"{len(firing)} firing, {len(notifications) - len(firing)} resolved"
    return replace(
        first,
        status="firing" if firing else "resolved",
        priority=priority,
        summary=f"{first.rule_name}: {len(notifications)} alerts ({counts})",
        description="\n".join(lines),
        series=f"{len(notifications)} series",
        labels=common,
        value=None,
    )


class _LeaseLost(Exception):
    """Rows this dispatcher claimed were taken by another after its lease ran out."""


@dataclass
class DispatchResult:
    """What one dispatch did: delivered, to retry, given up, and what is still waiting."""

    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    waiting: int = 0
    by_channel: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds from written to delivered

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures (latency as the largest, in seconds)."""
        return {
            "delivered": self.delivered,
            "retrying": self.retrying,
            "failed": self.failed,
            "waiting": self.waiting,
            "by_channel": self.by_channel,
            "max_latency_seconds": round(max(self.latencies), 3) if self.latencies else None,
        }


class Outbox:
    """Sends the outbox's due notifications through the configured channels.

    Args:
        store: whose SQLite file holds the outbox.
        notifiers: channel name → notifier.
        max_attempts: attempts before a notification is given up (and logged).
        base_delay: seconds before the first retry; doubles each attempt.
        max_delay: the longest wait between attempts.
        claim_seconds: how long a dispatcher holds rows it is sending.
        clock: seconds since the epoch (tests pass a controllable one).
    """

    def __init__(
        self,
        store: AlertStore,
        notifiers: Mapping[str, Notifier],
        *,
        max_attempts: int = 12,
        base_delay: float = 5.0,
        max_delay: float = 900.0,
        claim_seconds: float = 120.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.store = store
        self.notifiers = dict(notifiers)
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.claim_seconds = claim_seconds
        self.clock = clock

    def dispatch(self, limit: int = 500) -> DispatchResult:
        """Send up to ``limit`` due notifications (a group's batch as one message); return what happened."""
        result = DispatchResult()
        batches: dict[tuple[str, str], list[tuple[int, str, int, float]]] = {}
        for row_id, channel, group_key, payload, tried, created_at in self._claim(limit):
            key = (channel, group_key if channel not in SELF_GROUPING else str(row_id))
            batches.setdefault(key, []).append((row_id, payload, tried, created_at))
        for (channel, _), rows in batches.items():
            notifier = self.notifiers.get(channel)
            ids = [row[0] for row in rows]
            if not self._renew(ids):
                continue  # the lease ran out while earlier batches were sent, and another dispatcher took these
            attempts = {row[0]: row[2] + 1 for row in rows}
            try:
                if notifier is None:
                    raise DeliveryError(f"channel {channel!r} is not configured", permanent=True)
                notifier.send(combine([Notification.from_dict(json.loads(row[1])) for row in rows]))
            except DeliveryError as exc:
                self._failed(attempts, str(exc), exc.permanent, result)
                continue
            except Exception as exc:  # a notifier's bug must not stop the other notifications
                log.exception("notifier %s failed unexpectedly", channel)
                self._failed(attempts, f"unexpected error: {type(exc).__name__}", False, result)
                continue
            now = self.clock()
            with self.store.transaction(immediate=True) as connection:
                connection.executemany(
                    "UPDATE outbox SET delivered_at = ?, attempts = ?, claimed_until = NULL, last_error = NULL "
                    "WHERE id = ?",
                    [(now, count, row_id) for row_id, count in attempts.items()],
                )
            result.delivered += len(ids)
            result.by_channel[channel] = result.by_channel.get(channel, 0) + len(ids)
            result.latencies += [max(0.0, now - row[3]) for row in rows]
        result.waiting = self.waiting()
        self._purge()
        return result

    def dispatch_for(self, seconds: float, *, sleep: Callable[[float], None] = time.sleep) -> DispatchResult:
        """Dispatch now, then again whenever a waiting notification falls due within ``seconds`` (a group's wait).

        The evaluate-alerts flow calls this so a group waiting ``group_wait`` goes out in the same run, not a
        whole schedule interval later. At most 20 rounds.
        """
        deadline = self.clock() + seconds
        total = self.dispatch()
        for _ in range(20):
            due = self.next_due()
            if due is None or due > deadline:
                break
            sleep(max(0.0, due - self.clock()))
            more = self.dispatch()
            total.delivered += more.delivered
            total.retrying += more.retrying
            total.failed += more.failed
            total.waiting = more.waiting
            total.latencies += more.latencies
            for channel, count in more.by_channel.items():
                total.by_channel[channel] = total.by_channel.get(channel, 0) + count
        return total

    def next_due(self) -> float | None:
        """When the earliest waiting notification is due (seconds since the epoch), if any."""
        with self.store.transaction() as connection:
            row = connection.execute(
                "SELECT min(max(next_attempt_at, coalesce(claimed_until, 0))) FROM outbox "
                "WHERE delivered_at IS NULL AND failed_at IS NULL"
            ).fetchone()
        return None if row[0] is None else float(row[0])

    def _purge(self) -> None:
        """Forget notifications delivered or given up more than :data:`KEEP_SECONDS` ago."""
        before = self.clock() - KEEP_SECONDS
        with self.store.transaction(immediate=True) as connection:
            connection.execute("DELETE FROM outbox WHERE coalesce(delivered_at, failed_at) < ?", (before,))

    def waiting(self) -> int:
        """Notifications not yet delivered nor given up."""
        with self.store.transaction() as connection:
            row = connection.execute(
                "SELECT count(*) FROM outbox WHERE delivered_at IS NULL AND failed_at IS NULL"
            ).fetchone()
        return int(row[0])

    def rows(self, alert_id: str | None = None) -> list[dict[str, Any]]:
        """The outbox's rows (newest first), for ``metrics alerts outbox`` and tests."""
        columns = ("id", "alert_id", "event", "channel", "attempts", "created_at", "delivered_at", "failed_at")
        where, params = ("WHERE alert_id = ?", (alert_id,)) if alert_id else ("", ())
        with self.store.transaction() as connection:
            found = connection.execute(
                f"SELECT {', '.join(columns)}, last_error FROM outbox {where} ORDER BY id DESC", params
            ).fetchall()
        return [dict(zip((*columns, "last_error"), row, strict=True)) for row in found]

    def _claim(self, limit: int) -> list[tuple[int, str, str, str, int, float]]:
        now = self.clock()
        with self.store.transaction(immediate=True) as connection:
            rows = connection.execute(
                "SELECT id, channel, group_key, payload, attempts, created_at FROM outbox "
                "WHERE delivered_at IS NULL AND failed_at IS NULL AND next_attempt_at <= ? "
                "AND (claimed_until IS NULL OR claimed_until < ?) ORDER BY id LIMIT ?",
                (now, now, limit),
            ).fetchall()
            connection.executemany(
                "UPDATE outbox SET claimed_until = ? WHERE id = ?",
                [(now + self.claim_seconds, row[0]) for row in rows],
            )
        return [(int(r[0]), str(r[1]), str(r[2]), str(r[3]), int(r[4]), float(r[5])) for r in rows]

    def _renew(self, ids: Sequence[int]) -> bool:
        """Extend this dispatcher's lease on rows about to be sent; False when any is no longer ours to send."""
        now = self.clock()
        marks = ", ".join("?" for _ in ids)
        try:
            with self.store.transaction(immediate=True) as connection:
                done = connection.execute(
                    f"UPDATE outbox SET claimed_until = ? WHERE id IN ({marks}) AND claimed_until >= ? "
                    "AND delivered_at IS NULL AND failed_at IS NULL",
                    (now + self.claim_seconds, *ids, now),
                )
                if done.rowcount != len(ids):
                    raise _LeaseLost  # rolls the renewal back: the rows stay with whoever holds them
        except _LeaseLost:
            return False
        return True

    def _failed(self, attempts: Mapping[int, int], error: str, permanent: bool, result: DispatchResult) -> None:
        """Schedule each row's next attempt (its own count's backoff), or give it up."""
        now = self.clock()
        updates = []
        for row_id, count in attempts.items():
            give_up = permanent or count >= self.max_attempts
            delay = min(self.max_delay, self.base_delay * 2 ** (count - 1))
            updates.append((count, error[:500], now + delay, now if give_up else None, row_id))
            if give_up:
                result.failed += 1
                log.error("notification %d given up after %d attempt(s): %s", row_id, count, error)
            else:
                result.retrying += 1
                log.warning("notification %d failed (attempt %d), retrying in %.0f s: %s", row_id, count, delay, error)
        with self.store.transaction(immediate=True) as connection:
            connection.executemany(
                "UPDATE outbox SET attempts = ?, last_error = ?, claimed_until = NULL, next_attempt_at = ?, "
                "failed_at = ? WHERE id = ?",
                updates,
            )

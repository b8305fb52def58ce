"""Alerting's mutable state in SQLite (``data/state/alerts.sqlite``): rules, alert states, acknowledgements.

One file holds every table of alerting (rules, states, silences, the outbox),
so a cycle's state changes and the notifications they cause commit in one
transaction: a crash leaves either both or neither, and a restart neither
loses a firing alert nor notifies it twice.

**Rules** come from two places: ``deployments/alert-rules.yaml`` (or
``METRICS_ALERT_RULES_FILE``), re-read whenever the file changes, and the
API / CLI (``source = 'api'``). A rule of the file cannot be deleted through
the API — it would come back — so that is refused, naming the file.

**States** are one row per alert (rule and series group) that is pending,
firing or recently resolved; an inactive alert has no row.
"""

from __future__ import annotations

import hashlib
import json
import operator
import sqlite3
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import polars as pl

from alerts.rules import AlertRule, RuleError, load_rules_file
from metrics.errors import ConflictError, NotFoundError, ValidationError
from metrics.settings import Settings
from storage.statedb import state_transaction

PROJECT_RULES = Path(__file__).resolve().parents[1] / "deployments" / "alert-rules.yaml"
STATE_FILE = "alerts.sqlite"

SCHEMA = """
CREATE TABLE IF NOT EXISTS rules (
    rule_id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    source TEXT NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS rule_files (
    path TEXT PRIMARY KEY,
    digest TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS alert_states (
    alert_id TEXT PRIMARY KEY,
    rule_id TEXT NOT NULL,
    labels TEXT NOT NULL,
    series TEXT NOT NULL,
    status TEXT NOT NULL,
    priority TEXT NOT NULL,
    active_at INTEGER,
    fired_at INTEGER,
    resolved_at INTEGER,
    value REAL,
    sample_ts INTEGER,
    updated_at INTEGER NOT NULL,
    transitions INTEGER NOT NULL DEFAULT 0,
    acknowledged_by TEXT,
    acknowledged_at INTEGER,
    escalation_level INTEGER NOT NULL DEFAULT 0,
    notified_at INTEGER
);
CREATE INDEX IF NOT EXISTS alert_states_rule ON alert_states (rule_id);
"""

STATE_COLUMNS = (
    "alert_id",
    "rule_id",
    "labels",
    "series",
    "status",
    "priority",
    "active_at",
    "fired_at",
    "resolved_at",
    "value",
    "sample_ts",
    "updated_at",
    "transitions",
    "acknowledged_by",
    "acknowledged_at",
    "escalation_level",
    "notified_at",
)


def fingerprint(rule_id: str, labels: str) -> str:
    """The alert id of a rule and a group's labels (canonical JSON): 16 hex digits, stable across restarts."""
    return hashlib.blake2b(f"{rule_id}\0{labels}".encode(), digest_size=8).hexdigest()


@dataclass(frozen=True)
class StoredRule:
    """A rule and where it came from (``file`` or ``api``)."""

    rule: AlertRule
    source: str


class AlertStore:
    """The alerting tables of one data directory."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.path = settings.state_dir / STATE_FILE
        self.rules_file = settings.alert_rules_file or (PROJECT_RULES if PROJECT_RULES.exists() else None)

    @contextmanager
    def transaction(self, *, immediate: bool = False) -> Iterator[sqlite3.Connection]:
        """One transaction over every alerting table (the outbox and silences create theirs on first use)."""
        from alerts.outbox import OUTBOX_SCHEMA
        from alerts.silences import SILENCE_SCHEMA

        with state_transaction(
            self.path, SCHEMA + OUTBOX_SCHEMA + SILENCE_SCHEMA, "alert state", immediate=immediate
        ) as connection:
            yield connection

    # -- rules -----------------------------------------------------------------------
    def sync_rules_file(self) -> int:
        """Load the rules file into the table when it changed since last time; returns the rules it holds.

        The file's rules replace the previous file's; rules added through the
        API stay, unless the file now defines the same id (the file wins).
        """
        if self.rules_file is None or not self.rules_file.exists():
            return 0
        text = self.rules_file.read_bytes()
        digest = hashlib.sha256(text).hexdigest()
        key = str(self.rules_file.resolve())
        with self.transaction(immediate=True) as connection:
            row = connection.execute("SELECT digest FROM rule_files WHERE path = ?", (key,)).fetchone()
            if row is not None and row[0] == digest:
                return int(connection.execute("SELECT count(*) FROM rules WHERE source = 'file'").fetchone()[0])
        rules = load_rules_file(self.rules_file)
        with self.transaction(immediate=True) as connection:
            before = dict(connection.execute("SELECT rule_id, body FROM rules WHERE source = 'file'").fetchall())
            after = {rule.rule_id: json.dumps(rule.to_dict()) for rule in rules}
            _forget_changed(connection, before, after)
            connection.execute("DELETE FROM rules WHERE source = 'file'")
            now = time.time()
            connection.executemany(
                "INSERT OR REPLACE INTO rules (rule_id, body, source, updated_at) VALUES (?, ?, 'file', ?)",
                [(rule.rule_id, json.dumps(rule.to_dict()), now) for rule in rules],
            )
            connection.execute("INSERT OR REPLACE INTO rule_files (path, digest) VALUES (?, ?)", (key, digest))
        return len(rules)

    def rules(self, *, enabled_only: bool = False) -> list[StoredRule]:
        """Every rule, by id (the rules file loaded first when it changed)."""
        self.sync_rules_file()
        with self.transaction() as connection:
            rows = connection.execute("SELECT body, source FROM rules ORDER BY rule_id").fetchall()
        stored = [StoredRule(_parsed(body), source) for body, source in rows]
        return [item for item in stored if item.rule.enabled or not enabled_only]

    def rule(self, rule_id: str) -> StoredRule:
        """One rule by id; :class:`NotFoundError` when there is none."""
        for item in self.rules():
            if item.rule.rule_id == rule_id:
                return item
        raise NotFoundError(f"rule {rule_id!r} does not exist")

    def add_rules(self, rules: Sequence[AlertRule], *, replace: bool = True) -> list[str]:
        """Add (or, with ``replace``, update) rules through the API; a rule of the rules file is refused."""
        self.sync_rules_file()
        with self.transaction(immediate=True) as connection:
            for rule in rules:
                row = connection.execute("SELECT source FROM rules WHERE rule_id = ?", (rule.rule_id,)).fetchone()
                if row is not None and row[0] == "file":
                    raise ConflictError(f"rule {rule.rule_id!r} is defined in {self.rules_file}; change it there")
                if row is not None and not replace:
                    raise ConflictError(f"rule {rule.rule_id!r} already exists")
            now = time.time()
            ids = [rule.rule_id for rule in rules]
            marks = ", ".join("?" for _ in ids)
            before = dict(connection.execute(f"SELECT rule_id, body FROM rules WHERE rule_id IN ({marks})", ids))
            after = {rule.rule_id: json.dumps(rule.to_dict()) for rule in rules}
            _forget_changed(connection, before, {**before, **after})
            connection.executemany(
                "INSERT OR REPLACE INTO rules (rule_id, body, source, updated_at) VALUES (?, ?, 'api', ?)",
                [(rule_id, body, now) for rule_id, body in after.items()],
            )
        return [rule.rule_id for rule in rules]

    def delete_rule(self, rule_id: str) -> None:
        """Delete a rule added through the API, and its alerts' states; a file's rule is refused."""
        self.sync_rules_file()
        with self.transaction(immediate=True) as connection:
            row = connection.execute("SELECT source FROM rules WHERE rule_id = ?", (rule_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"rule {rule_id!r} does not exist")
            if row[0] == "file":
                raise ConflictError(f"rule {rule_id!r} is defined in {self.rules_file}; remove it there")
            connection.execute("DELETE FROM rules WHERE rule_id = ?", (rule_id,))
            connection.execute("DELETE FROM alert_states WHERE rule_id = ?", (rule_id,))

    # -- states ----------------------------------------------------------------------
    def state_rows(self, connection: sqlite3.Connection) -> list[tuple[Any, ...]]:
        """Every stored alert state as a tuple of :data:`STATE_COLUMNS` (the evaluator's fast path)."""
        return connection.execute(f"SELECT {', '.join(STATE_COLUMNS)} FROM alert_states").fetchall()

    def states(self, connection: sqlite3.Connection | None = None) -> list[dict[str, Any]]:
        """Every alert that is pending, firing or recently resolved, as dicts of :data:`STATE_COLUMNS`."""
        query = f"SELECT {', '.join(STATE_COLUMNS)} FROM alert_states ORDER BY rule_id, alert_id"
        if connection is not None:
            return [dict(zip(STATE_COLUMNS, row, strict=True)) for row in connection.execute(query)]
        with self.transaction() as own:
            return [dict(zip(STATE_COLUMNS, row, strict=True)) for row in own.execute(query)]

    def state(self, alert_id: str) -> dict[str, Any]:
        """One alert's state; :class:`NotFoundError` when it is not pending, firing or recently resolved."""
        with self.transaction() as connection:
            row = connection.execute(
                f"SELECT {', '.join(STATE_COLUMNS)} FROM alert_states WHERE alert_id = ?", (alert_id,)
            ).fetchone()
        if row is None:
            raise NotFoundError(f"alert {alert_id!r} is not active")
        return dict(zip(STATE_COLUMNS, row, strict=True))

    def listing(self, status: str | None = None) -> pl.DataFrame:
        """The alerts for people: most urgent first, times as datetimes; only ``status`` when given."""
        if status is not None and status not in ("pending", "firing", "resolved"):
            raise ValidationError(f"status: {status!r} is not one of pending, firing, resolved")
        rows = [row for row in self.states() if status is None or row["status"] == status]
        schema = {
            "alert_id": pl.String,
            "rule_id": pl.String,
            "status": pl.String,
            "priority": pl.String,
            "series": pl.String,
            "value": pl.Float64,
            "active_at": pl.Int64,
            "fired_at": pl.Int64,
            "resolved_at": pl.Int64,
            "acknowledged_by": pl.String,
            "labels": pl.String,
        }
        frame = pl.DataFrame([{name: row[name] for name in schema} for row in rows], schema=schema)
        order = {"firing": 0, "pending": 1, "resolved": 2}
        ranks = {"CRITICAL": 0, "HIGH": 1, "MEDIUM": 2, "LOW": 3}
        return (
            frame.with_columns(
                pl.col(c).cast(pl.Datetime("us", "UTC")) for c in ("active_at", "fired_at", "resolved_at")
            )
            .with_columns(
                _s=pl.col("status").replace_strict(order, default=3),
                _p=pl.col("priority").replace_strict(ranks, default=4),
            )
            .sort("_s", "_p", "active_at")
            .drop("_s", "_p")
        )

    def acknowledge(self, alert_id: str, by: str, now_us: int) -> dict[str, Any]:
        """Acknowledge a firing alert: no repeats or escalation until it resolves; returns its state."""
        with self.transaction(immediate=True) as connection:
            row = connection.execute("SELECT status FROM alert_states WHERE alert_id = ?", (alert_id,)).fetchone()
            if row is None:
                raise NotFoundError(f"alert {alert_id!r} is not active")
            if row[0] != "firing":
                raise ConflictError(f"alert {alert_id!r} is {row[0]}; only a firing alert can be acknowledged")
            connection.execute(
                "UPDATE alert_states SET acknowledged_by = ?, acknowledged_at = ? WHERE alert_id = ?",
                (by, now_us, alert_id),
            )
        return self.state(alert_id)


def _forget_changed(connection: sqlite3.Connection, before: dict[str, str], after: dict[str, str]) -> None:
    """Drop the alert states of rules changed or removed: their groups may differ now, and would never clear.

    An alert still breaching under the changed rule fires anew (and is notified) on the next cycle.
    """
    stale = [rule_id for rule_id, body in before.items() if after.get(rule_id) != body]
    connection.executemany("DELETE FROM alert_states WHERE rule_id = ?", [(rule_id,) for rule_id in stale])


_PARSED: dict[str, AlertRule] = {}  # stored body -> rule: a process re-reading unchanged rules validates none again


def _parsed(body: str) -> AlertRule:
    rule = _PARSED.get(body)
    if rule is None:
        if len(_PARSED) > 100_000:
            _PARSED.clear()
        rule = _PARSED[body] = AlertRule.from_stored(json.loads(body))  # validated when it was written
    return rule


def write_states(connection: sqlite3.Connection, rows: Sequence[dict[str, Any]], deleted: Sequence[str]) -> None:
    """Upsert alert states (dicts of :data:`STATE_COLUMNS`) and delete those gone inactive, in ``connection``."""
    if deleted:
        connection.executemany("DELETE FROM alert_states WHERE alert_id = ?", [(alert_id,) for alert_id in deleted])
    if rows:
        placeholders = ", ".join("?" for _ in STATE_COLUMNS)
        values = operator.itemgetter(*STATE_COLUMNS)
        connection.executemany(
            f"INSERT OR REPLACE INTO alert_states ({', '.join(STATE_COLUMNS)}) VALUES ({placeholders})",
            [values(row) for row in rows],
        )


def rule_summary(rule: AlertRule) -> str:
    """``system\\.cpu\\.usage_total > 90 for 300 s`` — what a rule watches, for tables and messages."""
    if rule.kind == "anomaly":
        return f"anomalies of {rule.metric_pattern} (score ≥ {rule.anomaly_score:.2f})"
    condition = f"{rule.comparison} {rule.threshold_value:g}"
    subject = (
        rule.metric_pattern
        if rule.aggregation == "last"
        else (f"{rule.aggregation}({rule.metric_pattern}[{rule.window_seconds:g}s])")
    )
    if rule.kind == "forecast":
        return f"P(forecast {subject} {condition}) ≥ {rule.predicted_breach:g}"
    return f"{subject} {condition}" + (f" for {rule.duration_seconds:g} s" if rule.duration_seconds else "")


__all__ = ["AlertStore", "RuleError", "StoredRule", "fingerprint", "rule_summary", "write_states"]

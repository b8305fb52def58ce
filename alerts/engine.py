"""One alert evaluation cycle: observe, decide each alert's state, notify through the outbox, record history.

**State machine**, per alert (a rule and one series group), judged on the
observations of :mod:`alerts.evaluate`:

==============  =======================================================================
now             next
==============  =======================================================================
inactive        ``pending`` when the value breaches; ``firing`` at once when the breach
                has held since at least ``duration_seconds`` before now
pending         ``firing`` once the breach has held for ``duration_seconds``;
                ``inactive`` when it stops
firing          ``resolved`` once the value has been clear (past ``resolve_threshold``,
                else the threshold) for ``keep_firing_for``; else stays firing
resolved        ``pending`` / ``firing`` on a new breach; ``inactive`` an hour later
no data         ``missing_data``: ``keep`` the state (never a false "resolved"),
                ``alert`` (fire), or ``resolve``
==============  =======================================================================

States persist in SQLite (:mod:`alerts.store`); the cycle's changes and the
notifications they cause commit in one transaction, so a restart neither
loses a firing alert nor notifies it twice. Each change is also a row of the
``alert_events`` lake table.

**Notifications** (:mod:`alerts.routing`): a firing alert not yet notified is
written to the outbox for each channel its route (or its rule's
``channels``) names — unless a silence matches it or a firing alert inhibits
it, in which case it waits, and goes out when that ends. A still-firing,
unacknowledged alert is sent again every ``repeat_interval``; escalation
steps add channels or raise the priority after their delay; an acknowledged
alert is quiet until it resolves. A resolved alert whose firing was sent is
sent as resolved. Firing alerts with a ``remediation`` run it
(:mod:`alerts.remediate`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import polars as pl

from alerts.evaluate import GRACE_SECONDS, observe
from alerts.notify import Notification
from alerts.outbox import enqueue
from alerts.routing import Delivery, Route, Routing
from alerts.rules import AlertPriority, AlertRule, render
from alerts.silences import Silences, silenced_by
from alerts.store import STATE_COLUMNS, AlertStore, fingerprint, write_states
from metrics.settings import Settings
from storage.alert_events import write_alert_events
from storage.store import MetricStore

log = logging.getLogger(__name__)

US = 1_000_000
RESOLVED_KEEP_SECONDS = 3600.0  # a resolved alert stays listed this long
# Alertmanager resolves an alert it has not heard of for resolve_timeout (5 min): firing ones are re-sent this often.
REFRESH_SECONDS = 60.0
REFRESHED = "alertmanager"


@dataclass
class CycleResult:
    """What one evaluation cycle found and did."""

    rules: int = 0
    observed: int = 0
    pending: int = 0
    firing: int = 0
    changes: list[dict[str, Any]] = field(default_factory=list)
    notifications: int = 0
    muted: int = 0
    remediations: int = 0
    evaluate_seconds: float = 0.0
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready figures and the changes (alert, rule, from → to, series, value)."""
        return {
            "rules": self.rules,
            "observed": self.observed,
            "pending": self.pending,
            "firing": self.firing,
            "changes": self.changes,
            "notifications": self.notifications,
            "muted": self.muted,
            "remediations": self.remediations,
            "evaluate_seconds": round(self.evaluate_seconds, 4),
            "seconds": round(self.seconds, 4),
        }


def decide(
    observations: pl.DataFrame,
    states: pl.DataFrame,
    rules: Sequence[AlertRule],
    now_us: int,
    *,
    forecast_stale_seconds: float = 7200.0,
) -> pl.DataFrame:
    """The next state of every alert with an observation or a stored state (see the module's table).

    Returns the state columns plus ``previous`` (the stored status, ``inactive`` when none) for every alert
    whose next status is not ``inactive`` or whose previous was not; rows of deleted rules are dropped.
    """
    parameters = pl.DataFrame(
        {
            "rule_id": [r.rule_id for r in rules],
            "duration_us": [int(r.duration_seconds * US) for r in rules],
            "keep_us": [int(r.keep_firing_for * US) for r in rules],
            "stale_us": [int(_stale_seconds(r, forecast_stale_seconds) * US) for r in rules],
            "anomaly": [r.kind == "anomaly" for r in rules],
            "missing_data": [r.missing_data for r in rules],
            "rule_priority": [r.priority.value for r in rules],
        },
        schema={
            "rule_id": pl.String,
            "duration_us": pl.Int64,
            "keep_us": pl.Int64,
            "stale_us": pl.Int64,
            "missing_data": pl.String,
            "rule_priority": pl.String,
            "anomaly": pl.Boolean,
        },
    )
    observed = observations.with_columns(
        alert_id=pl.Series(
            [fingerprint(r, labels) for r, labels in zip(observations["rule_id"], observations["labels"], strict=True)],
            dtype=pl.String,
        )
    )
    stored = states.rename({name: f"{name}_prev" for name in STATE_COLUMNS if name != "alert_id"})
    joined = observed.join(stored, on="alert_id", how="full", coalesce=True).with_columns(
        pl.coalesce("rule_id", "rule_id_prev").alias("rule_id"),
        pl.coalesce("labels", "labels_prev").alias("labels"),
        pl.coalesce("series", "series_prev").alias("series"),
        pl.col("status_prev").fill_null("inactive").alias("previous"),
    )
    joined = joined.join(parameters, on="rule_id", how="inner")
    now = pl.lit(now_us, dtype=pl.Int64)
    # An anomaly rule's series without a recent finding is clear, not missing: findings are the exception.
    quiet = pl.col("anomaly") & pl.col("sample_ts").is_null()
    joined = joined.with_columns(
        breach=pl.when(quiet).then(False).otherwise(pl.col("breach")),
        clear=pl.when(quiet).then(True).otherwise(pl.col("clear")),
        clear_since=pl.when(quiet).then(0).otherwise(pl.col("clear_since")),
    )
    missing = ~pl.col("anomaly") & (pl.col("sample_ts").is_null() | (pl.col("sample_ts") < now - pl.col("stale_us")))
    previous = pl.col("previous")
    held = pl.col("breach") & (pl.col("held_since") <= now - pl.col("duration_us"))
    cleared = pl.col("clear") & (pl.col("clear_since") <= now - pl.col("keep_us"))
    status = (
        pl.when(missing & (pl.col("missing_data") == "keep"))
        .then(previous)
        .when(missing & (pl.col("missing_data") == "alert"))
        .then(pl.when(previous.is_in(["pending", "firing"])).then(pl.lit("firing")).otherwise(previous))
        .when(missing)
        .then(pl.when(previous == "firing").then(pl.lit("resolved")).otherwise(pl.lit("inactive")))
        .when(previous == "firing")
        .then(pl.when(cleared).then(pl.lit("resolved")).otherwise(pl.lit("firing")))
        .when(held)
        .then(pl.lit("firing"))
        .when(pl.col("breach"))
        .then(pl.lit("pending"))
        .when(previous == "resolved")
        .then(pl.lit("resolved"))
        .otherwise(pl.lit("inactive"))
    )
    decided = joined.with_columns(status=status)
    expired = (
        (pl.col("status") == "resolved")
        & (previous == "resolved")
        & (pl.col("resolved_at_prev") < now - int(RESOLVED_KEEP_SECONDS * US))
    )
    decided = decided.with_columns(status=pl.when(expired).then(pl.lit("inactive")).otherwise(pl.col("status")))
    fired = (pl.col("status") == "firing") & (previous != "firing")
    resolved = (pl.col("status") == "resolved") & (previous == "firing")
    started = (pl.col("status") == "pending") & (previous != "pending")
    nodata = missing & (pl.col("missing_data") == "alert")
    decided = decided.with_columns(
        value=pl.coalesce("value", "value_prev"),
        sample_ts=pl.coalesce("sample_ts", "sample_ts_prev"),
        updated_at=now,
        transitions=pl.col("transitions_prev").fill_null(0) + fired.cast(pl.Int64),
        priority=pl.when(fired).then(pl.col("rule_priority")).otherwise(pl.coalesce("priority_prev", "rule_priority")),
        active_at=pl.when(fired | started)
        .then(pl.when(nodata).then(now).otherwise(pl.coalesce("held_since", now)))
        .otherwise(pl.coalesce("active_at_prev", "held_since")),
        fired_at=pl.when(fired).then(now).otherwise(pl.col("fired_at_prev")),
        resolved_at=pl.when(resolved).then(now).when(fired).then(None).otherwise(pl.col("resolved_at_prev")),
        acknowledged_by=pl.when(fired).then(None).otherwise(pl.col("acknowledged_by_prev")),
        acknowledged_at=pl.when(fired).then(None).otherwise(pl.col("acknowledged_at_prev")),
        escalation_level=pl.when(fired).then(0).otherwise(pl.col("escalation_level_prev").fill_null(0)),
        notified_at=pl.when(fired).then(None).otherwise(pl.col("notified_at_prev")),
    )
    return decided.filter((pl.col("status") != "inactive") | (previous != "inactive")).select(
        *STATE_COLUMNS, "previous"
    )


class AlertEvaluator:
    """Evaluates the rules of one data directory and notifies through the outbox.

    Args:
        settings: the data directory, channels and dashboard URL.
        store: the lake to read samples, anomalies and forecasts from (and write ``alert_events`` to).
        alerts: the alerting state (default: the data directory's).
        routing: the routing tree (default: from the routing file, or every configured channel).
        remediate: called with (rule, alert state) when an alert with a remediation fires.
    """

    def __init__(
        self,
        settings: Settings,
        store: MetricStore,
        *,
        alerts: AlertStore | None = None,
        routing: Routing | None = None,
        remediate: Callable[[AlertRule, Mapping[str, Any]], object] | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.alerts = alerts or AlertStore(settings)
        if routing is None:
            from alerts.notify import notifiers_from_settings
            from alerts.routing import load_routing

            routing = load_routing(settings.alert_routing_file, sorted(notifiers_from_settings(settings)))
        self.routing = routing
        self.remediate = remediate
        routes = _routes(routing.root)
        self._repeat_intervals = sorted({r.repeat_interval for r in routes if r.repeat_interval})
        self._refreshes = any(REFRESHED in r.channels for r in routes) or REFRESHED in routing.default_channels

    def evaluate(self, now: datetime | None = None) -> CycleResult:
        """Run one cycle at ``now`` (default: the current time)."""
        started = time.perf_counter()
        moment = now or datetime.now(UTC)
        now_us = int(moment.timestamp() * US)
        rules = [item.rule for item in self.alerts.rules(enabled_only=True)]
        by_id = {rule.rule_id: rule for rule in rules}
        observations = observe(self.store, rules, moment)
        result = CycleResult(rules=len(rules), observed=observations.height)
        silences = Silences(self.alerts).active(moment)
        with self.alerts.transaction(immediate=True) as connection:
            stored = self.alerts.state_rows(connection)
            states = pl.DataFrame(stored, schema=_state_schema(), orient="row")
            decided = decide(
                observations, states, rules, now_us, forecast_stale_seconds=2 * self.settings.forecast_interval
            )
            result.evaluate_seconds = time.perf_counter() - started
            rows = decided.to_dicts()
            labels = {
                row["alert_id"]: _alert_labels(by_id[row["rule_id"]], row)
                for row in rows
                if row["status"] != "inactive"
            }
            inhibited = self.routing.inhibitor([labels[row["alert_id"]] for row in rows if row["status"] == "firing"])
            remediations = []
            for row in rows:
                rule = by_id[row["rule_id"]]
                if self._may_notify(rule, row, now_us):
                    self._notify(connection, rule, row, labels[row["alert_id"]], inhibited, silences, moment, result)
                if row["status"] != row["previous"]:
                    result.changes.append(_change(rule, row))
                    if row["status"] == "firing" and rule.remediation:
                        remediations.append((rule, row))
            keep = [row for row in rows if row["status"] != "inactive"]
            gone = [row["alert_id"] for row in rows if row["status"] == "inactive"]
            gone += [state[0] for state in stored if state[1] not in by_id]  # its rule was deleted
            write_states(connection, keep, gone)
        result.pending = sum(1 for row in rows if row["status"] == "pending")
        result.firing = sum(1 for row in rows if row["status"] == "firing")
        if result.changes:
            write_alert_events(self.store, [_event(by_id[c["rule_id"]], c) for c in result.changes], moment)
        if self.remediate is not None:
            for rule, row in remediations:
                try:
                    self.remediate(rule, row)
                except Exception:  # one failing action must not cost the others theirs
                    log.exception("remediation %s of alert %s failed", rule.remediation, row["alert_id"])
                result.remediations += 1
        result.seconds = time.perf_counter() - started
        return result

    def _notify(
        self,
        connection: Any,
        rule: AlertRule,
        row: dict[str, Any],
        labels: Mapping[str, str],
        inhibited: Callable[[Mapping[str, str]], bool],
        silences: Sequence[Any],
        moment: datetime,
        result: CycleResult,
    ) -> None:
        """Write the outbox rows this alert's state calls for, and note what was sent in ``row``."""
        status, now_us = row["status"], int(moment.timestamp() * US)
        resolved_now = status == "resolved" and row["previous"] == "firing"
        if silenced_by(labels, silences) is not None or (status == "firing" and inhibited(labels)):
            result.muted += 1
            return
        deliveries = self.routing.deliveries(labels, rule.channels)
        events: list[tuple[str, Delivery, tuple[str, ...]]] = []
        # Events are keyed by when this firing began: unique per firing, whatever happened to the state row.
        generation = row["fired_at"]
        if resolved_now:
            events += [(f"resolved:{generation}", d, d.channels) for d in deliveries]
        elif row["notified_at"] is None:
            events += [(f"firing:{generation}", d, d.channels) for d in deliveries]
        elif row["acknowledged_at"] is None:
            for delivery in deliveries:
                slot = _repeat_slot(row, delivery.repeat_interval, now_us)
                if slot is not None:
                    events.append((f"repeat:{generation}:{slot}", delivery, delivery.channels))
            events += self._escalations(rule, row, deliveries, now_us)
        refresh: list[tuple[str, Delivery, tuple[str, ...]]] = []
        if status == "firing" and row["notified_at"] is not None:
            refreshed = tuple(c for d in deliveries for c in d.channels if c == REFRESHED)
            if refreshed:
                slot = int((now_us - row["fired_at"]) // (REFRESH_SECONDS * US))
                refresh.append((f"refresh:{generation}:{slot}", deliveries[0], refreshed))
        if not events and not refresh:
            return
        notification = self._notification(rule, row, labels, moment)
        for event, delivery, channels in events + refresh:
            written = enqueue(connection, notification, event, channels, moment.timestamp(), delivery)
            result.notifications += written
        if events and not resolved_now:
            row["notified_at"] = now_us  # a refresh of Alertmanager is not a notification of people

    def _may_notify(self, rule: AlertRule, row: Mapping[str, Any], now_us: int) -> bool:
        """Whether this alert may need a notification now (a cheap test that skips most steady firing alerts)."""
        status = row["status"]
        if status == "resolved":
            # a resolution is sent only when its firing was (not silenced, not inhibited)
            return row["previous"] == "firing" and row["notified_at"] is not None
        if status != "firing":
            return False
        if row["notified_at"] is None or self._refreshes or REFRESHED in rule.channels:
            return True
        if row["acknowledged_at"] is not None:
            return False
        due = any(_repeat_slot(row, interval, now_us) is not None for interval in self._repeat_intervals)
        return due or len(rule.escalation) > (row["escalation_level"] or 0)

    def _escalations(
        self, rule: AlertRule, row: dict[str, Any], deliveries: Sequence[Delivery], now_us: int
    ) -> list[tuple[str, Delivery, tuple[str, ...]]]:
        """Escalation steps now due for an unacknowledged firing alert (raising its priority where a step says)."""
        due = [step for step in rule.escalation if now_us - row["fired_at"] >= step.after_seconds * US]
        level = row["escalation_level"] or 0
        if len(due) <= level or not deliveries:
            return []
        found = []
        for index, step in enumerate(due[level:], start=level + 1):
            if step.priority is not None and AlertPriority(step.priority).rank > AlertPriority(row["priority"]).rank:
                row["priority"] = step.priority.value
            channels = step.channels or deliveries[0].channels
            found.append((f"escalate:{row['fired_at']}:{index}", deliveries[0], tuple(channels)))
        row["escalation_level"] = len(due)
        return found

    def _notification(
        self, rule: AlertRule, row: Mapping[str, Any], labels: Mapping[str, str], moment: datetime
    ) -> Notification:
        context = _template_context(rule, row, labels)
        summary = render(
            rule.annotations.get(
                "summary", "{{ name }}: {{ series }} is {{ value }} ({{ comparison }} {{ threshold }})"
            ),
            context,
        )
        description = render(rule.annotations.get("description", rule.description), context)
        resolved = row["status"] == "resolved"
        started_us = row["active_at"] or row["fired_at"] or int(moment.timestamp() * US)
        return Notification(
            alert_id=row["alert_id"],
            rule_id=rule.rule_id,
            rule_name=rule.name,
            status="resolved" if resolved else "firing",
            priority=row["priority"],
            summary=summary,
            description=description,
            value=row["value"],
            threshold=rule.threshold_value,
            comparison=rule.comparison,
            series=row["series"],
            labels=dict(labels),
            annotations={name: render(text, context) for name, text in rule.annotations.items()},
            starts_at=datetime.fromtimestamp(started_us / US, UTC),
            ends_at=moment if resolved else None,
            dashboard_url=self._dashboard(),
            remediation=rule.remediation,
        )

    def _dashboard(self) -> str:
        base = self.settings.dashboard_url or f"http://{self.settings.api_host}:{self.settings.api_port}"
        return f"{base.rstrip('/')}/dashboards/alerts"


def _repeat_slot(row: Mapping[str, Any], interval: float, now_us: int) -> int | None:
    """The repeat due now for a firing alert (the count of whole intervals since it fired), if one is due.

    Due when that count has moved on since the alert was last notified; the slot names the outbox event, so
    each repeat goes out once per channel however often the cycle runs.
    """
    if not interval or row["fired_at"] is None or row["notified_at"] is None:
        return None
    width = interval * US
    slot = int((now_us - row["fired_at"]) // width)
    last = int((row["notified_at"] - row["fired_at"]) // width)
    return slot if slot > last and slot >= 1 else None


def _routes(route: Route) -> list[Route]:
    """A route and all its descendants."""
    return [route, *(child for sub in route.routes for child in _routes(sub))]


def _stale_seconds(rule: AlertRule, forecast_stale_seconds: float) -> float:
    """How old a group's newest sample may be before its data counts as missing."""
    if rule.kind == "forecast":
        return forecast_stale_seconds  # forecasts are made every forecast_interval, not every few seconds
    return max(rule.window_seconds, GRACE_SECONDS)


def _state_schema() -> dict[str, pl.DataType]:
    text = {"alert_id", "rule_id", "labels", "series", "status", "priority", "acknowledged_by"}
    return {
        name: pl.String() if name in text else (pl.Float64() if name == "value" else pl.Int64())
        for name in STATE_COLUMNS
    }


def _alert_labels(rule: AlertRule, row: Mapping[str, Any]) -> dict[str, str]:
    """An alert's labels: its group's, the rule's (rendered), and ``alertname``, ``rule_id``, ``priority``."""
    group = {str(k): str(v) for k, v in json.loads(row["labels"]).items()}
    context = {"labels": group, "value": row.get("value"), "threshold": rule.threshold_value, "series": row["series"]}
    rendered = {name: render(text, context) for name, text in rule.labels.items()}
    return {**group, **rendered, "alertname": rule.name, "rule_id": rule.rule_id, "priority": str(row["priority"])}


def _template_context(rule: AlertRule, row: Mapping[str, Any], labels: Mapping[str, str]) -> dict[str, Any]:
    return {
        "value": row.get("value"),
        "threshold": rule.threshold_value,
        "comparison": rule.comparison,
        "series": row["series"],
        "metric": labels.get("metric", rule.metric_pattern),
        "priority": row["priority"],
        "rule_id": rule.rule_id,
        "name": rule.name,
        "labels": labels,
    }


def _change(rule: AlertRule, row: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "alert_id": row["alert_id"],
        "rule_id": rule.rule_id,
        "previous": row["previous"],
        "status": row["status"],
        "priority": row["priority"],
        "series": row["series"],
        "labels": row["labels"],
        "value": row["value"],
        "active_at": row["active_at"],
    }


def _event(rule: AlertRule, change: Mapping[str, Any]) -> dict[str, Any]:
    return {**change, "threshold": rule.threshold_value}

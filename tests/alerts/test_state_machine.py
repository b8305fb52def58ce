"""The alert state machine (``alerts.engine.decide``), table-driven: observation and stored state in, next out."""

from __future__ import annotations

from typing import Any

import polars as pl
import pytest

from alerts.engine import RESOLVED_KEEP_SECONDS, _state_schema, decide
from alerts.evaluate import OBSERVATION_SCHEMA
from alerts.rules import AlertRule
from alerts.store import STATE_COLUMNS, fingerprint

US = 1_000_000
NOW = 1_800_000_000 * US
LABELS = '{"metric": "system.cpu.usage_total", "host": "a"}'
RULE = AlertRule("cpu", "CPU", metric_pattern="x", threshold_value=90, duration_seconds=300, keep_firing_for=0)


def observation(
    breach: bool, held_ago: float | None = None, clear_ago: float | None = None, sample_ago: float = 0
) -> dict[str, Any]:
    """An observation of the rule's one group, times in seconds before NOW."""
    return {
        "rule_id": RULE.rule_id,
        "labels": LABELS,
        "series": "system.cpu.usage_total host=a",
        "sample_ts": NOW - int(sample_ago * US),
        "value": 95.0 if breach else 50.0,
        "breach": breach,
        "held_since": None if held_ago is None else NOW - int(held_ago * US),
        "clear": clear_ago is not None,
        "clear_since": None if clear_ago is None else NOW - int(clear_ago * US),
    }


def stored(status: str, **fields: Any) -> dict[str, Any]:
    """A stored state of the group."""
    row: dict[str, Any] = dict.fromkeys(STATE_COLUMNS)
    row.update(
        alert_id=fingerprint(RULE.rule_id, LABELS),
        rule_id=RULE.rule_id,
        labels=LABELS,
        series="system.cpu.usage_total host=a",
        status=status,
        priority="MEDIUM",
        active_at=NOW - 600 * US,
        fired_at=NOW - 300 * US if status in ("firing", "resolved") else None,
        updated_at=NOW - 60 * US,
        transitions=1 if status in ("firing", "resolved") else 0,
        escalation_level=0,
    )
    row.update(fields)
    return row


def next_state(
    obs: dict[str, Any] | None, state: dict[str, Any] | None, rule: AlertRule = RULE
) -> dict[str, Any] | None:
    observations = pl.DataFrame([obs] if obs else [], schema=OBSERVATION_SCHEMA)
    states = pl.DataFrame([state] if state else [], schema=_state_schema())
    rows = decide(observations, states, [rule], NOW).to_dicts()
    assert len(rows) <= 1
    return rows[0] if rows else None


@pytest.mark.parametrize(
    ("obs", "state", "expected"),
    [
        # inactive: a breach starts pending; one held for the duration fires at once; no breach stays inactive
        (observation(True, held_ago=60), None, "pending"),
        (observation(True, held_ago=300), None, "firing"),
        (observation(False, clear_ago=600), None, None),
        # pending: fires once the breach has held for the duration; stops when it does
        (observation(True, held_ago=299), stored("pending"), "pending"),
        (observation(True, held_ago=301), stored("pending"), "firing"),
        (observation(False, clear_ago=10), stored("pending"), "inactive"),
        # firing: resolves when clear; stays while breaching
        (observation(True, held_ago=900), stored("firing"), "firing"),
        (observation(False, clear_ago=0), stored("firing"), "resolved"),
        # resolved: a new breach is pending again; otherwise it stays listed for a while
        (observation(True, held_ago=30), stored("resolved", resolved_at=NOW - 60 * US), "pending"),
        (observation(False, clear_ago=120), stored("resolved", resolved_at=NOW - 60 * US), "resolved"),
        (
            observation(False, clear_ago=120),
            stored("resolved", resolved_at=NOW - int((RESOLVED_KEEP_SECONDS + 1) * US)),
            "inactive",
        ),
    ],
)
def test_transitions(obs: dict[str, Any], state: dict[str, Any] | None, expected: str | None) -> None:
    row = next_state(obs, state)
    assert (row and row["status"]) == expected


def test_firing_records_when_the_breach_began_and_counts_the_transition() -> None:
    row = next_state(observation(True, held_ago=420), stored("pending", active_at=NOW - 420 * US))
    assert row is not None
    assert row["status"] == "firing"
    assert row["active_at"] == NOW - 420 * US
    assert row["fired_at"] == NOW
    assert row["transitions"] == 1
    assert row["notified_at"] is None  # to be notified
    assert row["priority"] == "MEDIUM"


def test_hysteresis_keeps_firing_between_the_resolve_level_and_the_threshold() -> None:
    rule = AlertRule("cpu", "CPU", metric_pattern="x", threshold_value=90, resolve_threshold=80, duration_seconds=0)
    between = observation(False, clear_ago=None)  # below 90 but not below 80: not clear
    assert (next_state(between, stored("firing"), rule) or {})["status"] == "firing"
    below = observation(False, clear_ago=0)
    assert (next_state(below, stored("firing"), rule) or {})["status"] == "resolved"


@pytest.mark.parametrize(("clear_ago", "expected"), [(0, "firing"), (119, "firing"), (120, "resolved")])
def test_keep_firing_for_waits_until_clear_long_enough(clear_ago: float, expected: str) -> None:
    rule = AlertRule("cpu", "CPU", metric_pattern="x", threshold_value=90, keep_firing_for=120)
    assert (next_state(observation(False, clear_ago=clear_ago), stored("firing"), rule) or {})["status"] == expected


@pytest.mark.parametrize(
    ("policy", "previous", "expected"),
    [
        ("keep", "firing", "firing"),  # no false "resolved" when data stops
        ("keep", "pending", "pending"),
        ("alert", "firing", "firing"),
        ("alert", "pending", "firing"),
        ("resolve", "firing", "resolved"),
        ("resolve", "pending", "inactive"),
    ],
)
def test_missing_data_policy(policy: str, previous: str, expected: str) -> None:
    rule = AlertRule("cpu", "CPU", metric_pattern="x", threshold_value=90, missing_data=policy)
    assert (next_state(None, stored(previous), rule) or {})["status"] == expected


def test_a_stale_series_counts_as_missing() -> None:
    rule = AlertRule("cpu", "CPU", metric_pattern="x", threshold_value=90, missing_data="resolve")
    old = observation(True, held_ago=1000, sample_ago=400)  # newest sample older than the 300 s grace
    assert (next_state(old, stored("firing"), rule) or {})["status"] == "resolved"
    fresh = observation(True, held_ago=1000, sample_ago=100)
    assert (next_state(fresh, stored("firing"), rule) or {})["status"] == "firing"


def test_flapping_around_the_threshold_never_fires_before_the_duration() -> None:
    """Values alternating across the threshold every minute: each breach run is one minute long."""
    state: dict[str, Any] | None = None
    for minute in range(20):
        breach = minute % 2 == 0
        obs = observation(True, held_ago=0) if breach else observation(False, clear_ago=0)
        row = next_state(obs, state)
        assert row is None or row["status"] in ("pending", "inactive")
        state = row if row and row["status"] != "inactive" else None


def test_a_re_evaluation_of_the_same_data_changes_nothing() -> None:
    first = next_state(observation(True, held_ago=400), None)
    assert first is not None
    again = next_state(observation(True, held_ago=400), {k: first[k] for k in STATE_COLUMNS})
    assert again is not None
    assert again["status"] == "firing"
    assert again["transitions"] == first["transitions"] == 1
    assert again["fired_at"] == first["fired_at"]


def test_states_of_deleted_rules_are_dropped() -> None:
    other = AlertRule("other", "Other", metric_pattern="x")
    observations = pl.DataFrame([], schema=OBSERVATION_SCHEMA)
    states = pl.DataFrame([stored("firing")], schema=_state_schema())
    assert decide(observations, states, [other], NOW).is_empty()


def test_acknowledgement_is_cleared_when_the_alert_fires_again() -> None:
    state = stored("resolved", resolved_at=NOW - 60 * US, acknowledged_by="alice", acknowledged_at=NOW - 500 * US)
    row = next_state(observation(True, held_ago=400), state)
    assert row is not None
    assert row["status"] == "firing"
    assert row["acknowledged_by"] is None
    assert row["transitions"] == 2


def test_an_anomaly_alert_resolves_when_the_findings_stop() -> None:
    rule = AlertRule("cpu", "Keys", metric_pattern="x", use_anomaly_detection=True)
    assert (next_state(None, stored("firing"), rule) or {})["status"] == "resolved"  # no finding in the window: clear
    assert next_state(None, None, rule) is None


def test_missing_data_alert_does_not_fire_alerts_that_were_not_pending_or_firing() -> None:
    rule = AlertRule("cpu", "CPU", metric_pattern="x", threshold_value=90, missing_data="alert")
    state = stored("resolved", resolved_at=NOW - 60 * US)
    assert (next_state(None, state, rule) or {})["status"] == "resolved"


def test_a_forecast_rule_is_not_stale_between_hourly_forecasts() -> None:
    rule = AlertRule("cpu", "Disk", metric_pattern="x", threshold_value=95, predicted_breach=0.8)
    forecast = {**observation(True, held_ago=1800), "sample_ts": NOW - 1800 * US}  # made half an hour ago
    observations = pl.DataFrame([forecast], schema=OBSERVATION_SCHEMA)
    states = pl.DataFrame([], schema=_state_schema())
    (row,) = decide(observations, states, [rule], NOW, forecast_stale_seconds=7200).to_dicts()
    assert row["status"] == "firing"

"""Evaluation cycles on a real lake: states, notifications, silences, inhibition, acks, escalation, history."""

from __future__ import annotations

from datetime import datetime, timedelta

import polars as pl
import pytest

from alerts.engine import AlertEvaluator
from alerts.matchers import Matcher
from alerts.outbox import Outbox
from alerts.routing import InhibitRule, Route, Routing
from alerts.rules import AlertPriority, AlertRule, EscalationStep
from alerts.silences import Silences
from alerts.store import AlertStore
from metrics.settings import Settings
from storage.alert_events import read_alert_events
from storage.store import MetricStore
from tests.alerts.conftest import Recorder, WriteSeries, routing_to

CPU = r"system\.cpu\.usage_total"


def cpu_rule(**fields: object) -> AlertRule:
    values: dict[str, object] = {
        "metric_pattern": CPU,
        "threshold_value": 90,
        "duration_seconds": 300,
        "priority": "HIGH",
        "annotations": {"summary": "CPU {{ value }} on {{ labels.host }}"},
        **fields,
    }
    return AlertRule.from_dict({"rule_id": "cpu", "name": "High CPU", **values})


def evaluator(
    settings: Settings, store: MetricStore, alerts: AlertStore, routing: Routing | None = None
) -> AlertEvaluator:
    return AlertEvaluator(settings, store, alerts=alerts, routing=routing or routing_to("slack"))


def test_a_breach_fires_once_notifies_once_and_resolves(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    alerts.add_rules([cpu_rule()])
    write_series("system.cpu.usage_total", [50] * 20 + [95] * 20, now, host="a")
    write_series("system.cpu.usage_total", [40] * 40, now, host="b")
    slack = Recorder()
    clock = [now.timestamp()]
    outbox = Outbox(alerts, {"slack": slack}, clock=lambda: clock[0])
    first = evaluator(alert_settings, alert_store, alerts).evaluate(now)
    assert (first.firing, first.pending, first.notifications) == (1, 0, 1)
    assert [(c["series"], c["previous"], c["status"]) for c in first.changes] == [
        ("system.cpu.usage_total host=a", "inactive", "firing")
    ]
    assert outbox.dispatch().delivered == 1
    (sent,) = slack.sent
    assert (sent.status, sent.priority, sent.summary, sent.value) == ("firing", "HIGH", "CPU 95 on a", 95.0)
    assert sent.labels["host"] == "a"
    assert sent.labels["alertname"] == "High CPU"
    assert sent.dashboard_url is not None
    assert sent.dashboard_url.endswith("/dashboards/alerts")

    # a restarted process (new evaluator, same files) re-evaluates the same data: nothing new to say
    again = evaluator(alert_settings, alert_store, alerts).evaluate(now + timedelta(seconds=30))
    assert (again.firing, again.changes, again.notifications) == (1, [], 0)
    assert outbox.dispatch().delivered == 0

    later = now + timedelta(minutes=2)
    write_series("system.cpu.usage_total", [40] * 4, later, host="a")
    resolved = evaluator(alert_settings, alert_store, alerts).evaluate(later)
    clock[0] = later.timestamp()
    assert [(c["previous"], c["status"]) for c in resolved.changes] == [("firing", "resolved")]
    outbox.dispatch()
    assert [n.status for n in slack.sent] == ["firing", "resolved"]
    assert slack.sent[1].ends_at == later
    history = read_alert_events(alert_store, now - timedelta(hours=1))
    assert sorted(history["status"].to_list()) == ["firing", "resolved"]


def test_pending_until_the_duration_has_held(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    alerts.add_rules([cpu_rule()])
    write_series("system.cpu.usage_total", [50] * 30 + [95] * 4, now, host="a")  # 1.5 min of breach
    cycle = evaluator(alert_settings, alert_store, alerts).evaluate(now)
    assert (cycle.pending, cycle.firing, cycle.notifications) == (1, 0, 0)
    (state,) = alerts.states()
    assert state["status"] == "pending"
    assert state["active_at"] == int((now - timedelta(seconds=90)).timestamp() * 1_000_000)


def test_silenced_alerts_change_state_but_notify_when_the_silence_ends(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    alerts.add_rules([cpu_rule()])
    write_series("system.cpu.usage_total", [95] * 20, now, host="a")
    silence = Silences(alerts).create(
        [Matcher("host", "a")], ends_at=now + timedelta(minutes=10), created_by="ops", comment="deploy", now=now
    )
    muted = evaluator(alert_settings, alert_store, alerts).evaluate(now)
    assert (muted.firing, muted.notifications, muted.muted) == (1, 0, 1)
    Silences(alerts).expire(silence.silence_id, now=now + timedelta(seconds=10))
    after = evaluator(alert_settings, alert_store, alerts).evaluate(now + timedelta(seconds=20))
    assert (after.notifications, after.muted) == (1, 0)


def test_a_firing_critical_alert_inhibits_lower_ones_on_the_same_host(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    memory = AlertRule(
        "mem",
        "Memory",
        metric_pattern=r"system\.memory\.usage_percent",
        threshold_value=85,
        priority=AlertPriority.CRITICAL,
    )
    alerts.add_rules([cpu_rule(duration_seconds=0), memory])
    for host in ("a", "b"):
        write_series("system.cpu.usage_total", [95] * 5, now, host=host)
    write_series("system.memory.usage_percent", [90] * 5, now, host="a")
    routing = Routing(
        Route(channels=("slack",), group_wait=0, group_interval=0),
        inhibit_rules=(
            InhibitRule((Matcher("priority", "CRITICAL"),), (Matcher("priority", "CRITICAL", equal=False),), ("host",)),
        ),
    )
    slack = Recorder()
    cycle = evaluator(alert_settings, alert_store, alerts, routing).evaluate(now)
    assert (cycle.firing, cycle.muted) == (3, 1)
    Outbox(alerts, {"slack": slack}).dispatch()
    assert sorted((n.rule_id, n.labels["host"]) for n in slack.sent) == [("cpu", "b"), ("mem", "a")]


def test_repeats_stop_once_acknowledged_and_escalation_raises_the_priority(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    escalate = (EscalationStep(600, ("email",), AlertPriority.CRITICAL),)
    alerts.add_rules(
        [
            cpu_rule(
                duration_seconds=0, escalation=[{"after_seconds": 600, "channels": ["email"], "priority": "CRITICAL"}]
            )
        ]
    )
    assert alerts.rule("cpu").rule.escalation == escalate
    routing = routing_to("slack", repeat_interval=300)
    slack, email = Recorder(), Recorder("email")
    clock = [now.timestamp()]
    outbox = Outbox(alerts, {"slack": slack, "email": email}, clock=lambda: clock[0])

    def cycle(minutes: float) -> None:
        moment = now + timedelta(minutes=minutes)
        clock[0] = moment.timestamp()
        write_series("system.cpu.usage_total", [95], moment, host="a")
        evaluator(alert_settings, alert_store, alerts, routing).evaluate(moment)
        outbox.dispatch()

    cycle(0)
    cycle(4)
    assert len(slack.sent) == 1  # within the repeat interval
    cycle(5.5)
    assert len(slack.sent) == 2
    assert slack.sent[1].status == "firing"
    cycle(10.5)
    assert [n.priority for n in email.sent] == ["CRITICAL"]  # escalated after 10 min unacknowledged
    (state,) = alerts.states()
    assert state["priority"] == "CRITICAL"
    assert state["escalation_level"] == 1
    alerts.acknowledge(state["alert_id"], "alice", int((now + timedelta(minutes=11)).timestamp() * 1_000_000))
    repeats = len(slack.sent)
    cycle(20)
    cycle(30)
    assert len(slack.sent) == repeats  # acknowledged: quiet until resolved


def test_remediation_runs_when_an_alert_fires(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    alerts.add_rules([cpu_rule(duration_seconds=0, remediation="scale_resources")])
    write_series("system.cpu.usage_total", [95] * 3, now, host="a")
    called: list[tuple[str, str]] = []
    engine = AlertEvaluator(
        alert_settings,
        alert_store,
        alerts=alerts,
        routing=routing_to("slack"),
        remediate=lambda rule, alert: called.append((rule.remediation or "", alert["series"])),
    )
    assert engine.evaluate(now).remediations == 1
    assert called == [("scale_resources", "system.cpu.usage_total host=a")]
    assert engine.evaluate(now + timedelta(seconds=30)).remediations == 0  # once per firing


def test_grouped_alerts_go_out_as_one_message(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    alerts.add_rules([cpu_rule(duration_seconds=0)])
    for host in ("a", "b", "c"):
        write_series("system.cpu.usage_total", [95] * 3, now, host=host)
    routing = Routing(Route(channels=("slack",), group_by=("rule_id",), group_wait=30, group_interval=300))
    slack = Recorder()
    clock = [now.timestamp()]
    outbox = Outbox(alerts, {"slack": slack}, clock=lambda: clock[0])
    assert evaluator(alert_settings, alert_store, alerts, routing).evaluate(now).notifications == 3
    assert outbox.dispatch().delivered == 0  # waiting group_wait for the rest of the group
    clock[0] += 31
    assert outbox.dispatch().delivered == 3
    (message,) = slack.sent
    assert message.summary == "High CPU: 3 alerts (3 firing, 0 resolved)"
    assert message.description.count("[FIRING]") == 3


def test_a_deleted_rule_takes_its_alerts_with_it(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    alerts.add_rules([cpu_rule(duration_seconds=0)])
    write_series("system.cpu.usage_total", [95] * 3, now, host="a")
    evaluator(alert_settings, alert_store, alerts).evaluate(now)
    assert len(alerts.states()) == 1
    alerts.delete_rule("cpu")
    assert alerts.states() == []
    assert evaluator(alert_settings, alert_store, alerts).evaluate(now).firing == 0


def test_listing_orders_by_urgency(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    low = AlertRule("low", "Low", metric_pattern=CPU, threshold_value=10, priority=AlertPriority.LOW)
    alerts.add_rules([cpu_rule(duration_seconds=0), low, cpu_rule(rule_id="slow", duration_seconds=900)])
    write_series("system.cpu.usage_total", [95] * 5, now, host="a")
    evaluator(alert_settings, alert_store, alerts).evaluate(now)
    listing = alerts.listing()
    assert listing.select("rule_id", "status").rows() == [("cpu", "firing"), ("low", "firing"), ("slow", "pending")]
    assert listing.schema["fired_at"] == pl.Datetime("us", "UTC")
    with pytest.raises(Exception, match="status: 'bogus'"):
        alerts.listing("bogus")


def test_an_alert_that_fires_again_after_going_inactive_is_notified_again(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    alerts.add_rules([cpu_rule(duration_seconds=60)])
    slack = Recorder()
    clock = [now.timestamp()]
    outbox = Outbox(alerts, {"slack": slack}, clock=lambda: clock[0])

    def cycle(minutes: float, value: float) -> None:
        moment = now + timedelta(minutes=minutes)
        clock[0] = moment.timestamp()
        write_series("system.cpu.usage_total", [value] * 3, moment, host="a")
        evaluator(alert_settings, alert_store, alerts).evaluate(moment)
        outbox.dispatch()

    cycle(0, 95)  # pending
    cycle(2, 95)  # firing
    cycle(4, 40)  # resolved
    cycle(70, 40)  # an hour later: inactive, its state row gone
    cycle(72, 95)  # pending again
    cycle(74, 95)  # firing again: a new firing, a new message
    assert [n.status for n in slack.sent] == ["firing", "resolved", "firing"]


def test_alertmanager_refreshes_do_not_hold_back_repeats_elsewhere(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    alerts.add_rules([cpu_rule(duration_seconds=0)])
    slack, manager = Recorder(), Recorder("alertmanager")
    clock = [now.timestamp()]
    outbox = Outbox(alerts, {"slack": slack, "alertmanager": manager}, clock=lambda: clock[0])
    routing = routing_to("slack", "alertmanager", repeat_interval=300)
    for minute in range(12):
        moment = now + timedelta(minutes=minute)
        clock[0] = moment.timestamp()
        write_series("system.cpu.usage_total", [95], moment, host="a")
        evaluator(alert_settings, alert_store, alerts, routing).evaluate(moment)
        outbox.dispatch()
    assert len(slack.sent) == 3  # at 0, 5 and 10 minutes
    assert len(manager.sent) >= 11  # first, then re-sent every minute so Alertmanager keeps it active


def test_keep_firing_for_longer_than_the_grace_still_resolves(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    alerts.add_rules([cpu_rule(duration_seconds=0, keep_firing_for=900)])
    write_series("system.cpu.usage_total", [95] * 3, now, host="a")
    engine = evaluator(alert_settings, alert_store, alerts)
    assert engine.evaluate(now).firing == 1
    later = now + timedelta(minutes=16)
    write_series("system.cpu.usage_total", [40] * 33, later, host="a")  # clear for the last 16 minutes
    assert [c["status"] for c in engine.evaluate(later).changes] == ["resolved"]


def test_changing_a_rule_drops_its_alerts_states(
    alert_settings: Settings, alert_store: MetricStore, alerts: AlertStore, write_series: WriteSeries, now: datetime
) -> None:
    alerts.add_rules([cpu_rule(duration_seconds=0)])
    write_series("system.cpu.usage_total", [95] * 3, now, host="a")
    evaluator(alert_settings, alert_store, alerts).evaluate(now)
    assert len(alerts.states()) == 1
    alerts.add_rules([cpu_rule(duration_seconds=0)])  # the same rule again: its alerts stay
    assert len(alerts.states()) == 1
    alerts.add_rules([cpu_rule(duration_seconds=0, group_by=["host"])])  # new groups: the old alerts would never clear
    assert alerts.states() == []
    cycle = evaluator(alert_settings, alert_store, alerts).evaluate(now + timedelta(seconds=30))
    assert [(c["series"], c["status"]) for c in cycle.changes] == [("High CPU host=a", "firing")]

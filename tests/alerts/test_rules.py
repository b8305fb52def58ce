"""Alert rules: the spec's fields, validation naming field and reason, templates, YAML round trips."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from alerts.rules import (
    AGGREGATIONS,
    COMPARISONS,
    AlertPriority,
    AlertRule,
    EscalationStep,
    RuleError,
    dump_rules,
    literal_of,
    load_rules_file,
    parse_rules,
    render,
)
from metrics.monitor import AlertPriority as MonitorPriority
from metrics.monitor import AlertRule as MonitorRule

PROJECT_RULES = Path(__file__).resolve().parents[2] / "deployments" / "alert-rules.yaml"


def test_the_spec_names_are_importable_from_metrics_monitor() -> None:
    assert MonitorRule is AlertRule
    assert MonitorPriority is AlertPriority
    rule = AlertRule(
        "high_cpu",
        "High CPU",
        "CPU above 90 %",
        r"system\.cpu\.usage_total",
        90.0,
        ">",
        300,
        AlertPriority.HIGH,
        False,
        0.8,
    )
    assert (rule.duration_seconds, rule.priority, rule.ml_sensitivity) == (300.0, AlertPriority.HIGH, 0.8)


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"rule_id": "bad id!"}, "rule_id: 'bad id!' must be"),
        ({"name": "  "}, "name: must not be empty"),
        ({"metric_pattern": "system.(cpu"}, "metric_pattern: 'system.(cpu' is not a regular expression"),
        ({"comparison": "=>"}, "comparison: '=>' is not one of > >= < <= == !="),
        ({"duration_seconds": -5}, "duration_seconds: -5 must not be negative"),
        ({"duration_seconds": "300"}, "duration_seconds: '300' is not a finite number"),
        ({"threshold_value": float("nan")}, "threshold_value: nan is not a finite number"),
        ({"priority": "urgent"}, "priority: 'urgent' is not a priority"),
        ({"ml_sensitivity": 1.5}, "ml_sensitivity: 1.5 must be between 0 and 1"),
        ({"aggregation": "median"}, "aggregation: 'median' is not one of"),
        ({"aggregation": "avg"}, "window_seconds: aggregation 'avg' needs a window > 0 seconds"),
        ({"group_by": ["host", "bad tag"]}, "group_by: 'bad tag' is not a name"),
        ({"annotations": {"summary": "{{ bogus }}"}}, "annotations.summary: unknown placeholder {{ bogus }}"),
        ({"resolve_threshold": 95}, "resolve_threshold: 95 would resolve before the alert fires"),
        ({"comparison": "==", "resolve_threshold": 90}, "resolve_threshold: has no meaning with comparison '=='"),
        ({"missing_data": "ignore"}, "missing_data: 'ignore' is not one of keep, alert, resolve"),
        ({"predicted_breach": 1.5}, "predicted_breach: 1.5 must be a probability in (0, 1]"),
        (
            {"predicted_breach": 0.5, "use_anomaly_detection": True},
            "predicted_breach: a rule is either anomaly-based or forecast-based",
        ),
        ({"escalation": [{"after_seconds": 60}]}, "escalation[0]: names neither channels nor a priority"),
        ({"escalation": [{"after_seconds": -1, "channels": ["email"]}]}, "escalation[0].after_seconds: -1"),
        ({"channels": "slack"}, "channels: 'slack' is not a list"),
    ],
)
def test_invalid_rules_are_refused_naming_the_field(fields: dict[str, Any], message: str) -> None:
    data = {"rule_id": "r1", "name": "R", "metric_pattern": "m", "threshold_value": 90, **fields}
    with pytest.raises(RuleError) as caught:
        AlertRule.from_dict(data)
    assert message in str(caught.value)


def test_unknown_and_missing_fields_are_refused() -> None:
    with pytest.raises(RuleError, match="unknown field 'treshold'"):
        AlertRule.from_dict({"rule_id": "r", "name": "R", "treshold": 1})
    with pytest.raises(RuleError, match="name is required"):
        AlertRule.from_dict({"rule_id": "r"})


@pytest.mark.parametrize(
    ("pattern", "literal"),
    [
        (r"system\.cpu\.usage_total", "system.cpu.usage_total"),
        ("crypto_key_ops", "crypto_key_ops"),
        ("system.cpu", None),  # '.' matches any character
        ("a|b", None),
        (r"\d+", None),
        ("crypto.key.*", None),
        ("x" + "\\", None),
    ],
)
def test_literal_patterns_are_recognised(pattern: str, literal: str | None) -> None:
    assert literal_of(pattern) == literal


def test_templates_fill_values_labels_and_prometheus_spellings() -> None:
    context = {"value": 93.456, "threshold": 90.0, "labels": {"host": "web-1"}, "series": "cpu host=web-1"}
    assert render("{{ value }} > {{ threshold }} on {{ labels.host }}", context) == "93.46 > 90 on web-1"
    assert render("{{ $value }} on {{ $labels.host }}", context) == "93.46 on web-1"
    assert render("{{ labels.missing }}|", context) == "|"


def test_priorities_order_and_parse() -> None:
    assert [p.rank for p in AlertPriority] == [0, 1, 2, 3]
    assert AlertPriority.parse("critical") is AlertPriority.CRITICAL
    assert AlertRule("r", "R", priority="low").priority is AlertPriority.LOW  # type: ignore[arg-type]


def test_rule_kinds_and_anomaly_score() -> None:
    assert AlertRule("r", "R").kind == "threshold"
    assert AlertRule("r", "R", use_anomaly_detection=True, ml_sensitivity=0.0).anomaly_score == pytest.approx(0.9)
    assert AlertRule("r", "R", use_anomaly_detection=True, ml_sensitivity=1.0).anomaly_score == pytest.approx(0.5)
    assert AlertRule("r", "R", predicted_breach=0.8).kind == "forecast"


def test_the_project_rules_hold_the_spec_rules(tmp_path: Path) -> None:
    rules = {rule.rule_id: rule for rule in load_rules_file(PROJECT_RULES)}
    cpu, memory, auth, keys = (
        rules["high_cpu_usage"],
        rules["high_memory_usage"],
        rules["authentication_failures"],
        rules["key_access_anomaly"],
    )
    assert (cpu.threshold_value, cpu.duration_seconds, cpu.priority, cpu.remediation) == (
        90,
        300,
        AlertPriority.HIGH,
        "scale_resources",
    )
    assert (memory.threshold_value, memory.duration_seconds, memory.priority, memory.remediation) == (
        85,
        300,
        AlertPriority.CRITICAL,
        "clear_caches",
    )
    assert (auth.threshold_value, auth.aggregation, auth.window_seconds, auth.priority) == (
        10,
        "increase",
        300,
        AlertPriority.CRITICAL,
    )
    assert auth.remediation == "block_suspicious_ips"
    assert keys.use_anomaly_detection
    assert keys.priority is AlertPriority.HIGH
    assert keys.remediation == "enhanced_monitoring"
    assert {"key_rotation_overdue", "unauthorized_key_access"} <= set(rules)


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ("rules: [{rule_id: a, name: A}, {rule_id: a, name: B}]", "rule_id 'a' is given twice"),
        ("rules: {rule_id: a}", "rule 0: name is required"),
        ("rules: 5", "expected a list of rules"),
        ("rulez: []", "unknown field 'rulez'"),
        ("rules: [{rule_id: a, name: A}]\nroutes: []", "unknown top-level key 'routes'"),
        ("rules: [unclosed", "not valid YAML"),
    ],
)
def test_bad_rule_files_name_the_problem(tmp_path: Path, document: str, message: str) -> None:
    path = tmp_path / "rules.yaml"
    path.write_text(document)
    with pytest.raises(RuleError, match=message.replace("[", r"\[").replace("(", r"\(")):
        load_rules_file(path)


def test_a_missing_rules_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(RuleError, match="No such file"):
        load_rules_file(tmp_path / "absent.yaml")


names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True)
rules_strategy = st.builds(
    AlertRule,
    rule_id=names,
    name=st.text(st.characters(codec="utf-8", exclude_categories=("Cs", "Cc")), min_size=1, max_size=20).filter(
        str.strip
    ),
    description=st.text(max_size=30),
    metric_pattern=st.sampled_from([r"system\.cpu\.usage_total", "crypto\\.key\\..*", "a|b"]),
    threshold_value=st.floats(-1e6, 1e6, allow_nan=False),
    comparison=st.sampled_from(COMPARISONS),
    duration_seconds=st.integers(0, 3600).map(float),
    priority=st.sampled_from(list(AlertPriority)),
    aggregation=st.sampled_from(AGGREGATIONS),
    window_seconds=st.integers(1, 3600).map(float),
    group_by=st.one_of(st.none(), st.lists(names, max_size=3).map(tuple)),
    labels=st.dictionaries(names, st.text(max_size=10).filter(lambda t: "{{" not in t), max_size=3),
    keep_firing_for=st.integers(0, 600).map(float),
    missing_data=st.sampled_from(["keep", "alert", "resolve"]),
    escalation=st.lists(
        st.builds(EscalationStep, after_seconds=st.integers(0, 7200).map(float), channels=st.just(("email",))),
        max_size=2,
    ).map(tuple),
    channels=st.lists(names, max_size=2).map(tuple),
    matchers=st.lists(st.sampled_from(["host=a", "region=~eu-.*", "key_id!=k1"]), max_size=2).map(tuple),
)


@settings(max_examples=60, deadline=None)
@given(st.lists(rules_strategy, max_size=4, unique_by=lambda r: r.rule_id))
def test_rules_round_trip_through_yaml(rules: list[AlertRule]) -> None:
    assert parse_rules(yaml.safe_load(dump_rules(rules)), "round trip") == rules


@settings(max_examples=40, deadline=None)
@given(rules_strategy)
def test_stored_rules_are_rebuilt_equal_without_validation(rule: AlertRule) -> None:
    rebuilt = AlertRule.from_stored(json.loads(json.dumps(rule.to_dict())))
    assert rebuilt == rule
    assert rebuilt.tag_matchers == rule.tag_matchers
    assert rebuilt.literal_metric == rule.literal_metric

"""Notification: the outbox payload (to_dict / from_dict), its checks, and the shared formatting helpers."""

from __future__ import annotations

import json
import math
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum
from typing import Any

import numpy as np
import pytest

from alerts.notify import Notification, endpoint, format_duration, format_value, redact
from metrics.errors import ValidationError
from tests.alerts.channels import NotificationFactory


@pytest.mark.parametrize(
    "changes",
    [
        {},
        {"resolved": True},
        {"value": None},
        {"dashboard_url": None, "remediation": None, "labels": {}, "annotations": {}},
        {"threshold": -0.25, "comparison": "<="},
        {"rule_name": "Débit — ünïcode ✓", "series": 'm{path="/a b"}'},
    ],
)
def test_to_dict_is_strict_json_and_from_dict_inverts_it(
    make_notification: NotificationFactory, changes: dict[str, Any]
) -> None:
    notification = make_notification(**changes)
    payload = json.loads(json.dumps(notification.to_dict(), allow_nan=False))
    assert Notification.from_dict(payload) == notification
    assert Notification.from_dict(payload).to_dict() == notification.to_dict()


def test_timestamps_are_iso_utc(make_notification: NotificationFactory) -> None:
    payload = make_notification(resolved=True).to_dict()
    assert payload["starts_at"] == "2024-05-01T12:00:00+00:00"
    assert payload["ends_at"] == "2024-05-01T12:15:05+00:00"


def test_non_finite_values_survive_as_strings(make_notification: NotificationFactory) -> None:
    for value, text in ((math.inf, "+Inf"), (-math.inf, "-Inf")):
        payload = make_notification(value=value).to_dict()
        assert payload["value"] == text
        assert Notification.from_dict(json.loads(json.dumps(payload, allow_nan=False))).value == value
    nan = Notification.from_dict(make_notification(value=math.nan).to_dict()).value
    assert nan is not None
    assert math.isnan(nan)


def test_other_time_zones_become_utc_and_case_is_normalised(make_notification: NotificationFactory) -> None:
    local = datetime(2024, 5, 1, 14, 0, tzinfo=timezone(timedelta(hours=2)))
    notification = make_notification(starts_at=local, priority="high", status="FIRING")
    assert notification.starts_at == datetime(2024, 5, 1, 12, 0, tzinfo=UTC)
    assert notification.starts_at.tzinfo is UTC
    assert (notification.priority, notification.status) == ("HIGH", "firing")


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"status": "pending"}, "status='pending'"),
        ({"priority": "URGENT"}, "priority='URGENT'"),
        ({"comparison": "=>"}, "comparison='=>'"),
        ({"starts_at": datetime(2024, 5, 1, 12, 0)}, "no time zone"),
    ],
)
def test_bad_fields_are_refused(make_notification: NotificationFactory, changes: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        make_notification(**changes)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d.pop("rule_id"), "lacks rule_id"),
        (lambda d: d.update(extra=1), "unknown fields extra"),
        (lambda d: d.update(value="high"), "value='high' is not a number"),
        (lambda d: d.update(threshold=True), "threshold=True is not a number"),
        (lambda d: d.update(starts_at="yesterday"), "starts_at='yesterday' is not an ISO 8601 time"),
        (lambda d: d.update(starts_at="2024-05-01T12:00:00"), "no time zone"),
        (lambda d: d.update(labels={"a": 1}), "labels is not an object of strings"),
        (lambda d: d.update(rule_name=None), "rule_name=None has the wrong type"),
    ],
)
def test_bad_payloads_are_refused_naming_the_field(
    make_notification: NotificationFactory, edit: Any, message: str
) -> None:
    payload = make_notification().to_dict()
    edit(payload)
    with pytest.raises(ValidationError, match=message):
        Notification.from_dict(payload)


def test_headline_and_condition(make_notification: NotificationFactory) -> None:
    notification = make_notification(series="a\nb")
    assert notification.headline == "[FIRING HIGH] High CPU — a b"
    assert notification.condition == "> 90"
    assert make_notification(resolved=True).duration == timedelta(minutes=15, seconds=5)


@pytest.mark.parametrize(
    ("value", "text"),
    [(None, "no data"), (90.0, "90"), (93.456789, "93.4568"), (-0.5, "-0.5"), (1.5e20, "1.5e+20"), (math.nan, "NaN")],
)
def test_format_value(value: float | None, text: str) -> None:
    assert format_value(value) == text


@pytest.mark.parametrize(
    ("seconds", "text"), [(0, "0s"), (40, "40s"), (725, "12m 5s"), (7500, "2h 5m"), (90061, "1d 1h"), (-5, "0s")]
)
def test_format_duration(seconds: int, text: str) -> None:
    assert format_duration(timedelta(seconds=seconds)) == text


def test_redact_and_endpoint_hide_secrets() -> None:
    url = "https://user:pw@hooks.example:8443/services/T1/B2/SECRET?token=abc"
    assert endpoint(url) == "https://hooks.example:8443"
    shown = redact("failed posting to /services/T1/B2/SECRET with token=abc", [url])
    assert "SECRET" not in shown
    assert "token=abc" not in shown
    assert redact("nothing to hide", [None, ""]) == "nothing to hide"


def test_numbers_and_enums_become_plain_types(make_notification: NotificationFactory) -> None:
    class Comparison(StrEnum):
        ABOVE = ">"

    notification = make_notification(value=np.float32(93.5), threshold=90, comparison=Comparison.ABOVE)
    assert type(notification.value) is float
    assert type(notification.threshold) is float
    assert type(notification.comparison) is str
    assert json.loads(json.dumps(notification.to_dict()))["value"] == 93.5
    with pytest.raises(ValidationError, match="value='high' is not a number"):
        make_notification(value="high")

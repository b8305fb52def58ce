"""Routing trees, inhibition rules and silences' matchers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts.matchers import Matcher
from alerts.routing import DEFAULT_INHIBITION, load_routing, parse_routing
from alerts.silences import Silences
from alerts.store import AlertStore
from metrics.errors import NotFoundError, ValidationError

TREE = """
route:
  channels: [slack]
  group_by: [rule_id]
  group_wait: 30
  routes:
    - matchers: ["priority=CRITICAL"]
      channels: [slack, email]
      group_wait: 5
      continue: true
    - matchers: ["team=~sec.*"]
      channels: [webhook]
      group_by: [rule_id, key_id]
    - matchers: ["priority=CRITICAL"]
      channels: [alertmanager]
inhibit_rules:
  - source_matchers: ["alertname=Node down"]
    target_matchers: ["priority!=CRITICAL"]
    equal: [host, region]
"""


@pytest.fixture
def tree() -> Any:
    return parse_routing(yaml.safe_load(TREE), "routing.yaml", ["slack", "email"])


@pytest.mark.parametrize(
    ("labels", "expected"),
    [
        ({"priority": "LOW", "rule_id": "r"}, [(("slack",), "rule_id=r", 30.0)]),
        (
            {"priority": "CRITICAL", "team": "secops", "rule_id": "r", "key_id": "k"},
            [(("slack", "email"), "rule_id=r", 5.0), (("webhook",), "rule_id=r,key_id=k", 30.0)],
        ),
        (
            {"priority": "CRITICAL", "rule_id": "r"},
            [(("slack", "email"), "rule_id=r", 5.0), (("alertmanager",), "rule_id=r", 30.0)],
        ),
    ],
)
def test_routes_first_match_unless_continue(tree: Any, labels: dict[str, str], expected: list[Any]) -> None:
    assert [(d.channels, d.group_key, d.group_wait) for d in tree.deliveries(labels)] == expected


def test_a_rules_own_channels_bypass_the_tree(tree: Any) -> None:
    (delivery,) = tree.deliveries({"priority": "LOW", "rule_id": "r"}, ["pager"])
    assert delivery.channels == ("pager",)


@pytest.mark.parametrize(
    ("target", "sources", "muted"),
    [
        (
            {"priority": "HIGH", "host": "a", "region": "eu"},
            [{"alertname": "Node down", "host": "a", "region": "eu"}],
            True,
        ),
        (
            {"priority": "HIGH", "host": "a", "region": "us"},
            [{"alertname": "Node down", "host": "a", "region": "eu"}],
            False,
        ),
        (
            {"priority": "CRITICAL", "host": "a", "region": "eu"},
            [{"alertname": "Node down", "host": "a", "region": "eu"}],
            False,
        ),
        (
            {"priority": "HIGH", "host": "a", "region": "eu"},
            [{"alertname": "Disk", "host": "a", "region": "eu"}],
            False,
        ),
    ],
)
def test_inhibition(tree: Any, target: dict[str, str], sources: list[dict[str, str]], muted: bool) -> None:
    assert tree.inhibited(target, sources) is muted


def test_without_a_file_every_configured_channel_gets_everything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("alerts.routing.PROJECT_ROUTING", tmp_path / "absent.yaml")
    routing = load_routing(None, ["email", "slack"])
    (delivery,) = routing.deliveries({"rule_id": "r"})
    assert delivery.channels == ("email", "slack")
    assert routing.inhibit_rules == (DEFAULT_INHIBITION,)


def test_the_project_routing_file_loads() -> None:
    project = Path(__file__).resolve().parents[2] / "deployments" / "alert-routing.yaml"
    routing = load_routing(project, ["slack"])
    assert routing.deliveries({"priority": "CRITICAL", "rule_id": "r", "host": "h"})[0].repeat_interval == 3600


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"routes": []}, "unknown key 'routes'"),
        ({"route": {"group_wait": -1}}, "route.group_wait: -1 must be a number of seconds"),
        ({"route": {"routes": [{"matchers": ["host~a"]}]}}, r"route.routes\[0\].matchers: matcher: 'host~a'"),
        ({"route": {"channels": "slack"}}, "route.channels: 'slack' is not a list"),
        ({"inhibit_rules": [{"source": []}]}, r"inhibit_rules\[0\]: unknown key 'source'"),
    ],
)
def test_bad_routing_names_the_field(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        parse_routing(document, "routing.yaml", [])


@pytest.mark.parametrize(
    ("text", "labels", "hit"),
    [
        ("host=web-1", {"host": "web-1"}, True),
        ("host=web-1", {"host": "web-10"}, False),
        ("host!=web-1", {"host": "web-2"}, True),
        ("host=~web-.*", {"host": "web-10"}, True),
        ("host=~web", {"host": "web-10"}, False),  # anchored, as in Alertmanager
        ("host!~db-.*", {"host": "web-1"}, True),
        ("team=", {"host": "web-1"}, True),  # a missing label is the empty string
        ("host='web-1'", {"host": "web-1"}, True),
    ],
)
def test_matchers(text: str, labels: dict[str, str], hit: bool) -> None:
    matcher = Matcher.parse(text)
    assert matcher.matches(labels) is hit
    assert Matcher.parse(str(matcher)) == matcher


@pytest.mark.parametrize("text", ["host", "=web", "host=~(", "1host=x"])
def test_bad_matchers_are_refused(text: str) -> None:
    with pytest.raises(ValidationError):
        Matcher.parse(text)


def test_silences_validate_expire_and_age_out(alerts: AlertStore) -> None:
    silences = Silences(alerts)
    now = datetime.now(UTC)
    kwargs: dict[str, Any] = {"ends_at": now + timedelta(hours=1), "created_by": "ops", "comment": "deploy", "now": now}
    for bad, message in (
        ({"matchers": []}, "at least one matcher"),
        ({"created_by": " "}, "needs an author"),
        ({"comment": ""}, "say why"),
        ({"ends_at": now - timedelta(seconds=1)}, "is not after starts_at"),
        ({"ends_at": datetime(2030, 1, 1)}, "has no time zone"),
    ):
        arguments = {"matchers": [Matcher("host", "a")], **kwargs, **bad}
        with pytest.raises(ValidationError, match=message):
            silences.create(**arguments)
    silence = silences.create([Matcher("host", "a")], **kwargs)
    assert [s.silence_id for s in silences.active(now)] == [silence.silence_id]
    assert (
        silences.expire(silence.silence_id, now=now + timedelta(minutes=1)).to_dict(now + timedelta(minutes=2))["state"]
        == "expired"
    )
    assert silences.active(now + timedelta(minutes=2)) == []
    with pytest.raises(NotFoundError):
        silences.expire("nope")
    assert silences.all(now=now + timedelta(days=2)) == []  # expired a day ago: gone

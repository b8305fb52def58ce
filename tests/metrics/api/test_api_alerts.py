"""``/api/v1/alerts`` of the real app: alerts, status, rules, acknowledgement, silences, history, roles, audit."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest
import yaml
from fastapi.testclient import TestClient

from metrics.api.app import create_app
from metrics.api.audit import close_audit_logs, read_audit
from metrics.api.keys import close_key_stores, create_key
from metrics.settings import Settings
from storage.store import MetricStore
from tasks.alerts import evaluate_alerts

PREFIX = "/api/v1/alerts"
FILE_RULE = {"rule_id": "file_rule", "name": "From the file", "metric_pattern": r"nothing\.here", "threshold_value": 1}
# api.cpu is 95 on web-1: hot_cpu fires at once, slow_cpu (an hour's duration) stays pending.
HOT = {
    "rule_id": "hot_cpu",
    "name": "Hot CPU",
    "metric_pattern": r"api\.cpu",
    "threshold_value": 90,
    "comparison": ">",
    "priority": "HIGH",
}
SLOW = {**HOT, "rule_id": "slow_cpu", "name": "Slowly hot CPU", "duration_seconds": 3600, "priority": "low"}
SILENCE = {"matchers": ["host=web-1"], "comment": "maintenance", "duration_seconds": 7200}


@dataclass
class Api:
    """The running app, its settings and a key of each role (headers ready to send)."""

    client: TestClient
    settings: Settings
    keys: dict[str, dict[str, str]]
    names: dict[str, str]

    def call(self, method: str, path: str, role: str | None, body: Any = None, **params: Any) -> Any:
        headers = self.keys[role] if role else {}
        kwargs: dict[str, Any] = {"headers": headers, "params": params}
        if body is not None:
            kwargs["json"] = body
        return self.client.request(method, PREFIX + path, **kwargs)

    def evaluate(self) -> dict[str, Any]:
        """One cycle, as the evaluate-alerts flow runs it in its own process (the app keeps running)."""
        return evaluate_alerts(self.settings).to_dict()

    def audit(self) -> list[dict[str, Any]]:
        return read_audit(self.settings.state_dir / "audit.log")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture
def api(tmp_path: Path) -> Iterator[Api]:
    rules = tmp_path / "alert-rules.yaml"
    rules.write_text(yaml.safe_dump({"rules": [FILE_RULE]}))
    routing = tmp_path / "alert-routing.yaml"
    routing.write_text("route: {group_wait: 0, group_interval: 0}\n")
    remediation = tmp_path / "remediation.yaml"
    remediation.write_text("actions: {}\n")
    settings = Settings(
        data_dir=tmp_path / "data",
        flush_seconds=0.1,
        alert_rules_file=rules,
        alert_routing_file=routing,
        remediation_file=remediation,
        # nobody listens: notifications wait in the outbox (nothing here dispatches)
        alert_webhook_url=f"http://127.0.0.1:{closed_port()}/hook",
    )
    keys, names = {}, {}
    for role in ("reader", "writer", "admin"):
        names[role] = f"{role}-bot"
        _, token = create_key(settings, names[role], role)
        keys[role] = {"X-API-Key": token}
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield Api(client, settings, keys, names)
    close_key_stores()
    close_audit_logs()


def write_hot_cpu(settings: Settings) -> None:
    """api.cpu at 95 on web-1 over the last few minutes, through the lake (as the collectors write)."""
    now = datetime.now(UTC)
    frame = pl.DataFrame(
        {
            "ts": [now - timedelta(seconds=30 * i) for i in range(6, 0, -1)],
            "metric": "api.cpu",
            "value": 95.0,
            "type": "gauge",
            "host": "web-1",
        },
        schema_overrides={"ts": pl.Datetime("us", "UTC")},
    )
    store = MetricStore(settings).open(background_flush=False)
    try:
        assert store.ingest_frame(frame).stored == 6
        store.flush()
    finally:
        store.close()


@pytest.fixture
def firing(api: Api) -> dict[str, dict[str, Any]]:
    """hot_cpu firing and slow_cpu pending; returns the alerts by rule id."""
    assert api.call("POST", "/rules", "admin", {"rules": [HOT, SLOW]}).status_code == 201
    write_hot_cpu(api.settings)
    cycle = api.evaluate()
    assert (cycle["firing"], cycle["pending"]) == (1, 1), cycle
    found = api.call("GET", "", "reader").json()["alerts"]
    return {alert["rule_id"]: alert for alert in found}


# --- rules ---------------------------------------------------------------------------


def test_rules_are_added_listed_and_deleted(api: Api) -> None:
    one = api.call("POST", "/rules", "admin", HOT)
    assert one.status_code == 201, one.text
    assert one.json() == {"added": ["hot_cpu"]}
    many = api.call("POST", "/rules", "admin", {"rules": [{**HOT, "name": "Renamed"}, SLOW]})
    assert many.status_code == 201, many.text
    assert many.json() == {"added": ["hot_cpu", "slow_cpu"]}

    listed = api.call("GET", "/rules", "reader")
    assert listed.status_code == 200
    rules = {rule["rule_id"]: rule for rule in listed.json()["rules"]}
    assert {rule_id: rule["source"] for rule_id, rule in rules.items()} == {
        "file_rule": "file",
        "hot_cpu": "api",
        "slow_cpu": "api",
    }
    assert rules["hot_cpu"]["name"] == "Renamed"  # the second POST replaced it
    assert rules["slow_cpu"]["priority"] == "LOW"
    assert rules["slow_cpu"]["duration_seconds"] == 3600.0

    deleted = api.call("DELETE", "/rules/slow_cpu", "admin")
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"deleted": "slow_cpu"}
    assert [r["rule_id"] for r in api.call("GET", "/rules", "reader").json()["rules"]] == ["file_rule", "hot_cpu"]
    again = api.call("DELETE", "/rules/slow_cpu", "admin")
    assert again.status_code == 404
    assert again.json()["error"] == "rule 'slow_cpu' does not exist"


def test_a_rule_of_the_rules_file_cannot_be_deleted_or_overwritten(api: Api) -> None:
    rules_file = str(api.settings.alert_rules_file)
    deleted = api.call("DELETE", "/rules/file_rule", "admin")
    assert deleted.status_code == 409
    assert rules_file in deleted.json()["error"]
    overwritten = api.call("POST", "/rules", "admin", {**FILE_RULE, "name": "Hijack"})
    assert overwritten.status_code == 409
    assert rules_file in overwritten.json()["error"]
    [rule] = api.call("GET", "/rules", "reader").json()["rules"]
    assert (rule["rule_id"], rule["name"], rule["source"]) == ("file_rule", "From the file", "file")


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({**HOT, "comparison": "=>"}, "comparison"),
        ({**HOT, "priority": "URGENT"}, "priority"),
        ({**HOT, "metric_pattern": "api.(cpu"}, "metric_pattern"),
        ({**HOT, "threshold_value": "ninety"}, "threshold_value"),
        ({**HOT, "threshold_value": True}, "threshold_value"),
        ({**HOT, "duration_seconds": -1}, "duration_seconds"),
        ({**HOT, "aggregation": "rate"}, "window_seconds"),
        ({**HOT, "predicted_breach": 0.9, "use_anomaly_detection": True}, "predicted_breach"),
        ({**HOT, "rule_id": "bad id!"}, "rule_id"),
        ({**HOT, "colour": "red"}, "colour"),
        ({"name": "No id"}, "rule_id"),
        ({"rules": [HOT, {**SLOW, "missing_data": "panic"}]}, "missing_data"),
        ({"rules": [HOT, HOT]}, "given twice"),
        ({"rules": []}, "holds no rules"),
        ({"rules": [HOT], "extra": 1}, "extra"),
    ],
)
def test_an_invalid_rule_is_a_422_naming_the_field(api: Api, body: dict[str, Any], field: str) -> None:
    response = api.call("POST", "/rules", "admin", body)
    assert response.status_code == 422, response.text
    assert field in response.json()["error"]
    assert [r["rule_id"] for r in api.call("GET", "/rules", "reader").json()["rules"]] == ["file_rule"]


def test_a_body_that_is_not_an_object_is_a_422(api: Api) -> None:
    response = api.call("POST", "/rules", "admin", [HOT])
    assert response.status_code == 422
    assert "body" in response.json()["error"]


# --- alerts, acknowledgement, status, history ----------------------------------------


def test_alerts_are_listed_most_urgent_first_and_filtered_by_status(
    api: Api, firing: dict[str, dict[str, Any]]
) -> None:
    response = api.call("GET", "", "reader")
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [(a["rule_id"], a["status"], a["priority"]) for a in body["alerts"]] == [
        ("hot_cpu", "firing", "HIGH"),
        ("slow_cpu", "pending", "LOW"),
    ]
    hot = firing["hot_cpu"]
    assert (hot["series"], hot["value"], hot["acknowledged_by"]) == ("api.cpu host=web-1", 95.0, None)
    only = api.call("GET", "", "reader", status="pending").json()
    assert (only["count"], [a["rule_id"] for a in only["alerts"]]) == (1, ["slow_cpu"])
    bad = api.call("GET", "", "reader", status="burning")
    assert bad.status_code == 422
    assert "status" in bad.json()["error"]


def test_acknowledge_a_firing_alert(api: Api, firing: dict[str, dict[str, Any]]) -> None:
    hot, slow = firing["hot_cpu"]["alert_id"], firing["slow_cpu"]["alert_id"]
    acked = api.call("PUT", f"/{hot}/acknowledge", "writer")
    assert acked.status_code == 200, acked.text
    assert acked.json() == {"acknowledged": hot, "by": "writer-bot", "status": "firing"}
    [listed] = api.call("GET", "", "reader", status="firing").json()["alerts"]
    assert listed["acknowledged_by"] == "writer-bot"
    assert api.evaluate()["changes"] == []  # still firing: the acknowledgement stays
    [listed] = api.call("GET", "", "reader", status="firing").json()["alerts"]
    assert listed["acknowledged_by"] == "writer-bot"

    pending = api.call("PUT", f"/{slow}/acknowledge", "writer")
    assert pending.status_code == 409
    assert pending.json()["error"] == f"alert {slow!r} is pending; only a firing alert can be acknowledged"
    unknown = api.call("PUT", "/0123456789abcdef/acknowledge", "admin")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "alert '0123456789abcdef' is not active"


def test_status_counts(api: Api, firing: dict[str, dict[str, Any]]) -> None:
    expected = {
        "pending": 1,
        "firing": 1,
        "resolved": 0,
        "by_priority": {"HIGH": 1},
        "acknowledged": 0,
        "rules": 3,
        "notifications_waiting": 1,  # the firing alert's webhook notification, never dispatched here
    }
    response = api.call("GET", "/status", "reader")
    assert response.status_code == 200
    assert response.json() == expected
    assert api.call("PUT", f"/{firing['hot_cpu']['alert_id']}/acknowledge", "writer").status_code == 200
    assert api.call("GET", "/status", "reader").json() == {**expected, "acknowledged": 1}


def test_status_of_a_fresh_data_directory(api: Api) -> None:
    assert api.call("GET", "/status", "reader").json() == {
        "pending": 0,
        "firing": 0,
        "resolved": 0,
        "by_priority": {},
        "acknowledged": 0,
        "rules": 1,
        "notifications_waiting": 0,
    }
    assert api.call("GET", "", "reader").json() == {"alerts": [], "count": 0}


def test_history_shows_the_state_changes_written_while_the_api_runs(
    api: Api, firing: dict[str, dict[str, Any]]
) -> None:
    response = api.call("GET", "/history", "reader")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["count"] == 2
    changes = {(e["rule_id"], e["previous"], e["status"], e["alert_id"]) for e in body["events"]}
    assert changes == {
        ("hot_cpu", "inactive", "firing", firing["hot_cpu"]["alert_id"]),
        ("slow_cpu", "inactive", "pending", firing["slow_cpu"]["alert_id"]),
    }
    one = api.call("GET", "/history", "reader", rule_id="hot_cpu", hours=1).json()
    assert [(e["status"], e["threshold"], e["value"]) for e in one["events"]] == [("firing", 90.0, 95.0)]
    assert api.call("GET", "/history", "reader", rule_id="no_such_rule").json() == {"events": [], "count": 0}


@pytest.mark.parametrize("params", [{"hours": 0}, {"hours": -1}, {"hours": 24 * 91}, {"rule_id": "x" * 129}])
def test_history_refuses_bad_parameters(api: Api, params: dict[str, Any]) -> None:
    response = api.call("GET", "/history", "reader", **params)
    assert response.status_code == 422
    assert next(iter(params)) in response.json()["error"]


def test_history_before_any_change_is_empty(api: Api) -> None:
    assert api.call("GET", "/history", "reader").json() == {"events": [], "count": 0}


# --- silences ------------------------------------------------------------------------


def test_silences_are_created_listed_and_expired(api: Api) -> None:
    created = api.call("POST", "/silences", "writer", SILENCE)
    assert created.status_code == 201, created.text
    silence = created.json()
    assert silence["state"] == "active"
    assert silence["created_by"] == "writer-bot"
    assert silence["comment"] == "maintenance"
    assert silence["matchers"] == [{"name": "host", "value": "web-1", "regex": False, "equal": True}]
    span = datetime.fromisoformat(silence["ends_at"]) - datetime.fromisoformat(silence["starts_at"])
    assert span == timedelta(hours=2)

    later = datetime.now(UTC) + timedelta(hours=1)
    scheduled = api.call(
        "POST",
        "/silences",
        "admin",
        {
            "matchers": ["host=~web-.*"],
            "comment": "tonight",
            "starts_at": later.isoformat(),
            "ends_at": (later + timedelta(hours=1)).isoformat(),
        },
    )
    assert scheduled.status_code == 201, scheduled.text
    assert scheduled.json()["state"] == "pending"

    listed = api.call("GET", "/silences", "reader")
    assert listed.status_code == 200
    states = {s["silence_id"]: s["state"] for s in listed.json()["silences"]}
    assert states == {silence["silence_id"]: "active", scheduled.json()["silence_id"]: "pending"}

    expired = api.call("DELETE", f"/silences/{silence['silence_id']}", "writer")
    assert expired.status_code == 200, expired.text
    assert expired.json()["state"] == "expired"
    states = {s["silence_id"]: s["state"] for s in api.call("GET", "/silences", "reader").json()["silences"]}
    assert states[silence["silence_id"]] == "expired"
    unknown = api.call("DELETE", "/silences/ffffffffffffffff", "writer")
    assert unknown.status_code == 404
    assert unknown.json()["error"] == "silence 'ffffffffffffffff' does not exist"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"duration_seconds": None}, "exactly one of duration_seconds or ends_at"),
        ({"ends_at": "2099-01-01T00:00:00+00:00"}, "exactly one of duration_seconds or ends_at"),
        ({"duration_seconds": 0}, "duration_seconds"),
        ({"duration_seconds": 400 * 86_400}, "duration_seconds"),
        ({"matchers": []}, "matchers"),
        ({"matchers": ["host"]}, "matcher: 'host' is not name=value"),
        ({"matchers": ["host=~web-("]}, "not a regular expression"),
        ({"comment": ""}, "comment"),
        ({"comment": "   "}, "comment"),
        ({"duration_seconds": None, "ends_at": "2099-01-01T00:00:00"}, "has no time zone"),
        (
            {
                "duration_seconds": None,
                "starts_at": "2099-01-02T00:00:00+00:00",
                "ends_at": "2099-01-01T00:00:00+00:00",
            },
            "is not after starts_at",
        ),
    ],
)
def test_an_invalid_silence_is_a_422(api: Api, change: dict[str, Any], message: str) -> None:
    body = {key: value for key, value in {**SILENCE, **change}.items() if value is not None}
    response = api.call("POST", "/silences", "writer", body)
    assert response.status_code == 422, response.text
    assert message in response.json()["error"]
    assert api.call("GET", "/silences", "reader").json() == {"silences": []}


# --- roles and the audit log ---------------------------------------------------------

SILENCE_ID = "ffffffffffffffff"
ALERT_ID = "0123456789abcdef"
ROUTES: list[tuple[str, str, Any]] = [
    ("GET", "", None),
    ("GET", "/status", None),
    ("GET", "/rules", None),
    ("GET", "/silences", None),
    ("GET", "/history", None),
    ("POST", "/rules", HOT),
    ("DELETE", "/rules/no_such_rule", None),
    ("PUT", f"/{ALERT_ID}/acknowledge", None),
    ("POST", "/silences", SILENCE),
    ("DELETE", f"/silences/{SILENCE_ID}", None),
]
# The status each role gets: 404 is past authorisation (the rule, alert or silence does not exist).
# A writer key reads alerts too (requires(READER, WRITER)), and acknowledges and silences; only admins change rules.
EXPECTED = {
    "reader": [200, 200, 200, 200, 200, 403, 403, 403, 403, 403],
    "writer": [200, 200, 200, 200, 200, 403, 403, 404, 201, 404],
    "admin": [200, 200, 200, 200, 200, 201, 404, 404, 201, 404],
    None: [401] * len(ROUTES),
}


@pytest.mark.parametrize("role", ["reader", "writer", "admin", None])
def test_roles(api: Api, role: str | None) -> None:
    got = [api.call(method, path, role, body).status_code for method, path, body in ROUTES]
    assert got == EXPECTED[role]


def test_a_refusal_says_which_role_is_needed(api: Api) -> None:
    refused = api.call("POST", "/rules", "writer", HOT)
    assert refused.status_code == 403
    assert "admin" in refused.json()["error"]
    anonymous = api.call("GET", "", None)
    assert anonymous.status_code == 401
    assert anonymous.headers["WWW-Authenticate"] == "Bearer"


def test_the_audit_log_records_rule_changes_and_acknowledgements(api: Api, firing: dict[str, dict[str, Any]]) -> None:
    hot = firing["hot_cpu"]["alert_id"]
    assert api.call("PUT", f"/{hot}/acknowledge", "writer").status_code == 200
    assert api.call("DELETE", "/rules/slow_cpu", "admin").status_code == 200
    assert [a["rule_id"] for a in api.call("GET", "", "reader").json()["alerts"]] == ["hot_cpu"]  # its alert went
    assert api.call("DELETE", "/rules/file_rule", "admin").status_code == 409
    silence = api.call("POST", "/silences", "writer", SILENCE).json()
    assert api.call("DELETE", f"/silences/{silence['silence_id']}", "writer").status_code == 200
    assert api.call("POST", "/rules", "reader", HOT).status_code == 403
    entries = [(e["principal"], e["method"], e["path"], e["outcome"], e["detail"]) for e in api.audit()]
    rules_file = api.settings.alert_rules_file
    assert entries == [
        ("admin-bot", "POST", f"{PREFIX}/rules", 201, {"rule_ids": ["hot_cpu", "slow_cpu"]}),
        ("writer-bot", "PUT", f"{PREFIX}/{hot}/acknowledge", 200, {"alert_id": hot}),
        ("admin-bot", "DELETE", f"{PREFIX}/rules/slow_cpu", 200, {"rule_id": "slow_cpu"}),
        (
            "admin-bot",
            "DELETE",
            f"{PREFIX}/rules/file_rule",
            409,
            f"rule 'file_rule' is defined in {rules_file}; remove it there",
        ),
        (
            "writer-bot",
            "POST",
            f"{PREFIX}/silences",
            201,
            {"silence_id": silence["silence_id"], "matchers": ["host=web-1"]},
        ),
        (
            "writer-bot",
            "DELETE",
            f"{PREFIX}/silences/{silence['silence_id']}",
            200,
            {"silence_id": silence["silence_id"]},
        ),
        ("reader-bot", "POST", f"{PREFIX}/rules", 403, entries[-1][4]),
    ]
    assert "admin" in entries[-1][4]
    actions = [e["action"] for e in api.audit()]
    assert actions[:3] == ["add_rules", "acknowledge", "delete_rule"]


def test_refused_credentials_fire_the_predefined_authentication_rule(api: Api) -> None:
    """Eleven 401s in a minute: the API's own auth-failure counter reaches the spec's rule (> 10 in 5 min)."""
    project = Path(__file__).resolve().parents[3] / "deployments" / "alert-rules.yaml"
    (rule,) = [r for r in yaml.safe_load(project.read_text())["rules"] if r["rule_id"] == "authentication_failures"]
    assert api.call("POST", "/rules", "admin", rule).status_code == 201
    app = api.client.app
    self_metrics, store = app.state.telemetry.self_metrics, app.state.store  # type: ignore[attr-defined]
    self_metrics.flush(store)  # the counter before: the rule's increase starts here
    for _ in range(11):
        assert api.client.get(PREFIX, headers={"X-API-Key": "mk_bogus_key"}).status_code == 401
    self_metrics.flush(store)
    store.flush()
    cycle = api.evaluate()
    (change,) = [c for c in cycle["changes"] if c["rule_id"] == "authentication_failures"]
    assert (change["status"], change["priority"], change["value"]) == ("firing", "CRITICAL", 11.0)

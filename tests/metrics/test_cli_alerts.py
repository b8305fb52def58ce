"""``metrics rules …`` and ``metrics alerts …`` in-process, over a temporary lake and rules file."""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, ClassVar

import pytest
import yaml

from metrics.api.audit import cli_principal, close_audit_logs, read_audit
from tests.metrics.conftest import Cli

PROJECT_RULE_IDS = {
    "high_cpu_usage",
    "high_memory_usage",
    "authentication_failures",
    "key_access_anomaly",
    "key_rotation_overdue",
    "unauthorized_key_access",
}
FILE_RULE = {
    "rule_id": "file_rule",
    "name": "From the rules file",
    "metric_pattern": r"nothing\.here",
    "threshold_value": 1,
}
# test.cpu is 95 on web-1: hot_cpu fires at once, slow_cpu (an hour's duration) stays pending.
API_RULES = [
    {
        "rule_id": "hot_cpu",
        "name": "Hot CPU",
        "metric_pattern": r"test\.cpu",
        "threshold_value": 90,
        "comparison": ">",
        "priority": "HIGH",
    },
    {
        "rule_id": "slow_cpu",
        "name": "Slowly hot CPU",
        "metric_pattern": r"test\.cpu",
        "threshold_value": 90,
        "comparison": ">",
        "duration_seconds": 3600,
        "priority": "LOW",
    },
]
NOTIFY_ENV = (
    "SLACK_WEBHOOK_URL",
    "SLACK_BOT_TOKEN",
    "SLACK_CHANNEL",
    "SMTP_SERVER",
    "METRICS_ALERT_EMAIL_TO",
    "METRICS_ALERTMANAGER_URL",
    "METRICS_ALERT_WEBHOOK_URL",
    "METRICS_ALERT_RULES_FILE",
    "METRICS_ALERT_ROUTING_FILE",
    "METRICS_REMEDIATION_FILE",
    "METRICS_CONFIG",
    "METRICS_DATA_DIR",
)


@pytest.fixture(autouse=True)
def _alert_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """No notification channel from the environment; routing with no waits; no remediation."""
    for name in NOTIFY_ENV:
        monkeypatch.delenv(name, raising=False)
    routing = tmp_path / "alert-routing.yaml"
    routing.write_text("route: {group_wait: 0, group_interval: 0}\n")
    monkeypatch.setenv("METRICS_ALERT_ROUTING_FILE", str(routing))
    remediation = tmp_path / "remediation.yaml"
    remediation.write_text("actions: {}\n")
    monkeypatch.setenv("METRICS_REMEDIATION_FILE", str(remediation))
    yield
    close_audit_logs()


@pytest.fixture
def rules_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """The rules file of the test (one rule, ``file_rule``), as METRICS_ALERT_RULES_FILE."""
    path = tmp_path / "alert-rules.yaml"
    path.write_text(yaml.safe_dump({"rules": [FILE_RULE]}))
    monkeypatch.setenv("METRICS_ALERT_RULES_FILE", str(path))
    return path


def write_rules(path: Path, rules: list[dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"rules": rules}, sort_keys=False))
    return path


def json_of(text: str) -> Any:
    """The JSON document a command printed (the last line: table commands print status lines before)."""
    return json.loads(text.strip().splitlines()[-1])


def audit_entries(data_dir: Path) -> list[dict[str, Any]]:
    return read_audit(data_dir / "state" / "audit.log")


def ingest_hot_cpu(cli: Cli, tmp_path: Path, value: float = 95.0) -> None:
    """Samples of test.cpu on web-1 over the last few minutes, all at ``value``."""
    now = datetime.now(UTC)
    stamps = [now - timedelta(seconds=30 * i) for i in range(6, 0, -1)]
    lines = ["metric,timestamp,value,type,host"]
    lines += [f"test.cpu,{ts.isoformat().replace('+00:00', 'Z')},{value},gauge,web-1" for ts in stamps]
    csv = tmp_path / "cpu.csv"
    csv.write_text("\n".join(lines) + "\n")
    result = cli("ingest", str(csv))
    assert result.code == 0, result.err
    assert result.last_line == "6"


@pytest.fixture
def loaded(cli: Cli, tmp_path: Path, rules_file: Path) -> Path:
    """The API rules added and a breaching series ingested; returns the rules file."""
    result = cli("rules", "add", str(write_rules(tmp_path / "api-rules.yaml", API_RULES)))
    assert result.code == 0, result.err
    ingest_hot_cpu(cli, tmp_path)
    return rules_file


# --- rules ---------------------------------------------------------------------------


def test_the_project_rules_file_loads_with_the_spec_rules(cli: Cli, tmp_path: Path) -> None:
    project = Path(__file__).resolve().parents[2] / "deployments" / "alert-rules.yaml"
    checked = cli("rules", "check", str(project))
    assert checked.code == 0, checked.err
    assert re.search(r": \d+ valid rule\(s\)", checked.out)
    listed = cli("rules", "list", "--format", "json")  # METRICS_ALERT_RULES_FILE unset: the project's file
    assert listed.code == 0, listed.err
    rules = {rule["rule_id"]: rule for rule in json_of(listed.out)}
    assert set(rules) >= PROJECT_RULE_IDS
    assert {rules[rule_id]["source"] for rule_id in PROJECT_RULE_IDS} == {"file"}
    assert rules["high_cpu_usage"]["threshold_value"] == 90
    assert rules["high_memory_usage"]["priority"] == "CRITICAL"


def test_rules_add_prints_the_ids_and_list_shows_them_in_each_format(
    cli: Cli, tmp_path: Path, rules_file: Path
) -> None:
    added = cli("rules", "add", str(write_rules(tmp_path / "new.yaml", API_RULES)))
    assert added.code == 0, added.err
    assert added.last_line == "added 2 rule(s): hot_cpu, slow_cpu"

    table = cli("rules", "list")
    assert table.code == 0, table.err
    assert table.last_line == "3 rows"
    rows = {line.split("│")[1].strip(): line for line in table.out.splitlines() if line.count("│") > 2}
    assert set(rows) >= {"file_rule", "hot_cpu", "slow_cpu"}
    assert "file" in rows["file_rule"]
    assert "api" in rows["hot_cpu"]
    assert r"test\.cpu > 90" in rows["hot_cpu"]
    assert r"for 3600 s" in rows["slow_cpu"]

    listed = json_of(cli("rules", "list", "--format", "json").out)
    assert [(rule["rule_id"], rule["source"]) for rule in listed] == [
        ("file_rule", "file"),
        ("hot_cpu", "api"),
        ("slow_cpu", "api"),
    ]
    assert listed[2]["duration_seconds"] == 3600.0
    assert listed[2]["priority"] == "LOW"

    document = yaml.safe_load(cli("rules", "list", "--format", "yaml").out)
    assert [rule["rule_id"] for rule in document["rules"]] == ["file_rule", "hot_cpu", "slow_cpu"]
    assert "source" not in document["rules"][0]  # the rules file's schema, which has no source


@pytest.mark.parametrize("fmt", ["JSON", "Yaml", "CSV"])
def test_rules_list_formats_ignore_case(cli: Cli, rules_file: Path, fmt: str) -> None:
    lower = cli("rules", "list", "--format", fmt.lower())
    upper = cli("rules", "list", "--format", fmt)
    assert upper.code == 0, upper.err
    assert upper.out == lower.out
    assert "file_rule" in upper.out


def test_rules_list_refuses_an_unknown_format_naming_the_formats(cli: Cli, rules_file: Path) -> None:
    result = cli("rules", "list", "--format", "xml")
    assert result.code == 1
    assert result.error_lines == ["Error: --format: 'xml' is not one of table, csv, json, yaml"]


def test_rules_list_yaml_round_trips_through_rules_add(
    cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    empty = tmp_path / "empty-rules.yaml"
    empty.write_text("rules: []\n")
    monkeypatch.setenv("METRICS_ALERT_RULES_FILE", str(empty))
    rich = {
        "rule_id": "rich",
        "name": "Every field",
        "description": "Line one\nline two",
        "metric_pattern": r"app\.(latency|errors)",
        "threshold_value": 0.5,
        "comparison": ">=",
        "duration_seconds": 120,
        "priority": "critical",
        "aggregation": "p95",
        "window_seconds": 300,
        "group_by": ["host", "region"],
        "labels": {"team": "sre", "where": "{{ labels.region }}"},
        "annotations": {"summary": "{{ series }} at {{ value }}", "runbook": "https://runbooks/x"},
        "resolve_threshold": 0.4,
        "keep_firing_for": 60,
        "missing_data": "alert",
        "escalation": [{"after_seconds": 900, "channels": ["email"], "priority": None}],
        "channels": ["slack"],
        "enabled": False,
    }
    assert cli("rules", "add", str(write_rules(tmp_path / "in.yaml", [rich, API_RULES[0]]))).code == 0
    before = json_of(cli("rules", "list", "--format", "json").out)
    backup = tmp_path / "backup.yaml"
    backup.write_text(cli("rules", "list", "--format", "yaml").out)
    for rule_id in ("rich", "hot_cpu"):
        assert cli("rules", "delete", rule_id).code == 0
    assert json_of(cli("rules", "list", "--format", "json").out) == []
    restored = cli("rules", "add", str(backup))
    assert restored.code == 0, restored.err
    assert restored.last_line == "added 2 rule(s): hot_cpu, rich"
    after = json_of(cli("rules", "list", "--format", "json").out)
    assert after == before
    assert after[1]["priority"] == "CRITICAL"
    assert after[1]["enabled"] is False


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"comparison": "=>"}, "comparison"),
        ({"priority": "URGENT"}, "priority"),
        ({"metric_pattern": "app.(latency"}, "metric_pattern"),
        ({"threshold_value": "high"}, "threshold_value"),
        ({"ml_sensitivity": 2}, "ml_sensitivity"),
        ({"aggregation": "avg"}, "window_seconds"),
        ({"resolve_threshold": 95}, "resolve_threshold"),
        ({"rule_id": "has space"}, "rule_id"),
        ({"thresold_value": 1}, "thresold_value"),
        ({"annotations": {"summary": "{{ nonsense }}"}}, "annotations.summary"),
        ({"escalation": [{"after_seconds": 60}]}, "escalation[0]"),
    ],
)
def test_rules_add_refuses_an_invalid_rule_naming_the_field(
    cli: Cli, tmp_path: Path, rules_file: Path, change: dict[str, Any], field: str
) -> None:
    bad = write_rules(tmp_path / "bad.yaml", [API_RULES[0], {**API_RULES[1], **change}])
    result = cli("rules", "add", str(bad))
    assert result.code == 1
    assert len(result.error_lines) == 1, result.err
    assert field in result.error_lines[0]
    assert str(bad) in result.error_lines[0]
    assert "Traceback" not in result.err + result.out
    assert [rule["rule_id"] for rule in json_of(cli("rules", "list", "--format", "json").out)] == ["file_rule"]
    checked = cli("rules", "check", str(bad))  # check reports the same problem, adding nothing
    assert checked.code == 1
    assert field in checked.err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rules: []\n", "holds no rules"),
        ("rules: [\n", "not valid YAML"),
        ("rules:\n  - rule_id: a\n    name: A\n  - rule_id: a\n    name: B\n", "given twice"),
        ("rulez: []\n", "unknown field 'rulez'"),
    ],
)
def test_rules_add_refuses_a_bad_file(cli: Cli, tmp_path: Path, rules_file: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    result = cli("rules", "add", str(path))
    assert result.code == 1
    assert message in result.err
    assert "Traceback" not in result.err


def test_rules_add_of_a_missing_file_is_an_error(cli: Cli, tmp_path: Path, rules_file: Path) -> None:
    result = cli("rules", "add", str(tmp_path / "absent.yaml"))
    assert result.code == 1
    assert result.error_lines
    assert "absent.yaml" in result.error_lines[0]


def test_rules_add_replaces_unless_told_not_to(cli: Cli, tmp_path: Path, rules_file: Path, data_dir: Path) -> None:
    path = write_rules(tmp_path / "r.yaml", [API_RULES[0]])
    assert cli("rules", "add", str(path)).code == 0
    renamed = write_rules(tmp_path / "r2.yaml", [{**API_RULES[0], "name": "Renamed"}])

    refused = cli("rules", "add", "--no-replace", str(renamed))
    assert refused.code == 1
    assert "Error: rule 'hot_cpu' already exists" in refused.err
    [rule] = [r for r in json_of(cli("rules", "list", "--format", "json").out) if r["rule_id"] == "hot_cpu"]
    assert rule["name"] == "Hot CPU"

    replaced = cli("rules", "add", str(renamed))
    assert replaced.code == 0, replaced.err
    [rule] = [r for r in json_of(cli("rules", "list", "--format", "json").out) if r["rule_id"] == "hot_cpu"]
    assert rule["name"] == "Renamed"

    file_id = cli("rules", "add", str(write_rules(tmp_path / "f.yaml", [{**FILE_RULE, "name": "Hijack"}])))
    assert file_id.code == 1
    assert str(rules_file) in file_id.err  # a rule of the rules file is changed in the file

    outcomes = [(e["action"], e["outcome"], e["detail"].get("reason")) for e in audit_entries(data_dir)]
    assert outcomes == [
        ("rules.add", "ok", None),
        ("rules.add", "error", "rule 'hot_cpu' already exists"),
        ("rules.add", "ok", None),
        ("rules.add", "error", f"rule 'file_rule' is defined in {rules_file}; change it there"),
    ]
    assert audit_entries(data_dir)[0]["detail"]["rule_ids"] == ["hot_cpu"]
    assert audit_entries(data_dir)[0]["principal"] == cli_principal().name


@pytest.mark.parametrize(
    ("rule_id", "code", "expected"),
    [
        ("hot_cpu", 0, "deleted rule hot_cpu"),
        ("file_rule", 1, "remove it there"),
        ("no_such_rule", 1, "Error: rule 'no_such_rule' does not exist"),
    ],
)
def test_rules_delete(
    cli: Cli, tmp_path: Path, rules_file: Path, data_dir: Path, rule_id: str, code: int, expected: str
) -> None:
    assert cli("rules", "add", str(write_rules(tmp_path / "r.yaml", API_RULES))).code == 0
    result = cli("rules", "delete", rule_id)
    assert result.code == code
    assert expected in (result.out if code == 0 else result.err)
    if rule_id == "file_rule":
        assert str(rules_file) in result.err
    remaining = {rule["rule_id"] for rule in json_of(cli("rules", "list", "--format", "json").out)}
    assert remaining == {"file_rule", "hot_cpu", "slow_cpu"} - ({rule_id} if code == 0 else set())
    last = audit_entries(data_dir)[-1]
    assert (last["action"], last["outcome"], last["detail"]["rule_id"]) == (
        "rules.delete",
        "ok" if code == 0 else "error",
        rule_id,
    )


def test_rules_check_counts_the_valid_rules(cli: Cli, tmp_path: Path, rules_file: Path, data_dir: Path) -> None:
    path = write_rules(tmp_path / "r.yaml", API_RULES)
    result = cli("rules", "check", str(path))
    assert result.code == 0, result.err
    assert result.last_line == f"{path}: 2 valid rule(s)"
    assert [rule["rule_id"] for rule in json_of(cli("rules", "list", "--format", "json").out)] == ["file_rule"]
    missing = cli("rules", "check", str(tmp_path / "absent.yaml"))
    assert missing.code == 1
    assert "absent.yaml" in missing.err


def test_a_change_of_the_rules_file_is_picked_up_and_the_file_wins(cli: Cli, tmp_path: Path, rules_file: Path) -> None:
    assert cli("rules", "add", str(write_rules(tmp_path / "r.yaml", API_RULES))).code == 0
    write_rules(rules_file, [{**API_RULES[0], "name": "Hot CPU (file)"}, {**FILE_RULE, "rule_id": "second"}])
    listed = {r["rule_id"]: r for r in json_of(cli("rules", "list", "--format", "json").out)}
    assert {rule_id: rule["source"] for rule_id, rule in listed.items()} == {
        "hot_cpu": "file",
        "second": "file",
        "slow_cpu": "api",
    }
    assert listed["hot_cpu"]["name"] == "Hot CPU (file)"
    refused = cli("rules", "delete", "hot_cpu")
    assert refused.code == 1
    assert str(rules_file) in refused.err


def test_an_invalid_rules_file_is_reported_naming_it(cli: Cli, rules_file: Path) -> None:
    rules_file.write_text(yaml.safe_dump({"rules": [{**FILE_RULE, "comparison": "~"}]}))
    result = cli("rules", "list")
    assert result.code == 1
    assert str(rules_file) in result.err
    assert "comparison" in result.err
    assert "Traceback" not in result.err


# --- alerts --------------------------------------------------------------------------


def test_evaluate_lists_acknowledges_and_records_history(cli: Cli, loaded: Path, data_dir: Path) -> None:
    cycle = cli("alerts", "evaluate", "--json")
    assert cycle.code == 0, cycle.err
    figures = json_of(cycle.out)
    assert (figures["rules"], figures["observed"], figures["firing"], figures["pending"]) == (3, 2, 1, 1)
    changes = {(c["rule_id"], c["previous"], c["status"]) for c in figures["changes"]}
    assert changes == {("hot_cpu", "inactive", "firing"), ("slow_cpu", "inactive", "pending")}
    assert figures["dispatch"] is not None  # dispatch is on by default

    listed = cli("alerts", "list", "--format", "json")
    assert listed.code == 0, listed.err
    alerts = json_of(listed.out)
    assert [(a["rule_id"], a["status"], a["priority"]) for a in alerts] == [
        ("hot_cpu", "firing", "HIGH"),
        ("slow_cpu", "pending", "LOW"),
    ]
    firing, pending = alerts
    assert firing["value"] == 95.0
    assert firing["series"] == "test.cpu host=web-1"
    assert firing["acknowledged_by"] is None
    assert [a["rule_id"] for a in json_of(cli("alerts", "list", "--status", "firing", "--format", "json").out)] == [
        "hot_cpu"
    ]

    acked = cli("alerts", "ack", firing["alert_id"], "--by", "alice")
    assert acked.code == 0, acked.err
    assert acked.last_line == f"acknowledged {firing['alert_id']}"
    [after] = json_of(cli("alerts", "list", "--status", "firing", "--format", "json").out)
    assert after["acknowledged_by"] == "alice"

    not_firing = cli("alerts", "ack", pending["alert_id"])
    assert not_firing.code == 1
    assert f"Error: alert '{pending['alert_id']}' is pending" in not_firing.err
    unknown = cli("alerts", "ack", "0123456789abcdef")
    assert unknown.code == 1
    assert "Error: alert '0123456789abcdef' is not active" in unknown.err

    history = cli("alerts", "history", "--format", "json")
    assert history.code == 0, history.err
    events = {(e["rule_id"], e["previous"], e["status"], e["alert_id"]) for e in json_of(history.out)}
    assert events == {
        ("hot_cpu", "inactive", "firing", firing["alert_id"]),
        ("slow_cpu", "inactive", "pending", pending["alert_id"]),
    }
    only = json_of(cli("alerts", "history", "--rule", "hot_cpu", "--since", "1h", "--format", "json").out)
    assert [e["status"] for e in only] == ["firing"]
    assert only[0]["threshold"] == 90.0

    acks = [(e["outcome"], e["detail"]) for e in audit_entries(data_dir) if e["action"] == "alerts.acknowledge"]
    assert acks == [
        ("ok", {"alert_id": firing["alert_id"], "by": "alice"}),
        (
            "error",
            {
                "alert_id": pending["alert_id"],
                "by": cli_principal().name,
                "reason": f"alert {pending['alert_id']!r} is pending; only a firing alert can be acknowledged",
            },
        ),
        (
            "error",
            {
                "alert_id": "0123456789abcdef",
                "by": cli_principal().name,
                "reason": "alert '0123456789abcdef' is not active",
            },
        ),
    ]


def test_a_clear_value_resolves_the_firing_alert(cli: Cli, tmp_path: Path, loaded: Path) -> None:
    assert json_of(cli("alerts", "evaluate", "--json", "--no-dispatch").out)["firing"] == 1
    csv = tmp_path / "cool.csv"
    stamp = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    csv.write_text(f"metric,timestamp,value,type,host\ntest.cpu,{stamp},50,gauge,web-1\n")
    assert cli("ingest", str(csv)).code == 0
    figures = json_of(cli("alerts", "evaluate", "--json", "--no-dispatch").out)
    assert (figures["firing"], figures["pending"]) == (0, 0)
    changes = {(c["rule_id"], c["previous"], c["status"]) for c in figures["changes"]}
    assert changes == {("hot_cpu", "firing", "resolved"), ("slow_cpu", "pending", "inactive")}
    alerts = json_of(cli("alerts", "list", "--format", "json").out)
    assert [(a["rule_id"], a["status"], a["value"]) for a in alerts] == [("hot_cpu", "resolved", 50.0)]
    assert alerts[0]["resolved_at"] is not None
    history = json_of(cli("alerts", "history", "--rule", "hot_cpu", "--format", "json").out)
    assert [(e["previous"], e["status"]) for e in history] == [("firing", "resolved"), ("inactive", "firing")]
    acked = cli("alerts", "ack", alerts[0]["alert_id"])
    assert acked.code == 1
    assert "is resolved; only a firing alert can be acknowledged" in acked.err


def test_evaluate_prints_a_summary_and_the_changes(cli: Cli, loaded: Path) -> None:
    result = cli("alerts", "evaluate", "--no-dispatch")
    assert result.code == 0, result.err
    assert re.search(r"^3 rules, 2 series groups in \d+ ms: 1 firing, 1 pending, 2 change\(s\)", result.out, re.M)
    assert "  hot_cpu test.cpu host=web-1: inactive -> firing" in result.out
    assert "  slow_cpu test.cpu host=web-1: inactive -> pending" in result.out
    quiet = json_of(cli("alerts", "evaluate", "--no-dispatch", "--json").out)
    assert quiet["dispatch"] is None
    again = json_of(cli("alerts", "evaluate", "--json").out)  # same data, same verdict: nothing changes
    assert (again["firing"], again["pending"], again["changes"]) == (1, 1, [])


def test_evaluate_with_no_rules_and_no_data(cli: Cli, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty-rules.yaml"
    empty.write_text("rules: []\n")
    monkeypatch.setenv("METRICS_ALERT_RULES_FILE", str(empty))
    figures = json_of(cli("alerts", "evaluate", "--json").out)
    assert (figures["rules"], figures["firing"], figures["changes"]) == (0, 0, [])
    assert json_of(cli("alerts", "list", "--format", "json").out) == []
    assert json_of(cli("alerts", "history", "--format", "json").out) == []


@pytest.mark.parametrize(("option", "value"), [("--status", "burning"), ("--format", "xml")])
def test_alerts_list_refuses_bad_options(cli: Cli, rules_file: Path, option: str, value: str) -> None:
    result = cli("alerts", "list", option, value)
    assert result.code != 0
    assert value in result.err


class _Recorder(BaseHTTPRequestHandler):
    received: ClassVar[list[dict[str, Any]]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        type(self).received.append(json.loads(body))
        self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[dict[str, Any]]]:
    """A local JSON webhook (METRICS_ALERT_WEBHOOK_URL) keeping the bodies posted to it."""
    received: list[dict[str, Any]] = []
    handler = type("Recorder", (_Recorder,), {"received": received})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("METRICS_ALERT_WEBHOOK_URL", f"http://127.0.0.1:{server.server_address[1]}/hook")
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


def test_evaluate_sends_and_the_outbox_shows_the_delivery(
    cli: Cli, loaded: Path, webhook: list[dict[str, Any]]
) -> None:
    empty = json_of(cli("alerts", "outbox", "--format", "json").out)
    assert empty == []
    figures = json_of(cli("alerts", "evaluate", "--json").out)
    assert figures["notifications"] == 1
    assert figures["dispatch"]["delivered"] == 1
    [body] = webhook
    assert body["notification"]["rule_id"] == "hot_cpu"
    assert body["notification"]["status"] == "firing"
    [row] = json_of(cli("alerts", "outbox", "--format", "json").out)
    assert (row["channel"], row["attempts"], row["last_error"]) == ("webhook", 1, None)
    assert row["event"].startswith("firing:")  # keyed by when the firing began
    assert row["delivered_at"] is not None
    assert row["failed_at"] is None


# --- silences ------------------------------------------------------------------------


def test_silence_add_list_and_expire(cli: Cli, rules_file: Path, data_dir: Path) -> None:
    added = cli(
        "alerts", "silence", "add", "--matcher", "host=web-1", "--matcher", "priority!=CRITICAL",
        "--duration", "2h", "--comment", "maintenance", "--author", "bob",
    )  # fmt: skip
    assert added.code == 0, added.err
    silence_id = added.last_line
    assert re.fullmatch(r"[0-9a-f]{16}", silence_id)
    assert "silenced host=web-1 priority!=CRITICAL until " in added.out

    [listed] = json_of(cli("alerts", "silence", "list", "--format", "json").out)
    assert listed["silence_id"] == silence_id
    assert listed["state"] == "active"
    assert listed["matchers"] == "host=web-1 priority!=CRITICAL"
    assert (listed["created_by"], listed["comment"]) == ("bob", "maintenance")
    ends = datetime.fromisoformat(listed["ends_at"])
    assert timedelta(minutes=119) < ends - datetime.now(UTC) <= timedelta(hours=2)

    expired = cli("alerts", "silence", "expire", silence_id)
    assert expired.code == 0, expired.err
    assert expired.last_line == f"expired silence {silence_id}"
    [listed] = json_of(cli("alerts", "silence", "list", "--format", "json").out)
    assert listed["state"] == "expired"

    unknown = cli("alerts", "silence", "expire", "ffffffffffffffff")
    assert unknown.code == 1
    assert "Error: silence 'ffffffffffffffff' does not exist" in unknown.err

    entries = [(e["action"], e["outcome"], e["detail"]) for e in audit_entries(data_dir)]
    assert entries[0] == (
        "silences.create",
        "ok",
        {"matchers": ["host=web-1", "priority!=CRITICAL"], "duration": "2h", "by": "bob"},
    )
    assert entries[1] == ("silences.expire", "ok", {"silence_id": silence_id})
    assert entries[2][:2] == ("silences.expire", "error")


@pytest.mark.parametrize("duration", ["soon", "0s", "-5m", "", "2 fortnights"])
def test_silence_add_refuses_a_bad_duration(cli: Cli, rules_file: Path, data_dir: Path, duration: str) -> None:
    result = cli("alerts", "silence", "add", "--matcher", "host=a", "--duration", duration, "--comment", "x")
    assert result.code == 1
    assert result.error_lines
    assert result.error_lines[0].startswith("Error: --duration")
    assert "Traceback" not in result.err
    assert json_of(cli("alerts", "silence", "list", "--format", "json").out) == []


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--matcher", "host"), "matcher: 'host' is not name=value"),
        (("--matcher", "host=~web-("), "is not a regular expression"),
        (("--matcher", "host=a", "--comment", " "), "comment"),
    ],
)
def test_silence_add_refuses_bad_matchers_and_comments(
    cli: Cli, rules_file: Path, args: tuple[str, ...], message: str
) -> None:
    options = dict(zip(args[::2], args[1::2], strict=True))
    options.setdefault("--comment", "why")
    flat = [item for pair in options.items() for item in pair]
    result = cli("alerts", "silence", "add", *flat, "--duration", "1h")
    assert result.code == 1
    assert message in result.err
    assert json_of(cli("alerts", "silence", "list", "--format", "json").out) == []


def test_a_silence_mutes_the_notification_of_a_matching_alert(cli: Cli, loaded: Path) -> None:
    silenced = cli("alerts", "silence", "add", "--matcher", "rule_id=hot_cpu", "--duration", "1h", "--comment", "t")
    assert silenced.code == 0, silenced.err
    figures = json_of(cli("alerts", "evaluate", "--json", "--no-dispatch").out)
    assert (figures["firing"], figures["muted"], figures["notifications"]) == (1, 1, 0)
    assert json_of(cli("alerts", "outbox", "--format", "json").out) == []


def test_history_outbox_and_silences_of_a_fresh_data_directory(cli: Cli, rules_file: Path) -> None:
    for command in (("alerts", "history"), ("alerts", "outbox"), ("alerts", "list"), ("alerts", "silence", "list")):
        result = cli(*command, "--format", "json")
        assert result.code == 0, (command, result.err)
        assert json_of(result.out) == [], command


def test_history_refuses_a_bad_since(cli: Cli, rules_file: Path) -> None:
    result = cli("alerts", "history", "--since", "yesterday")
    assert result.code == 1
    assert "Error: --since" in result.err

"""Remediation: dry run by default, real commands without a shell, HTTP calls, the rate limit, the audit log."""

from __future__ import annotations

import json
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import yaml

from alerts.remediate import Remediator, load_remediation, parse_remediation
from alerts.rules import AlertRule
from alerts.store import AlertStore
from metrics.api.audit import AUDIT_FILE, close_audit_logs, read_audit
from metrics.errors import ValidationError
from metrics.settings import Settings
from tests.alerts.channels import Receiver

RULE = AlertRule("cpu", "High CPU", metric_pattern="x", threshold_value=90, remediation="scale")
HOSTILE = "web-1; rm -rf / && echo $(id)"


def alert(host: str = "web-1") -> dict[str, Any]:
    return {
        "alert_id": "a1b2c3",
        "labels": json.dumps({"metric": "system.cpu.usage_total", "host": host}),
        "series": f"system.cpu.usage_total host={host}",
        "value": 97.5,
    }


def remediator(settings: Settings, actions: dict[str, Any], *, dry_run: bool, **limit: Any) -> Remediator:
    config = parse_remediation({"actions": actions, **({"rate_limit": limit} if limit else {})}, "test")
    return Remediator(replace(settings, remediation_dry_run=dry_run), AlertStore(settings), config)


def audited(settings: Settings) -> list[dict[str, Any]]:
    close_audit_logs()
    return [
        entry for entry in read_audit(settings.state_dir / AUDIT_FILE) if entry["action"].startswith("remediation.")
    ]


def test_dry_run_records_what_would_run(alert_settings: Settings) -> None:
    run = remediator(alert_settings, {"scale": {"command": ["/bin/false", "{{ labels.host }}"]}}, dry_run=True)
    record = run(RULE, alert())
    assert (record["outcome"], record["detail"]) == ("dry_run", {"command": ["/bin/false", "web-1"]})
    assert [(e["action"], e["outcome"]) for e in audited(alert_settings)] == [("remediation.scale", "dry_run")]


def test_a_command_runs_without_a_shell_so_labels_cannot_inject(alert_settings: Settings, tmp_path: Path) -> None:
    echo = [sys.executable, "-c", "import sys, json; print(json.dumps(sys.argv[1:]))", "--host", "{{ labels.host }}"]
    run = remediator(alert_settings, {"scale": {"command": echo}}, dry_run=False)
    record = run(RULE, alert(HOSTILE))
    assert record["outcome"] == "ok"
    assert json.loads(record["detail"]["output"]) == ["--host", HOSTILE]  # one argument, verbatim
    failing = remediator(
        alert_settings, {"scale": {"command": [sys.executable, "-c", "raise SystemExit(3)"]}}, dry_run=False
    )
    assert (failing(RULE, alert())["outcome"], failing(RULE, alert())["detail"]["exit"]) == ("failed", 3)


def test_an_http_action_posts_its_rendered_body(alert_settings: Settings, receiver: Receiver) -> None:
    action = {"http": {"method": "POST", "url": f"{receiver.url}/scale", "json": {"host": "{{ labels.host }}", "n": 2}}}
    record = remediator(alert_settings, {"scale": action}, dry_run=False)(RULE, alert())
    assert record["outcome"] == "ok"
    (request,) = receiver.wait_for(1)
    assert request.path == "/scale"
    assert json.loads(request.body) == {"host": "web-1", "n": 2}


def test_the_rate_limit_refuses_further_runs(alert_settings: Settings) -> None:
    run = remediator(
        alert_settings, {"scale": {"command": [sys.executable, "-c", "pass"]}}, dry_run=False, count=2, per_seconds=3600
    )
    outcomes = [run(RULE, alert())["outcome"] for _ in range(4)]
    assert outcomes == ["ok", "ok", "rate_limited", "rate_limited"]
    assert [h["outcome"] for h in run.history()] == ["rate_limited", "rate_limited", "ok", "ok"]


def test_an_unknown_action_is_recorded_not_run(alert_settings: Settings) -> None:
    record = remediator(alert_settings, {}, dry_run=False)(RULE, alert())
    assert record["outcome"] == "not_configured"


def test_a_missing_program_is_an_error_outcome(alert_settings: Settings) -> None:
    record = remediator(alert_settings, {"scale": {"command": ["/nonexistent/scale-out"]}}, dry_run=False)(
        RULE, alert()
    )
    assert record["outcome"] == "error"
    assert "FileNotFoundError" in record["detail"]["error"]


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"actions": {"a": {"command": "rm -rf /"}}}, "must be a list of arguments (no shell)"),
        ({"actions": {"a": {"command": ["x"], "http": {"url": "http://x"}}}}, "exactly one of command"),
        ({"actions": {"a": {"http": {"url": "ftp://x"}}}}, "needs a url starting with http"),
        ({"actions": {"a": {"command": ["x"], "timeout": 0}}}, "timeout: 0 must be seconds"),
        ({"actions": {"a": {"command": ["x"], "shell": True}}}, "expected description, command or http, timeout"),
        ({"rate_limit": {"count": 0}}, "rate_limit.count: 0"),
        ({"other": 1}, "expected a mapping with 'actions'"),
    ],
)
def test_bad_configurations_name_the_problem(document: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_remediation(document, "remediation.yaml")


def test_the_project_actions_load_and_cover_the_predefined_rules(tmp_path: Path) -> None:
    project = Path(__file__).resolve().parents[2] / "deployments"
    actions = load_remediation(project / "remediation.yaml").actions
    named = {
        r["remediation"]
        for r in yaml.safe_load((project / "alert-rules.yaml").read_text())["rules"]
        if r.get("remediation")
    }
    assert named == {"scale_resources", "clear_caches", "block_suspicious_ips", "enhanced_monitoring"}
    assert named <= set(actions)


def test_alert_data_cannot_become_an_option_or_move_a_url(alert_settings: Settings, receiver: Receiver) -> None:
    command = remediator(alert_settings, {"scale": {"command": ["/bin/echo", "{{ labels.host }}"]}}, dry_run=False)
    record = command(RULE, alert("-oProxyCommand=touch /tmp/x"))
    assert record["outcome"] == "refused"
    assert "an option" in record["detail"]["reason"]
    url = {"http": {"url": f"{receiver.url}/hosts/{{{{ labels.host }}}}/scale"}}
    planned = remediator(alert_settings, {"scale": url}, dry_run=True)(RULE, alert("evil.example/x?"))
    assert planned["detail"]["url"] == f"{receiver.url}/hosts/evil.example%2Fx%3F/scale"

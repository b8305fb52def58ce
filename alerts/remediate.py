"""Remediation: named actions an alert runs when it fires — a command or an HTTP call — dry-run by default.

Actions live in ``deployments/remediation.yaml`` (or ``METRICS_REMEDIATION_FILE``)::

    rate_limit: {count: 3, per_seconds: 3600}   # per action; further runs are refused and audited
    actions:
      scale_resources:
        description: Add a replica of the busy service.
        command: ["/usr/local/bin/scale-out", "--host", "{{ labels.host }}"]
        timeout: 60
      clear_caches:
        http: {method: POST, url: "http://127.0.0.1:9000/caches/clear", json: {host: "{{ labels.host }}"}}

A command is an argument list run without a shell: an alert's labels fill
placeholders inside single arguments and can never add arguments, pipes or
redirections. With ``METRICS_REMEDIATION_DRY_RUN=true`` (the default) the
action is only written down: what would run, for which alert. Every
execution — run, dry run, refused by the rate limit, failed — is recorded in
the ``remediations`` table and the audit log.
"""

from __future__ import annotations

import json
import logging
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import yaml

from alerts.rules import AlertRule, render
from alerts.store import AlertStore
from metrics.errors import ValidationError
from metrics.settings import Settings

log = logging.getLogger(__name__)

PROJECT_REMEDIATION = Path(__file__).resolve().parents[1] / "deployments" / "remediation.yaml"
REMEDIATION_SCHEMA = """
CREATE TABLE IF NOT EXISTS remediations (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    action TEXT NOT NULL,
    alert_id TEXT NOT NULL,
    rule_id TEXT NOT NULL,
    started_at REAL NOT NULL,
    outcome TEXT NOT NULL,
    detail TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS remediations_action ON remediations (action, started_at);
"""
OUTPUT_KEPT = 500  # characters of a command's output kept in the record


@dataclass(frozen=True)
class Action:
    """One remediation: a command (argument list) or an HTTP call, with a timeout."""

    name: str
    description: str = ""
    command: tuple[str, ...] = ()
    http: Mapping[str, Any] = field(default_factory=dict)
    timeout: float = 30.0

    def rendered(self, context: Mapping[str, Any]) -> dict[str, Any]:
        """What would run for an alert: the command's arguments or the request, placeholders filled.

        Alert data is untrusted (services choose their tags): an argument it would turn into an option
        (``-…`` where the action's own text does not start so) is refused, and values put into a URL are
        percent-encoded, so they cannot change its host or path.
        """
        if self.command:
            arguments = [render(part, context) for part in self.command]
            for template, argument in zip(self.command, arguments, strict=True):
                if argument.startswith("-") and not template.startswith("-"):
                    raise ValidationError(
                        f"{self.name}: alert data would make the argument {argument[:40]!r} an option"
                    )
            return {"command": arguments}
        body = self.http.get("json")
        return {
            "method": str(self.http.get("method", "POST")).upper(),
            "url": render(str(self.http["url"]), _url_safe(context)),
            "json": _render_json(body, context) if body is not None else None,
        }


@dataclass(frozen=True)
class RemediationConfig:
    """Named actions and the per-action rate limit."""

    actions: Mapping[str, Action] = field(default_factory=dict)
    limit_count: int = 3
    limit_seconds: float = 3600.0


def load_remediation(path: Path | None) -> RemediationConfig:
    """The actions of ``path`` (default: the project's ``remediation.yaml`` when it exists; else none)."""
    chosen = path or (PROJECT_REMEDIATION if PROJECT_REMEDIATION.exists() else None)
    if chosen is None:
        return RemediationConfig()
    try:
        document = yaml.safe_load(chosen.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise ValidationError(f"{chosen}: {exc}") from None
    return parse_remediation(document, str(chosen))


def parse_remediation(document: Any, source: str) -> RemediationConfig:
    """Actions from a parsed document; errors name the source, the action and the field."""
    if not isinstance(document, Mapping) or set(document) - {"actions", "rate_limit"}:
        raise ValidationError(f"{source}: expected a mapping with 'actions' and an optional 'rate_limit'")
    limit = document.get("rate_limit") or {}
    count, seconds = limit.get("count", 3), limit.get("per_seconds", 3600)
    if isinstance(count, bool) or not isinstance(count, int) or count < 1:
        raise ValidationError(f"{source}: rate_limit.count: {count!r} must be a whole number >= 1")
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or seconds <= 0:
        raise ValidationError(f"{source}: rate_limit.per_seconds: {seconds!r} must be a number > 0")
    actions = {}
    for name, data in (document.get("actions") or {}).items():
        where = f"{source}: actions.{name}"
        if not isinstance(data, Mapping) or set(data) - {"description", "command", "http", "timeout"}:
            raise ValidationError(f"{where}: expected description, command or http, timeout")
        command, http = data.get("command"), data.get("http")
        if (command is None) == (http is None):
            raise ValidationError(f"{where}: give exactly one of command (an argument list) or http")
        if command is not None and (
            isinstance(command, str)
            or not isinstance(command, list)
            or not command
            or not all(isinstance(part, str) for part in command)
        ):
            raise ValidationError(f"{where}.command: must be a list of arguments (no shell), e.g. [/bin/echo, hi]")
        if http is not None and (not isinstance(http, Mapping) or not str(http.get("url", "")).startswith("http")):
            raise ValidationError(f"{where}.http: needs a url starting with http:// or https://")
        timeout = data.get("timeout", 30)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout <= 3600:
            raise ValidationError(f"{where}.timeout: {timeout!r} must be seconds in (0, 3600]")
        actions[str(name)] = Action(
            str(name), str(data.get("description", "")), tuple(command or ()), http or {}, float(timeout)
        )
    return RemediationConfig(actions, count, float(seconds))


class Remediator:
    """Runs (or, in dry-run, records) the remediation of firing alerts, rate-limited and audited.

    Args:
        settings: dry-run mode, the audit log's data directory.
        alerts: whose SQLite file records the executions.
        config: the actions (default: from ``settings.remediation_file``).
        clock: seconds since the epoch.
    """

    def __init__(
        self,
        settings: Settings,
        alerts: AlertStore,
        config: RemediationConfig | None = None,
        clock: Any = time.time,
    ) -> None:
        self.settings = settings
        self.alerts = alerts
        self.config = config if config is not None else load_remediation(settings.remediation_file)
        self.clock = clock

    def __call__(self, rule: AlertRule, alert: Mapping[str, Any]) -> dict[str, Any]:
        """Run the rule's action for a firing alert; returns the record (action, outcome, detail)."""
        name = rule.remediation or ""
        action = self.config.actions.get(name)
        labels = {str(k): str(v) for k, v in json.loads(alert["labels"]).items()}
        context = {
            "labels": labels,
            "value": alert.get("value"),
            "threshold": rule.threshold_value,
            "series": alert["series"],
            "rule_id": rule.rule_id,
            "name": rule.name,
        }
        if action is None:
            return self._record(name, rule, alert, "not_configured", {"reason": f"no action named {name!r}"})
        try:
            planned = action.rendered(context)
        except ValidationError as exc:
            return self._record(name, rule, alert, "refused", {"reason": str(exc)})
        if self._recent(name) >= self.config.limit_count:
            detail = {"limit": f"{self.config.limit_count} per {self.config.limit_seconds:g} s", **planned}
            return self._record(name, rule, alert, "rate_limited", detail)
        if self.settings.remediation_dry_run:
            return self._record(name, rule, alert, "dry_run", planned)
        try:
            outcome, detail = self._run(action, planned)
        except (OSError, subprocess.SubprocessError, httpx.HTTPError) as exc:
            outcome, detail = "error", {**planned, "error": f"{type(exc).__name__}: {exc}"[:OUTPUT_KEPT]}
        return self._record(name, rule, alert, outcome, detail)

    def history(self, limit: int = 100) -> list[dict[str, Any]]:
        """The latest executions, newest first."""
        with self._transaction() as connection:
            rows = connection.execute(
                "SELECT action, alert_id, rule_id, started_at, outcome, detail FROM remediations "
                "ORDER BY id DESC LIMIT ?",
                (limit,),
            ).fetchall()
        keys = ("action", "alert_id", "rule_id", "started_at", "outcome", "detail")
        return [{**dict(zip(keys, row, strict=True)), "detail": json.loads(row[5])} for row in rows]

    def _run(self, action: Action, planned: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
        if "command" in planned:
            done = subprocess.run(
                planned["command"], capture_output=True, text=True, timeout=action.timeout, check=False, shell=False
            )
            output = (done.stdout + done.stderr).strip()[-OUTPUT_KEPT:]
            return ("ok" if done.returncode == 0 else "failed"), {**planned, "exit": done.returncode, "output": output}
        response = httpx.request(planned["method"], planned["url"], json=planned["json"], timeout=action.timeout)
        outcome = "ok" if response.is_success else "failed"
        return outcome, {**planned, "status": response.status_code, "output": response.text[:OUTPUT_KEPT]}

    def _recent(self, name: str) -> int:
        since = self.clock() - self.config.limit_seconds
        with self._transaction() as connection:
            row = connection.execute(
                "SELECT count(*) FROM remediations WHERE action = ? AND started_at >= ? "
                "AND outcome IN ('ok', 'failed', 'error')",
                (name, since),
            ).fetchone()
        return int(row[0])

    def _record(
        self, name: str, rule: AlertRule, alert: Mapping[str, Any], outcome: str, detail: Mapping[str, Any]
    ) -> dict[str, Any]:
        from metrics.api.audit import audit_log
        from metrics.api.auth import Principal, Role

        with self._transaction() as connection:
            connection.execute(
                "INSERT INTO remediations (action, alert_id, rule_id, started_at, outcome, detail) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (name, alert["alert_id"], rule.rule_id, self.clock(), outcome, json.dumps(detail, default=str)),
            )
        record = {
            "action": name,
            "alert_id": alert["alert_id"],
            "rule_id": rule.rule_id,
            "outcome": outcome,
            "detail": dict(detail),
        }
        audit_log(self.settings).record(
            action=f"remediation.{name}",
            outcome=outcome,
            principal=Principal("alert-engine", Role.ADMIN, source="engine"),
            method="REMEDIATE",
            path=None,
            detail=record,
        )
        log.log(
            logging.WARNING if outcome in ("failed", "error") else logging.INFO,
            "remediation %s for alert %s: %s",
            name,
            alert["alert_id"],
            outcome,
        )
        return record

    def _transaction(self) -> Any:
        from storage.statedb import state_transaction

        return state_transaction(self.alerts.path, REMEDIATION_SCHEMA, "remediations", immediate=True)


def _url_safe(value: Any) -> Any:
    """The template context with every text value percent-encoded (nothing in it may add a ``/``, ``?`` or ``@``)."""
    if isinstance(value, Mapping):
        return {key: _url_safe(item) for key, item in value.items()}
    if isinstance(value, str):
        return quote(value, safe="")
    return value


def _render_json(value: Any, context: Mapping[str, Any]) -> Any:
    if isinstance(value, str):
        return render(value, context)
    if isinstance(value, Mapping):
        return {str(k): _render_json(v, context) for k, v in value.items()}
    if isinstance(value, list):
        return [_render_json(item, context) for item in value]
    return value

"""``metrics rules …`` and ``metrics alerts …``: manage alert rules, run a cycle, list, acknowledge and silence alerts.

They act directly on the data directory's ``data/state/alerts.sqlite`` and
are audited as ``cli:<user>``, like ``metrics keys``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from metrics.cli_keys import out
from metrics.errors import MetricsError, ValidationError
from metrics.settings import Settings

rules_app = typer.Typer(
    help="Alert rules: list, add from a YAML file (the schema of deployments/alert-rules.yaml), delete.\n\n"
    "Example: metrics rules add my-rules.yaml",
    no_args_is_help=True,
)
alerts_app = typer.Typer(
    help="Alerts: evaluate a cycle by hand, list, acknowledge, silence, show history and the outbox.\n\n"
    "Example: metrics alerts evaluate --json",
    no_args_is_help=True,
)
silence_app = typer.Typer(
    help="Silences: mute notifications of alerts matching labels for a while.\n\n"
    "Example: metrics alerts silence add --matcher host=web-1 --duration 2h --comment 'maintenance'",
    no_args_is_help=True,
)
alerts_app.add_typer(silence_app, name="silence")


def _settings() -> Settings:
    from metrics.cli import settings

    return settings()


@contextmanager
def _audited(action: str, detail: dict[str, Any], settings: Settings) -> Iterator[None]:
    """Audit an administrative action's outcome: ``ok``, or ``error`` with the reason."""
    from metrics.api.audit import audit_admin

    try:
        yield
    except MetricsError as exc:
        audit_admin(settings, action, "error", {**detail, "reason": str(exc)})
        raise
    audit_admin(settings, action, "ok", detail)


@rules_app.command("list")
def rules_list(
    fmt: Annotated[str, typer.Option("--format", help="table, csv, json or yaml (the rules file's schema).")] = "table",
    source: Annotated[str | None, typer.Option(help="Only rules from 'file' or 'api'.")] = None,
) -> None:
    """Every alert rule: id, what it watches, priority, where it came from (file or api).

    Example: metrics rules list --source api --format yaml > api-rules.yaml  (restore: metrics rules add …)
    """
    import polars as pl

    from alerts.rules import dump_rules
    from alerts.store import AlertStore, rule_summary
    from metrics.cli import emit

    fmt = fmt.lower()  # as emit() does: --format JSON is the full rules, not the table's columns
    if fmt not in ("table", "csv", "json", "yaml"):
        raise ValidationError(f"--format: {fmt!r} is not one of table, csv, json, yaml")
    if source not in (None, "file", "api"):
        raise ValidationError(f"--source: {source!r} is not one of file, api")
    stored = [item for item in AlertStore(_settings()).rules() if source is None or item.source == source]
    if fmt == "yaml":
        print(dump_rules([item.rule for item in stored]), end="")
        return
    if fmt == "json":
        print(json.dumps([{**item.rule.to_dict(), "source": item.source} for item in stored]))
        return
    rows = [
        {
            "rule_id": item.rule.rule_id,
            "name": item.rule.name,
            "condition": rule_summary(item.rule),
            "priority": item.rule.priority.value,
            "enabled": item.rule.enabled,
            "source": item.source,
        }
        for item in stored
    ]
    schema = {
        "rule_id": pl.String,
        "name": pl.String,
        "condition": pl.String,
        "priority": pl.String,
        "enabled": pl.Boolean,
        "source": pl.String,
    }
    emit(pl.DataFrame(rows, schema=schema), fmt)


@rules_app.command("add")
def rules_add(
    path: Annotated[Path, typer.Argument(help="A YAML file of rules (rules: [...]), as deployments/alert-rules.yaml.")],
    replace: Annotated[bool, typer.Option(help="Update rules whose id exists (else that is an error).")] = True,
) -> None:
    """Add (or update) the rules of a YAML file; an invalid rule is refused with its field and reason.

    Example: metrics rules add my-rules.yaml
    """
    from alerts.rules import load_rules_file
    from alerts.store import AlertStore

    settings = _settings()
    rules = load_rules_file(path)
    if not rules:
        raise ValidationError(f"{path}: holds no rules")
    ids = [rule.rule_id for rule in rules]
    with _audited("rules.add", {"rule_ids": ids, "file": str(path)}, settings):
        AlertStore(settings).add_rules(rules, replace=replace)
    out.print(f"added {len(ids)} rule(s): {', '.join(ids)}", markup=False)


@rules_app.command("delete")
def rules_delete(rule_id: Annotated[str, typer.Argument(help="The rule's id.")]) -> None:
    """Delete a rule added through the API or CLI (a rule of the rules file is changed in the file).

    Example: metrics rules delete high_latency
    """
    from alerts.store import AlertStore

    settings = _settings()
    with _audited("rules.delete", {"rule_id": rule_id}, settings):
        AlertStore(settings).delete_rule(rule_id)
    out.print(f"deleted rule {rule_id}", markup=False)


@rules_app.command("check")
def rules_check(path: Annotated[Path, typer.Argument(help="A YAML file of rules.")]) -> None:
    """Validate a rules file without adding it: each problem names the rule, the field and the reason.

    Example: metrics rules check deployments/alert-rules.yaml
    """
    from alerts.rules import load_rules_file

    rules = load_rules_file(path)
    out.print(f"{path}: {len(rules)} valid rule(s)", markup=False)


@alerts_app.command("evaluate")
def alerts_evaluate(
    dispatch: Annotated[bool, typer.Option(help="Also send the due notifications.")] = True,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the cycle's figures as JSON on the last line.")
    ] = False,
) -> None:
    """Run one evaluation cycle now, as the evaluate-alerts flow does, and send what is due.

    Example: metrics alerts evaluate --json
    """
    from tasks.alerts import dispatch_notifications, evaluate_alerts

    settings = _settings()
    cycle = evaluate_alerts(settings)
    sent = dispatch_notifications(settings) if dispatch else None
    figures = {**cycle.to_dict(), "dispatch": None if sent is None else sent.to_dict()}
    if not as_json:
        out.print(
            f"{cycle.rules} rules, {cycle.observed} series groups in {cycle.seconds * 1000:.0f} ms: "
            f"{cycle.firing} firing, {cycle.pending} pending, {len(cycle.changes)} change(s), "
            f"{cycle.notifications} notification(s) written"
            + ("" if sent is None else f", {sent.delivered} sent, {sent.waiting} waiting"),
            markup=False,
        )
        for change in cycle.changes:
            out.print(
                f"  {change['rule_id']} {change['series']}: {change['previous']} -> {change['status']}", markup=False
            )
    else:
        print(json.dumps(figures, default=str))


@alerts_app.command("list")
def alerts_list(
    status: Annotated[str | None, typer.Option(help="Only pending, firing or resolved alerts.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """Alerts pending, firing or recently resolved, most urgent first.

    Example: metrics alerts list --status firing
    """
    from alerts.store import AlertStore
    from metrics.cli import emit

    emit(AlertStore(_settings()).listing(status), fmt)


@alerts_app.command("ack")
def alerts_ack(
    alert_id: Annotated[str, typer.Argument(help="The alert's id (metrics alerts list).")],
    by: Annotated[str | None, typer.Option(help="Who acknowledges (default: the CLI user).")] = None,
) -> None:
    """Acknowledge a firing alert: no repeats or escalations until it resolves.

    Example: metrics alerts ack 3f2a9c1d0b7e4a55 --by alice
    """
    from alerts.store import AlertStore
    from metrics.api.audit import cli_principal

    settings = _settings()
    who = by or cli_principal().name
    with _audited("alerts.acknowledge", {"alert_id": alert_id, "by": who}, settings):
        AlertStore(settings).acknowledge(alert_id, who, int(datetime.now(UTC).timestamp() * 1_000_000))
    out.print(f"acknowledged {alert_id}", markup=False)


@alerts_app.command("history")
def alerts_history(
    since: Annotated[str, typer.Option(help="How far back: 30m, 24h, 7d.")] = "24h",
    rule: Annotated[str | None, typer.Option(help="Only this rule's alerts.")] = None,
    fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table",
) -> None:
    """State changes from the alert_events table, newest first.

    Example: metrics alerts history --since 7d --rule high_cpu_usage
    """
    from metrics.cli import emit, open_store
    from storage.alert_events import read_alert_events

    begin = datetime.now(UTC) - _duration(since, "--since")
    with open_store(read_only=True) as store:
        emit(read_alert_events(store, begin, rule), fmt)


@alerts_app.command("outbox")
def alerts_outbox(fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table") -> None:
    """Notifications written and their delivery: attempts, delivered or given up, the last error.

    Example: metrics alerts outbox --format json
    """
    import polars as pl

    from alerts.notify import notifiers_from_settings
    from alerts.outbox import Outbox
    from alerts.store import AlertStore
    from metrics.cli import emit

    settings = _settings()
    rows = Outbox(AlertStore(settings), notifiers_from_settings(settings)).rows()
    emit(pl.DataFrame(rows, infer_schema_length=None) if rows else pl.DataFrame({"outbox": []}), fmt)


@silence_app.command("add")
def silence_add(
    matcher: Annotated[list[str], typer.Option(help="label=value, label!=value, label=~regex (repeatable).")],
    duration: Annotated[str, typer.Option(help="How long: 30m, 2h, 1d.")],
    comment: Annotated[str, typer.Option(help="Why (shown with the silence).")],
    author: Annotated[str | None, typer.Option(help="Who (default: the CLI user).")] = None,
) -> None:
    """Silence alerts whose labels match every matcher, from now for --duration; prints the silence id last.

    Example: metrics alerts silence add --matcher host=web-1 --matcher priority!=CRITICAL --duration 2h --comment deploy
    """
    from alerts.matchers import Matcher
    from alerts.silences import Silences
    from alerts.store import AlertStore
    from metrics.api.audit import cli_principal

    settings = _settings()
    now = datetime.now(UTC)
    who = author or cli_principal().name
    detail = {"matchers": list(matcher), "duration": duration, "by": who}
    with _audited("silences.create", detail, settings):
        matchers = [Matcher.parse(item) for item in matcher]
        silence = Silences(AlertStore(settings)).create(
            matchers, ends_at=now + _duration(duration, "--duration"), created_by=who, comment=comment, now=now
        )
    out.print(f"silenced {' '.join(str(m) for m in matchers)} until {silence.ends_at.isoformat()}", markup=False)
    print(silence.silence_id)


@silence_app.command("list")
def silence_list(fmt: Annotated[str, typer.Option("--format", help="table, csv or json.")] = "table") -> None:
    """Silences pending, active or expired in the last day.

    Example: metrics alerts silence list
    """
    import polars as pl

    from alerts.silences import Silences
    from alerts.store import AlertStore
    from metrics.cli import emit

    now = datetime.now(UTC)
    rows = [
        {**s.to_dict(now), "matchers": " ".join(str(m) for m in s.matchers)}
        for s in Silences(AlertStore(_settings())).all(now=now)
    ]
    emit(pl.DataFrame(rows) if rows else pl.DataFrame({"silences": []}), fmt)


@silence_app.command("expire")
def silence_expire(silence_id: Annotated[str, typer.Argument(help="The silence's id.")]) -> None:
    """End a silence now.

    Example: metrics alerts silence expire 9b1f2c3d4e5f6a7b
    """
    from alerts.silences import Silences
    from alerts.store import AlertStore

    settings = _settings()
    with _audited("silences.expire", {"silence_id": silence_id}, settings):
        Silences(AlertStore(settings)).expire(silence_id)
    out.print(f"expired silence {silence_id}", markup=False)


def _duration(text: str, option: str) -> timedelta:
    from storage.query import interval_seconds

    try:
        seconds = interval_seconds(text)
    except MetricsError:
        raise ValidationError(f"{option}: {text!r} is not a duration such as 30m, 2h or 7d") from None
    if seconds <= 0:
        raise ValidationError(f"{option}: {text!r} must be longer than zero")
    return timedelta(seconds=seconds)

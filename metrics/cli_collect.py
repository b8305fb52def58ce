"""``metrics collect cloudtrail|vault|health`` (one collection by hand) and ``metrics keys-report`` (compliance).

The scheduled flows (``collect-key-audit-logs``, ``health-checks``) run the
same functions over the configured paths and targets.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import polars as pl
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from metrics.errors import ValidationError
from metrics.settings import Settings

collect_app = typer.Typer(
    help="Run one collection now: key events from CloudTrail or Vault audit logs, or a round of health checks.\n\n"
    "Example: metrics collect cloudtrail /var/log/cloudtrail/AWSLogs",
    no_args_is_help=True,
)
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)


def _settings() -> Settings:
    from metrics.cli import settings  # the root command's --data-dir (imported late: metrics.cli imports us)

    return settings()


def _print_summary(summary: Any, as_json: bool) -> None:
    data = summary.to_dict()
    if as_json:
        print(json.dumps(data))
        return
    for problem in summary.problem_list:
        err.print(f"skipped {problem}", markup=False, highlight=False)
    if summary.problems > len(summary.problem_list):
        err.print(f"… and {summary.problems - len(summary.problem_list)} more problems", markup=False)
    for rejection in summary.rejection_list:
        err.print(f"not stored: {rejection}", markup=False, highlight=False)
    out.print(
        f"{summary.source}: {summary.files} files, {summary.records:,} records, {summary.events:,} new events "
        f"({summary.duplicates:,} seen before, {summary.problems} problems) in {summary.seconds:.2f} s "
        f"({summary.events_per_second:,.0f} events/s); {summary.keys_total} keys, "
        f"{summary.violations} policy violations, {summary.samples:,} samples stored",
        markup=False,
        highlight=False,
    )
    print(summary.events)


def _collect(source: str, paths: list[Path], as_json: bool) -> None:
    from tasks.collect.keys import collect_key_events

    for path in paths:
        if not path.exists():
            raise ValidationError(f"{path}: no such file or folder")
    with Progress(
        TextColumn(f"reading {source} logs"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=True,
    ) as progress:
        task = progress.add_task(source, total=None)
        summary = collect_key_events(
            _settings(), source, paths, progress=lambda done, total: progress.update(task, completed=done, total=total)
        )
    _print_summary(summary, as_json)


PathsArgument = Annotated[list[Path], typer.Argument(help="Log files or folders (searched recursively).")]
JsonOption = Annotated[bool, typer.Option("--json", help="Print the run's summary as one JSON line.")]


@collect_app.command("cloudtrail")
def cloudtrail(paths: PathsArgument, as_json: JsonOption = False) -> None:
    """Read AWS KMS events from CloudTrail log files (.json / .json.gz, one event per line too); each counts once.

    Prints a summary and, alone on the last line, the number of new events.

    Example: metrics collect cloudtrail ./AWSLogs/111122223333/CloudTrail
    """
    _collect("cloudtrail", paths, as_json)


@collect_app.command("vault")
def vault(paths: PathsArgument, as_json: JsonOption = False) -> None:
    """Read transit key events from Vault / OpenBao file audit logs; each request counts once.

    Prints a summary and, alone on the last line, the number of new events.

    Example: metrics collect vault /var/log/vault/audit.log
    """
    _collect("vault", paths, as_json)


@collect_app.command("health")
def health(as_json: JsonOption = False) -> None:
    """Check every health target once (configured and registered) and store health.target.* metrics.

    Targets come from monitoring.health_targets in main.json, METRICS_HEALTH_TARGETS (a JSON array of
    objects with target_id, name, target_type, endpoint, port, ...) or the Python API.

    Example: metrics collect health --json
    """
    from tasks.collect.health import run_health_checks

    summary = run_health_checks(_settings())
    if as_json:
        print(json.dumps(summary.to_dict()))
        return
    if not summary.results:
        out.print("no health targets (monitoring.health_targets, METRICS_HEALTH_TARGETS, or the Python API)")
        return
    _table([result.row() for result in summary.results])
    counts = summary.counts
    out.print(
        f"{counts['up']} up, {counts['degraded']} degraded, {counts['down']} down; {summary.stored} samples stored"
    )


def _table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    table = Table(title=title, header_style="bold", title_justify="left")
    for name in rows[0] if rows else ():
        table.add_column(name, overflow="fold")
    for row in rows:
        table.add_row(*("" if value is None else str(value) for value in row.values()))
    out.print(table)


def keys_report_command(
    fmt: Annotated[str, typer.Option("--format", "-f", help="table or json.")] = "table",
    open_only: Annotated[bool, typer.Option("--open", help="Only violations still open (state policies).")] = False,
) -> None:
    """The key estate and its policy violations: keys by state and algorithm, rotations due, findings.

    Example: metrics keys-report --format json
    """
    from tasks.keys.report import keys_report

    report = keys_report(_settings(), open_only=open_only)
    if fmt == "json":
        sys.stdout.write(json.dumps(report.to_dict()) + "\n")
        return
    if fmt != "table":
        raise ValidationError(f"--format: {fmt!r} is not one of table, json")
    keys = [
        {
            "key": key["key_id"],
            "source": key["source"],
            "state": key["state"],
            "algorithm": key["algorithm"],
            "age d": key["age_days"],
            "since rotation d": key["days_since_rotation"],
            "open": key["open_violations"],
        }
        for key in report.keys
    ]
    if keys:
        _table(keys, f"Keys ({len(keys)})")
    else:
        out.print("no keys yet: run `metrics collect cloudtrail PATH` or `metrics collect vault PATH`")
    summary = report.summary
    out.print(
        "by state: " + ", ".join(f"{k} {v}" for k, v in sorted(summary["by_state"].items())) or "by state: -",
        markup=False,
    )
    if report.violations:
        frame = pl.DataFrame(report.violations).select("key_id", "policy", "kind", "open", "count", "last_at", "detail")
        _table(frame.to_dicts(), f"Policy violations ({len(report.violations)})")
    else:
        out.print("no policy violations")
    overdue = summary["rotation_overdue"]
    out.print(f"rotation overdue: {', '.join(overdue) if overdue else 'none'}", markup=False)

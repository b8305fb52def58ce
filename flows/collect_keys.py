"""Flow ``collect-key-audit-logs``: read new CloudTrail and Vault audit events; count each once; check policies."""

from __future__ import annotations

from typing import Any

from prefect import flow

from metrics.settings import get_settings
from tasks.artifacts import dashboard_link, publish_table
from tasks.collect.keys import SOURCES, collect_key_events_task

ARTIFACT = "collect-key-audit-logs"


@flow(name="collect-key-audit-logs", log_prints=True)
def collect_key_audit_logs(sources: list[str] | None = None) -> dict[str, Any]:
    """Collect every configured source (``collector.cloudtrail_paths``, ``collector.vault_audit_paths``) once."""
    settings = get_settings()
    configured = {"cloudtrail": settings.cloudtrail_paths, "vault": settings.vault_audit_paths}
    chosen = [name for name in (sources or SOURCES) if configured.get(name)]
    if not chosen:
        print("no audit log paths configured (METRICS_CLOUDTRAIL_PATHS, METRICS_VAULT_AUDIT_PATHS): nothing read")
        link = {"dashboard": dashboard_link(settings, "keys")}
        publish_table(ARTIFACT, [{"result": "no audit log paths configured"}], "No key audit logs configured", link)
        return {}
    summaries = {name: collect_key_events_task(settings, name) for name in chosen}
    for summary in summaries.values():
        for problem in summary.problem_list:
            print(f"{summary.source}: skipped {problem}")
    rows = [
        {
            "source": s.source,
            "files": s.files,
            "new events": s.events,
            "duplicates": s.duplicates,
            "problems": s.problems,
            "keys": s.keys_total,
            "violations": s.violations,
            "samples": s.samples,
            "rejected": s.rejected,
            "seconds": round(s.seconds, 2),
        }
        for s in summaries.values()
    ]
    violations = sum(s.violations for s in summaries.values())
    figures = {
        "new events": sum(s.events for s in summaries.values()),
        "policy violations": violations,
        "problems": sum(s.problems for s in summaries.values()),
        "dashboard": dashboard_link(settings, "keys"),
    }
    if violations:
        figures["security"] = dashboard_link(settings, "security")
    publish_table(ARTIFACT, rows, "Key audit logs", figures)
    return {name: summary.to_dict() for name, summary in summaries.items()}

"""The five dashboards of the spec, declared as data: which panels, what each one queries, how it is drawn.

A :class:`Panel` is a chart (``timeseries``), a bar list (``bars``), a table
(``table``) or a ranking (``top``). Time-series and ranking panels read the
lake through :class:`Query` (a metric glob, an aggregation, the tags to split
by); the others read a named ``source`` (the key ledger, the alert store, the
``alert_events`` table). :mod:`metrics.web.panels` turns a panel and a time
range into what the browser draws; nothing here runs a query.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

from metrics.errors import NotFoundError

PanelKind = Literal["timeseries", "bars", "table", "top"]
FILTER_TAGS = ("host", "key_id", "algorithm")  # the tag filters a dashboard may offer


@dataclass(frozen=True)
class Query:
    """One aggregated lake query of a panel.

    Attributes:
        metric: glob over metric names (``system.network.bytes_*``).
        aggregation: avg, min, max, sum, count, last, rate, increase, p50, p95 or p99.
        group_by: tag keys each line stands for (``()``: one line per metric).
        tags: fixed tag filters (``{"route": ("/api/v1/query",)}``).
        label: a prefix for the lines' names (``p95``); default none.
        filters: the dashboard's tag filters this query honours (None: all of them).
    """

    metric: str
    aggregation: str
    group_by: tuple[str, ...] = ()
    tags: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    label: str = ""
    filters: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Panel:
    """One chart, bar list or table of a dashboard."""

    id: str
    title: str
    kind: PanelKind
    queries: tuple[Query, ...] = ()
    source: str = "lake"
    unit: str = ""
    description: str = ""
    anomalies: bool = False  # mark the stored anomalies of the queried metrics
    forecast: bool = False  # draw the newest forecast (yhat and its 80 % interval) of the top line
    top: int = 8  # at most this many lines (or rows), the largest first
    wide: bool = False  # spans the whole row


@dataclass(frozen=True)
class Dashboard:
    """A named page of panels with the tag filters it offers."""

    name: str
    title: str
    description: str
    filters: tuple[str, ...]
    panels: tuple[Panel, ...]

    def panel(self, panel_id: str) -> Panel:
        """The panel called ``panel_id``; raises :class:`NotFoundError`."""
        for panel in self.panels:
            if panel.id == panel_id:
                return panel
        known = ", ".join(p.id for p in self.panels)
        raise NotFoundError(f"dashboard {self.name!r} has no panel {panel_id!r}; it has: {known}")


def _ts(panel_id: str, title: str, *queries: Query, **options: object) -> Panel:
    return Panel(panel_id, title, "timeseries", queries, **options)  # type: ignore[arg-type]


SYSTEM = Dashboard(
    "system",
    "System overview",
    "CPU, memory, disk and network per host. Lines are the busiest hosts; filter by host for the rest.",
    ("host",),
    (
        _ts("cpu", "CPU use", Query("system.cpu.usage_total", "avg", ("host",)), unit="%", anomalies=True),
        _ts("memory", "Memory use", Query("system.memory.usage_percent", "avg", ("host",)), unit="%", anomalies=True),
        _ts(
            "disk",
            "Disk use, with its forecast",
            Query("system.disk.usage_percent", "max", ("host",)),
            unit="%",
            anomalies=True,
            forecast=True,
        ),
        _ts("load", "Load (1 min)", Query("system.load.1m", "avg", ("host",))),
        _ts(
            "network",
            "Network traffic",
            Query("system.network.bytes_recv", "rate", ("host",), label="in"),
            Query("system.network.bytes_sent", "rate", ("host",), label="out"),
            unit="B/s",
            wide=True,
        ),
    ),
)

SECURITY = Dashboard(
    "security",
    "Security",
    "Refused credentials, key access without permission, policy violations and who causes them.",
    ("key_id",),
    (
        _ts(
            "auth_failures",
            "API authentication failures",
            Query("application.api.auth_failures", "increase", (), filters=()),
            unit="refusals",
            anomalies=True,
        ),
        _ts(
            "unauthorized",
            "Unauthorized key access",
            Query("crypto.key.unauthorized_access", "increase", ("key_id",)),
            unit="events",
            anomalies=True,
        ),
        _ts(
            "violations",
            "Policy violations",
            Query("crypto.key.policy_violations", "increase", ("policy",)),
            unit="events",
        ),
        Panel(
            "principals",
            "Top offending principals",
            "top",
            (Query("crypto.key.unauthorized_access", "increase", ("principal",)),),
            unit="refused calls",
            top=10,
            description="Principals are pseudonyms (METRICS_PII_TAGS): the same person keeps the same one.",
        ),
        _ts(
            "events",
            "Security events by kind",
            Query("crypto.key.security_events", "increase", ("event",)),
            unit="events",
            wide=True,
        ),
    ),
)

KEYS = Dashboard(
    "keys",
    "Key management",
    "The key estate from the audit logs: states, algorithms, rotations due, usage and operation rates.",
    ("key_id", "algorithm"),
    (
        Panel("by_state", "Keys by state", "bars", source="keys.by_state", unit="keys"),
        Panel("by_algorithm", "Keys by algorithm", "bars", source="keys.by_algorithm", unit="keys"),
        Panel(
            "rotations",
            "Rotations due",
            "table",
            source="keys.rotations",
            description="Keys longest without rotation first; overdue ones break the rotation policy.",
            top=10,
        ),
        _ts(
            "operations",
            "Encrypt, decrypt and sign rates",
            Query("crypto.key.encryption_ops", "rate", (), label="encrypt"),
            Query("crypto.key.decryption_ops", "rate", (), label="decrypt"),
            Query("crypto.key.signing_ops", "rate", (), label="sign"),
            unit="ops/s",
            anomalies=True,
        ),
        _ts(
            "usage",
            "Usage per key",
            Query("crypto.key.access_count", "increase", ("key_id",)),
            unit="calls",
            wide=True,
        ),
        Panel("inventory", "Key inventory", "table", source="keys.inventory", top=500, wide=True),
    ),
)

PERFORMANCE = Dashboard(
    "performance",
    "Performance",
    "Response time percentiles and request rates of the monitored services, and this system's own API.",
    ("host",),
    (
        _ts(
            "latency",
            "Service response time percentiles",
            Query("http.request.latency_seconds", "p50", (), label="p50"),
            Query("http.request.latency_seconds", "p95", (), label="p95"),
            Query("http.request.latency_seconds", "p99", (), label="p99"),
            unit="s",
            anomalies=True,
        ),
        _ts("requests", "Service request rate", Query("http.requests_total", "rate", ("region",)), unit="req/s"),
        _ts(
            "api_requests",
            "API request rate",
            Query("application.api.request_rate", "sum", ("route",), filters=()),
            unit="req/s",
        ),
        _ts(
            "api_errors",
            "API error rates",
            Query("application.api.error_rate", "avg", (), label="server errors", filters=()),
            Query("application.api.client_error_rate", "avg", (), label="client errors", filters=()),
            unit="ratio",
        ),
        _ts(
            "ingest",
            "Ingest rate",
            Query("application.ingest.samples", "rate", (), filters=()),
            unit="samples/s",
        ),
        _ts(
            "query_latency",
            "Query latency",
            Query(
                "application.api.response_time",
                "avg",
                ("route",),
                tags={"route": ("/api/v1/query", "/api/v1/dashboards/{name}/panels/{panel_id}")},
                filters=(),
            ),
            Query("crypto.kms.call_latency_seconds", "p95", (), label="KMS call p95"),
            unit="s",
        ),
    ),
)

ALERTS = Dashboard(
    "alerts",
    "Alerts",
    "What is firing or pending now, silences, and how alerting has gone over the range.",
    (),
    (
        Panel("active", "Firing and pending", "table", source="alerts.active", top=200, wide=True),
        Panel("trend", "Alerts fired", "timeseries", source="alerts.trend", unit="alerts"),
        Panel("resolve", "Time to resolve", "timeseries", source="alerts.resolve", unit="min"),
        Panel("silences", "Silences", "table", source="alerts.silences", top=200, wide=True),
    ),
)

DASHBOARDS: dict[str, Dashboard] = {board.name: board for board in (SYSTEM, SECURITY, KEYS, PERFORMANCE, ALERTS)}


def dashboard(name: str) -> Dashboard:
    """The dashboard called ``name``; raises :class:`NotFoundError` naming the ones there are."""
    found = DASHBOARDS.get(name)
    if found is None:
        raise NotFoundError(f"no dashboard {name!r}; there are: {', '.join(DASHBOARDS)}")
    return found

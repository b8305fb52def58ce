"""Panel data by source: the lake (charts, rankings), the key ledger (bars, tables) and the alert store (tables).

:func:`panel_data` is the one entry point the HTTP route calls; it answers
every panel with a JSON-ready dict whose ``kind`` tells the browser how to
draw it, and times how long it took.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from metrics.settings import Settings
from metrics.web.boards import Dashboard, Panel
from metrics.web.panels import ALERT_EVENT_SQL, Window, alert_events_series, timeseries, top
from storage.store import MetricStore

KEY_COLUMNS = ("key_id", "source", "location", "state", "algorithm", "key_type", "age_days", "days_since_rotation")
ROTATION_COLUMNS = ("key_id", "algorithm", "days_since_rotation", "last_rotated_at", "overdue")
ALERT_COLUMNS = ("status", "priority", "rule_id", "series", "value", "active_at", "acknowledged_by")
SILENCE_COLUMNS = ("state", "matchers", "comment", "created_by", "starts_at", "ends_at")


def panel_data(
    store: MetricStore,
    settings: Settings,
    dashboard: Dashboard,
    panel: Panel,
    window: Window,
    chosen: Mapping[str, list[str]],
) -> dict[str, Any]:
    """What ``panel`` shows over ``window`` with the tag filters ``chosen`` (blocking: call it in a thread)."""
    started = time.perf_counter()
    if panel.source == "lake":
        if panel.kind == "top":
            data = top(store, dashboard, panel, window, chosen)
        else:
            data = timeseries(store, settings, dashboard, panel, window, chosen)
    elif panel.source in ALERT_EVENT_SQL:
        data = alert_events_series(store, panel, window)
    else:
        reader = SOURCES[panel.source]
        data = reader(settings, panel, chosen)
    data["title"] = panel.title
    data["elapsed_ms"] = round((time.perf_counter() - started) * 1000, 1)
    return data


# -- the key ledger -------------------------------------------------------------------------
def _keys(settings: Settings, chosen: Mapping[str, list[str]]) -> dict[str, Any]:
    from tasks.keys.report import keys_report

    report = keys_report(settings).to_dict()
    wanted = {"key_id": chosen.get("key_id") or [], "algorithm": chosen.get("algorithm") or []}
    report["keys"] = [
        key for key in report["keys"] if all(not values or key[name] in values for name, values in wanted.items())
    ]
    return report


def _bars(counts: Counter[str], panel: Panel) -> dict[str, Any]:
    ranked = sorted(counts.items(), key=lambda item: (-item[1], item[0]))
    return {
        "kind": "bars",
        "unit": panel.unit,
        "labels": [label for label, _ in ranked[: panel.top]],
        "values": [count for _, count in ranked[: panel.top]],
        "hidden": max(0, len(ranked) - panel.top),
    }


def _table(columns: tuple[str, ...], rows: Sequence[Mapping[str, Any]], panel: Panel, **extra: Any) -> dict[str, Any]:
    return {
        "kind": "table",
        "columns": list(columns),
        "rows": [[row.get(column) for column in columns] for row in rows[: panel.top]],
        "hidden": max(0, len(rows) - panel.top),
        **extra,
    }


def keys_by_state(settings: Settings, panel: Panel, chosen: Mapping[str, list[str]]) -> dict[str, Any]:
    """How many keys are in each state."""
    return _bars(Counter(key["state"] for key in _keys(settings, chosen)["keys"]), panel)


def keys_by_algorithm(settings: Settings, panel: Panel, chosen: Mapping[str, list[str]]) -> dict[str, Any]:
    """How many keys use each algorithm."""
    return _bars(Counter(key["algorithm"] for key in _keys(settings, chosen)["keys"]), panel)


def key_rotations(settings: Settings, panel: Panel, chosen: Mapping[str, list[str]]) -> dict[str, Any]:
    """Usable keys, longest without rotation first, with whether the rotation policy calls them overdue."""
    report = _keys(settings, chosen)
    overdue = set(report["summary"]["rotation_overdue"])
    rows = [
        {**key, "overdue": key["key_id"] in overdue}
        for key in report["keys"]
        if key["state"] not in ("pending_deletion", "deleted", "destroyed")
    ]
    rows.sort(key=lambda key: (-key["days_since_rotation"], key["key_id"]))
    return _table(ROTATION_COLUMNS, rows, panel, flag="overdue")


def key_inventory(settings: Settings, panel: Panel, chosen: Mapping[str, list[str]]) -> dict[str, Any]:
    """Every key with its state, algorithm and ages."""
    keys = sorted(_keys(settings, chosen)["keys"], key=lambda key: (key["source"], key["location"], key["key_id"]))
    return _table(KEY_COLUMNS, keys, panel)


# -- the alert store ----------------------------------------------------------------------------
def active_alerts(settings: Settings, panel: Panel, chosen: Mapping[str, list[str]]) -> dict[str, Any]:
    """Firing and pending alerts, most urgent first, each with its id for acknowledging."""
    from alerts.store import AlertStore

    frame = AlertStore(settings).listing()
    rows = [
        {**row, "active_at": _iso(row["active_at"])}
        for row in frame.to_dicts()
        if row["status"] in ("firing", "pending")
    ]
    return _table(ALERT_COLUMNS, rows, panel, ids=[row["alert_id"] for row in rows[: panel.top]], action="acknowledge")


def silences(settings: Settings, panel: Panel, chosen: Mapping[str, list[str]]) -> dict[str, Any]:
    """Silences pending or active, and those expired in the last day."""
    from alerts.silences import Silences
    from alerts.store import AlertStore

    rows = [
        {**silence.to_dict(), "matchers": ", ".join(str(m) for m in silence.matchers)}
        for silence in Silences(AlertStore(settings)).all()
    ]
    rows.sort(key=lambda row: ({"active": 0, "pending": 1}.get(row["state"], 2), row["ends_at"]))
    return _table(
        SILENCE_COLUMNS,
        rows,
        panel,
        ids=[row["silence_id"] for row in rows[: panel.top]],
        action="expire",
        actionable=[row["state"] in ("active", "pending") for row in rows[: panel.top]],
    )


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.astimezone(UTC).isoformat().replace("+00:00", "Z")


SOURCES: dict[str, Callable[[Settings, Panel, Mapping[str, list[str]]], dict[str, Any]]] = {
    "keys.by_state": keys_by_state,
    "keys.by_algorithm": keys_by_algorithm,
    "keys.rotations": key_rotations,
    "keys.inventory": key_inventory,
    "alerts.active": active_alerts,
    "alerts.silences": silences,
}

"""``/api/v1/dashboards``: the dashboards' definitions, each panel's data and its SQL, and the tag filter values.

The web UI (:mod:`metrics.web.pages`) draws what these return; any client
with a reader key may call them too. Example:
``GET /api/v1/dashboards/system/panels/cpu?start=6h&tag=host=host-001``.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, Literal

import orjson
import polars as pl
from fastapi import APIRouter, Depends, Query, Request
from fastapi.concurrency import run_in_threadpool

from metrics.api.app import JSONResponse, store_of
from metrics.api.auth import Principal, Role, requires
from metrics.api.routes.query import when
from metrics.errors import ValidationError
from metrics.web.boards import DASHBOARDS, FILTER_TAGS, Dashboard, dashboard
from metrics.web.panels import Window, panel_sql
from metrics.web.sources import panel_data

router = APIRouter(prefix="/api/v1/dashboards", tags=["dashboards"])
MAX_FILTER_VALUES = 500
MAX_TAGS = 20  # tag filters per panel request
MAX_TAG_LENGTH = 256
DEFAULT_RANGE = timedelta(hours=1)


def describe(board: Dashboard) -> dict[str, Any]:
    """A dashboard's definition as the browser needs it (no queries: those stay on the server)."""
    return {
        "name": board.name,
        "title": board.title,
        "description": board.description,
        "filters": list(board.filters),
        "panels": [
            {
                "id": panel.id,
                "title": panel.title,
                "kind": "bars" if panel.kind == "top" else panel.kind,
                "unit": panel.unit,
                "description": panel.description,
                "wide": panel.wide,
                "actions": panel.source in ("alerts.active", "alerts.silences"),
            }
            for panel in board.panels
        ],
    }


def window_of(start: str | None, end: str | None) -> Window:
    """The window of ``start``/``end`` (durations ago or ISO 8601); the last hour by default."""
    now = datetime.now(UTC)
    upper = when(end, "end", now) or now
    lower = when(start, "start", now) or upper - DEFAULT_RANGE
    return Window.of(lower, upper)


def chosen_filters(board: Dashboard, tag: list[str]) -> dict[str, list[str]]:
    """``host=web-1`` items as {key: [values]}, only for the filters the dashboard offers."""
    chosen: dict[str, list[str]] = {}
    if len(tag) > MAX_TAGS:
        raise ValidationError(f"tag: at most {MAX_TAGS} filters, got {len(tag)}")
    for item in tag:
        if len(item) > MAX_TAG_LENGTH:
            raise ValidationError(f"tag: a filter is at most {MAX_TAG_LENGTH} characters")
        key, sep, value = item.partition("=")
        key, value = key.strip(), value.strip()
        if not sep or not key or not value:
            raise ValidationError(f"tag: {item!r} is not key=value")
        if key not in board.filters:
            offered = ", ".join(board.filters) or "none"
            raise ValidationError(f"tag: dashboard {board.name!r} does not filter by {key!r}; it offers: {offered}")
        chosen.setdefault(key, []).append(value)
    return chosen


@router.get("", summary="The dashboards and their panels")
async def list_dashboards(principal: Principal = Depends(requires(Role.READER, Role.WRITER))) -> JSONResponse:
    """Every dashboard's name, title, tag filters and panels. Example: ``GET /api/v1/dashboards``."""
    return JSONResponse({"dashboards": [describe(board) for board in DASHBOARDS.values()]})


@router.get("/{name}", summary="One dashboard's definition")
async def get_dashboard(name: str, principal: Principal = Depends(requires(Role.READER, Role.WRITER))) -> JSONResponse:
    """A dashboard's title, filters and panels. Example: ``GET /api/v1/dashboards/system``."""
    return JSONResponse(describe(dashboard(name)))


@router.get("/{name}/panels/{panel_id}", summary="What one panel shows over a time range")
async def get_panel(
    request: Request,
    name: str,
    panel_id: str,
    start: str | None = Query(None, max_length=64, description="Duration ago (1h) or ISO 8601; default 1h"),
    end: str | None = Query(None, max_length=64, description="Duration ago or ISO 8601; default now"),
    tag: list[str] = Query(default_factory=list, description="A dashboard filter, key=value (repeatable)"),
    view: Literal["data", "sql"] = Query("data", description="data, or the panel's DuckDB SQL"),
    principal: Principal = Depends(requires(Role.READER, Role.WRITER)),
) -> JSONResponse:
    """A chart's aligned series (``x``, ``series``, ``anomalies``, ``forecast``), bars or table rows.

    With ``view=sql`` the panel's query as DuckDB SQL over the lake's views, to paste into ``metrics sql``.
    Example: ``GET /api/v1/dashboards/system/panels/cpu?start=24h&tag=host=host-001``.
    """
    board = dashboard(name)
    panel = board.panel(panel_id)
    window = window_of(start, end)
    chosen = chosen_filters(board, tag)
    store, settings = store_of(request), request.app.state.settings
    if view == "sql":
        text = await run_in_threadpool(panel_sql, store, board, panel, window, chosen)
        return JSONResponse({"sql": text, "interval": window.interval})
    data = await run_in_threadpool(panel_data, store, settings, board, panel, window, chosen)
    return JSONResponse(data)


@router.get("/{name}/filters", summary="The values each tag filter of a dashboard can take")
async def get_filters(
    request: Request, name: str, principal: Principal = Depends(requires(Role.READER, Role.WRITER))
) -> JSONResponse:
    """For each filter the dashboard offers, the values its metrics' series have (up to 500, sorted).

    Example: ``GET /api/v1/dashboards/system/filters`` → ``{"host": ["host-001", …]}``.
    """
    board = dashboard(name)

    def run() -> dict[str, list[str]]:
        metrics = {query.metric for panel in board.panels for query in panel.queries}
        frames = [store_of(request).engine.series(metric) for metric in sorted(metrics)]
        values: dict[str, set[str]] = {key: set() for key in board.filters if key in FILTER_TAGS}
        for frame in frames:
            for tags in frame.get_column("tags").to_list() if frame.height else []:
                parsed = orjson.loads(tags) if tags else {}
                for key, found in values.items():
                    if key in parsed:
                        found.add(str(parsed[key]))
        return {key: sorted(found)[:MAX_FILTER_VALUES] for key, found in values.items()}

    return JSONResponse(await run_in_threadpool(run))


__all__ = ["describe", "pl", "router"]

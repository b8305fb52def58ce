"""Prefect artifacts: what each flow run did, as a table with a headline, or a markdown page, in the Prefect UI.

Every flow's artifact links to the web UI's dashboard of what it did
(:func:`dashboard_link`): ``<base>/dashboards/<name>`` with ``name`` one of
:data:`DASHBOARDS`, the base ``dashboard_url`` (default the API's address).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from fnmatch import fnmatchcase
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext, TaskRunContext

from metrics.errors import ValidationError
from metrics.settings import Settings
from metrics.web.boards import DASHBOARDS as BOARDS
from metrics.web.boards import FILTER_TAGS

log = logging.getLogger(__name__)

DASHBOARDS = tuple(BOARDS)  # the web UI's dashboards, declared in metrics.web.boards (plain data, no I/O)
DEFAULT_DASHBOARD = "system"
# A metric's dashboard: the first glob it matches (order matters: the security counters of keys before crypto.*).
METRIC_DASHBOARDS: tuple[tuple[str, str], ...] = (
    ("crypto.key.unauthorized_access", "security"),
    ("crypto.key.policy_violations", "security"),
    ("crypto.key.security_events", "security"),
    ("application.api.auth_failures", "security"),
    ("security.*", "security"),
    ("crypto.*", "keys"),
    ("system.*", "system"),
    ("application.*", "performance"),
    ("http.*", "performance"),
    ("health.*", "performance"),
)
_RANGE_UNITS = (("d", 86_400), ("h", 3600), ("m", 60), ("s", 1))


def human_bytes(size: float) -> str:
    """``1536`` -> ``1.5 kB`` (decimal units, as disks are sold)."""
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if abs(size) < 1000 or unit == "TB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1000
    raise AssertionError("unreachable")


def headline(title: str, figures: Mapping[str, Any]) -> str:
    """A markdown headline: ``**title** — a: 1 · b: 2``."""
    parts = " · ".join(f"{name}: {value}" for name, value in figures.items())
    return f"**{title}** — {parts}" if parts else f"**{title}**"


def dashboard_for(metric: str) -> str:
    """The dashboard a metric belongs on: ``system.*`` → system, ``crypto.*`` → keys, the security counters
    (unauthorised access, policy violations, security events, API auth failures) → security,
    ``application.*``, ``http.*`` and ``health.*`` → performance; anything else → system."""
    return next((name for pattern, name in METRIC_DASHBOARDS if fnmatchcase(metric, pattern)), DEFAULT_DASHBOARD)


def dashboard_url(settings: Settings, name: str, **params: Any) -> str:
    """``<base>/dashboards/<name>?<params>``: the base is ``dashboard_url`` or the API's address; parameters that
    are None are left out, the others URL-encoded (``range="24h", host="web-1"``)."""
    if name not in DASHBOARDS:
        raise ValidationError(f"unknown dashboard {name!r}; the dashboards are {', '.join(DASHBOARDS)}")
    base = (settings.dashboard_url or f"http://{settings.api_host}:{settings.api_port}").rstrip("/")
    query = urlencode({key: str(value) for key, value in params.items() if value is not None}, quote_via=quote)
    return f"{base}/dashboards/{name}" + (f"?{query}" if query else "")


def dashboard_link(settings: Settings, name: str, **params: Any) -> str:
    """A markdown link ``[<name> dashboard](<url>)`` to a dashboard of the web UI (see :func:`dashboard_url`)."""
    return f"[{name} dashboard]({dashboard_url(settings, name, **params)})"


def dashboard_filters(tags: Mapping[str, Any]) -> dict[str, str]:
    """The tags of a series that a dashboard filters by (``host``, ``key_id``, ``algorithm``), as parameters."""
    return {name: str(tags[name]) for name in FILTER_TAGS if tags.get(name) not in (None, "")}


def range_param(seconds: float) -> str:
    """A dashboard's ``range`` for a span: ``86400`` → ``1d``, ``259200`` → ``3d``, ``5400`` → ``90m``
    (the largest unit that divides it; at least one second)."""
    whole = max(1, round(seconds))
    unit, size = next((unit, size) for unit, size in _RANGE_UNITS if whole % size == 0)
    return f"{whole // size}{unit}"


def publish_table(key: str, rows: Sequence[Mapping[str, Any]], title: str, figures: Mapping[str, Any]) -> UUID | None:
    """Attach a table artifact (with a headline of ``figures``) to the running flow; None outside a run.

    ``key`` names the artifact's history in the UI (lowercase letters, digits
    and dashes). An empty table still gets one row saying so, so every run
    shows what it did, even when that was nothing.
    """
    if not _in_run():
        return None
    table = [dict(row) for row in rows] or [{"result": "nothing to do"}]
    created = create_table_artifact(table=table, key=key, description=headline(title, figures))
    assert not inspect.isawaitable(created)  # Prefect returns a coroutine only in async code
    return created


def publish_markdown(key: str, markdown: str, description: str) -> UUID | None:
    """Attach a markdown artifact (a chart as a ``data:`` image, say) to the running flow; None outside a run.

    The Prefect UI sanitises the markdown but keeps ``data:image/png`` images,
    so a picture embedded this way needs no file server to be seen.
    """
    if not _in_run():
        return None
    created = create_markdown_artifact(markdown=markdown, key=key, description=description)
    assert not inspect.isawaitable(created)
    return created


def publish_chart(
    settings: Settings,
    key: str,
    png: bytes,
    *,
    filename: str,
    title: str,
    description: str,
    alt: str | None = None,
    footer: str = "",
) -> Path:
    """Keep a chart as ``<data_dir>/charts/<filename>`` and attach it to the running flow as a markdown artifact.

    The markdown is ``### title``, the picture as a ``data:`` image (``alt`` its text, default the title) and
    ``footer`` (advice, a dashboard link). The file is written in or outside a run; its path is returned.
    """
    from metrics.charts import data_uri, save_png  # matplotlib: only in the flows that draw

    target = save_png(png, settings.data_dir / "charts" / filename)
    markdown = f"### {title}\n\n![{alt or title}]({data_uri(png)})\n\n{footer}"
    publish_markdown(key, markdown, description)
    return target


def _in_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None

"""Prefect artifacts: what each flow run did, as a table with a headline, or a markdown page, in the Prefect UI."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Mapping, Sequence
from typing import Any
from uuid import UUID

from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.context import FlowRunContext, TaskRunContext

log = logging.getLogger(__name__)


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


def _in_run() -> bool:
    return FlowRunContext.get() is not None or TaskRunContext.get() is not None

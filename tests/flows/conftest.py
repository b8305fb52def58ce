"""A real Prefect test server for the whole session, and flow runs against a temporary data directory."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit
from uuid import UUID

import pytest

os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import Artifact
from prefect.states import State
from prefect.testing.utilities import prefect_test_harness

from metrics.settings import Settings
from tests.alerts.channels import receiver  # noqa: F401  (the recording HTTP server, for the alert flow)


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[None]:
    """Prefect's test harness: a temporary server and database, shared by every flow test."""
    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture
def flow_settings(prefect_server: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Point the flows (which read their settings from the environment) at a fresh data directory."""
    data_dir = tmp_path / "data"
    monkeypatch.setenv("METRICS_DATA_DIR", str(data_dir))
    monkeypatch.setenv("METRICS_SYSTEM_INTERVAL", "1")
    monkeypatch.setenv("METRICS_BACKUP_KEEP", "2")
    monkeypatch.delenv("METRICS_CONFIG", raising=False)
    return Settings.from_env()


RunFlow = Callable[..., tuple[Any, list[Artifact]]]


@pytest.fixture
def run_flow(prefect_server: None) -> RunFlow:
    """Run a flow to completion; return its result and the artifacts its run published."""

    def run(flow: Any, **parameters: Any) -> tuple[Any, list[Artifact]]:
        state: State[Any] = flow(**parameters, return_state=True)
        assert state.is_completed(), state.message
        flow_run_id = state.state_details.flow_run_id
        assert isinstance(flow_run_id, UUID)
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )
        return state.result(), artifacts

    return run


DASHBOARD_LINK = re.compile(r"\[(\w+) dashboard\]\(([^)\s]+)\)")


def dashboard_links(artifact: Artifact) -> dict[str, dict[str, str]]:
    """The dashboards an artifact links to (in its headline or its markdown): name -> the link's query parameters.

    Every link is checked to be ``[<name> dashboard](<base>/dashboards/<name>?…)``.
    """
    found: dict[str, dict[str, str]] = {}
    for name, url in DASHBOARD_LINK.findall(f"{artifact.description or ''}\n{artifact.data or ''}"):
        parts = urlsplit(url)
        assert parts.scheme in ("http", "https"), url
        assert parts.path.endswith(f"/dashboards/{name}"), url
        found[name] = dict(parse_qsl(parts.query))
    return found

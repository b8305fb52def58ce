"""The ``scrape-targets`` flow against a loopback target: rows in the lake and a table artifact per target."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from typing import Any

import pytest

from flows.scrape import scrape_targets_flow
from metrics.settings import Settings
from storage.store import MetricStore
from tests.exposition import ExpositionServer, Route
from tests.flows.conftest import RunFlow, dashboard_links

BODY = b"""# TYPE app_requests_total counter
app_requests_total{route="/a"} 10
app_requests_total{route="/b"} 4
# TYPE app_temperature_celsius gauge
app_temperature_celsius 21.5
"""


@pytest.fixture
def target() -> Iterator[ExpositionServer]:
    with ExpositionServer({"/metrics": Route(BODY)}) as server:
        yield server


def dead_url() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{probe.getsockname()[1]}/metrics"


def test_the_configured_targets_are_scraped_and_reported(
    flow_settings: Settings, run_flow: RunFlow, target: ExpositionServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_SCRAPE_TARGETS", f"app={target.url()},gone={dead_url()}")
    monkeypatch.setenv("METRICS_SCRAPE_TIMEOUT", "2")
    summary, artifacts = run_flow(scrape_targets_flow)
    assert summary["up"] == 1
    assert summary["stored"] == 3 + 2 * 3  # three samples, and up & co. of both targets
    (artifact,) = artifacts
    assert artifact.key == "scrape-targets"
    assert artifact.type == "table"
    assert "targets up: 1/2" in (artifact.description or "")
    assert dashboard_links(artifact) == {"performance": {}}
    assert isinstance(artifact.data, str)  # a table artifact's rows, as JSON
    by_job: dict[str, dict[str, Any]] = {row["job"]: row for row in json.loads(artifact.data)}
    assert (by_job["app"]["up"], by_job["app"]["samples"], by_job["app"]["error"]) == (1, 3, "")
    assert by_job["gone"]["up"] == 0
    assert "ConnectError" in by_job["gone"]["error"]
    with MetricStore(flow_settings, read_only=True).open(background_flush=False) as store:
        found = store.sql("SELECT metric, value, tags FROM samples WHERE metric LIKE 'app_%' ORDER BY metric, tags")
        up = store.sql("SELECT tags, value FROM samples WHERE metric = 'up' ORDER BY value")
    assert found.get_column("metric").to_list() == [*["app_requests_total"] * 2, "app_temperature_celsius"]
    assert json.loads(found["tags"][2]) == {"job": "app", "instance": f"127.0.0.1:{target.port}"}
    assert [(json.loads(tags)["job"], value) for tags, value in up.iter_rows()] == [("gone", 0.0), ("app", 1.0)]


def test_targets_given_to_the_run_replace_the_configured_ones(
    flow_settings: Settings, run_flow: RunFlow, target: ExpositionServer
) -> None:
    summary, _ = run_flow(scrape_targets_flow, targets=[f"adhoc={target.url()}"])
    (result,) = summary["targets"]
    assert (result["job"], result["up"], result["stored"]) == ("adhoc", True, 3)


def test_without_targets_the_flow_says_so(
    flow_settings: Settings, run_flow: RunFlow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("METRICS_SCRAPE_TARGETS", raising=False)
    summary, artifacts = run_flow(scrape_targets_flow)
    assert summary["targets"] == []
    (artifact,) = artifacts
    assert artifact.key == "scrape-targets"
    assert "no targets configured" in str(artifact.data)
    assert dashboard_links(artifact) == {"performance": {}}
    assert not flow_settings.lake_dir.exists()

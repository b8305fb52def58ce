"""Scrape our own HTTP API's ``/metrics`` (uvicorn in a subprocess on loopback) through the scrape task."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from metrics.settings import Settings
from storage.store import MetricStore
from tasks.collect.prometheus import scrape_targets
from tests.servers import scrubbed_env, uvicorn_api

pytestmark = [pytest.mark.integration, pytest.mark.slow]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 15.0


@pytest.fixture
def api(tmp_path: Path) -> Iterator[str]:
    """The API over its own temporary lake, without credentials (``METRICS_INSECURE_DEV``); yields its base URL."""
    data_dir = str(tmp_path / "api-data")
    env = scrubbed_env(("METRICS_", "PREFECT_"), METRICS_DATA_DIR=data_dir, METRICS_INSECURE_DEV="true")
    log = tmp_path / "uvicorn.log"
    with uvicorn_api(log, env, start_timeout=START_TIMEOUT, stop_timeout=STOP_TIMEOUT) as (base, _):
        yield base


def test_the_apis_own_metrics_are_scraped_into_the_lake(api: str, settings: Settings) -> None:
    summary = scrape_targets.fn(settings, [f"metrics-api={api}/metrics"])
    (result,) = summary.targets
    assert result.up, result.error
    assert result.samples > 10
    assert result.rejected == 0, result.rejection
    instance = api.removeprefix("http://")
    with MetricStore(settings, read_only=True).open(background_flush=False) as store:
        found = store.sql("SELECT metric, type, tags, value FROM samples")
    tags = [json.loads(text) for text in found.get_column("tags")]
    assert all((t["job"], t["instance"]) == ("metrics-api", instance) for t in tags)
    assert {"counter", "gauge", "histogram"} <= set(found.get_column("type"))
    buckets = [t for metric, t in zip(found.get_column("metric"), tags, strict=True) if metric.endswith("_bucket")]
    assert buckets
    assert all("le" in t for t in buckets)
    assert {"+Inf"} <= {t["le"] for t in buckets}
    up = found.filter(found.get_column("metric") == "up")
    assert up.get_column("value").to_list() == [1.0]

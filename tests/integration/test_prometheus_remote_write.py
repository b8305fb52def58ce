"""A real Prometheus scrapes our ``/metrics`` and remote-writes everything it has into our ``/api/v1/write``.

Both run on loopback: the API as a uvicorn subprocess with real API keys (a
writer key for remote-write, a reader key for the scrape), Prometheus with a
temporary config and TSDB. The test installs Debian's ``prometheus`` package
when the binary is missing (CI machines are fresh), and skips, saying why,
only when it cannot.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from metrics.api.keys import close_key_stores, create_key
from metrics.settings import Settings
from tests.servers import apt_install, free_port, scrubbed_env, spawn, stop_process, uvicorn_api, wait_for_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0
ARRIVAL_TIMEOUT = 90.0


def prometheus_binary() -> str:
    """The ``prometheus`` executable: on PATH, or installed from Debian's package now; else the test is skipped."""
    found, how = apt_install("prometheus", lambda: shutil.which("prometheus"), allow_sudo=True)
    if found is None:
        pytest.skip(how)
    print(f"prometheus: {found} ({how})")
    return found


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, str]:
    """A writer key (remote-write) and a reader key (scrape, queries) in the API's key database."""
    settings = Settings(data_dir=tmp_path / "api-data")
    tokens = {role: create_key(settings, f"prometheus-{role}", role)[1] for role in ("writer", "reader")}
    close_key_stores()
    return tokens


@pytest.fixture
def api(tmp_path: Path, keys: dict[str, str]) -> Iterator[str]:
    """The API as a uvicorn subprocess over its own lake, with credentials required; yields its base URL."""
    env = scrubbed_env(METRICS_DATA_DIR=str(tmp_path / "api-data"), METRICS_INSECURE_DEV="false")
    log = tmp_path / "uvicorn.log"
    with uvicorn_api(log, env, "--no-access-log", start_timeout=START_TIMEOUT, stop_timeout=STOP_TIMEOUT) as (base, _):
        yield base


def prometheus_config(api: str, keys: dict[str, str]) -> str:
    host = api.removeprefix("http://")
    return f"""
global:
  scrape_interval: 1s
  evaluation_interval: 1s
scrape_configs:
  - job_name: metrics-api
    authorization:
      credentials: {keys["reader"]}
    static_configs:
      - targets: ["{host}"]
remote_write:
  - url: {api}/api/v1/write
    authorization:
      credentials: {keys["writer"]}
    remote_timeout: 10s
    queue_config:
      capacity: 500
      max_samples_per_send: 200
      batch_send_deadline: 1s
      min_backoff: 100ms
      max_backoff: 1s
    metadata_config:
      send: true
      send_interval: 2s
"""


@pytest.fixture
def prometheus_path() -> str:
    """The prometheus executable (installed now if need be), found before anything starts."""
    return prometheus_binary()


@pytest.fixture
def prometheus(prometheus_path: str, tmp_path: Path, api: str, keys: dict[str, str]) -> Iterator[str]:
    """Prometheus on loopback scraping the API and remote-writing to it; yields its base URL."""
    binary = prometheus_path
    config = tmp_path / "prometheus.yml"
    config.write_text(prometheus_config(api, keys))
    port = free_port()
    log = tmp_path / "prometheus.log"
    command = [
        binary,
        f"--config.file={config}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.remote.flush-deadline=5s",
        "--log.level=info",
    ]
    process = spawn(command, log, cwd=tmp_path)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for_http(f"{base}/-/ready", process, log, timeout=START_TIMEOUT, what="prometheus")
        yield base
    finally:
        stop_process(process, STOP_TIMEOUT)  # first, while the API still answers: its remote-write queue drains quickly


def query(api: str, token: str, metric: str) -> list[dict[str, Any]]:
    response = httpx.get(
        f"{api}/api/v1/query",
        params={"metric_pattern": metric, "start_time": "10m"},
        headers={"Authorization": f"Bearer {token}"},
        timeout=10,
        trust_env=False,
    )
    assert response.status_code == 200, response.text
    data: list[dict[str, Any]] = response.json()["data"]
    return data


def test_prometheus_scrapes_us_and_remote_writes_into_the_lake(
    prometheus_path: str, tmp_path: Path, api: str, keys: dict[str, str], prometheus: str
) -> None:
    reader = keys["reader"]
    deadline = time.monotonic() + ARRIVAL_TIMEOUT
    wanted = (
        "up",
        "scrape_duration_seconds",
        "metrics_http_requests_total",
        "metrics_http_request_duration_seconds_bucket",
    )
    found: dict[str, list[dict[str, Any]]] = {}
    while True:
        found = {metric: query(api, reader, metric) for metric in wanted}
        ours = [row for rows in found.values() for row in rows if row["tags"].get("job") == "metrics-api"]
        # The scrape requests are counted from the 2nd scrape on; the counter and the histogram of a scrape
        # may arrive in different remote-write requests, so wait for the counter itself.
        scrapes = [r for r in found["metrics_http_requests_total"] if r["tags"].get("route") == "/metrics"]
        if len({row["metric"] for row in ours}) == len(wanted) and scrapes:
            break
        assert time.monotonic() < deadline, (
            f"not all of {wanted} arrived within {ARRIVAL_TIMEOUT} s; "
            f"found {sorted(k for k, v in found.items() if v)}; "
            f"prometheus log: {(tmp_path / 'prometheus.log').read_text(errors='replace')[-2000:]}"
        )
        time.sleep(0.5)
    ups = [row for row in found["up"] if row["tags"].get("job") == "metrics-api"]
    assert {row["value"] for row in ups} == {1.0}  # every scrape with the reader key worked
    assert {row["tags"]["instance"] for row in ups} == {api.removeprefix("http://")}
    assert {row["type"] for row in ups} == {"gauge"}
    requests = [r for r in found["metrics_http_requests_total"] if r["tags"].get("route") == "/metrics"]
    assert requests, "the scrape requests themselves are counted, by route template"
    assert {r["type"] for r in requests} == {"counter"}
    assert {r["type"] for r in found["metrics_http_request_duration_seconds_bucket"]} == {"histogram"}
    # our /metrics tells the same story: samples arrived by remote-write, none refused
    exposition = httpx.get(f"{api}/metrics", headers={"Authorization": f"Bearer {reader}"}, timeout=10, trust_env=False)
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(exposition.text)
        for sample in family.samples
    }
    assert samples[("metrics_ingested_samples_total", (("route", "/api/v1/write"),))] > 0
    refused = {key: count for key, count in samples.items() if key[0] == "metrics_rejected_samples_total"}
    assert not refused, refused

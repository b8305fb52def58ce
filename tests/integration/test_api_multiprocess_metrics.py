"""``/metrics`` of a two-worker API (``PROMETHEUS_MULTIPROC_DIR``) counts every worker's requests, whoever answers."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.servers import PROJECT, free_port, scrubbed_env, spawn, stop_process

pytestmark = [pytest.mark.integration, pytest.mark.slow]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 20.0


def health_count(text: str) -> float:
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "metrics_http_requests_total" and sample.labels.get("route") == "/health"
    )


def test_two_workers_one_exposition(tmp_path: Path) -> None:
    """`metrics serve --workers 2` gives its workers a shared prometheus_client folder by itself."""
    port = free_port()
    env = scrubbed_env(METRICS_DATA_DIR=str(tmp_path / "data"))
    log = tmp_path / "uvicorn.log"
    command = [sys.executable, "-m", "metrics", "serve", "--workers", "2", "--insecure-dev"]
    process = spawn([*command, "--host", "127.0.0.1", "--port", str(port)], log, cwd=PROJECT, env=env)
    base = f"http://127.0.0.1:{port}"
    answered = 0
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while answered < 40:  # fresh connections: the kernel spreads them over both workers
            assert process.poll() is None, log.read_text(errors="replace")[-3000:]
            assert time.monotonic() < deadline, f"only {answered} answers within {START_TIMEOUT} s"
            try:
                if httpx.get(f"{base}/health", timeout=5, trust_env=False).status_code == 200:
                    answered += 1
            except httpx.TransportError:
                time.sleep(0.2)
        per_process: set[str] = set()
        for _ in range(6):
            response = httpx.get(f"{base}/metrics", timeout=5, trust_env=False)
            assert response.status_code == 200
            assert health_count(response.text) == answered  # the same total, whichever worker answers
            per_process.update(line for line in response.text.splitlines() if line.startswith("process_"))
        assert not per_process, "per-process collectors stay off in multiprocess mode"
        (folder,) = (tmp_path / "data" / "run").glob("prometheus-*")
        assert {p.name.split("_")[0] for p in folder.iterdir()} >= {"counter", "histogram"}  # values in files
    finally:
        stop_process(process, STOP_TIMEOUT)

"""Remote-write throughput through the real endpoint: uvicorn in a subprocess, pre-encoded Prometheus-shaped requests.

Each request carries ``series_per_request`` series with one sample each (the
shape Prometheus sends: every scrape adds one sample per series); the same
series come back round after round with later timestamps, so the first round
is "cold" (new series) and the rest "warm". Figures are printed as one JSON
line; the test checks their shape, never a wall-clock limit. The figure the
README quotes comes from :func:`run_bench` at a larger size.
"""

from __future__ import annotations

import json
import os
import statistics
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from remote_write_requests import HEADERS, body, node_series

from metrics.api.keys import close_key_stores, create_key
from metrics.settings import Settings
from storage.store import MetricStore
from tests.servers import scrubbed_env, uvicorn_api

pytestmark = [pytest.mark.performance, pytest.mark.slow, pytest.mark.integration]
START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
REQUEST_TIMEOUT = 60.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process and its children that are alive (Linux /proc; uvicorn's workers)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            tail = stat.read_text().rpartition(")")[2]
        except OSError:  # gone meanwhile
            continue
        fields = tail.split()
        if int(stat.parent.name) == pid or int(fields[1]) == pid:
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def send_all(base: str, bodies: list[bytes], headers: dict[str, str], concurrency: int) -> tuple[list[float], int]:
    """POST every body with ``concurrency`` keep-alive clients; (latencies in s, errors)."""
    queue = list(reversed(bodies))
    lock = threading.Lock()
    latencies: list[float] = []
    errors: list[str] = []

    def worker() -> None:
        with httpx.Client(base_url=base, timeout=REQUEST_TIMEOUT, trust_env=False) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    content = queue.pop()
                started = time.perf_counter()
                try:
                    response = client.post("/api/v1/write", content=content, headers=headers)
                    problem = None if response.status_code == 200 else response.text[:200]
                except httpx.HTTPError as exc:
                    problem = repr(exc)
                elapsed = time.perf_counter() - started
                with lock:
                    latencies.append(elapsed)
                    if problem is not None:
                        errors.append(problem)

    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=REQUEST_TIMEOUT * len(bodies))
    return latencies, len(errors)


def run_bench(
    folder: Path,
    *,
    rounds: int = 10,
    series: int = 20_000,
    series_per_request: int = 2000,
    concurrency: int = 2,
    workers: int = 1,
) -> dict[str, Any]:
    """Start the API (``workers`` processes) over ``folder``, send ``rounds`` rounds of ``series`` series; figures."""
    settings = Settings(data_dir=folder / "data")
    _, token = create_key(settings, "bench-prometheus", "writer")
    close_key_stores()
    headers = {**HEADERS, "Authorization": f"Bearer {token}"}
    labels = node_series(series)
    start_ms = int(time.time() * 1000) - 30 * 60 * 1000
    rounds_of_bodies = [
        [
            body([(lab, [(float(r), start_ms + r * 1000)]) for lab in labels[i : i + series_per_request]])
            for i in range(0, series, series_per_request)
        ]
        for r in range(rounds)
    ]
    env = scrubbed_env(METRICS_DATA_DIR=str(settings.data_dir))
    log = folder / "uvicorn.log"
    options = ["--workers", str(workers), "--no-access-log", "--log-level", "warning"]
    with uvicorn_api(log, env, *options, start_timeout=START_TIMEOUT, stop_timeout=STOP_TIMEOUT) as (base, process):
        started = time.perf_counter()
        cold_latencies, cold_errors = send_all(base, rounds_of_bodies[0], headers, concurrency)
        cold_seconds = time.perf_counter() - started
        warm = [content for bodies in rounds_of_bodies[1:] for content in bodies]
        cpu_before = cpu_seconds(process.pid)
        started = time.perf_counter()
        latencies, errors = send_all(base, warm, headers, concurrency)
        seconds = time.perf_counter() - started
        server_cpu = cpu_seconds(process.pid) - cpu_before
    warm_samples = len(warm) * series_per_request
    latencies.sort()
    return {
        "samples": warm_samples,
        "seconds": round(seconds, 3),
        "samples_per_s": round(warm_samples / seconds),
        "cold_samples_per_s": round(series / cold_seconds),
        "requests": len(warm),
        "samples_per_request": series_per_request,
        "series": series,
        "concurrency": concurrency,
        "workers": workers,
        "p50_ms": round(statistics.median(latencies) * 1000, 2),
        "p99_ms": round(latencies[int(0.99 * (len(latencies) - 1))] * 1000, 2),
        "server_cpu_ms_per_request": round(server_cpu / len(warm) * 1000, 2),
        "samples_per_server_cpu_s": round(warm_samples / server_cpu) if server_cpu > 0 else None,
        "errors": errors + cold_errors,
        "cold_p50_ms": round(statistics.median(cold_latencies) * 1000, 2),
    }


def test_remote_write_throughput(tmp_path: Path) -> None:
    figures = run_bench(tmp_path, rounds=6, series=10_000, series_per_request=2000)
    print(json.dumps(figures))
    assert figures["errors"] == 0
    assert figures["samples"] == 50_000
    for key in ("seconds", "samples_per_s", "cold_samples_per_s", "p50_ms", "p99_ms"):
        assert figures[key] > 0, key
    assert figures["p99_ms"] >= figures["p50_ms"]
    with MetricStore(Settings(data_dir=tmp_path / "data"), read_only=True).open(background_flush=False) as store:
        count = store.sql("SELECT count(*) AS n FROM samples WHERE metric LIKE 'node_metric_%'").item()
    assert count == 60_000  # every round, the cold one included, is in the lake once

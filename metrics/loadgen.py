"""Load on the HTTP API: the server in a subprocess, concurrent keep-alive clients on loopback, and the figures.

``ApiServer`` starts ``metrics serve`` (uvicorn with ``api_workers`` worker
processes building the app from the environment) on a free loopback port and
a given data directory, in its own process group, so it can be stopped
gracefully or killed with every worker at once (SIGKILL, as a crash would).

``spec_batches`` makes realistic JSON batches of the spec's shape: many series
(crypto key counters, system gauges, latencies; hosts, regions, key ids), each
sample with its own millisecond timestamp. ``drive`` posts them from
``concurrency`` connections (asyncio and ``httpx.AsyncClient`` with
keep-alive) for a fixed time and measures accepted samples per second and the
latency of each request. Bodies are encoded before the clock starts, so the
client spends its CPU on HTTP, not on JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson

INGEST_PATH = "/api/v1/metrics"
_COUNTERS = ("crypto.key.encryption_ops", "crypto.key.decryption_ops", "crypto.key.signing_ops", "http.requests_total")
_GAUGES = ("system.cpu.usage_total", "system.memory.usage_percent", "system.disk.usage_percent", "system.load.1m")
_LATENCIES = ("http.request.latency_seconds", "crypto.kms.call_latency_seconds")
_REGIONS = ("eu-west-1", "us-east-1", "ap-south-1")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@dataclass
class ApiServer:
    """``metrics serve`` in a subprocess (its own process group) on a loopback port."""

    data_dir: Path
    workers: int = 2
    port: int = field(default_factory=free_port)
    env: Mapping[str, str] = field(default_factory=dict)
    log_path: Path | None = None
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Base URL of the server."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 90.0) -> ApiServer:
        """Start the server and wait until ``/health`` answers 200 (raises RuntimeError if it does not)."""
        env = {**os.environ, "METRICS_DATA_DIR": str(self.data_dir), **self.env}
        command = [sys.executable, "-m", "metrics", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
        command += ["--workers", str(self.workers)]
        log = open(self.log_path or os.devnull, "ab")  # (the child keeps its own copy open)
        try:
            self.process = subprocess.Popen(
                command, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while time.monotonic() < deadline:
                if self.process.poll() is not None:
                    raise RuntimeError(f"the API server exited with {self.process.returncode} while starting")
                try:
                    if client.get(f"{self.url}/health").status_code == 200:
                        return self
                except httpx.TransportError:
                    pass
                time.sleep(0.1)
        self.kill()
        raise RuntimeError(f"the API server did not become healthy within {timeout:g} s")

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM (in-flight requests finish, the WAL is flushed); SIGKILL whatever is left after ``timeout``."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
        _signal_group(self.process.pid, signal.SIGKILL)  # a worker that outlived its master
        return self.process.returncode

    def kill(self) -> None:
        """SIGKILL the server and all its workers at once, as a crash would; wait for the master."""
        if self.process is None:
            return
        _signal_group(self.process.pid, signal.SIGKILL)
        self.process.wait(30)

    def pids(self) -> list[int]:
        """The master's pid and its workers' (for CPU accounting)."""
        import psutil

        if self.process is None or self.process.poll() is not None:
            return []
        try:
            master = psutil.Process(self.process.pid)
            return [master.pid, *(child.pid for child in master.children(recursive=True))]
        except psutil.Error:
            return []


def _signal_group(pid: int, signum: int) -> None:
    """Signal the process group the server leads (it was started in a new session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signum)


def spec_batches(count: int, size: int = 1000, *, series: int = 20_000, seed: int = 5) -> list[bytes]:
    """``count`` JSON bodies of ``size`` samples each, over ``series`` realistic series, timestamps up to now."""
    rng = np.random.default_rng(seed)
    kinds = rng.choice(3, size=series, p=[0.5, 0.35, 0.15])
    names: list[str] = []
    types: list[str] = []
    tags: list[dict[str, str]] = []
    for j, kind in enumerate(kinds):
        host = {"host": f"host-{j % 500:03d}", "region": _REGIONS[j % 3]}
        if kind == 0:
            names.append(_COUNTERS[j % len(_COUNTERS)])
            types.append("counter")
            tags.append({**host, "key_id": f"key-{j:05d}"} if names[-1].startswith("crypto.") else host)
        elif kind == 1:
            names.append(_GAUGES[j % len(_GAUGES)])
            types.append("gauge")
            tags.append({**host, "device": f"dev{j // 500}"})
        else:
            names.append(_LATENCIES[j % len(_LATENCIES)])
            types.append("gauge")
            tags.append({**host, "route": f"/v1/op{j % 7}"})
    end = datetime.now(UTC) - timedelta(seconds=5)
    bodies = []
    for b in range(count):
        picks = rng.integers(0, series, size)
        offsets = rng.integers(0, 60_000, size)  # each sample its own time in the last minute
        raw = np.where(kinds[picks] == 0, rng.integers(0, 10**9, size), np.round(rng.uniform(0, 100, size), 2))
        values = raw.tolist()
        samples = [
            {
                "metric_id": names[p],
                "timestamp": (end - timedelta(milliseconds=int(o) + b)).isoformat(timespec="milliseconds"),
                "value": values[i],
                "metric_type": types[p],
                "tags": tags[p],
            }
            for i, (p, o) in enumerate(zip(picks.tolist(), offsets.tolist(), strict=True))
        ]
        bodies.append(orjson.dumps({"metrics": samples}))
    return bodies


@dataclass
class LoadResult:
    """What the clients saw in the measured window."""

    seconds: float = 0.0
    all_requests: int = 0  # warm-up and window, answered or not (what the server's CPU time was spent on)
    requests: int = 0
    samples: int = 0
    rejected: int = 0
    errors: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    statuses: dict[int, int] = field(default_factory=dict)

    def figures(self) -> dict[str, Any]:
        """The benchmark's JSON keys (``samples``, ``samples_per_s``, ``p50_ms``, ``p99_ms``, ``errors``, …)."""
        ordered = sorted(self.latencies_ms)
        p99 = ordered[min(len(ordered) - 1, round(0.99 * (len(ordered) - 1)))] if ordered else None
        return {
            "samples": self.samples,
            "samples_per_s": round(self.samples / self.seconds) if self.seconds else 0,
            "p50_ms": round(statistics.median(ordered), 2) if ordered else None,
            "p99_ms": round(p99, 2) if p99 is not None else None,
            "errors": self.errors,
            "requests": self.requests,
            "rejected": self.rejected,
            "seconds": round(self.seconds, 3),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
        }


async def drive(
    url: str,
    bodies: list[bytes],
    *,
    token: str | None,
    seconds: float,
    concurrency: int,
    warmup: float = 1.0,
) -> LoadResult:
    """Post ``bodies`` round-robin from ``concurrency`` keep-alive connections; measure after ``warmup`` seconds."""
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    result = LoadResult()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    started = time.perf_counter()
    measure_from = started + warmup
    stop_at = measure_from + seconds
    counter = iter(range(sys.maxsize))

    async def client_loop(client: httpx.AsyncClient, number: int) -> None:
        # Clients connect one after another, as real ones do: a burst of connections at one instant would all
        # be accepted by whichever worker process woke first (asyncio accepts a backlog at once) and stay there.
        await asyncio.sleep(number * min(warmup / (2 * concurrency), 0.05))
        while True:
            sent = time.perf_counter()
            if sent >= stop_at:
                return
            body = bodies[next(counter) % len(bodies)]
            result.all_requests += 1
            try:
                response = await client.post(url + INGEST_PATH, content=body, headers=headers)
            except httpx.HTTPError:
                if sent >= measure_from:
                    result.errors += 1
                await asyncio.sleep(0.05)
                continue
            done = time.perf_counter()
            if sent < measure_from or done > stop_at:
                continue  # only requests wholly inside the window count
            result.requests += 1
            result.statuses[response.status_code] = result.statuses.get(response.status_code, 0) + 1
            result.latencies_ms.append((done - sent) * 1000)
            if response.status_code == 200:
                report = orjson.loads(response.content)
                result.samples += report["stored"]
                result.rejected += report["rejected"]
            else:
                result.errors += 1

    async with httpx.AsyncClient(limits=limits, timeout=60.0) as client:
        await asyncio.gather(*(client_loop(client, number) for number in range(concurrency)))
    result.seconds = stop_at - measure_from
    return result


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds used so far by the processes ``pids`` (those still alive)."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            times = psutil.Process(pid).cpu_times()
            total += times.user + times.system
        except psutil.Error:
            continue
    return total

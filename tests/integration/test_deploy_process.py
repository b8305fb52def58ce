"""`python -m metrics.deploy --mode=development` brings the system up, collects on schedule and stops cleanly."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from metrics.settings import Settings
from storage.store import MetricStore
from tests.servers import PROJECT, free_port, scrubbed_env

pytestmark = [pytest.mark.integration, pytest.mark.slow]
STARTUP_TIMEOUT = 180.0


class Deployment:
    """One `metrics deploy` subprocess, with every descendant it ever had."""

    def __init__(self, data_dir: Path, port: int, mode: str = "development") -> None:
        self.data_dir = data_dir
        self.port = port
        self.mode = mode
        env = scrubbed_env(
            ("PREFECT_", "METRICS_"),
            METRICS_DATA_DIR=str(data_dir),
            METRICS_PREFECT_PORT=str(port),
            METRICS_API_PORT=str(free_port()),
            METRICS_SYSTEM_INTERVAL="5",
            METRICS_WORKERS="1",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",
            DO_NOT_TRACK="1",
        )
        self.env = env
        self.output = data_dir.parent / f"deploy-{port}.out"
        self.process: subprocess.Popen[bytes] | None = None
        self.seen: dict[int, psutil.Process] = {}

    def start(self) -> subprocess.Popen[bytes]:
        with open(self.output, "ab") as sink:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "metrics.deploy", f"--mode={self.mode}"],
                cwd=PROJECT,
                env=self.env,
                stdout=sink,
                stderr=subprocess.STDOUT,
            )
        return self.process

    def text(self) -> str:
        return self.output.read_text(errors="replace")

    def remember_children(self) -> None:
        assert self.process is not None
        try:
            for child in psutil.Process(self.process.pid).children(recursive=True):
                self.seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass

    def wait_for(self, condition: str, check: object, timeout: float = STARTUP_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            self.remember_children()
            if self.process.poll() is not None:
                pytest.fail(f"deploy exited with {self.process.returncode} waiting for {condition}:\n{self.text()}")
            if check():  # type: ignore[operator]
                return
            time.sleep(0.5)
        pytest.fail(f"timed out waiting for {condition}:\n{self.text()}")

    def stop(self) -> int:
        assert self.process is not None
        self.remember_children()
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=120)

    def survivors(self) -> list[psutil.Process]:
        alive = []
        for process in self.seen.values():
            try:
                if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                    alive.append(process)
            except psutil.NoSuchProcess:
                continue
        return alive


@pytest.fixture
def deployment(tmp_path: Path) -> Iterator[Deployment]:
    running = Deployment(tmp_path / "data", free_port())
    yield running
    if running.process is not None and running.process.poll() is None:  # a failed test: leave nothing behind
        running.process.kill()
        running.process.wait(timeout=30)
    for process in running.survivors():
        process.kill()


def collected_rows(data_dir: Path) -> int:
    files = list((data_dir / "lake" / "samples").glob("date=*/*.parquet"))
    if not files:
        return 0
    with MetricStore(Settings(data_dir=data_dir), read_only=True).open(background_flush=False) as store:
        frame = store.sql("SELECT count(*) AS n FROM samples WHERE metric = 'system.cpu.usage_total'")
    return int(frame["n"][0])


def test_deploy_serves_the_flows_and_stops_every_child(deployment: Deployment) -> None:
    deployment.start()
    deployment.wait_for("the whole system", lambda: "Running. Press Ctrl-C" in deployment.text())
    healthy_after = float(re.search(r"Prefect server healthy after ([\d.]+) s", deployment.text()).group(1))  # type: ignore[union-attr]
    assert f"Prefect UI:  http://127.0.0.1:{deployment.port}" in deployment.text()
    api = f"http://127.0.0.1:{deployment.env['METRICS_API_PORT']}"
    assert f"HTTP API:    {api}" in deployment.text()
    with urllib.request.urlopen(f"{api}/health", timeout=10) as response:
        assert json.loads(response.read())["status"] == "ok"
    assert f"Dashboards:  {api}/" in deployment.text()
    with urllib.request.urlopen(f"{api}/dashboards/system", timeout=10) as response:  # follows to the login
        assert response.url.startswith(f"{api}/login?next=")
        assert b'name="credential"' in response.read()
    with urllib.request.urlopen(f"{api}/static/vendor/uPlot.iife.min.js", timeout=10) as response:
        assert response.status == 200
    # The first start creates an admin key and shows it once; it works against the API.
    token = re.search(r"^  (mk_\S+)$", deployment.text(), re.MULTILINE).group(1)  # type: ignore[union-attr]
    batch = {"metrics": [{"metric_id": "deploy.test", "value": 1.0, "tags": {"via": "api"}}]}
    request = urllib.request.Request(
        f"{api}/api/v1/metrics",
        data=json.dumps(batch).encode(),
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as response:
        assert json.loads(response.read())["stored"] == 1

    # A second instance on the same data directory is refused while the first runs.
    second = subprocess.run(
        [sys.executable, "-m", "metrics.deploy", "--mode=development"],
        cwd=PROJECT,
        env=deployment.env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert second.returncode == 1
    assert "another `metrics deploy` runs on this data directory" in second.stderr

    deployment.wait_for("a scheduled collection in the lake", lambda: collected_rows(deployment.data_dir) > 0)
    assert len(deployment.seen) >= 3  # server, runner and at least one flow run
    assert deployment.stop() == 0
    assert deployment.survivors() == []
    assert "stopped" in deployment.text()
    print(f"Prefect server healthy after {healthy_after:.1f} s")

    # Running it again on the same data directory picks up where it left off.
    rows_before = collected_rows(deployment.data_dir)
    deployment.start()
    deployment.wait_for("more collections", lambda: collected_rows(deployment.data_dir) > rows_before)
    assert deployment.text().count("Admin API key") == 1  # shown once, not again on the second start
    assert deployment.stop() == 0
    assert deployment.survivors() == []


def test_production_mode_registers_prefect_yaml_and_runs_workers(tmp_path: Path) -> None:
    deployment = Deployment(tmp_path / "data", free_port(), mode="production")
    try:
        deployment.start()
        deployment.wait_for("the work pool and deployments", lambda: "registered prefect.yaml" in deployment.text())
        # prefect.yaml schedules the collector every 30 s: the first run is due at once.
        deployment.wait_for("a collection by a worker", lambda: collected_rows(deployment.data_dir) > 0)
        assert (deployment.data_dir / "prefect" / "logs" / "worker-1.log").is_file()
        assert deployment.stop() == 0
        assert deployment.survivors() == []
    finally:
        if deployment.process is not None and deployment.process.poll() is None:
            deployment.process.kill()
        for process in deployment.survivors():
            process.kill()

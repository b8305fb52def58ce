"""Scrape a real Prometheus node exporter on loopback through the scrape task; its series land in the lake.

The exporter is Debian's ``prometheus-node-exporter``. When it is not installed
the module installs it with apt (``apt-get update`` first only if the plain
install fails), each step bounded; the test is skipped, with the reason, only
when that is impossible (not root, no apt, no network). The package's own
service is not wanted: Debian containers ship ``/usr/sbin/policy-rc.d``
refusing service starts during installs; the test starts its own exporter on
127.0.0.1 and a free port, and stops it with SIGTERM.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from metrics.settings import Settings
from storage.store import MetricStore
from tasks.collect.prometheus import scrape_targets
from tests.servers import apt_install, free_port, spawn, stop_process, wait_for_http

pytestmark = [pytest.mark.integration, pytest.mark.slow]
EXPORTER = "prometheus-node-exporter"
DEBIAN_BINARY = Path("/usr/bin/prometheus-node-exporter")
START_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0


def _installed() -> str | None:
    found = shutil.which(EXPORTER)
    return found or (str(DEBIAN_BINARY) if DEBIAN_BINARY.is_file() else None)


def install_node_exporter() -> tuple[str | None, str]:
    """(the binary, how it was found or why it could not be installed), installing Debian's package if need be."""
    return apt_install(EXPORTER, _installed)


@pytest.fixture(scope="module")
def exporter_binary() -> str:
    binary, how = install_node_exporter()
    if binary is None:
        pytest.skip(how)
    print(f"node exporter: {binary} ({how})")
    return binary


@pytest.fixture
def node_exporter(exporter_binary: str, tmp_path: Path) -> Iterator[str]:
    """A node exporter on 127.0.0.1:<free port>; yields its /metrics URL and stops it afterwards."""
    port = free_port()
    log = tmp_path / "node-exporter.log"
    command = [
        exporter_binary,
        f"--web.listen-address=127.0.0.1:{port}",
        "--no-collector.systemd",  # no systemd / D-Bus in a container
        "--collector.textfile.directory=" + str(tmp_path),  # not the package's folder
    ]
    process = spawn(command, log)
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        wait_for_http(url, process, log, timeout=START_TIMEOUT, what="node exporter", interval=0.1)
        yield url
    finally:
        stop_process(process, STOP_TIMEOUT)


def test_node_exporter_series_land_in_the_lake(node_exporter: str, settings: Settings) -> None:
    summary = scrape_targets.fn(settings, [f"node={node_exporter}"])
    (result,) = summary.targets
    assert result.up, result.error
    assert result.samples > 200
    assert result.stored >= result.samples - 5, result.rejection  # at most a few values our model refuses
    print(
        f"node exporter: {result.samples} samples scraped and parsed in {result.duration_seconds * 1000:.1f} ms, "
        f"{summary.stored} rows stored in {summary.store_seconds * 1000:.1f} ms "
        f"({summary.samples_per_second:,.0f} samples/s), rejected {result.rejected}: {result.rejection}"
    )
    instance = node_exporter.removeprefix("http://").removesuffix("/metrics")
    with MetricStore(settings, read_only=True).open(background_flush=False) as store:
        cpu = store.sql("SELECT type, tags, value FROM samples WHERE metric = 'node_cpu_seconds_total'")
        memory = store.sql("SELECT type, tags, value FROM samples WHERE metric = 'node_memory_MemAvailable_bytes'")
        up = store.sql("SELECT tags, value FROM samples WHERE metric = 'up'")
    assert cpu.height >= 2
    assert set(cpu.get_column("type")) == {"counter"}
    cpu_tags = [json.loads(tags) for tags in cpu.get_column("tags")]
    assert all({"cpu", "mode"} <= set(tags) for tags in cpu_tags)
    assert {"idle", "user", "system"} <= {tags["mode"] for tags in cpu_tags}
    assert all((tags["job"], tags["instance"]) == ("node", instance) for tags in cpu_tags)
    ((kind, tags, available),) = memory.iter_rows()
    assert kind == "gauge"
    assert available > 0
    assert json.loads(tags) == {"job": "node", "instance": instance}
    assert [(json.loads(t), v) for t, v in up.iter_rows()] == [({"job": "node", "instance": instance}, 1.0)]

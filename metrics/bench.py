"""Benchmarks: bulk ingest (samples/s, bytes/sample) and standard query latency.

``bench_ingest`` generates a realistic mix — monotone counters (with rare
resets), gauges with two decimals, constant series and noisy full-precision
floats, over many hosts and keys at a 10-second interval, delivered
time-major as collectors deliver them — and stores it through the public
columnar path (``MetricStore.ingest_frame``, the one ``metrics ingest`` uses)
into durable Parquet, then compacts it and measures bytes per stored sample.

``bench_http`` starts ``metrics serve`` (``api_workers`` processes) on a
temporary lake and posts realistic JSON batches from concurrent keep-alive
clients on loopback (``metrics.loadgen``): accepted samples per second and
request latency, plus the CPU each side spent per request.

``bench_query`` loads a TSBS cpu-only style data set (hosts x 10 cpu metrics,
10 s apart, ending now), compacts it, and times five standard queries through
the engine and, side by side, as plain DuckDB SQL over one sorted Parquet file
of the same samples.
"""

from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from collections.abc import Callable
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.console import Console

from metrics.settings import Settings
from storage.store import MetricStore
from storage.views import connect

INTERVAL_S = 10
# Share of series per kind in the ingest mix: counters, 2-decimal gauges, constants, noisy floats.
MIX = {"counter": 0.40, "gauge2": 0.35, "constant": 0.15, "noisy": 0.10}
_COUNTERS = [
    "crypto.key.encryption_ops",
    "crypto.key.decryption_ops",
    "crypto.key.signing_ops",
    "system.network.bytes_sent",
    "system.network.bytes_recv",
    "http.requests_total",
]
_GAUGES = [
    "system.cpu.usage_total",
    "system.memory.usage_percent",
    "system.disk.usage_percent",
    "crypto.key.days_since_rotation",
    "system.load.1m",
]
_CONSTANTS = ["crypto.key.rotation_policy_days", "system.cpu.cores", "crypto.key.enabled"]
_NOISY = ["http.request.latency_seconds", "crypto.kms.call_latency_seconds"]
CPU_METRICS = [
    "usage_user",
    "usage_system",
    "usage_idle",
    "usage_nice",
    "usage_iowait",
    "usage_irq",
    "usage_softirq",
    "usage_steal",
    "usage_guest",
    "usage_guest_nice",
]


def ingest_mix(
    samples: int,
    *,
    series: int | None = None,
    seed: int = 7,
    end: datetime | None = None,
    interval_s: int = INTERVAL_S,
) -> pl.DataFrame:
    """The ingest benchmark's frame: ``samples`` rows of the realistic mix, time-major, ending at ``end``.

    By default there are 2,000 points per series, ``interval_s`` apart; ``series`` fixes the number of
    series instead.
    """
    rng = np.random.default_rng(seed)
    n_series = series or max(1, samples // 2_000)
    points = max(1, samples // n_series)
    kinds = rng.choice(list(MIX), size=n_series, p=list(MIX.values()))
    values = np.empty((points, n_series))
    metric_names: list[str] = []
    for j, kind in enumerate(kinds):
        if kind == "counter":
            steps = rng.poisson(rng.uniform(1, 400), points).astype(float)
            counter = np.cumsum(steps)
            if points > 1 and rng.random() < 0.1:  # a process restart resets the counter
                cut = rng.integers(1, points)
                counter[cut:] -= counter[cut - 1]
            values[:, j] = counter
            metric_names.append(_COUNTERS[j % len(_COUNTERS)])
        elif kind == "gauge2":
            walk = 50 + np.cumsum(rng.normal(0, 0.4, points))
            values[:, j] = np.round(np.clip(walk, 0, 100), 2)
            metric_names.append(_GAUGES[j % len(_GAUGES)])
        elif kind == "constant":
            values[:, j] = float(rng.integers(1, 400))
            metric_names.append(_CONSTANTS[j % len(_CONSTANTS)])
        else:
            values[:, j] = rng.lognormal(-2.0, 0.5, points)
            metric_names.append(_NOISY[j % len(_NOISY)])
    end_us = int((end or datetime.now(UTC)).timestamp()) // interval_s * interval_s * 1_000_000
    ts = end_us - (points - 1 - np.arange(points, dtype=np.int64)) * interval_s * 1_000_000
    # Every series has its own tag set: hosts repeat across series, but a crypto series has its own
    # key and any other series its own device on that host.
    hosts = [f"host-{j % 250:03d}" for j in range(n_series)]
    keys = [f"key-{j:05d}" if name.startswith("crypto.") else None for j, name in enumerate(metric_names)]
    devices = [None if name.startswith("crypto.") else f"dev{j // 250}" for j, name in enumerate(metric_names)]
    regions = [("eu-west-1", "us-east-1", "ap-south-1")[(j % 250) % 3] for j in range(n_series)]
    types = ["counter" if k == "counter" else "gauge" for k in kinds]
    return pl.DataFrame(
        {
            "ts": pl.Series(np.repeat(ts, n_series)).cast(pl.Datetime("us", "UTC")),
            "metric": pl.Series(np.tile(np.array(metric_names), points)).cast(pl.Categorical),
            "value": values.ravel(),
            "type": pl.Series(np.tile(np.array(types), points)).cast(pl.Categorical),
            "host": pl.Series(np.tile(np.array(hosts), points)).cast(pl.Categorical),
            "key_id": pl.Series(keys * points, dtype=pl.String).cast(pl.Categorical),
            "device": pl.Series(devices * points, dtype=pl.String).cast(pl.Categorical),
            "region": pl.Series(np.tile(np.array(regions), points)).cast(pl.Categorical),
        }
    )


def cpu_only(samples: int, *, seed: int = 11, end: datetime | None = None, hosts: int = 100) -> pl.DataFrame:
    """TSBS cpu-only style data: ``hosts`` x 10 cpu metrics, 10 s apart, ending at ``end``."""
    rng = np.random.default_rng(seed)
    n_series = hosts * len(CPU_METRICS)
    points = max(1, samples // n_series)
    walk = np.clip(50 + np.cumsum(rng.normal(0, 1.5, (points, n_series)), axis=0), 0, 100)
    end_us = int((end or datetime.now(UTC)).timestamp()) // INTERVAL_S * INTERVAL_S * 1_000_000
    ts = end_us - (points - 1 - np.arange(points, dtype=np.int64)) * INTERVAL_S * 1_000_000
    metric = np.array([f"cpu.{m}" for _ in range(hosts) for m in CPU_METRICS])
    host = np.array([f"host_{h}" for h in range(hosts) for _ in CPU_METRICS])
    region = np.array([f"region_{h % 5}" for h in range(hosts) for _ in CPU_METRICS])
    return pl.DataFrame(
        {
            "ts": pl.Series(np.repeat(ts, n_series)).cast(pl.Datetime("us", "UTC")),
            "metric": pl.Series(np.tile(metric, points)).cast(pl.Categorical),
            "value": walk.ravel(),
            "type": "gauge",
            "hostname": pl.Series(np.tile(host, points)).cast(pl.Categorical),
            "region": pl.Series(np.tile(region, points)).cast(pl.Categorical),
        }
    )


@contextmanager
def _workdir(data_dir: Path | None):  # type: ignore[no-untyped-def]
    if data_dir is not None:
        data_dir.mkdir(parents=True, exist_ok=True)
        yield data_dir
        return
    folder = Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _lake_bytes(store: MetricStore, table: str) -> int:
    return sum(f.path.stat().st_size for f in store.lake.files(table))


def bench_ingest(
    samples: int = 10_000_000, *, data_dir: Path | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Measure bulk ingest into durable Parquet and bytes per sample after compaction (per sample kept)."""
    say = (console or Console(stderr=True)).log
    say(f"generating {samples:,} samples of the realistic mix")
    frame = ingest_mix(samples)
    with _workdir(data_dir) as folder:
        store = MetricStore(Settings(data_dir=folder, batch_size=100_000)).open(background_flush=False)
        try:
            say("ingesting")
            started = time.perf_counter()
            result = store.ingest_frame(frame)
            store.flush()
            seconds = time.perf_counter() - started
            raw_bytes = _lake_bytes(store, "samples")
            say("compacting")
            started = time.perf_counter()
            store.compact(validate=True)
            compact_seconds = time.perf_counter() - started
            stored_bytes = _lake_bytes(store, "samples")
            rollup_bytes = _lake_bytes(store, "rollups_1m") + _lake_bytes(store, "rollups_1h")
            kept = int(store.sql("SELECT count(*) AS n FROM samples").item())
        finally:
            store.close()
    return {
        "samples": result.stored,
        "rejected": len(result.rejected),
        "seconds": round(seconds, 3),
        "samples_per_s": round(result.stored / seconds),
        "samples_after_compaction": kept,
        "bytes_per_sample": round(stored_bytes / max(kept, 1), 3),
        "bytes_per_sample_before_compaction": round(raw_bytes / max(result.stored, 1), 3),
        "bytes_per_sample_with_rollups": round((stored_bytes + rollup_bytes) / max(kept, 1), 3),
        "compact_seconds": round(compact_seconds, 3),
        "mix": MIX,
    }


def _time(fn: Callable[[], Any], repeats: int) -> list[float]:
    fn()  # warm caches
    timings = []
    for _ in range(repeats):
        started = time.perf_counter()
        fn()
        timings.append((time.perf_counter() - started) * 1000)
    return timings


def _summary(timings: list[float]) -> dict[str, float]:
    ordered = sorted(timings)
    p95 = ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]
    return {"p50_ms": round(statistics.median(ordered), 2), "p95_ms": round(p95, 2)}


def bench_query(
    samples: int = 10_000_000,
    *,
    repeats: int = 30,
    data_dir: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Time the standard queries on the engine and as plain DuckDB over one sorted Parquet file."""
    say = (console or Console(stderr=True)).log
    end = datetime.now(UTC).replace(microsecond=0)
    say(f"generating {samples:,} cpu-only samples")
    frame = cpu_only(samples, end=end)
    rng = np.random.default_rng(3)
    with _workdir(data_dir) as folder:
        store = MetricStore(Settings(data_dir=folder, batch_size=1_000_000)).open(background_flush=False)
        try:
            say("ingesting and compacting")
            result = store.ingest_frame(frame)
            store.flush()
            store.compact(validate=False)
            plain = folder / "plain.parquet"
            (
                frame.with_columns(pl.col("metric").cast(pl.String), pl.col("hostname").cast(pl.String))
                .select("metric", "hostname", "ts", "value")
                .sort("metric", "hostname", "ts")
                .write_parquet(plain, compression="zstd", row_group_size=128 * 1024)
            )
            first = frame.get_column("ts").min()
            assert isinstance(first, datetime)
            span = end - first
            hosts = sorted(frame.get_column("hostname").cast(pl.String).unique().to_list())
            con = connect()
            src = f"read_parquet('{plain}')"

            def window(hours: int) -> tuple[datetime, datetime]:
                room = max(span - timedelta(hours=hours), timedelta(0)).total_seconds()
                start = first + timedelta(seconds=float(rng.uniform(0, room)))
                return start, start + timedelta(hours=hours)

            def pick(n: int) -> list[str]:
                return [str(h) for h in rng.choice(hosts, size=n, replace=False)]

            queries: dict[str, tuple[Callable[[], Any], Callable[[], Any]]] = {
                "single_series_max_1m_1h": (
                    lambda: store.query_aggregated(
                        "cpu.usage_user", "max", "1m", *window(1), None, {"hostname": pick(1)}
                    ),
                    lambda: con.execute(
                        f"SELECT time_bucket(INTERVAL 1 minute, ts) AS b, max(value) FROM {src} "
                        "WHERE metric = 'cpu.usage_user' AND hostname = ? AND ts >= ? AND ts < ? GROUP BY b ORDER BY b",
                        [pick(1)[0], *window(1)],
                    ).fetchall(),
                ),
                "max_all_metrics_1h_8hosts_8h": (
                    lambda: store.query_aggregated("cpu.*", "max", "1h", *window(8), None, {"hostname": pick(8)}),
                    lambda: con.execute(
                        f"SELECT metric, hostname, time_bucket(INTERVAL 1 hour, ts) AS b, max(value) FROM {src} "
                        "WHERE hostname IN (SELECT unnest(?::VARCHAR[])) AND ts >= ? AND ts < ? "
                        "GROUP BY ALL ORDER BY ALL",
                        [pick(8), *window(8)],
                    ).fetchall(),
                ),
                "avg_per_host_1h_12h": (
                    lambda: store.query_aggregated("cpu.usage_user", "avg", "1h", *window(12), ["hostname"]),
                    lambda: con.execute(
                        f"SELECT hostname, time_bucket(INTERVAL 1 hour, ts) AS b, avg(value) FROM {src} "
                        "WHERE metric = 'cpu.usage_user' AND ts >= ? AND ts < ? GROUP BY ALL ORDER BY ALL",
                        list(window(12)),
                    ).fetchall(),
                ),
                "latest_point_per_host": (
                    lambda: store.latest("cpu.*"),
                    lambda: con.execute(
                        f"SELECT metric, hostname, max(ts), arg_max(value, ts) FROM {src} GROUP BY ALL"
                    ).fetchall(),
                ),
                "usage_user_above_90_12h": (
                    lambda: store.query_metrics("cpu.usage_user", *window(12), above=90.0),
                    lambda: con.execute(
                        f"SELECT * FROM {src} WHERE metric = 'cpu.usage_user' AND value > 90 AND ts >= ? AND ts < ?",
                        list(window(12)),
                    ).fetchall(),
                ),
            }
            figures: dict[str, Any] = {}
            for name, (ours, theirs) in queries.items():
                say(f"timing {name}")
                mine = _summary(_time(ours, repeats))
                duck = _summary(_time(theirs, repeats))
                figures[name] = {
                    **mine,
                    "plain_duckdb_p50_ms": duck["p50_ms"],
                    "plain_duckdb_p95_ms": duck["p95_ms"],
                    "ratio_p50": round(mine["p50_ms"] / duck["p50_ms"], 2) if duck["p50_ms"] else None,
                }
            con.close()
        finally:
            store.close()
    return {"samples": result.stored, "repeats": repeats, "queries": figures}


def bench_flows(runs: int = 10, *, interval: float = 5.0, console: Console | None = None) -> dict[str, Any]:
    """Overhead of scheduled flow runs under ``metrics deploy``: time to healthy, run latency, memory.

    Starts ``python -m metrics.deploy --mode=development`` serving only
    ``collect-system-metrics`` every ``interval`` seconds on free loopback ports
    and a temporary data directory, waits for ``runs`` completed runs while
    sampling the resident memory of each flow-run process, then stops it and
    reads the runs back from the Prefect API. Overhead is a run's wall time
    (start to end) minus the time its task spent working.
    """
    import os
    import signal
    import socket
    import subprocess
    import sys

    import psutil
    from prefect.client.orchestration import SyncPrefectClient
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterId
    from prefect.client.schemas.objects import StateType

    def free_port() -> int:
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            return int(probe.getsockname()[1])

    say = console.print if console is not None else (lambda *a, **k: None)
    folder = Path(tempfile.mkdtemp(prefix="metrics-bench-flows-"))
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "METRICS_"))}
    env.update(
        METRICS_DATA_DIR=str(folder / "data"),
        METRICS_PREFECT_PORT=str(port),
        METRICS_SYSTEM_INTERVAL=str(interval),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    api = f"http://127.0.0.1:{port}/api"
    started = time.perf_counter()
    process = subprocess.Popen(
        [sys.executable, "-m", "metrics.deploy", "--mode=development", "--job", "collect-system-metrics"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    healthy_after = None
    peak_rss: dict[int, int] = {}
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "healthy after" in line:
                healthy_after = time.perf_counter() - started
                break
        if healthy_after is None:
            raise RuntimeError("metrics deploy exited before the Prefect server was healthy")
        say(f"healthy after {healthy_after:.1f} s; waiting for {runs} runs every {interval:g} s")
        client = SyncPrefectClient(api=api)
        flow_filter = FlowFilter(name=FlowFilterName(any_=["collect-system-metrics"]))
        deadline = time.monotonic() + runs * interval * 3 + 120
        finished: list[Any] = []
        runner_pids: set[int] = set()
        while time.monotonic() < deadline:
            for child in psutil.Process(process.pid).children(recursive=True):
                try:
                    if "flows.serve" in " ".join(child.cmdline()):
                        runner_pids.add(child.pid)
                    elif child.ppid() in runner_pids:  # a flow run's own process
                        peak_rss[child.pid] = max(peak_rss.get(child.pid, 0), child.memory_info().rss)
                except psutil.Error:
                    continue
            finished = [
                run
                for run in client.read_flow_runs(flow_filter=flow_filter, limit=200)
                if run.state_type == StateType.COMPLETED
            ]
            if len(finished) >= runs:
                break
            time.sleep(0.2)
        finished = sorted(finished, key=lambda run: run.start_time)[:runs]
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id for run in finished]))
        )
        task_seconds: dict[Any, float] = {}
        for task_run in tasks:
            task_seconds[task_run.flow_run_id] = task_seconds.get(task_run.flow_run_id, 0.0) + (
                task_run.total_run_time.total_seconds()
            )
        wall = [(run.end_time - run.start_time).total_seconds() for run in finished]
        lag = [(run.start_time - run.expected_start_time).total_seconds() for run in finished]
        overhead = [w - task_seconds.get(run.id, 0.0) for w, run in zip(wall, finished, strict=True)]
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=120)
        finally:
            shutil.rmtree(folder, ignore_errors=True)
    rss = sorted(peak_rss.values())
    return {
        "runs": len(finished),
        "interval_s": interval,
        "healthy_after_s": round(healthy_after, 2),
        "run_wall_p50_s": round(statistics.median(wall), 3) if wall else None,
        "run_overhead_p50_s": round(statistics.median(overhead), 3) if overhead else None,
        "start_lag_p50_s": round(statistics.median(lag), 3) if lag else None,
        "flow_run_rss_p50_mb": round(statistics.median(rss) / 1e6, 1) if rss else None,
        "flow_run_rss_max_mb": round(rss[-1] / 1e6, 1) if rss else None,
    }


def bench_http(
    seconds: float = 20.0,
    *,
    concurrency: int = 16,
    batch: int = 1000,
    workers: int | None = None,
    data_dir: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Measure HTTP JSON ingest: the API in a subprocess, ``concurrency`` clients posting ``batch``-sample bodies.

    The server authenticates a real writer key; every acknowledged batch is fsynced. After the
    run the server is stopped gracefully and the lake is counted, so ``stored_in_lake`` checks
    that what was acknowledged is there.
    """
    import asyncio
    import os

    import psutil

    from metrics.api.keys import create_key
    from metrics.loadgen import ApiServer, cpu_seconds, drive, spec_batches

    say = (console or Console(stderr=True)).log
    with _workdir(data_dir) as folder:
        settings = Settings(data_dir=folder)
        processes = workers or settings.api_workers
        _, token = create_key(settings, "bench-http", "writer")
        say(f"encoding {max(64, 4 * concurrency)} bodies of {batch:,} samples")
        bodies = spec_batches(max(64, 4 * concurrency), batch)
        server = ApiServer(folder, workers=processes, log_path=folder / "server.log").start()
        me = psutil.Process()
        try:
            pids = server.pids()
            server_before, client_before = cpu_seconds(pids), sum(me.cpu_times()[:2])
            say(f"posting for {seconds:g} s from {concurrency} connections to {processes} workers")
            result = asyncio.run(drive(server.url, bodies, token=token, seconds=seconds, concurrency=concurrency))
            server_cpu = cpu_seconds(pids) - server_before
            client_cpu = sum(me.cpu_times()[:2]) - client_before
        finally:
            server.stop()
        store = MetricStore(settings, read_only=True).open()
        try:
            in_lake = int(store.sql("SELECT count(*) AS n FROM samples").item())
        finally:
            store.close()
    per_request = max(result.all_requests, 1)
    return {
        **result.figures(),
        "concurrency": concurrency,
        "workers": processes,
        "batch": batch,
        "stored_in_lake": in_lake,
        "server_cpu_ms_per_request": round(server_cpu / per_request * 1000, 2),
        "client_cpu_ms_per_request": round(client_cpu / per_request * 1000, 2),
        "load_average_1m": round(os.getloadavg()[0], 2),
        "cores": os.cpu_count(),
    }

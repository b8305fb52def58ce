"""Benchmarks of the key-event collectors: CloudTrail parsing and collection throughput, and end-to-end lag.

``metrics bench keys`` generates a CloudTrail log set (gzip files as CloudTrail
delivers them, 1,000,000 KMS events by default), then measures, side by side
in one run: parsing alone (files to key events), a whole collection into a
fresh lake (parse, exactly-once ledger, inventory, policies, counters, lake
write), a second collection of the same files (nothing new), and a
re-delivery of some files under new names (every event a duplicate).

``metrics bench key-lag`` runs ``metrics deploy`` serving the
``collect-key-audit-logs`` flow on its schedule, drops a new CloudTrail file
at random moments and measures how long until its event is queryable.
"""

from __future__ import annotations

import gc
import gzip
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console

from metrics.auditgen import DemoKey, cloudtrail_record, cloudtrail_records, write_cloudtrail
from metrics.settings import Settings


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def bench_keys(
    events: int = 1_000_000, *, parse_repeats: int = 3, data_dir: Path | None = None, console: Console | None = None
) -> dict[str, Any]:
    """CloudTrail parsing and collection throughput on ``events`` generated KMS events (see the module)."""
    from tasks.collect.cloudtrail import CloudTrailSource
    from tasks.collect.keys import collect_key_events

    say = console.print if console is not None else (lambda *a, **k: None)
    folder = data_dir or Path(tempfile.mkdtemp(prefix="metrics-bench-keys-"))
    logs = folder / "cloudtrail"
    now = datetime.now(UTC)
    clock = time.perf_counter()
    files = write_cloudtrail(logs, cloudtrail_records(now - timedelta(days=2), now, events=events, seed=1))
    generate = time.perf_counter() - clock
    size = sum(path.stat().st_size for path in files)
    say(f"generated {len(files)} files ({size / 1e6:.0f} MB gzip) in {generate:.1f} s")
    try:
        source = CloudTrailSource([logs])
        parse_times, parsed = [], 0
        for _ in range(parse_repeats):
            gc.disable()  # as a collection runs (tasks.collect.keys): no cyclic collection over millions of events
            try:
                clock = time.perf_counter()
                parsed = sum(len(read.events) for read in source.read({}))
                parse_times.append(time.perf_counter() - clock)
            finally:
                gc.enable()
        parse = _median(parse_times)
        say(f"parsed {parsed:,} events in {parse:.2f} s (median of {parse_repeats})")
        settings = Settings(data_dir=folder / "data")
        first = collect_key_events(settings, "cloudtrail", [logs])
        say(f"collected {first.events:,} events in {first.seconds:.2f} s")
        again = collect_key_events(settings, "cloudtrail", [logs])
        copies = logs / "redelivered"
        copies.mkdir()
        for path in files[:: max(1, len(files) // 20)]:
            shutil.copyfile(path, copies / ("copy-" + path.name))
        redelivered = collect_key_events(settings, "cloudtrail", [logs])
    finally:
        if data_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "events": parsed,
        "files": len(files),
        "gzip_bytes": size,
        "generate_seconds": round(generate, 2),
        "parse_seconds": round(parse, 3),
        "parse_events_per_s": round(parsed / parse),
        "collect_seconds": round(first.seconds, 3),
        "collect_events_per_s": round(first.events_per_second),
        "samples": first.samples,
        "keys": first.keys_total,
        "violations": first.violations,
        "rerun_seconds": round(again.seconds, 3),
        "rerun_new_events": again.events,
        "redelivered_events": redelivered.duplicates,
        "redelivered_new_events": redelivered.events,
    }


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _drop_file(folder: Path, rng: random.Random) -> str:
    """Write one CloudTrail file holding one Decrypt on a new key; return the key id."""
    key = DemoKey(f"{rng.getrandbits(128):032x}", "us-east-1", users=("lag-probe",))
    record = cloudtrail_record(rng, time.time(), "Decrypt", key, "lag-probe", request={"keyId": key.key_id})
    name = f"111122223333_CloudTrail_us-east-1_{datetime.now(UTC):%Y%m%dT%H%MZ}_{key.key_id[:16]}.json.gz"
    temporary = folder / f".{name}.tmp"
    temporary.write_bytes(gzip.compress(orjson.dumps({"Records": [record]})))
    os.replace(temporary, folder / name)  # appears whole, as a synced CloudTrail object does
    return key.key_id


def bench_key_lag(
    drops: int = 3, *, interval: float = 300.0, timeout: float | None = None, console: Console | None = None
) -> dict[str, Any]:
    """Seconds from a CloudTrail file appearing to its event being queryable, under ``metrics deploy``.

    Serves only ``collect-key-audit-logs`` every ``interval`` seconds (the default
    schedule is 300 s) over a temporary folder, drops ``drops`` files at random
    moments (uniform over one interval, so the wait for the next run is as a
    real file would see it) and polls the lake once a second for each file's event.
    """
    from storage.store import MetricStore

    say = console.print if console is not None else (lambda *a, **k: None)
    folder = Path(tempfile.mkdtemp(prefix="metrics-bench-key-lag-"))
    logs = folder / "cloudtrail"
    logs.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "METRICS_"))}
    env.update(
        METRICS_DATA_DIR=str(folder / "data"),
        METRICS_PREFECT_PORT=str(_free_port()),
        METRICS_API_PORT=str(_free_port()),
        METRICS_SECURITY_INTERVAL=str(interval),
        METRICS_CLOUDTRAIL_PATHS=str(logs),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        DO_NOT_TRACK="1",
    )
    command = [sys.executable, "-m", "metrics.deploy", "--mode=development", "--job", "collect-key-audit-logs"]
    process = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    rng = random.Random(5)
    lags: list[float] = []
    settings = Settings(data_dir=folder / "data")
    limit = timeout if timeout is not None else interval * 2 + 120
    try:
        assert process.stdout is not None
        for line in process.stdout:
            if "healthy after" in line:
                break
        else:
            raise RuntimeError("metrics deploy exited before the Prefect server was healthy")
        say(f"serving collect-key-audit-logs every {interval:g} s; dropping {drops} files")
        for number in range(drops):
            time.sleep(rng.uniform(0, interval))
            key_id = _drop_file(logs, rng)
            dropped = time.monotonic()
            while time.monotonic() - dropped < limit:
                store = MetricStore(settings, read_only=True)
                try:
                    found = store.sql(
                        "SELECT count(*) AS n FROM samples WHERE metric = 'crypto.key.access_count' AND tags LIKE ?",
                        [f'%"key_id":"{key_id}"%'],
                    ).item()
                finally:
                    store.close()
                if found:
                    lags.append(time.monotonic() - dropped)
                    say(f"file {number + 1}: queryable after {lags[-1]:.1f} s")
                    break
                time.sleep(1.0)
            else:
                raise RuntimeError(f"file {number + 1} was not queryable within {limit:g} s")
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            process.kill()
        shutil.rmtree(folder, ignore_errors=True)
    return {
        "interval_s": interval,
        "drops": drops,
        "lag_s": [round(lag, 1) for lag in lags],
        "p50_s": round(_median(lags), 1),
        "max_s": round(max(lags), 1),
    }

"""Benchmark of anomaly training and scoring over a lake: ``metrics bench anomalies``.

Generates ``hosts`` hosts × ``metrics_per_host`` gauges of ``days`` days at
five-minute steps, each host's metrics following one daily load (as CPU,
memory, requests and latency do), and one host with a broken relation in its
last hour. It then measures, side by side in one run: a training run in one
process and in ``workers`` processes (the same models, so the ratio is the
parallel speed-up), a scoring run after training (rows since the models'
training end), and a second scoring run with nothing new.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from rich.console import Console

from metrics.processes import workers_for
from metrics.settings import Settings

STEP = timedelta(minutes=5)
DAY_ROWS = 288


def host_samples(host: str, metrics: int, rows: int, end: datetime, seed: int, broken: bool = False) -> pl.DataFrame:
    """One host's gauges following a shared daily load with noise (the last hour broken if ``broken``)."""
    rng = np.random.default_rng(seed)
    load = 50 + 20 * np.sin(2 * np.pi * np.arange(rows) / DAY_ROWS) + rng.normal(0, 2, rows)
    stamps = pl.datetime_range(end - STEP * (rows - 1), end, STEP, time_zone="UTC", eager=True).dt.cast_time_unit("us")
    frames = []
    for index in range(metrics):
        values = (1 + index) * load + rng.normal(0, 1 + index, rows)
        if broken and index == metrics - 1:
            values[-12:] *= 0.2
        frames.append(
            pl.DataFrame({"ts": stamps, "value": values}).with_columns(
                pl.lit(f"bench.m{index}").alias("metric"), pl.lit("gauge").alias("type"), pl.lit(host).alias("host")
            )
        )
    return pl.concat(frames)


def bench_anomalies(
    hosts: int = 10,
    metrics_per_host: int = 4,
    days: int = 14,
    *,
    workers: int | None = None,
    detector: str = "ensemble",
    data_dir: Path | None = None,
    console: Console | None = None,
) -> dict[str, Any]:
    """Training (1 process vs ``workers``) and scoring time over a generated lake (see the module)."""
    from storage.store import MetricStore
    from tasks.anomalies import AnomalyScorer

    say = console.print if console is not None else (lambda *a, **k: None)
    folder = data_dir or Path(tempfile.mkdtemp(prefix="metrics-bench-anomalies-"))
    now = datetime.now(UTC).replace(second=0, microsecond=0)
    rows = days * DAY_ROWS
    parallel = workers_for(hosts * (metrics_per_host + 1), workers)
    settings = Settings(data_dir=folder / "data", anomaly_detector=detector, train_days=days + 1)
    store = MetricStore(settings).open(background_flush=False)
    try:
        for number in range(hosts):
            store.ingest_frame(host_samples(f"host-{number}", metrics_per_host, rows, now, number, number == 0))
        store.flush()
        say(f"lake: {hosts * metrics_per_host} series × {rows:,} rows ({hosts} hosts)")
        trained_at = now - timedelta(hours=1)
        timings = {}
        for count in dict.fromkeys((1, parallel)):
            shutil.rmtree(settings.data_dir / "models", ignore_errors=True)
            summary = AnomalyScorer(replace(settings, train_workers=count), store).train(now=trained_at)
            timings[count] = summary.seconds
            say(f"trained {len(summary.trained)} models in {summary.seconds:.1f} s with {count} process(es)")
        scorer = AnomalyScorer(settings, store)
        scored = scorer.score(now=now)
        say(f"scored {scored.rows:,} rows ({scored.series} series, {scored.groups} groups) in {scored.seconds:.2f} s")
        clock = time.perf_counter()
        again = scorer.score(now=now)
        idle = time.perf_counter() - clock
        joint = store.sql("SELECT count(*) AS n FROM anomalies WHERE detector = 'joint' AND is_anomaly")["n"][0]
    finally:
        store.close()
        if data_dir is None:
            shutil.rmtree(folder, ignore_errors=True)
    return {
        "detector": detector,
        "series": hosts * metrics_per_host,
        "groups": hosts,
        "rows_per_series": rows,
        "models": len(summary.trained),
        "train_seconds_1_process": round(timings[1], 2),
        f"train_seconds_{parallel}_processes": round(timings[parallel], 2),
        "train_speedup": round(timings[1] / timings[parallel], 2),
        "score_seconds": round(scored.seconds, 2),
        "score_rows": scored.rows,
        "score_anomalies": scored.anomalies,
        "joint_anomalies": int(joint),
        "rescore_seconds": round(idle, 2),
        "rescore_rows": again.rows,
    }

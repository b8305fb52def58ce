"""The benchmarks at small size: the figures are checked for shape and sign, never against wall-clock limits."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from metrics.bench import bench_ingest, bench_query, ingest_mix
from metrics.settings import Settings
from storage.store import MetricStore

pytestmark = [
    pytest.mark.performance,
    pytest.mark.slow,
]

INGEST_KEYS = {"samples", "seconds", "samples_per_s", "bytes_per_sample"}
QUERY_NAMES = {
    "single_series_max_1m_1h",
    "max_all_metrics_1h_8hosts_8h",
    "avg_per_host_1h_12h",
    "latest_point_per_host",
    "usage_user_above_90_12h",
}


def quiet() -> Console:
    return Console(file=io.StringIO())


def test_bench_ingest(tmp_path: Path) -> None:
    folder = tmp_path / "ingest"
    figures = bench_ingest(200_000, data_dir=folder, console=quiet())
    print(json.dumps(figures))
    assert figures.keys() >= INGEST_KEYS
    assert figures["samples"] == 200_000
    assert figures["rejected"] == 0
    for key in ("seconds", "samples_per_s", "bytes_per_sample", "bytes_per_sample_before_compaction"):
        assert isinstance(figures[key], int | float), key
        assert figures[key] > 0, key
    assert figures["bytes_per_sample_with_rollups"] >= figures["bytes_per_sample"]
    json.dumps(figures)  # JSON-ready
    # the kept lake holds exactly the samples measured
    store = MetricStore(Settings(data_dir=folder)).open(background_flush=False)
    try:
        assert store.sql("SELECT count(*) AS n FROM samples").item() == figures["samples"]
    finally:
        store.close()


def test_bench_query(tmp_path: Path) -> None:
    figures = bench_query(100_000, repeats=3, data_dir=tmp_path / "query", console=quiet())
    print(json.dumps(figures))
    assert figures["samples"] == 100_000
    assert figures["repeats"] == 3
    assert set(figures["queries"]) == QUERY_NAMES
    for name, timing in figures["queries"].items():
        assert {"p50_ms", "p95_ms"} <= timing.keys(), name
        assert timing["p50_ms"] > 0, name
        assert timing["p95_ms"] >= timing["p50_ms"], name
        assert timing["plain_duckdb_p50_ms"] > 0, name
    json.dumps(figures)


@pytest.mark.integration
def test_bench_ingest_command_prints_json_last(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "METRICS_DATA_DIR": str(tmp_path / "unused")}
    done = subprocess.run(
        [sys.executable, "-m", "metrics", "bench", "ingest", "--samples", "50000", "--json"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(figures, dict)
    assert figures.keys() >= INGEST_KEYS
    assert figures["samples"] == 50_000
    assert figures["samples_per_s"] > 0
    assert figures["bytes_per_sample"] > 0
    assert not list(tmp_path.glob("metrics-bench-*"))  # the temporary lake is removed


def test_the_ingest_mix_has_one_sample_per_series_and_time() -> None:
    frame = ingest_mix(60_000)
    tags = [c for c in frame.columns if c not in ("ts", "value", "type")]
    assert frame.select(*tags, "ts").is_duplicated().sum() == 0


@pytest.mark.parametrize("points", [1, 2, 3])
def test_the_ingest_mix_works_for_very_short_spans(points: int) -> None:
    # `metrics demo` run twice in a row asks for only the few seconds since the last run.
    frame = ingest_mix(points * 40, series=40)
    assert frame.height == points * 40

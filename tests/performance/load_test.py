"""HTTP JSON ingest under load (``metrics bench http``), small and quick; figures are printed, never asserted as limits.

Run as a script for the full-size figure (20 s, 16 connections, ``api_workers`` processes):

    python tests/performance/load_test.py --seconds 20 --concurrency 16
"""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from rich.console import Console

from metrics.bench import bench_http

pytestmark = [pytest.mark.performance, pytest.mark.integration, pytest.mark.slow]

HTTP_KEYS = {"samples", "samples_per_s", "p50_ms", "p99_ms", "errors", "requests", "concurrency", "workers"}


def test_http_ingest_under_load(tmp_path: Path) -> None:
    figures = bench_http(3.0, concurrency=4, workers=2, data_dir=tmp_path / "http", console=Console(file=io.StringIO()))
    print(json.dumps(figures))
    assert figures.keys() >= HTTP_KEYS
    assert figures["errors"] == 0, figures["statuses"]
    assert figures["requests"] > 0
    assert figures["samples"] == figures["requests"] * 1000  # every batch stored whole (the bodies are valid)
    assert figures["samples_per_s"] > 0
    assert 0 < figures["p50_ms"] <= figures["p99_ms"]
    # every acknowledged sample (warm-up included) is in the lake after the server stopped
    assert figures["stored_in_lake"] >= figures["samples"]


@pytest.mark.timeout(180)
def test_bench_http_command_prints_json_last(tmp_path: Path) -> None:
    env = {**os.environ, "TMPDIR": str(tmp_path), "METRICS_DATA_DIR": str(tmp_path / "unused")}
    done = subprocess.run(
        [sys.executable, "-m", "metrics", "bench", "http", "--seconds", "2", "--concurrency", "2", "--json"],
        cwd=tmp_path,
        env=env,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=170,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout.strip().splitlines()[-1])
    assert figures.keys() >= HTTP_KEYS
    assert figures["workers"] == 2  # the default api_workers
    assert not list(tmp_path.glob("metrics-bench-*"))  # the temporary lake is removed


def main() -> None:
    """Full-size run: print the figures as one JSON object on the last line."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    figures = bench_http(args.seconds, concurrency=args.concurrency, batch=args.batch, workers=args.workers)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()

"""``metrics bench anomalies`` at small size: figures checked for shape and counts, never against wall-clock limits."""

from __future__ import annotations

import io
from datetime import UTC, datetime
from pathlib import Path

import pytest
from rich.console import Console

from metrics.bench_anomalies import bench_anomalies, host_samples

pytestmark = [pytest.mark.performance, pytest.mark.slow]


def test_host_samples_share_one_load_and_the_broken_host_breaks_at_the_end() -> None:
    end = datetime(2026, 12, 1, tzinfo=UTC)
    calm = host_samples("h", 2, 600, end, seed=1)
    broken = host_samples("h", 2, 600, end, seed=1, broken=True)
    assert calm.height == 1200
    assert calm["ts"].max() == end
    m0, m1 = (calm.filter(calm["metric"] == f"bench.m{i}")["value"].to_numpy() for i in (0, 1))
    assert abs(float(((m0 - m0.mean()) * (m1 - m1.mean())).mean() / (m0.std() * m1.std()))) > 0.9
    changed = (calm["value"] != broken["value"]).sum()
    assert changed == 12  # the last hour of the last metric


def test_bench_anomalies(tmp_path: Path) -> None:
    figures = bench_anomalies(
        2, 2, 3, workers=1, detector="zscore", data_dir=tmp_path / "bench", console=Console(file=io.StringIO())
    )
    assert (figures["series"], figures["groups"], figures["rows_per_series"]) == (4, 2, 864)
    assert figures["models"] == 6  # four series and two hosts
    assert figures["train_seconds_1_process"] > 0
    assert figures["score_rows"] == 4 * 12  # the hour since training
    assert figures["rescore_rows"] == 0
    print(figures)

"""``metrics bench keys`` at small size: figures checked for shape and counts, never against wall-clock limits."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from metrics.bench_keys import bench_keys

pytestmark = [pytest.mark.performance, pytest.mark.slow]


def test_bench_keys(tmp_path: Path) -> None:
    figures = bench_keys(5_000, parse_repeats=1, data_dir=tmp_path / "bench", console=Console(file=io.StringIO()))
    assert figures["events"] > 5_000  # usage events plus the estate's lifecycle
    assert figures["parse_events_per_s"] > 0
    assert figures["collect_events_per_s"] > 0
    assert figures["rerun_new_events"] == 0
    assert figures["redelivered_new_events"] == 0
    assert figures["redelivered_events"] > 0
    assert figures["samples"] > 0
    print(figures)

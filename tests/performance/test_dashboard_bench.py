"""``metrics bench dashboards`` at small size in headless Chromium: figures checked for shape, never for time."""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from rich.console import Console

from metrics.bench_dashboards import bench_dashboards, chromium_path
from metrics.web.boards import DASHBOARDS
from tests.servers import apt_install

pytestmark = [pytest.mark.performance, pytest.mark.slow, pytest.mark.integration]


def test_bench_dashboards(tmp_path: Path) -> None:
    found, how = apt_install("chromium", chromium_path)
    if found is None:
        pytest.skip(f"headless Chromium unavailable: {how}")
    figures = bench_dashboards(
        24_000, loads=2, ranges=("1h",), data_dir=tmp_path / "bench", console=Console(file=io.StringIO())
    )
    assert figures["lake"]["samples"] == 24_000
    assert set(figures["dashboards"]) == {f"{name}@1h" for name in DASHBOARDS}
    system = figures["dashboards"]["system@1h"]
    assert system["panels"] == system["panels_with_data"] == len(DASHBOARDS["system"].panels)
    for name, result in figures["dashboards"].items():
        assert 0 < result["p50_ms"] <= result["max_ms"], name
        assert result["first_load_ms"] > 0, name
        assert result["slowest_panel"]["ms"] <= result["slowest_panel"]["all_panels_ms"], name
    print(figures)

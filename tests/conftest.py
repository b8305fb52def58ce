"""Shared fixtures: a real lake in a temporary folder, settings pointing at it, sample frames."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np
import polars as pl
import pytest

os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from metrics.settings import Settings
from storage.store import MetricStore


def _import_wide_consoles() -> None:
    """Import the CLI modules with COLUMNS=400: their rich consoles read the width once, at import.

    Tables then never wrap in tests, whichever test (or pytest-xdist worker) imports them first; the
    variable is restored afterwards so pytest's own output keeps the terminal's width.
    """
    import importlib

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "400"
    try:
        for module in ("metrics.cli", "metrics.cli_alerts", "metrics.cli_bench", "metrics.cli_collect",
                       "metrics.cli_forecast", "metrics.cli_keys", "metrics.cli_models"):  # fmt: skip
            importlib.import_module(module)
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


_import_wide_consoles()

SAMPLE_INTERVAL = timedelta(seconds=10)
# The system metric names the original spec shows.
SPEC_SYSTEM_METRICS = {
    "system.cpu.usage_total",
    "system.memory.usage_percent",
    "system.disk.usage_percent",
    "system.network.bytes_sent",
    "system.network.bytes_recv",
    "system.network.errors",
}


@pytest.fixture
def noon() -> datetime:
    """Yesterday 12:00 UTC: frames ending here stay inside one day whatever the time of the run."""
    return (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)


@pytest.fixture
def now() -> datetime:
    """A fixed 'now' aligned to the minute, a little in the past so data is never in the future."""
    moment = datetime.now(UTC).replace(second=0, microsecond=0) - timedelta(minutes=1)
    return moment


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Settings with the data directory in a fresh temporary folder."""
    return Settings(data_dir=tmp_path / "data", batch_size=10_000, flush_seconds=0.2)


@pytest.fixture
def store(settings: Settings) -> Iterator[MetricStore]:
    """An open MetricStore on the temporary lake (background flusher off for determinism)."""
    opened = MetricStore(settings).open(background_flush=False)
    try:
        yield opened
    finally:
        opened.close()


FrameFactory = Callable[..., pl.DataFrame]


@pytest.fixture
def make_frame(now: datetime) -> FrameFactory:
    """Build a wide sample frame: ``metrics`` x ``hosts`` series, ``points`` each, 10 s apart, ending at ``now``."""

    def build(
        metrics: tuple[str, ...] = ("cpu.usage", "mem.usage"),
        hosts: int = 3,
        points: int = 60,
        *,
        kind: str = "gauge",
        end: datetime | None = None,
        seed: int = 1,
    ) -> pl.DataFrame:
        rng = np.random.default_rng(seed)
        last = end or now
        stamps = [last - SAMPLE_INTERVAL * (points - 1 - i) for i in range(points)]
        rows: dict[str, list[object]] = {"ts": [], "metric": [], "value": [], "type": [], "host": []}
        for metric in metrics:
            for h in range(hosts):
                if kind == "counter":
                    values = np.cumsum(rng.integers(0, 20, points)).astype(float)
                else:
                    values = np.round(rng.uniform(0, 100, points), 2)
                rows["ts"].extend(stamps)
                rows["metric"].extend([metric] * points)
                rows["value"].extend(values.tolist())
                rows["type"].extend([kind] * points)
                rows["host"].extend([f"host-{h}"] * points)
        return pl.DataFrame(rows, schema_overrides={"ts": pl.Datetime("us", "UTC")})

    return build

"""The system collector reads real metrics of this machine; adaptive sampling keeps what matters."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from metrics.model import MetricDataPoint, MetricType
from storage.store import MetricStore
from tasks.collect.system import AdaptiveSampler, collect_system_metrics

SPEC_NAMES = {
    "system.cpu.usage_total",
    "system.memory.usage_percent",
    "system.disk.usage_percent",
    "system.network.bytes_sent",
    "system.network.bytes_recv",
    "system.network.errors",
}


def test_the_collector_reads_the_spec_metrics_of_this_machine() -> None:
    points = collect_system_metrics(host="test-host")
    names = {p.metric_id for p in points}
    assert names >= SPEC_NAMES
    assert names >= {
        "system.cpu.usage_percent",
        "system.load.1m",
        "system.swap.usage_percent",
        "system.processes.count",
    }
    assert all(p.tags["host"] == "test-host" for p in points)
    assert all(math.isfinite(p.value) for p in points)
    counters = {p.metric_id for p in points if p.metric_type == MetricType.COUNTER}
    assert {"system.network.bytes_sent", "system.network.bytes_recv", "system.network.errors"} <= counters
    assert any(p.metric_id == "system.disk.usage_percent" and p.tags.get("mount") == "/" for p in points)


def test_collected_metrics_are_stored_without_rejections(store: MetricStore) -> None:
    result = store.ingest_points(collect_system_metrics())
    assert result.rejected == []
    assert store.latest("system.*").height == result.stored


def gauge(value: float, at: datetime, metric: str = "g") -> MetricDataPoint:
    return MetricDataPoint(metric_id=metric, value=value, metric_type=MetricType.GAUGE, timestamp=at, tags={"h": "a"})


def counter(value: float, at: datetime) -> MetricDataPoint:
    return MetricDataPoint(metric_id="c", value=value, metric_type=MetricType.COUNTER, timestamp=at, tags={"h": "a"})


T0 = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("points", "kept"),
    [
        ([gauge(10.0, T0), gauge(10.2, T0 + timedelta(seconds=30)), gauge(10.4, T0 + timedelta(seconds=60))], [0]),
        ([gauge(10.0, T0), gauge(11.0, T0 + timedelta(seconds=30))], [0, 1]),  # moved beyond the tolerance
        ([gauge(10.0, T0), gauge(10.0, T0 + timedelta(seconds=300))], [0, 1]),  # the heartbeat is due
        (
            [counter(5.0, T0), counter(5.0, T0 + timedelta(seconds=30)), counter(6.0, T0 + timedelta(seconds=60))],
            [0, 2],
        ),
    ],
)
def test_the_sampler_keeps_what_matters(points: list[MetricDataPoint], kept: list[int]) -> None:
    sampler = AdaptiveSampler(tolerance=0.5, heartbeat_seconds=300)
    stored = [i for i, p in enumerate(points) if sampler.filter([p])]
    assert stored == kept
    assert sampler.stats.max_skipped_error <= 0.5


def test_the_sampler_saves_most_samples_of_slow_gauges_within_its_error_bound() -> None:
    sampler = AdaptiveSampler(tolerance=0.5, heartbeat_seconds=300)
    for i in range(600):  # 5 hours at 30 s of a slowly drifting value
        sampler.filter([gauge(50 + 0.01 * i, T0 + timedelta(seconds=30 * i))])
    assert sampler.stats.saved_fraction >= 0.9  # the 300 s heartbeat stores one sample in ten
    assert sampler.stats.max_skipped_error <= 0.5


def test_the_interval_shrinks_while_series_move_and_recovers() -> None:
    sampler = AdaptiveSampler(tolerance=0.5, base_interval=30, min_interval=5)
    metrics = [f"g{i}" for i in range(4)]
    sampler.filter([gauge(0.0, T0, m) for m in metrics])
    assert sampler.interval_ == 30
    for step in range(1, 4):  # everything jumps: faster sampling, down to the floor
        sampler.filter([gauge(10.0 * step, T0 + timedelta(seconds=step), m) for m in metrics])
    assert sampler.interval_ == 5
    for step in range(4, 8):  # flat again: back to the base interval
        sampler.filter([gauge(30.0, T0 + timedelta(seconds=step), m) for m in metrics])
    assert sampler.interval_ == 30


def test_the_sampler_refuses_nonsense_parameters() -> None:
    with pytest.raises(ValueError, match="interval"):
        AdaptiveSampler(base_interval=5, min_interval=10)

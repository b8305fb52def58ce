"""The system collector reads real metrics of this machine; adaptive sampling keeps what matters."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

import psutil
import pytest

from metrics.model import MetricDataPoint, MetricType
from metrics.settings import Settings
from storage.store import MetricStore
from tasks.collect.checkpoints import Checkpoints
from tasks.collect.system import (
    CHECKPOINT,
    AdaptiveSampler,
    CpuMeter,
    SystemCollector,
    collect_system_metrics,
    collect_system_samples,
    new_sampler,
)
from tests.conftest import SPEC_SYSTEM_METRICS


def test_the_collector_reads_the_spec_metrics_of_this_machine() -> None:
    points = collect_system_metrics(host="test-host")
    names = {p.metric_id for p in points}
    assert names >= SPEC_SYSTEM_METRICS
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


def test_the_relative_tolerance_covers_large_values() -> None:
    sampler = AdaptiveSampler(tolerance=0.5, relative_tolerance=0.01)
    sizes = [8e9, 8e9 + 1e6, 8e9 + 2e8]  # +1 MB is within 1 % of 8 GB; +200 MB is not
    stored = [i for i, v in enumerate(sizes) if sampler.filter([gauge(v, T0 + timedelta(seconds=30 * i))])]
    assert stored == [0, 2]


def busy_cpu(seconds: float) -> None:
    deadline = time.process_time() + seconds
    while time.process_time() < deadline:
        pass


def test_the_cpu_meter_measures_the_interval_since_its_previous_reading() -> None:
    meter = CpuMeter(settle_seconds=0.05)
    meter.read()  # no previous reading: settles briefly
    busy_cpu(0.3)
    total, cores = meter.read()
    assert len(cores) == psutil.cpu_count()
    assert 0 < total <= 100
    assert all(0 <= core <= 100 for core in cores)


def test_a_restored_cpu_meter_needs_no_settling_and_a_stale_one_settles() -> None:
    first = CpuMeter(settle_seconds=0.05)
    first.read()
    time.sleep(0.1)  # CPU time advances in ticks of 10 ms: let a few pass, as between two scheduled runs
    resumed = CpuMeter(settle_seconds=30.0, previous_=first.previous_)  # settling would time the test out
    started = time.monotonic()
    resumed.read()
    assert time.monotonic() - started < 5
    mismatched = CpuMeter(settle_seconds=0.05, previous_=[(0.0, 0.0)] * (len(first.previous_ or []) + 1))
    total, _ = mismatched.read()  # a different core count: the saved counters are useless
    assert 0 <= total <= 100


def test_sampler_state_round_trips_and_garbage_is_ignored() -> None:
    sampler = AdaptiveSampler(base_interval=30, min_interval=5)
    sampler.filter([gauge(1.0, T0), counter(3.0, T0)])
    sampler.interval_ = 10
    restored = AdaptiveSampler(base_interval=30, min_interval=5)
    restored.restore(json.loads(json.dumps(sampler.to_state())))
    assert restored.interval_ == 10
    assert restored.stats == sampler.stats
    assert restored.filter([gauge(1.1, T0 + timedelta(seconds=30))]) == []  # remembered: within tolerance
    fresh = AdaptiveSampler()
    for garbage in ({}, {"last": "x", "interval": 1, "stats": {}}, {"last": [[1, 2]], "interval": 5, "stats": {}}):
        fresh.restore(garbage)
        assert fresh.to_state()["last"] == []


def test_a_collector_checkpoint_of_another_host_is_ignored() -> None:
    collector = SystemCollector(host="a", sampler=AdaptiveSampler())
    collector.collect()
    state = collector.to_state()
    other = SystemCollector(host="b", sampler=AdaptiveSampler()).restore(state)
    assert other.cpu.previous_ is None
    same = SystemCollector(host="a", sampler=AdaptiveSampler()).restore(json.loads(json.dumps(state)))
    assert same.cpu.previous_ == collector.cpu.previous_
    points, read = same.collect()
    assert read > len(points)  # the restored sampler skips what did not move


def test_collect_system_samples_takes_extra_readings_while_busy(settings: Settings) -> None:
    settings = replace(settings, system_interval=10.0)
    checkpoints = Checkpoints(settings.state_dir)
    collector = SystemCollector(host="busy-host", sampler=new_sampler(settings))
    assert collector.sampler is not None
    collector.sampler.interval_ = collector.sampler.min_interval  # as if series had been moving fast
    checkpoints.save(CHECKPOINT, collector.to_state())
    summary = collect_system_samples.fn(settings, window_seconds=2.0, host="busy-host")
    assert summary.readings >= 1
    assert summary.samples_stored + summary.samples_saved + summary.rejected == summary.samples_read
    saved = checkpoints.load(CHECKPOINT)
    assert saved is not None
    assert saved["host"] == "busy-host"


def test_a_window_of_several_intervals_takes_several_readings(settings: Settings) -> None:
    settings = replace(settings, system_interval=0.3, adaptive_sampling=False)
    summary = collect_system_samples.fn(settings, window_seconds=1.0)
    assert summary.readings >= 2
    assert summary.samples_saved == 0
    with MetricStore(settings, read_only=True).open(background_flush=False) as store:
        stored = store.sql("SELECT count(*) AS n FROM samples WHERE metric = 'system.cpu.usage_total'")["n"][0]
    assert stored == summary.readings


def test_a_negative_window_is_refused(settings: Settings) -> None:
    with pytest.raises(ValueError, match="window_seconds"):
        collect_system_samples.fn(settings, window_seconds=-1)

"""System metrics from psutil, with adaptive sampling.

Metric names follow the original spec: ``system.cpu.usage_total``,
``system.memory.usage_percent``, ``system.disk.usage_percent`` (per mount),
``system.network.bytes_sent`` / ``bytes_recv`` / ``errors`` (counters, per
interface), all tagged with ``host``; plus per-core CPU
(``system.cpu.usage_percent``, tag ``core``), load averages
(``system.load.1m|5m|15m``), swap (``system.swap.usage_percent``), disk I/O
counters (``system.disk.read_bytes`` / ``write_bytes``, tag ``disk``) and the
process count (``system.processes.count``).

Adaptive sampling (``AdaptiveSampler``): a gauge that has not moved more than
``tolerance`` since the value last stored is not stored again until
``heartbeat_seconds`` pass, so a query sees it at most ``tolerance`` away from
the truth; counters are stored whenever they change. The sampler also
suggests the next collection interval: shorter while many series move, back
to the base interval when they settle. Both figures (samples saved, the error
bound) are counted in :class:`SamplerStats`.
"""

from __future__ import annotations

import socket
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import psutil

from metrics.model import MetricDataPoint, MetricType

GAUGE = MetricType.GAUGE
COUNTER = MetricType.COUNTER


def collect_system_metrics(host: str | None = None, now: datetime | None = None) -> list[MetricDataPoint]:
    """One reading of this machine's CPU, memory, disks, network, load and processes.

    CPU usage is measured since the previous call (psutil's non-blocking mode),
    so a long-running collector gets the usage over each interval; the very
    first call of a process reports 0.
    """
    moment = now or datetime.now(UTC)
    tags = {"host": host or socket.gethostname()}

    def point(metric: str, value: float, kind: MetricType = GAUGE, **extra: str) -> MetricDataPoint:
        return MetricDataPoint(
            metric_id=metric, value=float(value), metric_type=kind, timestamp=moment, tags={**tags, **extra}
        )

    points = [point("system.cpu.usage_total", psutil.cpu_percent(interval=None))]
    points += [
        point("system.cpu.usage_percent", usage, core=str(core))
        for core, usage in enumerate(psutil.cpu_percent(interval=None, percpu=True))
    ]
    memory = psutil.virtual_memory()
    points.append(point("system.memory.usage_percent", memory.percent))
    points.append(point("system.memory.available_bytes", memory.available))
    points.append(point("system.swap.usage_percent", psutil.swap_memory().percent))
    for partition in psutil.disk_partitions(all=False):
        try:
            usage = psutil.disk_usage(partition.mountpoint)
        except OSError:  # a mount that vanished or cannot be read: skip it this time
            continue
        points.append(point("system.disk.usage_percent", usage.percent, mount=partition.mountpoint))
    for disk, io in (psutil.disk_io_counters(perdisk=True) or {}).items():
        points.append(point("system.disk.read_bytes", io.read_bytes, COUNTER, disk=disk))
        points.append(point("system.disk.write_bytes", io.write_bytes, COUNTER, disk=disk))
    for interface, net in psutil.net_io_counters(pernic=True).items():
        points.append(point("system.network.bytes_sent", net.bytes_sent, COUNTER, interface=interface))
        points.append(point("system.network.bytes_recv", net.bytes_recv, COUNTER, interface=interface))
        errors = net.errin + net.errout
        points.append(point("system.network.errors", errors, COUNTER, interface=interface))
    for window, load in zip(("1m", "5m", "15m"), psutil.getloadavg(), strict=True):
        points.append(point(f"system.load.{window}", load))
    points.append(point("system.processes.count", len(psutil.pids())))
    return points


@dataclass
class SamplerStats:
    """What adaptive sampling did: samples offered, stored and skipped, and the largest skipped deviation."""

    seen: int = 0
    stored: int = 0
    max_skipped_error: float = 0.0

    @property
    def saved(self) -> int:
        """Samples not stored."""
        return self.seen - self.stored

    @property
    def saved_fraction(self) -> float:
        """Share of samples not stored."""
        return self.saved / self.seen if self.seen else 0.0


@dataclass
class AdaptiveSampler:
    """Drops samples that add nothing and adapts the collection interval (see module docstring).

    Args:
        tolerance: largest change of a gauge that is not stored again (absolute, in the metric's unit).
        heartbeat_seconds: a series is stored at least this often, even when flat.
        base_interval: the configured collection interval in seconds.
        min_interval: the shortest interval used while series change quickly.
        busy_fraction: share of gauges moving beyond the tolerance that counts as "changing quickly".
    """

    tolerance: float = 0.5
    heartbeat_seconds: float = 300.0
    base_interval: float = 30.0
    min_interval: float = 5.0
    busy_fraction: float = 0.25
    stats: SamplerStats = field(default_factory=SamplerStats)
    interval_: float = 0.0
    _last: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[datetime, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tolerance < 0 or self.heartbeat_seconds <= 0:
            raise ValueError("tolerance must be >= 0 and heartbeat_seconds > 0")
        if not 0 < self.min_interval <= self.base_interval:
            raise ValueError("intervals must satisfy 0 < min_interval <= base_interval")
        self.interval_ = self.base_interval

    def filter(self, points: Iterable[MetricDataPoint]) -> list[MetricDataPoint]:
        """The points worth storing; updates the statistics and the suggested interval."""
        kept: list[MetricDataPoint] = []
        gauges = moving = 0
        for item in points:
            self.stats.seen += 1
            key = (item.metric_id, tuple(sorted(item.tags.items())))
            assert item.timestamp is not None
            previous = self._last.get(key)
            change = abs(item.value - previous[1]) if previous is not None else float("inf")
            if item.metric_type == GAUGE:
                gauges += 1
                moving += previous is not None and change > self.tolerance
            keep = (
                previous is None
                or (item.timestamp - previous[0]).total_seconds() >= self.heartbeat_seconds
                or (change > self.tolerance if item.metric_type == GAUGE else change != 0)
            )
            if keep:
                kept.append(item)
                self._last[key] = (item.timestamp, item.value)
            else:
                self.stats.max_skipped_error = max(self.stats.max_skipped_error, change)
        self.stats.stored += len(kept)
        busy = gauges > 0 and moving / gauges >= self.busy_fraction
        self.interval_ = (
            max(self.min_interval, self.interval_ / 2) if busy else min(self.base_interval, self.interval_ * 2)
        )
        return kept

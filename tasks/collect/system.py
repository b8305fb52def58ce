"""System metrics from psutil, with adaptive sampling.

Metric names follow the original spec: ``system.cpu.usage_total``,
``system.memory.usage_percent``, ``system.disk.usage_percent`` (per mount),
``system.network.bytes_sent`` / ``bytes_recv`` / ``errors`` (counters, per
interface), all tagged with ``host``; plus per-core CPU
(``system.cpu.usage_percent``, tag ``core``), load averages
(``system.load.1m|5m|15m``), swap (``system.swap.usage_percent``), disk I/O
counters (``system.disk.read_bytes`` / ``write_bytes``, tag ``disk``) and the
process count (``system.processes.count``).

CPU usage is measured over the interval since the previous reading
(:class:`CpuMeter`); because every scheduled run is a new process, the meter's
counters are saved with the sampler's memory in a checkpoint
(:class:`SystemCollector`), so each run reports the usage over the whole
interval since the last one rather than an instant.

Adaptive sampling (``AdaptiveSampler``): a gauge that has not moved more than
its tolerance — ``max(tolerance, relative_tolerance × |last stored value|)`` —
since the value last stored is not stored again until
``heartbeat_seconds`` pass, so a query sees it at most that tolerance away from
the truth; counters are stored whenever they change. The sampler also
suggests the next collection interval: shorter while many series move, back
to the base interval when they settle. Both figures (samples saved, the error
bound) are counted in :class:`SamplerStats`.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import psutil
from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from metrics.model import MetricDataPoint, MetricType
from metrics.settings import Settings
from storage.store import MetricStore
from tasks.collect.checkpoints import Checkpoints

GAUGE = MetricType.GAUGE
COUNTER = MetricType.COUNTER


def _busy_and_total(times: Any) -> tuple[float, float]:
    """Busy and total CPU seconds of one ``cpu_times`` record (as psutil counts them)."""
    total = sum(times)
    # On Linux guest time is already inside user/nice time: do not count it twice.
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


@dataclass
class CpuMeter:
    """CPU usage (total and per core, percent) since the previous reading.

    ``previous_`` holds the (busy, total) CPU seconds per core of the last
    reading; it is part of the collector's checkpoint, so the usage spans the
    whole interval between two scheduled runs. Without a usable previous
    reading (first run, reboot, core count changed) the meter takes two
    readings ``settle_seconds`` apart.
    """

    settle_seconds: float = 0.2
    previous_: list[tuple[float, float]] | None = None

    def _read(self) -> list[tuple[float, float]]:
        return [_busy_and_total(times) for times in psutil.cpu_times(percpu=True)]

    def read(self) -> tuple[float, list[float]]:
        """(total usage, per-core usage) in percent since the previous call."""
        current = self._read()
        previous = self.previous_
        usable = previous is not None and len(previous) == len(current)
        if usable and previous is not None:
            usable = all(now[1] > before[1] for now, before in zip(current, previous, strict=True))
        if not usable:
            previous = current
            time.sleep(self.settle_seconds)
            current = self._read()
        assert previous is not None
        self.previous_ = current

        def percent(busy: float, total: float) -> float:
            return round(min(100.0, max(0.0, 100.0 * busy / total)), 2) if total > 0 else 0.0

        cores = [percent(now[0] - before[0], now[1] - before[1]) for now, before in zip(current, previous, strict=True)]
        busy = sum(now[0] - before[0] for now, before in zip(current, previous, strict=True))
        total = sum(now[1] - before[1] for now, before in zip(current, previous, strict=True))
        return percent(busy, total), cores


_PROCESS_METER = CpuMeter()


def collect_system_metrics(
    host: str | None = None, now: datetime | None = None, cpu: CpuMeter | None = None
) -> list[MetricDataPoint]:
    """One reading of this machine's CPU, memory, disks, network, load and processes.

    CPU usage is measured since the previous reading of ``cpu`` (by default a
    meter shared by the whole process), so a collector gets the usage over
    each interval; a meter's very first reading spans a fraction of a second.
    """
    moment = now or datetime.now(UTC)
    tags = {"host": host or socket.gethostname()}

    def point(metric: str, value: float, kind: MetricType = GAUGE, **extra: str) -> MetricDataPoint:
        return MetricDataPoint(
            metric_id=metric, value=float(value), metric_type=kind, timestamp=moment, tags={**tags, **extra}
        )

    total, cores = (cpu or _PROCESS_METER).read()
    points = [point("system.cpu.usage_total", total)]
    points += [point("system.cpu.usage_percent", usage, core=str(core)) for core, usage in enumerate(cores)]
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
        relative_tolerance: the same as a share of the last stored value (for byte counts and the like).
        heartbeat_seconds: a series is stored at least this often, even when flat.
        base_interval: the configured collection interval in seconds.
        min_interval: the shortest interval used while series change quickly.
        busy_fraction: share of gauges moving beyond the tolerance that counts as "changing quickly".
    """

    tolerance: float = 0.5
    relative_tolerance: float = 0.01
    heartbeat_seconds: float = 300.0
    base_interval: float = 30.0
    min_interval: float = 5.0
    busy_fraction: float = 0.25
    stats: SamplerStats = field(default_factory=SamplerStats)
    interval_: float = 0.0
    _last: dict[tuple[str, tuple[tuple[str, str], ...]], tuple[datetime, float]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.tolerance < 0 or self.relative_tolerance < 0 or self.heartbeat_seconds <= 0:
            raise ValueError("tolerances must be >= 0 and heartbeat_seconds > 0")
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
                limit = (
                    self.tolerance
                    if previous is None
                    else max(self.tolerance, self.relative_tolerance * abs(previous[1]))
                )
                moving += previous is not None and change > limit
            keep = (
                previous is None
                or (item.timestamp - previous[0]).total_seconds() >= self.heartbeat_seconds
                or (change > limit if item.metric_type == GAUGE else change != 0)
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

    def to_state(self) -> dict[str, Any]:
        """The sampler's memory as JSON-ready data (see :meth:`restore`)."""
        return {
            "interval": self.interval_,
            "stats": asdict(self.stats),
            "last": [[metric, dict(tags), at.isoformat(), value] for (metric, tags), (at, value) in self._last.items()],
        }

    def restore(self, state: dict[str, Any]) -> None:
        """Take back the memory of :meth:`to_state` (a malformed state is ignored: the sampler starts afresh)."""
        try:
            last = {
                (str(metric), tuple(sorted((str(k), str(v)) for k, v in tags.items()))): (
                    datetime.fromisoformat(at),
                    float(value),
                )
                for metric, tags, at, value in state["last"]
            }
            interval = float(state["interval"])
            stats = SamplerStats(**state["stats"])
        except (KeyError, TypeError, ValueError, AttributeError):
            return
        self._last = last
        self.interval_ = min(self.base_interval, max(self.min_interval, interval))
        self.stats = stats


@dataclass
class SystemCollector:
    """The system collector of one host across scheduled runs: CPU meter and sampler, saved as one checkpoint.

    Args:
        host: the ``host`` tag (default: this machine's name).
        sampler: the adaptive sampler, or None to store every reading.
        cpu: the CPU meter.
    """

    host: str = field(default_factory=socket.gethostname)
    sampler: AdaptiveSampler | None = None
    cpu: CpuMeter = field(default_factory=CpuMeter)

    @property
    def interval(self) -> float | None:
        """The sampler's suggested interval until the next reading (None without a sampler)."""
        return self.sampler.interval_ if self.sampler is not None else None

    def collect(self, now: datetime | None = None) -> tuple[list[MetricDataPoint], int]:
        """One reading: (the points worth storing, how many were read)."""
        points = collect_system_metrics(self.host, now, self.cpu)
        return (self.sampler.filter(points) if self.sampler is not None else points), len(points)

    def to_state(self) -> dict[str, Any]:
        """JSON-ready checkpoint."""
        return {
            "host": self.host,
            "cpu": self.cpu.previous_,
            "sampler": self.sampler.to_state() if self.sampler is not None else None,
        }

    def restore(self, state: dict[str, Any] | None) -> SystemCollector:
        """Continue from a checkpoint of the same host (others are ignored); returns self."""
        if not state or state.get("host") != self.host:
            return self
        cpu = state.get("cpu")
        if isinstance(cpu, list) and all(isinstance(pair, list) and len(pair) == 2 for pair in cpu):
            self.cpu.previous_ = [(float(busy), float(total)) for busy, total in cpu]
        if self.sampler is not None and isinstance(state.get("sampler"), dict):
            self.sampler.restore(state["sampler"])
        return self


CHECKPOINT = "system-collector"
# Keep this share of the window free, so a run that took extra readings ends before the next one starts.
_WINDOW_SLACK = 0.1


@dataclass
class CollectionSummary:
    """What one scheduled collection did."""

    host: str
    readings: int = 0
    samples_read: int = 0
    samples_stored: int = 0
    rejected: int = 0
    max_skipped_error: float = 0.0
    next_interval: float | None = None

    @property
    def samples_saved(self) -> int:
        """Samples adaptive sampling did not store."""
        return self.samples_read - self.samples_stored - self.rejected


def new_sampler(settings: Settings) -> AdaptiveSampler | None:
    """The adaptive sampler around ``system_interval``, or None when ``adaptive_sampling`` is off."""
    if not settings.adaptive_sampling:
        return None
    interval = settings.system_interval
    return AdaptiveSampler(
        base_interval=interval, min_interval=min(5.0, interval), heartbeat_seconds=max(300.0, interval)
    )


@task(
    name="collect-system-samples",
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    cache_policy=NO_CACHE,
)
def collect_system_samples(
    settings: Settings, window_seconds: float | None = None, host: str | None = None
) -> CollectionSummary:
    """Read this host over one collection window and store what is worth keeping.

    One reading at the start; while the sampler sees series changing quickly,
    more readings follow at its shorter interval until the window (default
    ``system_interval``) is nearly over. The CPU meter and the sampler's
    memory carry over to the next run through a checkpoint.
    """
    window = settings.system_interval if window_seconds is None else window_seconds
    if window < 0:
        raise ValueError(f"window_seconds={window_seconds!r}: must be >= 0 (0 takes exactly one reading)")
    checkpoints = Checkpoints(settings.state_dir)
    collector = SystemCollector(host=host or socket.gethostname(), sampler=new_sampler(settings))
    collector.restore(checkpoints.load(CHECKPOINT))
    summary = CollectionSummary(host=collector.host)
    started = time.monotonic()
    store = MetricStore(settings).open(background_flush=False)
    try:
        while True:
            kept, read = collector.collect()
            result = store.ingest_points(kept)
            summary.readings += 1
            summary.samples_read += read
            summary.samples_stored += result.stored
            summary.rejected += len(result.rejected)
            pause = collector.interval or settings.system_interval
            if time.monotonic() - started + pause > window * (1 - _WINDOW_SLACK):
                break
            time.sleep(pause)
    finally:
        store.close()
    if collector.sampler is not None:  # the bound over every run since the checkpoint began
        summary.max_skipped_error = collector.sampler.stats.max_skipped_error
    summary.next_interval = collector.interval
    checkpoints.save(CHECKPOINT, collector.to_state())
    return summary

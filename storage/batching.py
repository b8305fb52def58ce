"""The writer's flush policy: when buffered rows become a Parquet file.

Every flush writes a small Parquet file (later merged by compaction) and costs
a write and an fsync; buffered rows are durable (in the WAL) but invisible to
other processes until flushed. The policy trades files against that delay.

Fixed (``intelligent_batching`` off, the original rule): flush at ``batch_size``
rows or when the oldest buffered row is ``flush_seconds`` old.

Intelligent batching (on): the flush size follows the arrival rate. The policy
keeps an exponentially weighted arrival rate in rows/s (the larger of two
estimates: time constant ``window_flushes`` flush periods, and a quick one of
``attack_flushes`` so that the rate rises as soon as a burst starts) and

- flushes when the buffer reaches ``target_rows`` = rate x ``flush_seconds``,
  kept within [``min_file_rows``, ``batch_size``]: under load, files of a steady
  size, each flushed by the write that fills it, ``flush_seconds`` apart;
- under a trickle (rate x ``flush_seconds`` below ``min_file_rows``) lets the
  buffer age until it would hold ``min_file_rows``, at most ``max_delay``
  (``max_delay_factor`` flush periods, at most ``max_delay_cap`` seconds), so
  fewer, larger files are written -- but only while writes come less than
  ``max_delay - flush_seconds`` apart (smoothed gap): writes further apart (a
  collector every 30 s) would wait for nothing, so they keep the fixed deadline;
- behaves as the fixed policy until the estimate has watched one time constant.

Measured with :func:`simulate` (``python -m storage.batching`` prints the figures
of both policies for the patterns of :data:`PATTERNS`): the quick estimate
halves the files of a burst's ramp-up (a single slow estimate lags, so the
first flushes of a burst are small), and the gap rule keeps sparse writes from
waiting ``max_delay`` for nothing.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from metrics.settings import Settings

Arrivals = list[tuple[float, int]]  # (seconds, rows) of each acknowledged write, in time order


@dataclass
class FlushPolicy:
    """When to flush the writer's buffer; not thread-safe (the writer calls it under its lock).

    Args:
        batch_size: most rows ever buffered (flush at once when reached).
        flush_seconds: the flush period: the fixed policy's largest age of a buffered row.
        intelligent: follow the arrival rate (``intelligent_batching``); False is the fixed policy.
        min_rows: smallest file worth writing on purpose (None: a tenth of ``batch_size``).
        max_delay_factor: a trickle may wait up to this many flush periods ...
        max_delay_cap: ... but never longer than this many seconds (nor less than one flush period).
        window_flushes: time constant of the rate estimate, in flush periods.
        attack_flushes: time constant, in flush periods, of a second, quick estimate that lets the
            rate rise at once when a burst starts (the rate is the larger of the two).
        gap_weight: weight of the newest gap between writes in their smoothed gap.
    """

    batch_size: int = 100_000
    flush_seconds: float = 2.0
    intelligent: bool = True
    min_rows: int | None = None
    max_delay_factor: float = 5.0
    max_delay_cap: float = 60.0
    window_flushes: float = 3.0
    attack_flushes: float = 0.5
    gap_weight: float = 0.25
    rate_: float = field(default=0.0, init=False)  # arrival rate, rows/s
    write_gap_: float = field(default=math.inf, init=False)  # seconds between writes, smoothed
    warm_: bool = field(default=False, init=False)  # the estimate has watched one time constant
    _slow: float = field(default=0.0, init=False, repr=False)  # rows, exponentially decayed
    _fast: float = field(default=0.0, init=False, repr=False)
    _first: float | None = field(default=None, init=False, repr=False)
    _last: float | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.flush_seconds <= 0:
            raise ValueError("batch_size must be >= 1 and flush_seconds > 0")
        if self.max_delay_factor < 1 or self.max_delay_cap <= 0:
            raise ValueError("max_delay_factor must be >= 1 and max_delay_cap > 0")
        if not 0 < self.attack_flushes <= self.window_flushes or not 0 < self.gap_weight <= 1:
            raise ValueError("time constants must satisfy 0 < attack_flushes <= window_flushes; 0 < gap_weight <= 1")

    @classmethod
    def from_settings(cls, settings: Settings) -> FlushPolicy:
        """The policy of ``settings`` (``batch_size``, ``flush_seconds``, ``intelligent_batching``)."""
        return cls(settings.batch_size, settings.flush_seconds, settings.intelligent_batching)

    @property
    def min_file_rows(self) -> int:
        """Rows of the smallest file written on purpose (a trickle waits for them, up to ``max_delay``)."""
        wanted = self.batch_size // 10 if self.min_rows is None else self.min_rows
        return min(max(wanted, 1), self.batch_size)

    @property
    def max_delay(self) -> float:
        """Longest a buffered row waits under a trickle, in seconds."""
        return max(self.flush_seconds, min(self.max_delay_factor * self.flush_seconds, self.max_delay_cap))

    def observe(self, rows: int, now: float) -> None:
        """Count a write of ``rows`` rows acknowledged at ``now`` (seconds of a monotonic clock)."""
        if rows <= 0:
            return
        last = now if self._last is None else self._last
        gap = max(now - last, 0.0)
        if self._last is not None:
            previous = gap if math.isinf(self.write_gap_) else self.write_gap_
            self.write_gap_ = previous + self.gap_weight * (gap - previous)
        self._first = now if self._first is None else self._first
        self._last = max(last, now)
        span = self._last - self._first
        slow, fast = self.window_flushes * self.flush_seconds, self.attack_flushes * self.flush_seconds
        self._slow = self._slow * math.exp(-gap / slow) + rows
        self._fast = self._fast * math.exp(-gap / fast) + rows
        self.warm_ = span >= slow
        watched = max(span, self.flush_seconds)
        # The newest write sits on the window's edge: half of it counts; the quick estimate leaves it out (one
        # write is not a burst: a large write after a long pause must not look like a high rate).
        self.rate_ = max(_rate(self._slow - rows / 2, slow, watched), _rate(self._fast - rows, fast, watched))

    @property
    def target_rows(self) -> int:
        """Buffered rows that make a flush at once."""
        if not (self.intelligent and self.warm_):
            return self.batch_size
        return min(max(round(self.rate_ * self.flush_seconds), self.min_file_rows), self.batch_size)

    @property
    def deadline(self) -> float:
        """Age of the oldest buffered row, in seconds, that makes a flush."""
        if not (self.intelligent and self.warm_):
            return self.flush_seconds
        trickle = self.rate_ * self.flush_seconds < self.min_file_rows
        more_expected = self.write_gap_ < self.max_delay - self.flush_seconds
        if not (trickle and more_expected):
            return self.flush_seconds
        filled = self.min_file_rows / self.rate_ if self.rate_ > 0 else self.max_delay
        return min(max(filled, self.flush_seconds), self.max_delay)

    def should_flush(self, buffered_rows: int, age_seconds: float) -> bool:
        """Whether a buffer of ``buffered_rows``, the oldest ``age_seconds`` old, is flushed now."""
        return buffered_rows > 0 and (buffered_rows >= self.target_rows or age_seconds >= self.deadline)


def _rate(rows: float, tau: float, watched: float) -> float:
    """Rows/s of ``rows`` decayed with time constant ``tau``, ``watched`` seconds in (a shorter window while young)."""
    return rows / (tau * (1 - math.exp(-watched / tau)))


# -- measuring -------------------------------------------------------------------------------------


def simulate(
    policy: FlushPolicy, arrivals: Iterable[tuple[float, int]], poll_seconds: float | None = None
) -> dict[str, float]:
    """Replay ``arrivals`` against ``policy`` on a fake clock, as the writer runs it; return the figures.

    Each write observes and checks the size (``target_rows``), as ``Writer.write`` does; the
    background flusher asks ``should_flush`` every ``poll_seconds`` (the writer's period by
    default), offset by half a period from time 0 (its phase is arbitrary; this avoids ties).
    A flush takes no time. The visibility delay of a row is flush time minus arrival time;
    ``max_buffered_rows`` is the most rows left waiting after a write.
    """
    poll = poll_seconds or max(policy.flush_seconds / 4, 0.05)
    buffer: Arrivals = []
    buffered, since, most, ticks = 0, 0.0, 0, 0
    files: list[int] = []
    delays: list[tuple[float, int]] = []

    def flush(now: float) -> None:
        nonlocal buffered
        files.append(buffered)
        delays.extend((now - at, rows) for at, rows in buffer)
        buffer.clear()
        buffered = 0

    def poll_until(end: float) -> None:
        nonlocal ticks
        while (ticks + 0.5) * poll < end:
            now = (ticks + 0.5) * poll
            ticks += 1
            if policy.should_flush(buffered, now - since):
                flush(now)

    for at, rows in arrivals:
        poll_until(at)
        policy.observe(rows, at)
        if not buffer:
            since = at
        buffer.append((at, rows))
        buffered += rows
        if buffered >= policy.target_rows:
            flush(at)
        most = max(most, buffered)
    while buffer:  # the flusher runs on after the last write (the age grows: this ends)
        poll_until((ticks + 1.5) * poll)
    total = sum(files)
    delays.sort()
    p95, seen = 0.0, 0
    for delay, rows in delays:
        seen += rows
        if seen >= 0.95 * total:
            p95 = delay
            break
    return {
        "rows": total,
        "files": len(files),
        "files_per_100k_rows": round(len(files) * 100_000 / total, 2) if total else 0.0,
        "mean_file_rows": round(total / len(files), 1) if files else 0.0,
        "mean_delay_s": round(sum(d * r for d, r in delays) / total, 3) if total else 0.0,
        "p95_delay_s": round(p95, 3),
        "max_delay_s": round(max((d for d, _ in delays), default=0.0), 3),
        "max_buffered_rows": most,
    }


def steady(rows_per_second: float, batch_rows: int, seconds: float, start: float = 0.0) -> Arrivals:
    """Writes of ``batch_rows`` rows, evenly spaced at ``rows_per_second``."""
    gap = batch_rows / rows_per_second
    return [(start + i * gap, batch_rows) for i in range(int(seconds / gap))]


def poisson(rows_per_second: float, max_batch: int, seconds: float, seed: int = 7) -> Arrivals:
    """Writes of 1..``max_batch`` rows at random (seeded) times: many clients of an API server."""
    rng = random.Random(seed)
    mean_rows = (1 + max_batch) / 2
    arrivals: Arrivals = []
    at = rng.expovariate(rows_per_second / mean_rows)
    while at < seconds:
        arrivals.append((at, rng.randint(1, max_batch)))
        at += rng.expovariate(rows_per_second / mean_rows)
    return arrivals


def bursty(seconds: float, every: float = 60.0, burst: float = 5.0) -> Arrivals:
    """A trickle (20 rows/s in 10-row writes) with a ``burst``-second bulk load (50,000 rows/s) every ``every`` s."""
    arrivals = steady(20, 10, seconds)
    for start in range(0, int(seconds), int(every)):
        arrivals += steady(50_000, 1_000, burst, start=start + every / 2)
    return sorted(arrivals)


PATTERNS: dict[str, Callable[[], Arrivals]] = {
    "trickle 20 rows/s in 10-row writes": lambda: steady(20, 10, 5_000),
    "collector 50 rows every 30 s": lambda: steady(50 / 30, 50, 30 * 2_000),
    "light ~500 rows/s, random writes of 1-20": lambda: poisson(500, 20, 600),
    "moderate ~5,000 rows/s, random writes of 1-200": lambda: poisson(5_000, 200, 200),
    "high 50,000 rows/s in 1,000-row writes": lambda: steady(50_000, 1_000, 20),
    "bursty: trickle + 5 s at 50,000 rows/s each minute": lambda: bursty(600),
}


def compare(batch_size: int = 100_000, flush_seconds: float = 2.0) -> list[dict[str, Any]]:
    """The figures of every pattern under both policies (the settings' defaults unless given)."""
    results = []
    for name, make in PATTERNS.items():
        arrivals = make()
        for intelligent in (False, True):
            figures = simulate(FlushPolicy(batch_size, flush_seconds, intelligent), arrivals)
            results.append({"pattern": name, "policy": "intelligent" if intelligent else "fixed", **figures})
    return results


if __name__ == "__main__":
    columns = ("files_per_100k_rows", "mean_file_rows", "mean_delay_s", "p95_delay_s", "max_delay_s")
    print(f"{'pattern':52} {'policy':12}" + "".join(f"{c:>20}" for c in columns))
    for row in compare():
        print(f"{row['pattern']:52} {row['policy']:12}" + "".join(f"{row[c]:>20}" for c in columns))

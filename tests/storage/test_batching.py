"""Tests of storage.batching (the flush policy) and of the writer following it.

Everything runs on fake clocks: the arrival patterns are replayed by ``simulate``
and the writer gets a fake ``clock``; no sleeping, no wall-clock assertions.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest

from metrics.model import SampleBatch, prepare_frame
from metrics.settings import Settings
from storage.batching import PATTERNS, FlushPolicy, bursty, poisson, simulate, steady
from storage.writer import Writer

BATCH_SIZE, FLUSH_SECONDS = 100_000, 2.0
POLL = FLUSH_SECONDS / 4  # the writer's flusher period


def policy(intelligent: bool = True, **params: object) -> FlushPolicy:
    return FlushPolicy(BATCH_SIZE, FLUSH_SECONDS, intelligent, **params)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def figures() -> dict[tuple[str, bool], dict[str, float]]:
    """Every pattern replayed against both policies (the settings' default sizes)."""
    results = {}
    for name, make in PATTERNS.items():
        arrivals = make()
        for intelligent in (False, True):
            results[name, intelligent] = simulate(policy(intelligent), arrivals)
    return results


# -- what must hold for every pattern ------------------------------------------------------------------


@pytest.mark.parametrize("intelligent", [False, True], ids=["fixed", "intelligent"])
@pytest.mark.parametrize("pattern", list(PATTERNS))
def test_every_row_is_flushed_within_the_bounds(
    figures: dict[tuple[str, bool], dict[str, float]], pattern: str, intelligent: bool
) -> None:
    result = figures[pattern, intelligent]
    assert result["rows"] == sum(rows for _, rows in PATTERNS[pattern]())
    assert result["max_buffered_rows"] < BATCH_SIZE  # memory stays bounded by batch_size
    longest = policy(intelligent).max_delay if intelligent else FLUSH_SECONDS
    assert result["max_delay_s"] <= longest + POLL  # the flusher looks every POLL seconds
    assert 0 < result["mean_delay_s"] <= result["p95_delay_s"] <= result["max_delay_s"]


# -- how the policies compare, pattern by pattern -------------------------------------------------------

# (pattern, intelligent files / fixed files at most, at least; intelligent mean delay / fixed at most)
COMPARISONS = [
    ("trickle 20 rows/s in 10-row writes", 0.3, 0.0, 5.0),  # fewer, larger files for a bounded wait
    ("collector 50 rows every 30 s", 1.0, 1.0, 1.0),  # writes too sparse to gain: the fixed rule
    ("light ~500 rows/s, random writes of 1-20", 0.3, 0.0, 5.0),
    ("moderate ~5,000 rows/s, random writes of 1-200", 1.25, 1.0, 0.9),  # flushed by the filling write
    ("high 50,000 rows/s in 1,000-row writes", 1.0, 1.0, 1.0),  # batch_size binds both
    ("bursty: trickle + 5 s at 50,000 rows/s each minute", 0.6, 0.0, 1.0),
]


@pytest.mark.parametrize(("pattern", "most", "least", "delay_ratio"), COMPARISONS, ids=[c[0] for c in COMPARISONS])
def test_intelligent_batching_against_the_fixed_rule(
    figures: dict[tuple[str, bool], dict[str, float]], pattern: str, most: float, least: float, delay_ratio: float
) -> None:
    fixed, smart = figures[pattern, False], figures[pattern, True]
    assert least * fixed["files"] <= smart["files"] <= most * fixed["files"]
    assert smart["mean_delay_s"] <= delay_ratio * fixed["mean_delay_s"]


def test_every_pattern_is_covered() -> None:
    assert {c[0] for c in COMPARISONS} == set(PATTERNS)


# -- the fixed policy is today's rule --------------------------------------------------------------------


@pytest.mark.parametrize(
    "arrivals",
    [steady(20, 10, 60), steady(50_000, 1_000, 10), bursty(120), poisson(5_000, 200, 30)],
    ids=["trickle", "high", "bursty", "moderate"],
)
def test_disabled_is_the_fixed_rule_whatever_it_observes(arrivals: list[tuple[float, int]]) -> None:
    fixed = policy(intelligent=False)
    for at, rows in arrivals:
        fixed.observe(rows, at)
        assert fixed.target_rows == BATCH_SIZE
        assert fixed.deadline == FLUSH_SECONDS
    for buffered in (0, 1, 9_999, BATCH_SIZE - 1, BATCH_SIZE):
        for age in (0.0, 1.0, FLUSH_SECONDS - 0.001, FLUSH_SECONDS, 60.0):
            today = buffered > 0 and (buffered >= BATCH_SIZE or age >= FLUSH_SECONDS)
            assert fixed.should_flush(buffered, age) is today, (buffered, age)


def test_disabled_simulates_like_a_policy_that_never_observes() -> None:
    class TodaysRule(FlushPolicy):
        def observe(self, rows: int, now: float) -> None:
            pass

    for make in PATTERNS.values():
        arrivals = make()
        today = simulate(TodaysRule(BATCH_SIZE, FLUSH_SECONDS), arrivals)
        assert simulate(policy(intelligent=False), arrivals) == today


# -- the estimate and the rule -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("rows_per_second", "batch_rows"), [(20, 10), (500, 5), (5_000, 100), (50_000, 1_000)], ids=str
)
def test_the_rate_follows_a_steady_arrival(rows_per_second: float, batch_rows: int) -> None:
    estimate = policy()
    for at, rows in steady(rows_per_second, batch_rows, 30):
        estimate.observe(rows, at)
    assert estimate.warm_
    assert estimate.rate_ == pytest.approx(rows_per_second, rel=0.1)


@pytest.mark.parametrize(
    ("rows_per_second", "batch_rows", "target", "deadline"),
    [
        (50_000, 1_000, BATCH_SIZE, FLUSH_SECONDS),  # rate x flush_seconds >= batch_size: capped
        (20_000, 500, 40_000, FLUSH_SECONDS),  # the flush size follows the rate
        (2_500, 50, 10_000, 4.0),  # below min_file_rows: wait until the buffer holds them ...
        (20, 10, 10_000, 10.0),  # ... at most max_delay (5 flush periods)
        (50 / 30, 50, 10_000, FLUSH_SECONDS),  # writes 30 s apart would wait for nothing
    ],
    ids=["capped", "follows", "waits", "max-delay", "sparse"],
)
def test_target_and_deadline(rows_per_second: float, batch_rows: int, target: int, deadline: float) -> None:
    rule = policy()
    for at, rows in steady(rows_per_second, batch_rows, 600):
        rule.observe(rows, at)
    assert rule.target_rows == pytest.approx(target, rel=0.05)
    assert rule.deadline == pytest.approx(deadline, rel=0.05)
    assert not rule.should_flush(0, 3600.0)  # nothing buffered, nothing to flush
    assert rule.should_flush(rule.target_rows, 0.0)
    assert not rule.should_flush(rule.target_rows - 1, rule.deadline - 0.001)
    assert rule.should_flush(1, rule.deadline)


def test_it_is_the_fixed_rule_until_it_watched_one_time_constant() -> None:
    rule = policy()
    for at, rows in steady(20, 10, 3 * FLUSH_SECONDS - 0.5):  # window_flushes = 3
        rule.observe(rows, at)
        assert (rule.target_rows, rule.deadline) == (BATCH_SIZE, FLUSH_SECONDS)
    rule.observe(10, 3 * FLUSH_SECONDS)
    assert rule.warm_
    assert (rule.target_rows, rule.deadline) == (rule.min_file_rows, rule.max_delay)


def test_the_rate_rises_within_a_flush_period_when_a_burst_starts() -> None:
    rule = policy()
    for at, rows in steady(20, 10, 60):
        rule.observe(rows, at)
    for at, rows in steady(50_000, 1_000, FLUSH_SECONDS, start=60.0):
        rule.observe(rows, at)
    assert rule.rate_ > 0.8 * 50_000  # the quick estimate; the slow one alone is still below 30 %
    assert rule.target_rows > 0.8 * BATCH_SIZE


@pytest.mark.parametrize(
    ("params", "min_file_rows", "max_delay"),
    [
        ({}, 10_000, 10.0),
        ({"min_rows": 500}, 500, 10.0),
        ({"min_rows": 10**9}, BATCH_SIZE, 10.0),  # never above batch_size
        ({"max_delay_factor": 100.0}, 10_000, 60.0),  # bounded by max_delay_cap
        ({"max_delay_factor": 1.0}, 10_000, FLUSH_SECONDS),
    ],
)
def test_declared_bounds(params: dict[str, float], min_file_rows: int, max_delay: float) -> None:
    rule = policy(**params)
    assert (rule.min_file_rows, rule.max_delay) == (min_file_rows, max_delay)


def test_a_tiny_batch_size_keeps_a_positive_floor() -> None:
    assert FlushPolicy(batch_size=2, flush_seconds=0.2).min_file_rows == 1


@pytest.mark.parametrize(
    "params",
    [
        {"batch_size": 0},
        {"flush_seconds": 0.0},
        {"max_delay_factor": 0.5},
        {"attack_flushes": 0.0},
        {"attack_flushes": 5.0},  # longer than the main window
        {"gap_weight": 0.0},
    ],
    ids=str,
)
def test_bad_parameters_are_refused(params: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        FlushPolicy(**params)  # type: ignore[arg-type]


# -- the switch ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "env", "intelligent"),
    [
        (None, {}, True),  # the default
        ({"collector": {"intelligent_batching": False}}, {}, False),
        ({"collector": {"intelligent_batching": False}}, {"METRICS_INTELLIGENT_BATCHING": "true"}, True),
        (None, {"METRICS_INTELLIGENT_BATCHING": "0"}, False),
    ],
    ids=["default", "config", "env-wins", "env"],
)
def test_the_policy_follows_the_setting(
    tmp_path: Path, config: dict[str, object] | None, env: dict[str, str], intelligent: bool
) -> None:
    environ = {"METRICS_DATA_DIR": str(tmp_path / "data"), **env}
    if config is not None:
        path = tmp_path / "main.json"
        path.write_text(json.dumps(config))
        environ["METRICS_CONFIG"] = str(path)
    settings = Settings.from_env(environ)
    assert FlushPolicy.from_settings(settings).intelligent is intelligent
    assert Writer(settings, writer_id="sw").policy.intelligent is intelligent


# -- the writer follows the policy ---------------------------------------------------------------------------


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def ten_rows() -> SampleBatch:
    noon = (datetime.now(UTC) - timedelta(days=1)).replace(hour=12, minute=0, second=0, microsecond=0)
    frame = pl.DataFrame(
        {"ts": [noon + timedelta(seconds=i) for i in range(10)], "metric": ["batching.m"] * 10, "value": [1.0] * 10}
    )
    batch = prepare_frame(frame, now=datetime.now(UTC), retention_days=90)
    assert batch.stored == 10
    return batch


@pytest.fixture
def clocked(settings: Settings) -> Iterator[tuple[Writer, FakeClock]]:
    """A writer on the temporary lake, flush period 0.2 s, batch_size 1,000 (min_file_rows 100), on a fake clock."""
    clock = FakeClock()
    writer = Writer(replace(settings, batch_size=1_000, flush_seconds=0.2), writer_id="fb", clock=clock)
    writer.open(background_flush=False)
    try:
        yield writer, clock
    finally:
        writer.close()


def run(writer: Writer, clock: FakeClock, batch: SampleBatch, writes: int, gap: float) -> list[tuple[str, int]]:
    """Write ``batch`` every ``gap`` fake seconds, running the flusher's check every 0.05 s; return the flushes.

    Each flush is (``"write"`` or ``"timer"``, rows flushed); bounded by ``writes``. The checks run between
    the writes (offset 0.025 s, as the flusher's phase is arbitrary), never at the same instant.
    """
    flushes: list[tuple[str, int]] = []
    next_check = clock.now + 0.025
    for _ in range(writes):
        end = clock.now + gap
        while next_check <= end:
            clock.now = next_check
            if rows := writer.flush_if_due():
                flushes.append(("timer", rows))
            next_check += 0.05
        clock.now = end
        before = writer.buffered_rows
        writer.write(batch)
        if writer.buffered_rows < before + batch.stored:
            flushes.append(("write", before + batch.stored))
    return flushes


def test_a_writer_flushes_at_the_policys_target(clocked: tuple[Writer, FakeClock], ten_rows: SampleBatch) -> None:
    writer, clock = clocked
    assert writer.policy.intelligent
    # 1,000 rows/s: after the warm-up (0.6 s) the target is 1,000 x 0.2 = 200 rows.
    warm_up = run(writer, clock, ten_rows, writes=60, gap=0.01)
    assert {how for how, _ in warm_up} == {"timer"}  # the fixed rule meanwhile: by age
    steady_state = run(writer, clock, ten_rows, writes=100, gap=0.01)
    assert writer.policy.warm_
    assert writer.policy.target_rows == pytest.approx(200, rel=0.1)
    assert len(steady_state) >= 4
    assert all(how == "write" for how, _ in steady_state)  # each flushed by the write that reached the target
    assert all(rows == pytest.approx(200, rel=0.1) for _, rows in steady_state)
    assert writer.buffered_rows < writer.policy.target_rows
    assert writer.stats.target_rows == writer.policy.target_rows
    assert writer.stats.arrival_rate == pytest.approx(1_000, rel=0.1)
    assert writer.stats.flush_deadline_seconds == 0.2
    assert writer.stats.flushes == len(warm_up) + len(steady_state)


@pytest.mark.parametrize(("intelligent", "deadline"), [(True, 1.0), (False, 0.2)], ids=["intelligent", "fixed"])
def test_a_trickle_waits_up_to_max_delay(
    settings: Settings, ten_rows: SampleBatch, intelligent: bool, deadline: float
) -> None:
    clock = FakeClock()
    chosen = replace(settings, batch_size=1_000, flush_seconds=0.2, intelligent_batching=intelligent)
    writer = Writer(chosen, writer_id="trickle", clock=clock)
    writer.open(background_flush=False)
    try:
        run(writer, clock, ten_rows, writes=20, gap=0.2)  # 50 rows/s: 10 rows per flush period, min_file_rows 100
        assert writer.stats.flush_deadline_seconds == pytest.approx(deadline)
        writer.flush()
        flushes = run(writer, clock, ten_rows, writes=30, gap=0.2)
        writes_per_file = round(deadline / 0.2) + 1  # the write at age `deadline` is in: the check comes 0.025 s later
        assert len(flushes) >= 30 // writes_per_file - 1
        assert {how for how, _ in flushes} == {"timer"}
        assert all(rows == 10 * writes_per_file for _, rows in flushes)
        assert writer.stats.target_rows == (100 if intelligent else 1_000)
    finally:
        writer.close()
    assert sum(1 for _ in (settings.lake_dir / "samples").rglob("*.parquet")) == writer.stats.files_written

"""The rollup cache: kept parts give the same rows as reading the files, and new files are never answered stale."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pytest
from polars.testing import assert_frame_equal

import storage.query
from metrics.settings import Settings
from storage.cache import MAX_ENTRIES, RollupCache, entry_bytes
from storage.store import MetricStore

TS = pl.Datetime("us", "UTC")
# The aggregations whose long-range parts are cached: from the hourly rollups, and percentiles of closed days.
CACHED = ["avg", "max", "rate", "p95"]


def rows(count: int) -> pa.Table:
    return pa.table({"x": list(range(count))})


def counting(tables: dict[str, pa.Table]) -> tuple[list[str], Callable[[str, list[Any]], pa.Table]]:
    calls: list[str] = []

    def run(text: str, params: list[Any]) -> pa.Table:
        calls.append(text)
        return tables[text]

    return calls, run


def size(name: str, count: int) -> int:
    return entry_bytes(name, rows(count))


def test_a_part_is_read_once_then_kept() -> None:
    cache = RollupCache(1000)
    calls, run = counting({"a": rows(3), "b": rows(0)})
    assert cache.table("a", [1], run).num_rows == 3
    assert cache.table("a", [1], run).num_rows == 3
    assert cache.table("a", [2], run).num_rows == 3  # other parameters: another part
    assert cache.table("a", [2], run, ("catalog", 2)).num_rows == 3  # another version
    cache.table("b", [], run)
    cache.table("b", [], run)  # an empty part is kept too
    assert calls == ["a", "a", "a", "b"]
    stats = cache.stats()
    assert (stats.hits, stats.misses, stats.entries, stats.bytes) == (2, 4, 4, 3 * size("a", 3) + size("b", 0))
    cache.clear()
    assert cache.stats().entries == 0


UNIT = size("p0", 4)


@pytest.mark.parametrize(
    ("max_bytes", "counts", "kept"),
    [
        (2 * UNIT + 1, [4, 4, 4], ["p1", "p2"]),  # the least recently used goes when the bytes pass the bound
        (UNIT - 1, [4], []),  # larger than the bound: read, not kept
        (0, [1, 1], []),  # 0 keeps nothing
        (2 * UNIT, [4, 4], ["p0", "p1"]),  # exactly at the bound
    ],
)
def test_bytes_are_bounded_least_recently_used_first(max_bytes: int, counts: list[int], kept: list[str]) -> None:
    cache = RollupCache(max_bytes)
    tables = {f"p{i}": rows(count) for i, count in enumerate(counts)}
    calls, run = counting(tables)
    for name in tables:
        cache.table(name, [], run)
    calls.clear()
    for name in kept:
        cache.table(name, [], run)
    assert calls == []
    assert cache.stats().entries == len(kept)
    assert cache.stats().bytes <= max_bytes


def test_a_hit_makes_a_part_the_most_recent_and_entries_are_bounded() -> None:
    cache = RollupCache(2 * UNIT)
    calls, run = counting({"a": rows(4), "b": rows(4), "c": rows(4)})
    cache.table("a", [], run)
    cache.table("b", [], run)
    cache.table("a", [], run)
    cache.table("c", [], run)  # evicts b, the least recently used
    calls.clear()
    cache.table("a", [], run)
    cache.table("b", [], run)
    assert calls == ["b"]
    many = RollupCache(10**6)
    _, empty = counting({f"e{i}": rows(0) for i in range(MAX_ENTRIES + 5)})
    for i in range(MAX_ENTRIES + 5):
        many.table(f"e{i}", [], empty)
    assert many.stats().entries == MAX_ENTRIES
    with pytest.raises(ValueError, match="max_bytes"):
        RollupCache(-1)


def days_of_samples(end: datetime, days: int = 4, seed: int = 0) -> pl.DataFrame:
    """Every 5 minutes for ``days`` days up to ``end``: a gauge on two hosts and a counter."""
    stamps = pl.datetime_range(end - timedelta(days=days), end, timedelta(minutes=5), eager=True, time_zone="UTC")
    count = stamps.len()
    rng = np.random.default_rng(seed)
    parts = [
        pl.DataFrame(
            {
                "ts": stamps.cast(TS),
                "metric": metric,
                "value": values,
                "type": kind,
                "host": host,
            }
        )
        for metric, kind, host, values in (
            ("cpu.usage", "gauge", "h1", rng.uniform(0, 100, count)),
            ("cpu.usage", "gauge", "h2", rng.uniform(0, 100, count)),
            ("net.bytes", "counter", "h1", np.cumsum(rng.integers(0, 50, count)).astype(float)),
        )
    ]
    return pl.concat(parts)


def answers(store: MetricStore, start: datetime, end: datetime) -> dict[tuple[str, str], pl.DataFrame]:
    """Each cached aggregation over 3-hour buckets, per series and per host."""
    found = {}
    for agg in CACHED:
        metric = "net.bytes" if agg == "rate" else "cpu.usage"
        for label, group_by in (("series", None), ("host", ["host"])):
            found[(agg, label)] = store.query_aggregated(metric, agg, "3h", start, end, group_by)
    return found


def assert_answers_equal(left: dict[tuple[str, str], pl.DataFrame], right: dict[tuple[str, str], pl.DataFrame]) -> None:
    for key, frame in left.items():
        assert frame.height > 0, key
        assert_frame_equal(frame, right[key], check_exact=False, rel_tol=1e-12, abs_tol=1e-9)


def test_cached_parts_give_the_rows_of_the_files_and_new_files_are_read(settings: Settings, noon: datetime) -> None:
    uncached_settings = replace(settings, query_cache_mb=0)
    end, start = noon, noon - timedelta(days=30)
    with MetricStore(settings).open(background_flush=False) as store:
        store.ingest_frame(days_of_samples(end))
        store.flush()
        store.compact(validate=False)
        with MetricStore(uncached_settings, read_only=True).open(background_flush=False) as plain:
            expected = answers(plain, start, end)
        assert_answers_equal(answers(store, start, end), expected)  # read, then kept
        first = store.engine.rollup_cache.stats()
        assert first.misses >= len(CACHED)  # per series and per host share the rollup part, not percentiles
        assert_answers_equal(answers(store, start, end), expected)  # kept
        second = store.engine.rollup_cache.stats()
        assert (second.misses, second.hits - first.hits) == (first.misses, len(expected))

        # A late sample for a closed day: a new file, so the parts over that day are read again.
        late = pl.DataFrame(
            {"ts": [end - timedelta(days=2, minutes=2)], "metric": ["cpu.usage"], "value": [1e6], "type": ["gauge"]},
            schema_overrides={"ts": TS},
        ).with_columns(host=pl.lit("h1"))
        store.ingest_frame(late)
        store.flush()
        with MetricStore(uncached_settings, read_only=True).open(background_flush=False) as plain:
            after_late = answers(plain, start, end)
        assert after_late[("max", "host")].get_column("value").max() == 1e6
        assert_answers_equal(answers(store, start, end), after_late)
        store.compact(validate=False)  # new compacted generations: new rollup files
        assert_answers_equal(answers(store, start, end), after_late)


def test_a_series_registered_while_a_query_plans_is_cached_with_its_tags(
    settings: Settings, noon: datetime, monkeypatch: pytest.MonkeyPatch
) -> None:
    end, start = noon, noon - timedelta(days=30)
    with MetricStore(settings).open(background_flush=False) as store:
        store.ingest_frame(days_of_samples(end))
        store.flush()
        store.compact(validate=False)
        with MetricStore(settings).open(background_flush=False) as other_worker:
            planned = storage.query.percentile_sql
            raced: list[bool] = []

            def racing(*args: Any, **kwargs: Any) -> Any:
                # Another worker registers a series and writes its samples after this query read the
                # catalog, before it lists the sample files.
                if not raced:
                    raced.append(True)
                    late = days_of_samples(end - timedelta(days=2), days=1, seed=9).with_columns(host=pl.lit("h9"))
                    other_worker.ingest_frame(late)
                    other_worker.flush()
                return planned(*args, **kwargs)

            monkeypatch.setattr(storage.query, "percentile_sql", racing)
            found = [store.query_aggregated("cpu.usage", "p95", "3h", start, end, ["host"]) for _ in range(2)]
        with MetricStore(replace(settings, query_cache_mb=0), read_only=True).open(background_flush=False) as plain:
            expected = plain.query_aggregated("cpu.usage", "p95", "3h", start, end, ["host"])
    assert set(expected.get_column("host")) == {"h1", "h2", "h9"}
    for frame in found:
        assert_frame_equal(frame, expected, check_exact=False, rel_tol=1e-12)


def test_a_range_ending_after_today_keeps_its_closed_days(settings: Settings, noon: datetime) -> None:
    now = datetime.now(UTC)
    start, end = noon - timedelta(days=30), now + timedelta(days=2)  # a "this week" range in a zone west of UTC
    recent = pl.DataFrame(
        {"ts": [now - timedelta(seconds=30)], "metric": ["cpu.usage"], "value": [5.0], "type": ["gauge"]},
        schema_overrides={"ts": TS},
    ).with_columns(host=pl.lit("h1"))
    with MetricStore(settings).open(background_flush=False) as store:
        store.ingest_frame(days_of_samples(noon))
        store.flush()
        store.compact(validate=False)
        store.ingest_frame(recent)  # today's raw files change with every flush
        store.flush()
        store.query_aggregated("cpu.usage", "p95", "3h", start, end, ["host"])
        first = store.engine.rollup_cache.stats()
        store.ingest_frame(recent.with_columns(pl.col("ts") + timedelta(seconds=10)))
        store.flush()
        store.query_aggregated("cpu.usage", "p95", "3h", start, end, ["host"])
        second = store.engine.rollup_cache.stats()
    assert (second.misses, second.hits, second.entries) == (first.misses, first.hits + 1, first.entries)

"""Tests of storage.query through MetricStore: real Parquet files and DuckDB in a temporary lake, no mocks.

Aggregations are checked against the same aggregation computed independently
in polars from the raw samples ``query_metrics`` returns, on raw files, on
compacted files read through the rollups and with the rollups switched off.
"""

from __future__ import annotations

import gc
import json
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import duckdb
import polars as pl
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from polars.testing import assert_frame_equal

from metrics.errors import QueryError
from metrics.model import series_id
from storage.query import AGGREGATIONS, QueryEngine
from storage.rollups import covered_days
from storage.store import MetricStore
from tests.conftest import FrameFactory

US = 1_000_000
TS = pl.Datetime("us", "UTC")
SAMPLE_SCHEMA = {
    "ts": TS,
    "metric": pl.String,
    "value": pl.Float64,
    "type": pl.String,
    "tags": pl.String,
    "series_id": pl.Int64,
}
PER_SERIES_SCHEMA = {"ts": TS, "metric": pl.String, "series_id": pl.Int64, "tags": pl.String, "value": pl.Float64}
PER_METRIC_SCHEMA = {"ts": TS, "metric": pl.String, "value": pl.Float64}
PER_HOST_SCHEMA = {"ts": TS, "metric": pl.String, "host": pl.String, "value": pl.Float64}
INTERVALS = {"1m": 60, "5m": 300, "1h": 3600, "7m": 420}
GROUPINGS: dict[str, list[str] | None] = {"per_series": None, "per_metric": [], "per_host": ["host"]}
PERCENTILES = {"p50": 0.5, "p95": 0.95, "p99": 0.99}
GLOB_METRICS = ("cpu.usage", "cpu.system", "mem.usage", "disk.io")


# --- helpers ----------------------------------------------------------------------


def floor_to(moment: datetime, seconds: int) -> datetime:
    """``moment`` rounded down to a multiple of ``seconds`` since the Unix epoch."""
    micros = (moment - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)
    return datetime(1970, 1, 1, tzinfo=UTC) + timedelta(microseconds=micros // (seconds * US) * seconds * US)


def reference(samples: pl.DataFrame, agg: str, step: int, group_by: list[str] | None) -> pl.DataFrame:
    """``agg`` per ``step``-second bucket computed in polars from raw samples (independent of the engine).

    ``increase`` sums, over every sample after a series' first one in the range, the step from the
    previous sample: the difference when it is >= 0, else (a counter reset) the new value itself.
    """
    step_us = step * US
    previous = pl.col("value").shift(1).over("series_id")
    frame = samples.sort("series_id", "ts").with_columns(
        ((pl.col("ts").dt.epoch("us") // step_us) * step_us).alias("bucket"),
        pl.when(previous.is_null())
        .then(0.0)
        .when(pl.col("value") - previous >= 0)
        .then(pl.col("value") - previous)
        .otherwise(pl.col("value"))
        .alias("step"),
    )
    if group_by is None:
        keys = ["metric", "series_id", "tags"]
    else:
        frame = frame.with_columns(pl.col("tags").str.json_path_match(f"$.{k}").alias(k) for k in group_by)
        keys = ["metric", *group_by]
    value = {
        "avg": pl.col("value").mean(),
        "min": pl.col("value").min(),
        "max": pl.col("value").max(),
        "sum": pl.col("value").sum(),
        "count": pl.len().cast(pl.Float64),
        "last": pl.col("value").sort_by("ts").last(),
        "rate": pl.col("step").sum() / float(step),
        "increase": pl.col("step").sum(),
    }.get(agg)
    if value is None:
        value = pl.col("value").quantile(PERCENTILES[agg], interpolation="linear")
    out = frame.group_by([*keys, "bucket"]).agg(value.alias("value"))
    return out.select(pl.col("bucket").cast(pl.Datetime("us")).dt.replace_time_zone("UTC").alias("ts"), *keys, "value")


def assert_same(actual: pl.DataFrame, expected: pl.DataFrame, group_by: list[str] | None, rel: float = 1e-9) -> None:
    """Same rows (keys and bucket exact, values to ``rel``) whatever the row order."""
    keys = ["metric", "series_id", "tags"] if group_by is None else ["metric", *group_by]
    columns = ["ts", *keys, "value"]
    assert actual.height > 0
    assert_frame_equal(
        actual.select(columns).sort([*keys, "ts"]),
        expected.select(columns).sort([*keys, "ts"]),
        check_exact=False,
        rel_tol=rel,
        abs_tol=1e-9,
    )


def ingest(store: MetricStore, frame: pl.DataFrame) -> None:
    result = store.ingest_frame(frame)
    assert result.rejected == []
    assert result.stored == frame.height
    store.flush()


def samples_in(store: MetricStore, start: datetime, end: datetime) -> pl.DataFrame:
    return store.query_metrics("*", start, end)


# --- a small lake for filters ---------------------------------------------------------


@pytest.fixture
def glob_lake(store: MetricStore, make_frame: FrameFactory) -> pl.DataFrame:
    """4 metrics x 3 hosts x 12 points (host-2 in region us, the others in eu); returns the frame."""
    frame = make_frame(GLOB_METRICS, hosts=3, points=12).with_columns(
        pl.when(pl.col("host") == "host-2").then(pl.lit("us")).otherwise(pl.lit("eu")).alias("region")
    )
    ingest(store, frame)
    return frame


def window(now: datetime) -> tuple[datetime, datetime]:
    return now - timedelta(hours=1), now + timedelta(seconds=1)


@pytest.mark.parametrize(
    ("pattern", "expected"),
    [
        ("*", set(GLOB_METRICS)),
        ("", set(GLOB_METRICS)),
        ("cpu.usage", {"cpu.usage"}),
        ("cpu.*", {"cpu.usage", "cpu.system"}),
        ("*usage", {"cpu.usage", "mem.usage"}),
        ("cpu.?sage", {"cpu.usage"}),
        ("cpu.[s]*", {"cpu.system"}),
        ("*.*", set(GLOB_METRICS)),
        ("d*", {"disk.io"}),
        ("cpu", set()),
        ("cpu.usag", set()),
        ("nomatch.*", set()),
    ],
)
def test_query_metrics_glob_patterns(
    store: MetricStore, glob_lake: pl.DataFrame, now: datetime, pattern: str, expected: set[str]
) -> None:
    found = store.query_metrics(pattern, *window(now))
    assert found.schema == pl.Schema(SAMPLE_SCHEMA)
    assert set(found.get_column("metric").unique().to_list()) == expected
    assert found.height == glob_lake.filter(pl.col("metric").is_in(list(expected))).height


@pytest.mark.parametrize(
    ("tags", "hosts"),
    [
        ({"host": "host-1"}, {"host-1"}),
        ({"host": ["host-0", "host-2"]}, {"host-0", "host-2"}),
        ({"host": ("host-0",)}, {"host-0"}),
        ({"region": "eu"}, {"host-0", "host-1"}),
        ({"region": "eu", "host": ["host-1", "host-2"]}, {"host-1"}),
        ({"region": "us", "host": "host-0"}, set()),
        ({"host": "nope"}, set()),
        ({"missing_key": "x"}, set()),
        (None, {"host-0", "host-1", "host-2"}),
        ({}, {"host-0", "host-1", "host-2"}),
    ],
)
def test_query_metrics_tag_filters(
    store: MetricStore, glob_lake: pl.DataFrame, now: datetime, tags: dict[str, Any] | None, hosts: set[str]
) -> None:
    found = store.query_metrics("cpu.*", *window(now), tags)
    assert found.schema == pl.Schema(SAMPLE_SCHEMA)
    found_hosts = {str(t) for t in found.get_column("tags").str.json_path_match("$.host").unique().to_list()}
    assert found_hosts == hosts
    expected = glob_lake.filter(pl.col("metric").str.starts_with("cpu.") & pl.col("host").is_in(list(hosts)))
    assert found.height == expected.height


def test_query_metrics_rows_are_the_samples_stored(store: MetricStore, glob_lake: pl.DataFrame, now: datetime) -> None:
    found = store.query_metrics("*", *window(now))
    assert found.height == glob_lake.height
    assert found.get_column("type").unique().to_list() == ["gauge"]
    ids = found.select("metric", "tags", "series_id").unique()
    for metric, tags, sid in ids.iter_rows():
        assert sid == series_id(metric, tags)
    back = found.select(
        "ts",
        "metric",
        "value",
        pl.col("tags").str.json_path_match("$.host").alias("host"),
        pl.col("tags").str.json_path_match("$.region").alias("region"),
    ).sort("metric", "host", "ts")
    assert_frame_equal(back, glob_lake.select(back.columns).sort("metric", "host", "ts"), check_exact=True)
    # ordered by metric, series and time
    assert found.equals(found.sort("metric", "series_id", "ts"))


@pytest.mark.parametrize(
    ("above", "below"), [(50.0, None), (None, 50.0), (20.0, 80.0), (100.0, None), (None, 0.0), (60.0, 40.0)]
)
def test_query_metrics_above_below(
    store: MetricStore, glob_lake: pl.DataFrame, now: datetime, above: float | None, below: float | None
) -> None:
    found = store.query_metrics("*", *window(now), above=above, below=below)
    expected = glob_lake
    if above is not None:
        expected = expected.filter(pl.col("value") > above)
    if below is not None:
        expected = expected.filter(pl.col("value") < below)
    assert found.height == expected.height
    assert sorted(found.get_column("value").to_list()) == sorted(expected.get_column("value").to_list())


def test_query_metrics_above_below_are_strict(store: MetricStore, glob_lake: pl.DataFrame, now: datetime) -> None:
    value = glob_lake.get_column("value")[5]
    values = glob_lake.get_column("value")
    assert store.query_metrics("*", *window(now), above=value).height == (values > value).sum()
    assert store.query_metrics("*", *window(now), below=value).height == (values < value).sum()
    assert store.query_metrics("*", *window(now), above=value, below=value).height == 0
    only = store.query_metrics("*", *window(now), above=value - 1e-9, below=value + 1e-9)
    assert only.get_column("value").to_list() == [value] * (values == value).sum()


@pytest.mark.parametrize("limit", [0, 1, 5, 144, 1000])
def test_query_metrics_limit(store: MetricStore, glob_lake: pl.DataFrame, now: datetime, limit: int) -> None:
    everything = store.query_metrics("*", *window(now))
    limited = store.query_metrics("*", *window(now), limit=limit)
    assert limited.equals(everything.head(limit))


def test_query_metrics_start_inclusive_end_exclusive(store: MetricStore, glob_lake: pl.DataFrame) -> None:
    stamps = sorted(glob_lake.get_column("ts").unique().to_list())
    for first, last in [(0, 5), (3, 4), (2, 11), (10, 11)]:
        found = store.query_metrics("*", stamps[first], stamps[last])
        got = sorted(found.get_column("ts").unique().to_list())
        assert got == stamps[first:last], (first, last)
        assert found.height == len(GLOB_METRICS) * 3 * (last - first)
    # an end just after a sample includes it; the same end as a sample excludes it
    assert store.query_metrics("*", stamps[0], stamps[0] + timedelta(microseconds=1)).height == 12
    assert store.query_metrics("*", stamps[0] - timedelta(hours=1), stamps[0]).height == 0


@pytest.fixture
def new_york(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time is America/New_York for the test; the previous zone is restored afterwards."""
    monkeypatch.setenv("TZ", "America/New_York")
    time.tzset()
    try:
        yield
    finally:
        monkeypatch.undo()
        time.tzset()


def test_query_metrics_naive_bounds_are_local_time(
    store: MetricStore, glob_lake: pl.DataFrame, now: datetime, new_york: None
) -> None:
    first = glob_lake.get_column("ts").min()
    assert isinstance(first, datetime)
    local = first.astimezone(ZoneInfo("America/New_York")).replace(tzinfo=None)  # New York wall clock
    assert store.query_metrics("*", local, local + timedelta(seconds=1)).height == len(GLOB_METRICS) * 3
    as_if_utc = first.replace(tzinfo=None)  # the UTC wall clock read as New York time is hours away
    assert store.query_metrics("*", as_if_utc, as_if_utc + timedelta(seconds=1)).height == 0
    naive = store.query_aggregated("*", "count", "1m", local, local + timedelta(minutes=1), [])
    aware = store.query_aggregated("*", "count", "1m", first, first + timedelta(minutes=1), [])
    assert naive.height > 0
    assert naive.equals(aware)


def test_empty_lake_results_have_the_right_columns(store: MetricStore, now: datetime) -> None:
    start, end = window(now)
    assert store.query_metrics("*", start, end).schema == pl.Schema(SAMPLE_SCHEMA)
    assert store.query_metrics("*", start, end, {"host": "a"}).schema == pl.Schema(SAMPLE_SCHEMA)
    for agg in ("avg", "p95", "rate"):
        assert store.query_aggregated("*", agg, "1m", start, end).schema == pl.Schema(PER_SERIES_SCHEMA)
        assert store.query_aggregated("*", agg, "1m", start, end, []).schema == pl.Schema(PER_METRIC_SCHEMA)
        assert store.query_aggregated("*", agg, "1m", start, end, ["host"]).schema == pl.Schema(PER_HOST_SCHEMA)
    assert store.latest().schema == pl.Schema(SAMPLE_SCHEMA)
    assert store.engine.series().schema == pl.Schema(
        {"series_id": pl.Int64, "metric": pl.String, "type": pl.String, "tags": pl.String}
    )
    for view in ("samples", "series", "rollups_1m", "rollups_1h"):
        assert store.sql(f"SELECT count(*) AS n FROM {view}").item() == 0


@pytest.mark.parametrize(
    ("pattern", "tags"),
    [("nomatch.*", None), ("nomatch", None), ("cpu.*", {"host": "nope"}), ("nomatch.*", {"host": "host-0"})],
)
def test_no_match_results_have_the_right_columns(
    store: MetricStore, glob_lake: pl.DataFrame, now: datetime, pattern: str, tags: dict[str, str] | None
) -> None:
    start, end = window(now)
    raw = store.query_metrics(pattern, start, end, tags)
    assert raw.height == 0
    assert raw.schema == pl.Schema(SAMPLE_SCHEMA)
    for agg in ("avg", "count", "increase", "p50"):
        for group_by, schema in ((None, PER_SERIES_SCHEMA), ([], PER_METRIC_SCHEMA), (["host"], PER_HOST_SCHEMA)):
            found = store.query_aggregated(pattern, agg, "1m", start, end, group_by, tags)
            assert found.height == 0, (agg, group_by)
            assert found.schema == pl.Schema(schema), (agg, group_by)
    assert store.latest(pattern, tags).height == 0
    assert store.latest(pattern, tags).schema == pl.Schema(SAMPLE_SCHEMA)


def test_query_aggregated_outside_the_data_is_empty(store: MetricStore, glob_lake: pl.DataFrame, now: datetime) -> None:
    found = store.query_aggregated("*", "avg", "1m", now - timedelta(days=3), now - timedelta(days=2))
    assert found.height == 0
    assert found.schema == pl.Schema(PER_SERIES_SCHEMA)


# --- aggregations against polars, raw / rollups / no rollups, across midnight -----------


@pytest.fixture
def midnight_end(now: datetime) -> datetime:
    """20.5 minutes after yesterday's midnight (UTC): data ending there spans two day partitions."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0) - timedelta(days=1)
    return midnight + timedelta(minutes=20, seconds=30)


def midnight_frame(make_frame: FrameFactory, end: datetime) -> pl.DataFrame:
    """2.5 h of gauges and counters (one counter resets) ending at ``end``; host-h is shifted by h*3 s."""
    gauges = make_frame(("cpu.usage", "mem.usage"), hosts=3, points=900, end=end, seed=3)
    counters = make_frame(("net.bytes",), hosts=3, points=900, kind="counter", end=end, seed=4)
    reset_at = end - timedelta(minutes=40)
    base = counters.filter((pl.col("host") == "host-1") & (pl.col("ts") < reset_at)).get_column("value").max()
    counters = counters.with_columns(
        pl.when((pl.col("host") == "host-1") & (pl.col("ts") >= reset_at))
        .then(pl.col("value") - base)
        .otherwise(pl.col("value"))
        .alias("value")
    )
    frame = pl.concat([gauges, counters])
    shift = pl.duration(seconds=pl.col("host").str.extract(r"(\d+)$").cast(pl.Int64) * 3)
    return frame.with_columns(pl.col("ts") - shift)


def check_all(
    store: MetricStore,
    agg: str,
    start: datetime,
    end: datetime,
    *,
    use_rollups: bool,
    also: Callable[[str, str, pl.DataFrame], None] | None = None,
) -> None:
    """Every interval and grouping of ``agg`` agrees with the polars reference."""
    for name, step in INTERVALS.items():
        samples = samples_in(store, floor_to(start, step), end)
        for label, group_by in GROUPINGS.items():
            found = store.query_aggregated("*", agg, name, start, end, group_by, use_rollups=use_rollups)
            try:
                assert_same(found, reference(samples, agg, step, group_by), group_by)
            except AssertionError as exc:
                raise AssertionError(f"{agg} {name} {label} use_rollups={use_rollups}: {exc}") from None
            if also is not None:
                also(name, label, found)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_query_aggregated_matches_polars_raw_compacted_and_rollups(
    store: MetricStore, make_frame: FrameFactory, midnight_end: datetime, agg: str
) -> None:
    frame = midnight_frame(make_frame, midnight_end)
    half = frame.height // 2
    ingest(store, frame.head(half))  # two raw files per day
    ingest(store, frame.tail(frame.height - half))
    first = frame.get_column("ts").min()
    assert isinstance(first, datetime)
    start, end = first + timedelta(seconds=95), midnight_end + timedelta(seconds=1)
    days = [midnight_end.date() - timedelta(days=1), midnight_end.date()]
    assert store.lake.partitions("samples") == days

    # raw writer files only: no day is covered, rollups cannot be used
    assert covered_days(store.lake, "rollups_1m", days) == set()
    check_all(store, agg, start, end, use_rollups=True)

    # compacted: both days covered by both rollup tables; with and without rollups agree
    store.compact(validate=False)
    assert covered_days(store.lake, "rollups_1m", days) == set(days)
    assert covered_days(store.lake, "rollups_1h", days) == set(days)
    without: dict[tuple[str, str], pl.DataFrame] = {}
    check_all(store, agg, start, end, use_rollups=False, also=lambda n, g, f: without.__setitem__((n, g), f))

    def same_as_without(name: str, label: str, found: pl.DataFrame) -> None:
        assert_same(found, without[(name, label)], GROUPINGS[label], rel=1e-12)

    check_all(store, agg, start, end, use_rollups=True, also=same_as_without)

    # a raw file arriving after compaction uncovers its day; results still agree
    late = pl.DataFrame(
        {
            "ts": [midnight_end - timedelta(minutes=15, seconds=5)],
            "metric": ["net.bytes"],
            "value": [1.0],
            "type": ["counter"],
            "host": ["host-0"],
        },
        schema_overrides={"ts": TS},
    )
    ingest(store, late)
    assert covered_days(store.lake, "rollups_1m", days) == {days[0]}
    assert covered_days(store.lake, "rollups_1h", days) == {days[0]}
    assert store.query_metrics("net.bytes", start, end, {"host": "host-0"}).height == 900 - 9 + 1
    check_all(store, agg, start, end, use_rollups=True)


def zeroed_rollups(
    store: MetricStore, make_frame: FrameFactory, midnight_end: datetime, columns: tuple[str, ...]
) -> tuple[date, datetime, datetime]:
    """The midnight lake compacted, its first day's 1-minute ``columns`` zeroed: (that day, start, end).

    Only a query that reads the rollups sees the zeros. The range, 22:20 to 23:50 of the first day, is
    minute-aligned, so no raw tail is read.
    """
    ingest(store, midnight_frame(make_frame, midnight_end))
    store.compact(validate=False)
    day = midnight_end.date() - timedelta(days=1)
    (rollup,) = store.lake.files("rollups_1m", day, day)
    table = pq.read_table(rollup.path)
    for column in columns:
        table = table.set_column(table.schema.get_field_index(column), column, pc.multiply(table[column], 0.0))
    pq.write_table(table, rollup.path)
    return day, midnight_end - timedelta(hours=2, seconds=30), midnight_end - timedelta(minutes=30, seconds=30)


def test_the_rollups_are_really_read_after_compaction(
    store: MetricStore, make_frame: FrameFactory, midnight_end: datetime
) -> None:
    _, start, end = zeroed_rollups(store, make_frame, midnight_end, ("sum",))
    engine = QueryEngine(store.lake)  # a fresh connection: no cached Parquet metadata
    try:
        raw = engine.query_aggregated("cpu.usage", "avg", "5m", start, end, [], use_rollups=False)
        via_rollups = engine.query_aggregated("cpu.usage", "avg", "5m", start, end, [], use_rollups=True)
        raw_counts = engine.query_aggregated("cpu.usage", "count", "5m", start, end, [], use_rollups=False)
        rollup_counts = engine.query_aggregated("cpu.usage", "count", "5m", start, end, [], use_rollups=True)
        hourly = engine.query_aggregated("cpu.usage", "avg", "1h", start, end, [], use_rollups=True)
    finally:
        engine.close()
    assert raw.height == via_rollups.height == 18
    assert raw.get_column("value").min() > 0
    assert via_rollups.get_column("value").to_list() == [0.0] * 18
    assert rollup_counts.equals(raw_counts)
    assert rollup_counts.get_column("value").to_list() == [90.0] * 18
    assert hourly.get_column("value").min() > 0  # 1-hour rollups were left alone


def test_a_compacted_file_is_read_from_its_rollups_while_newer_raw_files_arrive(
    store: MetricStore, make_frame: FrameFactory, midnight_end: datetime
) -> None:
    day, start, end = zeroed_rollups(store, make_frame, midnight_end, ("sum", "increase"))
    late = [point(midnight_end - timedelta(minutes=25), name, 5.0, "host-0") for name in ("cpu.usage", "net.bytes")]
    ingest(store, pl.DataFrame(late, schema_overrides={"ts": TS}).with_columns(type=pl.Series(["gauge", "counter"])))
    assert covered_days(store.lake, "rollups_1m", [day]) == set()  # the late file uncovers the day
    engine = QueryEngine(store.lake)
    try:
        gauge = engine.query_aggregated("cpu.usage", "avg", "5m", start, end, [], use_rollups=True)
        counter = engine.query_aggregated("net.bytes", "increase", "5m", start, end, [], use_rollups=True)
    finally:
        engine.close()
    assert gauge.get_column("value").to_list() == [0.0] * 18  # the compacted file: from its rollups
    assert counter.get_column("value").min() > 0  # a counter's increase reads the day raw: file order is unknown


@pytest.mark.parametrize(
    ("values", "increases"),
    [
        # minute A: 0..50 (50); minute B: 50->60 (10), reset 60->5 (5), then +10 x4 (40)
        ([0, 10, 20, 30, 40, 50, 60, 5, 15, 25, 35, 45], [50.0, 55.0]),
        # the reset falls on the bucket boundary: 50 -> 3 counts 3
        ([0, 10, 20, 30, 40, 50, 3, 13, 23, 33, 43, 53], [50.0, 53.0]),
        # a reset to exactly zero, then a flat counter
        ([5, 6, 7, 8, 9, 10, 0, 0, 0, 0, 0, 0], [5.0, 0.0]),
        # several resets inside one minute: 100->1 (1), +1, 2->1 (1), +1, 2->1 (1)
        ([100, 1, 2, 1, 2, 1, 1, 1, 1, 1, 1, 1], [5.0, 0.0]),
    ],
)
def test_rate_and_increase_handle_counter_resets(
    store: MetricStore, now: datetime, values: list[int], increases: list[float]
) -> None:
    minute = floor_to(now - timedelta(minutes=10), 120)
    frame = pl.DataFrame(
        {
            "ts": [minute + timedelta(seconds=10 * i) for i in range(12)],
            "metric": ["crypto.key.ops"] * 12,
            "value": [float(v) for v in values],
            "type": ["counter"] * 12,
            "key": ["k1"] * 12,
        },
        schema_overrides={"ts": TS},
    )
    ingest(store, frame)
    start, end = minute, minute + timedelta(minutes=2)
    samples = samples_in(store, start, end)
    for step_name in ("raw", "compacted"):
        if step_name == "compacted":
            store.compact(validate=False)
        for use_rollups in (True, False):
            inc = store.query_aggregated("crypto.key.*", "increase", "1m", start, end, use_rollups=use_rollups)
            rate = store.query_aggregated("crypto.key.*", "rate", "1m", start, end, use_rollups=use_rollups)
            assert inc.get_column("value").to_list() == increases, (step_name, use_rollups)
            assert rate.get_column("value").to_list() == pytest.approx([v / 60 for v in increases])
            assert_same(inc, reference(samples, "increase", 60, None), None)
            assert_same(rate, reference(samples, "rate", 60, None), None)
            two_minutes = store.query_aggregated("crypto.key.*", "increase", "2m", start, end, [])
            assert two_minutes.get_column("value").to_list() == [sum(increases)]


# --- latest, series, sql ------------------------------------------------------------------


def point(ts: datetime, metric: str, value: float, host: str) -> dict[str, Any]:
    return {"ts": ts, "metric": metric, "value": value, "type": "gauge", "host": host}


@pytest.fixture
def latest_lake(store: MetricStore, now: datetime) -> dict[str, tuple[datetime, float]]:
    """A: today and two days ago; B: two days ago only; C: yesterday only. Returns the expected latest."""
    rows = [
        point(now - timedelta(days=2, minutes=1), "cpu.usage", 1.0, "a"),
        point(now - timedelta(days=2), "cpu.usage", 2.0, "a"),
        point(now - timedelta(minutes=1), "cpu.usage", 3.0, "a"),
        point(now, "cpu.usage", 4.0, "a"),
        point(now - timedelta(days=2, minutes=2), "cpu.usage", 5.0, "b"),
        point(now - timedelta(days=2, minutes=1), "cpu.usage", 6.0, "b"),
        point(now - timedelta(days=1, minutes=3), "mem.usage", 7.0, "a"),
        point(now - timedelta(days=1, minutes=2), "mem.usage", 8.0, "a"),
    ]
    ingest(store, pl.DataFrame(rows, schema_overrides={"ts": TS}))
    return {
        "cpu.usage/a": (now, 4.0),
        "cpu.usage/b": (now - timedelta(days=2, minutes=1), 6.0),
        "mem.usage/a": (now - timedelta(days=1, minutes=2), 8.0),
    }


def keyed(frame: pl.DataFrame) -> dict[str, tuple[datetime, float]]:
    """``metric/host`` -> (ts, value)."""
    return {
        f"{m}/{json.loads(t)['host']}": (ts, v)
        for ts, m, v, t in frame.select("ts", "metric", "value", "tags").iter_rows()
    }


@pytest.mark.parametrize(
    ("pattern", "tags", "wanted"),
    [
        ("*", None, {"cpu.usage/a", "cpu.usage/b", "mem.usage/a"}),
        ("cpu.*", None, {"cpu.usage/a", "cpu.usage/b"}),
        ("*", {"host": "b"}, {"cpu.usage/b"}),
        ("mem.usage", None, {"mem.usage/a"}),
        ("*", {"host": ["a", "b"]}, {"cpu.usage/a", "cpu.usage/b", "mem.usage/a"}),
    ],
)
def test_latest_one_row_per_series_searching_back(
    store: MetricStore,
    latest_lake: dict[str, tuple[datetime, float]],
    pattern: str,
    tags: dict[str, Any] | None,
    wanted: set[str],
) -> None:
    found = store.latest(pattern, tags)
    assert found.schema == pl.Schema(SAMPLE_SCHEMA)
    assert found.height == len(wanted)
    assert found.get_column("series_id").n_unique() == found.height
    assert keyed(found) == {k: latest_lake[k] for k in wanted}


def test_latest_respects_the_lookback(store: MetricStore, latest_lake: dict[str, tuple[datetime, float]]) -> None:
    lookback = timedelta(days=1)
    cutoff = (datetime.now(UTC) - lookback).date()  # whole days are searched: those on or after this one
    found = store.engine.latest("*", lookback=lookback)
    expected = {k: v for k, v in latest_lake.items() if v[0].date() >= cutoff}
    assert "cpu.usage/b" not in expected
    assert keyed(found) == expected


def test_latest_after_compaction(store: MetricStore, latest_lake: dict[str, tuple[datetime, float]]) -> None:
    store.compact(validate=False)
    assert keyed(store.latest()) == latest_lake


def test_series_catalog(store: MetricStore, glob_lake: pl.DataFrame) -> None:
    catalog = store.engine.series()
    assert catalog.columns == ["series_id", "metric", "type", "tags"]
    assert catalog.height == len(GLOB_METRICS) * 3
    for sid, metric, kind, tags in catalog.iter_rows():
        assert sid == series_id(metric, tags)
        assert kind == "gauge"
    assert set(store.engine.series("cpu.*").get_column("metric").to_list()) == {"cpu.usage", "cpu.system"}
    assert store.engine.series("*", {"region": "us"}).height == len(GLOB_METRICS)
    assert store.engine.series("mem.usage", {"host": ["host-0", "host-1"]}).get_column("tags").to_list() == [
        '{"host":"host-0","region":"eu"}',
        '{"host":"host-1","region":"eu"}',
    ]
    assert store.engine.series("nomatch").height == 0


def test_sql_over_the_views(store: MetricStore, glob_lake: pl.DataFrame) -> None:
    assert store.sql("SELECT count(*) AS n FROM samples").item() == glob_lake.height
    assert store.sql("SELECT count(*) AS n FROM series").item() == len(GLOB_METRICS) * 3
    assert store.sql("SELECT count(*) AS n FROM rollups_1m").item() == 0
    by_metric = store.sql(
        "SELECT metric, count(*) AS n FROM samples WHERE metric LIKE ? GROUP BY metric ORDER BY 1", ["cpu.%"]
    )
    assert by_metric.rows() == [("cpu.system", 36), ("cpu.usage", 36)]
    total = store.sql("SELECT sum(value) AS s FROM samples").item()
    assert total == pytest.approx(glob_lake.get_column("value").sum())
    store.compact(validate=False)
    for view in ("rollups_1m", "rollups_1h"):
        counted = store.sql(f"SELECT sum(count) AS n, sum(sum) AS s FROM {view}")
        assert counted.item(0, "n") == glob_lake.height
        assert counted.item(0, "s") == pytest.approx(total)
    assert store.sql("SELECT count(*) AS n FROM samples").item() == glob_lake.height
    columns = store.sql("SELECT * FROM samples LIMIT 1").columns
    assert columns == ["metric", "series_id", "ts", "value", "type", "tags", "date"]


@pytest.mark.parametrize(
    "statement",
    [
        "SELECT * FROM no_such_view",
        "SELEC 1",
        "SELECT no_such_column FROM samples",
        "SELECT 1 +",
    ],
)
def test_sql_errors_raise_query_error_with_duckdb_message(
    store: MetricStore, glob_lake: pl.DataFrame, statement: str
) -> None:
    store.sql("SELECT 1")  # create the views
    with pytest.raises(QueryError) as caught:
        store.sql(statement)
    con = duckdb.connect(str(store.settings.duckdb_path), read_only=True)
    try:
        with pytest.raises(duckdb.Error) as direct:
            con.sql(statement).fetchall()
    finally:
        con.close()
    assert str(caught.value) == str(direct.value).split("\n")[0]


def test_refreshing_views_closes_its_directory_iterators(store: MetricStore, glob_lake: pl.DataFrame) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        store.engine.refresh_views(force=True)
        gc.collect()
    leaks = [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)]
    assert leaks == []


@pytest.mark.parametrize("statement", ["", "   ", "\n\t"])
def test_sql_empty_statement_raises(store: MetricStore, statement: str) -> None:
    with pytest.raises(QueryError, match="empty"):
        store.sql(statement)


def test_database_file_opens_read_only_in_another_connection(
    store: MetricStore, glob_lake: pl.DataFrame, settings: Any
) -> None:
    path: Path = settings.data_dir / "metrics.duckdb"
    store.engine.refresh_views()
    assert path.is_file()
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone() == (glob_lake.height,)
        assert con.execute("SELECT count(*) FROM series").fetchone() == (len(GLOB_METRICS) * 3,)
        assert con.execute("SELECT count(*) FROM rollups_1m").fetchone() == (0,)
    store.compact(validate=False)
    with duckdb.connect(str(path), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone() == (glob_lake.height,)
        assert con.execute("SELECT sum(count) FROM rollups_1m").fetchone() == (glob_lake.height,)
        assert con.execute("SELECT sum(count) FROM rollups_1h").fetchone() == (glob_lake.height,)
        same = con.execute("SELECT sum(value) FROM samples").fetchone()
    assert same is not None
    assert same[0] == pytest.approx(store.sql("SELECT sum(value) AS s FROM samples").item())


# --- bad inputs -----------------------------------------------------------------------------


def _bad(store: MetricStore, now: datetime, case: str) -> None:
    start, end = window(now)
    calls: dict[str, Callable[[], object]] = {
        "unknown aggregation": lambda: store.query_aggregated("*", "median", "1m", start, end),
        "interval 0s": lambda: store.query_aggregated("*", "avg", "0s", start, end),
        "interval 0": lambda: store.query_aggregated("*", "avg", 0, start, end),
        "interval 1.5s": lambda: store.query_aggregated("*", "avg", "1.5s", start, end),
        "interval 500ms": lambda: store.query_aggregated("*", "avg", "500ms", start, end),
        "interval abc": lambda: store.query_aggregated("*", "avg", "abc", start, end),
        "start == end (raw)": lambda: store.query_metrics("*", end, end),
        "start > end (raw)": lambda: store.query_metrics("*", end, start),
        "start > end (agg)": lambda: store.query_aggregated("*", "avg", "1m", end, start),
        "bad tag key (raw)": lambda: store.query_metrics("*", start, end, {"bad key": "x"}),
        "bad tag key (agg)": lambda: store.query_aggregated("*", "avg", "1m", start, end, None, {"1x": "y"}),
        "bad tag key (latest)": lambda: store.latest("*", {"a/b": "x"}),
        "bad tag key (series)": lambda: store.engine.series("*", {"": "x"}),
        "empty tag value list": lambda: store.query_metrics("*", start, end, {"host": []}),
        "bad group_by key": lambda: store.query_aggregated("*", "avg", "1m", start, end, ["bad key"]),
        "bad group_by key quote": lambda: store.query_aggregated("*", "avg", "1m", start, end, ['x"; DROP']),
    }
    calls[case]()


@pytest.mark.parametrize(
    ("case", "message"),
    [
        ("unknown aggregation", "aggregation"),
        pytest.param("interval 0s", "interval"),
        ("interval 0", "interval"),
        ("interval 1.5s", "interval"),
        ("interval 500ms", "interval"),
        pytest.param("interval abc", "interval"),
        ("start == end (raw)", "time range"),
        ("start > end (raw)", "time range"),
        ("start > end (agg)", "time range"),
        ("bad tag key (raw)", "tags"),
        ("bad tag key (agg)", "tags"),
        ("bad tag key (latest)", "tags"),
        ("bad tag key (series)", "tags"),
        ("empty tag value list", "tags"),
        ("bad group_by key", "group_by"),
        ("bad group_by key quote", "group_by"),
    ],
)
def test_bad_inputs_raise_query_error(
    store: MetricStore, glob_lake: pl.DataFrame, now: datetime, case: str, message: str
) -> None:
    with pytest.raises(QueryError, match=message):
        _bad(store, now, case)


# --- regressions from review -------------------------------------------------------------------


def test_group_by_a_tag_named_like_an_internal_column(store: MetricStore, now: datetime) -> None:
    frame = pl.DataFrame(
        {
            "ts": [now - timedelta(seconds=s) for s in (10, 20, 30, 40)],
            "metric": ["k.ops"] * 4,
            "value": [1.0, 2.0, 3.0, 4.0],
            "type": ["gauge"] * 4,
            "kind": ["aes", "aes", "rsa", "rsa"],
            "bucket": ["x", "x", "x", "x"],
        }
    ).rename({"kind": "type_"})
    ingest(store, frame)
    start, end = window(now)
    found = store.query_aggregated("k.ops", "sum", "1h", start, end, ["type_", "bucket"])
    assert found.columns == ["ts", "metric", "type_", "bucket", "value"]
    assert sorted(found.select("type_", "value").rows()) == [("aes", 3.0), ("rsa", 7.0)]
    for clash in ("tags", "metric", "value", "ts", "series_id"):
        with pytest.raises(QueryError, match="clashes"):
            store.query_aggregated("k.ops", "sum", "1h", start, end, [clash])


def test_ad_hoc_sql_cannot_change_what_other_queries_see(store: MetricStore, glob_lake: pl.DataFrame) -> None:
    start, end = window(datetime.now(UTC))
    before = store.query_metrics("cpu.*", start, end, {"host": "host-1"})
    for statement in (
        "DELETE FROM series_catalog",
        "DROP TABLE series_catalog",
        "CREATE OR REPLACE VIEW samples AS SELECT 1 AS value",
        "DROP VIEW samples",
        "ATTACH ':memory:' AS other",
        "SELECT 1; DROP VIEW samples",
    ):
        with pytest.raises(QueryError):
            store.sql(statement)
    assert store.sql("SELECT count(*) AS n FROM samples").item() == glob_lake.height
    with pytest.raises(QueryError):  # outside the lake: refused
        store.sql("SELECT * FROM read_csv('/etc/passwd')")
    with pytest.raises(QueryError):
        store.sql("SET enable_external_access = true")
    assert_frame_equal(store.query_metrics("cpu.*", start, end, {"host": "host-1"}), before)


def test_sql_keeps_working_while_compaction_refreshes_the_views(store: MetricStore, glob_lake: pl.DataFrame) -> None:
    errors: list[BaseException] = []
    stop = time.monotonic() + 3

    def query() -> None:
        while time.monotonic() < stop:
            try:
                assert store.sql("SELECT count(*) AS n FROM samples").item() == glob_lake.height
            except BaseException as exc:  # reported below
                errors.append(exc)
                return

    reader = threading.Thread(target=query)
    reader.start()
    for _ in range(20):  # bounded: at most 20 refreshes within the reader's 3 s
        store.engine.refresh_views(force=True)
        if time.monotonic() >= stop:
            break
    reader.join(timeout=10)
    assert errors == []


def test_a_corrupt_series_catalog_file_is_quarantined_and_queries_go_on(
    store: MetricStore, glob_lake: pl.DataFrame, settings: Any
) -> None:
    (settings.lake_dir / "series" / "broken.parquet").write_bytes(b"not parquet at all")
    start, end = window(datetime.now(UTC))
    store.engine._catalog_signature = None
    found = store.query_metrics("cpu.*", start, end, {"host": "host-1"})
    assert found.height == 2 * 12
    assert (settings.lake_dir / "quarantine" / "series" / "corrupt-broken.parquet").is_file()
    store.compact(validate=False)  # and maintenance is not blocked by it either


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda s, a, b: s.query_metrics("*", a, b, {"host": 5.5}), None),
        (lambda s, a, b: s.query_metrics("*", a, b, {"host": None}), "tags"),
        (lambda s, a, b: s.query_metrics("*", a, b, "host=a"), "tags"),  # type: ignore[arg-type]
        (lambda s, a, b: s.query_metrics("*", a, b, {"host": []}), "tags"),
        (lambda s, a, b: s.query_metrics("*", 12345, b), "start"),  # type: ignore[arg-type]
        (lambda s, a, b: s.query_metrics("*", "not a time", b), "start"),
        (lambda s, a, b: s.query_aggregated("*", None, "1m", a, b), "aggregation"),  # type: ignore[arg-type]
        (lambda s, a, b: s.query_aggregated("*", "avg", "1m", a, b, "host"), "group_by"),  # type: ignore[arg-type]
        (lambda s, a, b: s.sql("SELECT union_value(k := 1) AS u"), None),
        (lambda s, a, b: s.query_metrics("*", datetime(1, 1, 1), b), "start"),
        (lambda s, a, b: s.query_metrics("*", a, "9999-12-31T23:59:59-05:00"), "end"),
        (lambda s, a, b: s.query_aggregated("*", "avg", "1m", a, b, 5), "group_by"),  # type: ignore[arg-type]
        (lambda s, a, b: s.query_metrics(5, a, b), "pattern"),  # type: ignore[arg-type]
        (lambda s, a, b: s.query_metrics("m\U0010ffff*", a, b), None),
        (lambda s, a, b: s.query_metrics("*", a, b, limit="x"), "limit"),
        (lambda s, a, b: s.query_metrics("*", a, b, above="x"), "above"),
        (lambda s, a, b: s.engine.latest("*", lookback=timedelta(days=10**6)), None),
    ],
)
def test_bad_query_inputs_raise_query_errors(
    store: MetricStore, glob_lake: pl.DataFrame, call: Callable[..., Any], message: str | None
) -> None:
    start, end = window(datetime.now(UTC))
    caught: str | None = None
    try:
        call(store, start, end)
    except QueryError as exc:  # any other exception type fails the test
        caught = str(exc)
    if message:
        assert caught is not None
        assert message in caught


def test_iso_text_times_and_ranges_from_before_1970_are_accepted(store: MetricStore, glob_lake: pl.DataFrame) -> None:
    end = datetime.now(UTC) + timedelta(seconds=1)
    assert store.query_metrics("cpu.usage", (end - timedelta(hours=1)).isoformat(), end.isoformat()).height == 36
    assert store.query_aggregated("cpu.usage", "count", "1w", datetime(1, 1, 1, tzinfo=UTC), end, []).height >= 1


def test_the_database_file_is_current_after_ingest_and_readable_from_elsewhere(
    store: MetricStore, make_frame: FrameFactory, settings: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    frame = make_frame(("cpu.usage",), hosts=2, points=5)
    ingest(store, frame)  # no sql(), no compaction: the first file alone must update the file
    monkeypatch.chdir(tmp_path)  # another working directory: the views hold absolute paths
    with duckdb.connect(str(settings.data_dir / "metrics.duckdb"), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM samples").fetchone() == (frame.height,)


@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_the_shown_sql_gives_the_same_rows_through_metrics_sql(
    store: MetricStore, make_frame: FrameFactory, midnight_end: datetime, agg: str
) -> None:
    """``aggregated_sql`` is the query itself: pasted into ``sql()`` it gives what ``query_aggregated`` gives."""
    ingest(store, midnight_frame(make_frame, midnight_end))
    store.compact(validate=False)
    late = make_frame(("cpu.usage",), hosts=1, points=3, end=midnight_end - timedelta(minutes=2), seed=9)
    late = late.with_columns(pl.col("ts") + timedelta(seconds=1))  # no two values of a series at one instant
    ingest(store, late)  # the last day has a raw file again: rollups for the first day, raw samples for the second
    first = store.sql("SELECT min(ts) AS t FROM samples").item()
    start, end = first + timedelta(seconds=95), midnight_end + timedelta(seconds=1)
    cases: list[tuple[str, list[str] | None, dict[str, Any] | None]] = [
        ("1m", None, None),
        ("5m", [], None),
        ("1h", ["host"], {"host": ["host-0", "host-2"]}),
        ("7m", ["host"], None),
    ]
    for interval, group_by, tags in cases:
        for use_rollups in (True, False):
            found = store.query_aggregated("*", agg, interval, start, end, group_by, tags, use_rollups=use_rollups)
            text = store.aggregated_sql("*", agg, interval, start, end, group_by, tags, use_rollups=use_rollups)
            assert text is not None
            assert "read_parquet" not in text
            assert "?" not in text
            assert ("rollups_1" in text) == (use_rollups and agg not in PERCENTILES), text
            pasted = store.sql(text)
            assert_same(pasted, found, group_by, rel=1e-12)
    assert store.aggregated_sql("*", agg, "1m", end + timedelta(days=3), end + timedelta(days=4)) is None
    nothing = store.aggregated_sql("nothing.*", agg, "1m", start, end)
    assert nothing is not None
    assert store.sql(nothing).is_empty()
    assert store.aggregated_sql("*", agg, "1m", start, end, tags={"host": "nobody"}) is None

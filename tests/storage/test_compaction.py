"""Tests of storage.compaction and storage.rollups: merging, rollups, quarantine, concurrency, lake round trip.

Real files in tmp_path and real processes, no mocks.
"""

from __future__ import annotations

import gc
import json
import math
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import warnings
from collections import defaultdict
from datetime import UTC, date, datetime, timedelta
from itertools import pairwise
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hsettings
from hypothesis import strategies as st
from polars.testing import assert_frame_equal

from metrics.model import SORT_KEY, canonical_tags
from metrics.settings import Settings
from storage.compaction import compact, compact_day, needs_compaction, rebuild_rollups
from storage.encoding import decimal_values, decode_values
from storage.lake import QUARANTINE, SERIES_TABLE, Lake
from storage.rollups import ROLLUP_TABLES, covered_days
from storage.store import MetricStore
from storage.wal import segment_name
from storage.writer import parse_sample_file_name

FrameFactory = Any

SAMPLE_COLUMNS = ["metric", "series_id", "ts", "value", "type", "tags"]


def read_day(lake: Lake, day: date, table: str = "samples") -> pl.DataFrame:
    files = [str(f.path) for f in lake.files(table, day, day)]
    return decode_values(pl.read_parquet(files))


def canonical(frame: pl.DataFrame) -> pl.DataFrame:
    """Sample rows in one order, with the value's bits alongside so -0.0 and 0.0 differ."""
    return (
        frame.select(SAMPLE_COLUMNS)
        .with_columns(pl.col("metric", "type", "tags").cast(pl.String))
        .with_columns(pl.col("value").reinterpret(signed=True).alias("bits"))
        .sort("series_id", "ts", "bits")
    )


def ingest_in_small_files(store: MetricStore, frames: list[pl.DataFrame]) -> None:
    for frame in frames:
        result = store.ingest_frame(frame)
        assert result.rejected == []
        store.flush()


# -- merging ---------------------------------------------------------------------------------------------


def test_compaction_merges_small_files_into_one_file_per_day(
    store: MetricStore, make_frame: FrameFactory, noon: datetime
) -> None:
    days = [noon - timedelta(days=1), noon]
    frames = [
        make_frame(hosts=2, points=10, end=end - timedelta(minutes=15 * i), seed=10 * d + i)
        for d, end in enumerate(days)
        for i in range(6)
    ]
    # A series with values that are not exact decimals stays a double.
    frames.append(
        pl.DataFrame(
            {
                "ts": [noon - timedelta(seconds=s) for s in range(5)],
                "metric": ["ratio.third"] * 5,
                "value": [1 / 3, -0.0, 1e-300, 2.0**60, 7.1],
            }
        )
    )
    ingest_in_small_files(store, frames)
    lake = store.lake
    before = {end.date(): read_day(lake, end.date()) for end in days}
    sizes = {
        end.date(): sum(f.path.stat().st_size for f in lake.files("samples", end.date(), end.date())) for end in days
    }
    counts = {end.date(): len(lake.files("samples", end.date(), end.date())) for end in days}
    assert counts == {days[0].date(): 6, days[1].date(): 7}
    assert len(lake.flat_files(SERIES_TABLE)) > 1

    results = store.compact(validate=False)

    assert [r.day for r in results] == [d.date() for d in days]
    for result in results:
        day = result.day
        [merged] = lake.files("samples", day, day)
        assert merged.compacted
        assert result.files_before == counts[day]
        assert result.files_after == 1
        assert result.rows == before[day].height
        assert result.bytes_before == sizes[day]
        assert result.bytes_after == merged.path.stat().st_size
        assert result.skipped_files == 0
        assert result.quarantined == 0
        after = read_day(lake, day)
        assert canonical(after).equals(canonical(before[day]))  # same rows, values bit for bit
        raw = pl.read_parquet(merged.path)
        assert raw.select(list(SORT_KEY)).equals(raw.select(list(SORT_KEY)).sort(list(SORT_KEY)))
        for table in ROLLUP_TABLES:
            assert [f.name for f in lake.files(table, day, day)] == [merged.name]
        assert covered_days(lake, "rollups_1m", [day]) == {day}
        assert not needs_compaction(lake, day)
    stored = pl.read_parquet(lake.files("samples", noon.date(), noon.date())[0].path)
    by_metric = stored.group_by("metric").agg(pl.col("value_int").is_not_null().all().alias("as_int"))
    assert dict(by_metric.iter_rows()) == {"cpu.usage": True, "mem.usage": True, "ratio.third": False}
    assert len(lake.flat_files(SERIES_TABLE)) == 1  # the catalog is merged too
    catalog = pl.read_parquet(lake.flat_files(SERIES_TABLE)[0])
    assert catalog.get_column("series_id").n_unique() == catalog.height == 5


def test_a_second_compaction_with_nothing_new_does_nothing(
    store: MetricStore, make_frame: FrameFactory, noon: datetime
) -> None:
    ingest_in_small_files(store, [make_frame(hosts=1, points=5, end=noon - timedelta(minutes=i)) for i in range(3)])
    assert len(store.compact(validate=False)) == 1
    [merged] = store.lake.files("samples")

    assert store.compact(validate=False) == []
    assert compact_day(store.lake, noon.date(), wal_root=store.settings.wal_dir, validate=False) is None
    assert store.lake.files("samples") == [merged]

    ingest_in_small_files(store, [make_frame(hosts=1, points=2, end=noon + timedelta(hours=1))])  # something new
    [again] = store.compact(validate=False)
    assert again.files_before == 2
    assert again.rows == 3 * 10 + 4
    assert compact(store.lake, wal_root=store.settings.wal_dir, days=[date(2001, 1, 1)], validate=False) == []


def test_an_empty_lake_compacts_to_nothing(store: MetricStore) -> None:
    assert store.compact(validate=False) == []
    assert rebuild_rollups(store.lake, wal_root=store.settings.wal_dir) == []


def test_files_whose_wal_segment_still_exists_are_skipped(
    store: MetricStore, make_frame: FrameFactory, noon: datetime
) -> None:
    ingest_in_small_files(
        store, [make_frame(hosts=1, points=5, end=noon - timedelta(minutes=i), seed=i) for i in range(4)]
    )
    lake = store.lake
    files = lake.files("samples")
    total = read_day(lake, noon.date()).height
    writer_id, seq = parse_sample_file_name(files[1].name)  # type: ignore[misc]
    pending = store.settings.wal_dir / writer_id / segment_name(seq)
    pending.write_bytes(b"")  # the writer (or a recovering one) has not finished with this file yet

    [result] = store.compact(validate=False)

    assert result.skipped_files == 1
    assert result.files_before == 3
    assert result.rows == total - 10
    names = [f.name for f in lake.files("samples")]
    assert files[1].name in names
    assert len(names) == 2
    assert read_day(lake, noon.date()).height == total  # nothing lost, nothing counted twice
    assert covered_days(lake, "rollups_1m", [noon.date()]) == set()  # the day's rollups miss the pending file

    pending.unlink()
    [result] = store.compact(validate=False)
    assert result.skipped_files == 0
    assert result.files_before == 2
    assert result.rows == total
    assert len(lake.files("samples")) == 1
    assert covered_days(lake, "rollups_1h", [noon.date()]) == {noon.date()}


def test_rebuild_rollups_rebuilds(store: MetricStore, make_frame: FrameFactory, noon: datetime) -> None:
    ingest_in_small_files(store, [make_frame(hosts=2, points=30, end=noon - timedelta(hours=i)) for i in range(3)])
    store.compact(validate=False)
    lake = store.lake
    day = noon.date()
    rollups = {table: read_day(lake, day, table).sort("series_id", "ts") for table in ROLLUP_TABLES}
    samples = canonical(read_day(lake, day))
    for table in ROLLUP_TABLES:
        for f in lake.files(table):
            f.path.unlink()
    assert needs_compaction(lake, day)

    [result] = rebuild_rollups(lake, wal_root=store.settings.wal_dir)

    assert result.day == day
    assert result.rows == samples.height
    for table in ROLLUP_TABLES:
        # Float sums may differ in the last bit: polars sums a many-chunk frame (the small files) chunk by chunk.
        assert_frame_equal(read_day(lake, day, table).sort("series_id", "ts"), rollups[table], rel_tol=1e-12)
    assert canonical(read_day(lake, day)).equals(samples)
    assert not needs_compaction(lake, day)
    # A rebuild is forced even when nothing changed (metrics reindex).
    assert [r.day for r in store.reindex()] == [day]
    assert canonical(read_day(lake, day)).equals(samples)


def test_an_unreadable_file_is_moved_to_quarantine_and_the_rest_compacted(
    store: MetricStore, make_frame: FrameFactory, noon: datetime
) -> None:
    frames = [make_frame(hosts=1, points=5, end=noon - timedelta(minutes=i), seed=i) for i in range(3)]
    ingest_in_small_files(store, frames)
    lake, day = store.lake, noon.date()
    files = lake.files("samples", day, day)
    good = pl.concat([read_day_file(f.path) for f in (files[0], files[2])])
    broken = files[1].path
    broken.write_bytes(b"PAR1 this is not a parquet file PAR1")

    [result] = store.compact(validate=False)

    assert [name.split(":")[0] for name in result.corrupt_files] == [broken.name]
    assert result.rows == good.height
    assert canonical(read_day(lake, day)).equals(canonical(good))
    folder = lake.partition_dir(QUARANTINE, day)
    assert (folder / f"corrupt-{broken.name}").read_bytes() == b"PAR1 this is not a parquet file PAR1"
    assert broken.name in (folder / f"corrupt-{broken.name}.reason.txt").read_text(encoding="utf-8")
    assert [f.compacted for f in lake.files("samples")] == [True]


def read_day_file(path: Path) -> pl.DataFrame:
    return decode_values(pl.read_parquet(path))


# -- rollups -----------------------------------------------------------------------------------------------


def expected_rollups(samples: pl.DataFrame, width: int) -> dict[tuple[int, datetime], dict[str, Any]]:
    """Rollups computed the slow, obvious way: group rows by (series, bucket) in Python."""
    groups: dict[tuple[int, datetime], list[tuple[datetime, float]]] = defaultdict(list)
    for sid, ts, value in samples.select("series_id", "ts", "value").iter_rows():
        start = datetime.fromtimestamp(int(ts.timestamp()) // width * width, UTC)
        groups[(sid, start)].append((ts, value))
    out = {}
    for key, rows in groups.items():
        rows.sort()
        values = [v for _, v in rows]
        increase = 0.0
        for previous, value in pairwise(values):
            increase += value - previous if value >= previous else value  # a drop is a counter reset
        out[key] = {
            "count": len(values),
            "sum": math.fsum(values),
            "min": min(values),
            "max": max(values),
            "first": values[0],
            "last": values[-1],
            "last_ts": rows[-1][0],
            "increase": increase,
        }
    return out


def test_rollups_agree_with_a_recomputation(store: MetricStore, noon: datetime) -> None:
    start = noon - timedelta(hours=2, seconds=13)
    rng = np.random.default_rng(7)
    steps = 1500  # every 7 s: a bit under 3 hours, crossing hour and minute boundaries off-grid
    counter = np.cumsum(rng.integers(0, 50, steps)).astype(float)
    counter[700:] -= counter[699] - 3.0  # a counter reset mid-way: drops to 3 and keeps climbing
    counter[1100] = 0.0  # and a reset to zero for one sample inside a minute
    frame = pl.DataFrame(
        {
            "ts": [start + timedelta(seconds=7 * i) for i in range(steps)] * 2,
            "metric": ["http.requests"] * steps + ["temp.c"] * steps,
            "type": ["counter"] * steps + ["gauge"] * steps,
            "value": np.concatenate([counter, np.round(rng.normal(20, 5, steps), 2)]),
            "host": ["a"] * (2 * steps),
        }
    )
    assert (np.diff(counter) < 0).sum() >= 2
    ingest_in_small_files(store, [frame[:1000], frame[1000:2200], frame[2200:]])
    store.compact(validate=False)
    samples = read_day(store.lake, noon.date())
    assert samples.height == 2 * steps
    assert sorted(samples.get_column("value").to_list()) == sorted(frame.get_column("value").to_list())

    for table, width in ROLLUP_TABLES.items():
        rollup = read_day(store.lake, noon.date(), table)
        expected = expected_rollups(samples, width)
        assert rollup.height == len(expected)
        assert rollup.get_column("count").sum() == samples.height
        for row in rollup.iter_rows(named=True):
            want = expected[(row["series_id"], row["ts"])]
            for column in ("count", "min", "max", "first", "last", "last_ts"):
                assert row[column] == want[column], (table, column, row)
            assert row["sum"] == pytest.approx(want["sum"], rel=1e-12, abs=1e-9)
            assert row["increase"] == pytest.approx(want["increase"], rel=1e-12, abs=1e-9)
        # Whole-range increase = increases inside buckets + steps from each bucket's last to the next one's first.
        counter_rows = rollup.filter(pl.col("metric") == "http.requests").sort("ts")
        firsts, lasts = counter_rows.get_column("first").to_list(), counter_rows.get_column("last").to_list()
        combined = float(counter_rows.get_column("increase").sum()) + increase(
            [v for pair in zip(lasts[:-1], firsts[1:], strict=True) for v in pair], pairs_only=True
        )
        assert combined == pytest.approx(increase(counter.tolist()), rel=1e-12)


def increase(values: list[float], *, pairs_only: bool = False) -> float:
    """Counter increase over consecutive values (a drop is a reset); ``pairs_only``: only within (a, b) pairs."""
    steps = zip(values[::2], values[1::2], strict=True) if pairs_only else pairwise(values)
    return sum(b - a if b >= a else b for a, b in steps)


# -- quarantine (Great Expectations: slow to import) --------------------------------------------------------


@pytest.mark.slow
def test_duplicates_and_out_of_range_percentages_are_quarantined(store: MetricStore, noon: datetime) -> None:
    usage = pl.DataFrame(
        {
            "ts": [noon - timedelta(seconds=10 * i) for i in range(4)],
            "metric": ["cpu.usage_percent"] * 4,
            "value": [50.0, 150.0, 0.0, 100.0],
            "host": ["a"] * 4,
        }
    )
    memory = pl.DataFrame(
        {
            "ts": [noon - timedelta(seconds=10 * i) for i in range(5)],
            "metric": ["mem.used"] * 5,
            "value": [1.0, 2.0, 3.0, 4.0, 5.0],
            "host": ["a"] * 5,
        }
    )
    resent = memory[1:4]  # three samples sent twice
    ingest_in_small_files(store, [usage, memory, resent])
    lake = store.lake
    day = noon.date()

    [result] = store.compact(validate=True)

    assert result.quarantined == 4  # three duplicates and one percentage of 150
    assert result.rows == 8
    assert result.validation["bad_rows"] == 4
    kept = read_day(lake, day)
    assert kept.height == 8
    assert kept.group_by("series_id", "ts").len().get_column("len").max() == 1
    assert sorted(kept.filter(pl.col("metric") == "cpu.usage_percent").get_column("value").to_list()) == [
        0.0,
        50.0,
        100.0,
    ]
    assert sorted(kept.filter(pl.col("metric") == "mem.used").get_column("value").to_list()) == [
        1.0,
        2.0,
        3.0,
        4.0,
        5.0,
    ]

    folder = lake.partition_dir(QUARANTINE, day)
    assert folder == store.settings.lake_dir / "quarantine" / f"date={day.isoformat()}"
    [bad_file] = sorted(folder.glob("*.parquet"))
    [report_file] = sorted(folder.glob("*.json"))
    assert bad_file.stem == report_file.stem
    assert lake.files("samples")[0].name == f"c-{bad_file.stem}.parquet"  # named after the compaction generation
    report = json.loads(report_file.read_text(encoding="utf-8"))
    assert report["bad_rows"] == 4
    bad = pl.read_parquet(bad_file)
    assert bad.height == 4
    reasons = sorted(bad.get_column("reason").to_list())
    assert sum("duplicate" in r for r in reasons) == 3
    assert sum("percent" in r for r in reasons) == 1
    assert bad.filter(pl.col("reason").str.contains("percent")).get_column("value").to_list() == [150.0]
    assert read_day(lake, day, "rollups_1m").get_column("count").sum() == 8

    assert store.compact(validate=True) == []  # nothing new: no second run of the suite


# -- compaction while other processes query and write ---------------------------------------------------------

QUERY_CHILD = textwrap.dedent(
    """
    import json, sys, time
    from datetime import datetime
    from pathlib import Path
    from storage.lake import Lake
    from storage.query import QueryEngine

    lake_dir, stop, start, end = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3], sys.argv[4]
    start, end = datetime.fromisoformat(start), datetime.fromisoformat(end)
    engine = QueryEngine(Lake(lake_dir))
    counts, errors = [], []
    began = time.monotonic()
    print("ready", flush=True)
    for _ in range(200):
        if stop.exists() or time.monotonic() - began > 10:
            break
        try:
            raw = engine.query_metrics("*", start, end).height
            tagged = engine.query_metrics("load.*", start, end, tags={"host": "h0"}).height
            viewed = engine.sql("SELECT count(*) AS n FROM samples").item()
            counts.append([raw, tagged, viewed])
        except Exception as exc:
            errors.append(repr(exc))
        time.sleep(0.01)
    engine.close()
    print(json.dumps({"counts": counts, "errors": errors}), flush=True)
    """
)

WRITE_CHILD = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, timedelta
    from pathlib import Path
    import polars as pl
    from metrics.settings import Settings
    from storage.store import MetricStore

    data_dir, base, batches = Path(sys.argv[1]), datetime.fromisoformat(sys.argv[2]), int(sys.argv[3])
    store = MetricStore(Settings(data_dir=data_dir, batch_size=100, flush_seconds=60)).open(background_flush=False)
    print("ready", flush=True)
    for i in range(batches):
        size = 120 if i % 4 == 3 else 20  # every fourth batch is written directly, the others through the WAL
        frame = pl.DataFrame({
            "ts": [base + timedelta(seconds=i, microseconds=j) for j in range(size)],
            "metric": [f"load.m{j % 2}" for j in range(size)],
            "value": [float(i * 1000 + j) for j in range(size)],
            "host": [f"h{j % 3}" for j in range(size)],
        })
        assert store.ingest_frame(frame).stored == size
        store.flush()
        print("ack", size, flush=True)
        time.sleep(0.03)
    store.close()
    print("done", flush=True)
    """
)


def spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


@pytest.mark.slow
@pytest.mark.integration
def test_compaction_while_another_process_queries_and_writes(
    settings: Settings, noon: datetime, tmp_path: Path
) -> None:
    lake = Lake(settings.lake_dir)
    seed = MetricStore(settings).open(background_flush=False)
    try:
        frames = [
            pl.DataFrame(
                {
                    "ts": [noon - timedelta(hours=1, seconds=i, microseconds=j) for j in range(30)],
                    "metric": ["load.m0"] * 30,
                    "value": [float(j) for j in range(30)],
                    "host": [f"h{j % 3}" for j in range(30)],
                }
            )
            for i in range(8)
        ]
        ingest_in_small_files(seed, frames)
    finally:
        seed.close()
    initial = 8 * 30
    stop = tmp_path / "stop"
    query_range = ((noon - timedelta(days=2)).isoformat(), (datetime.now(UTC) + timedelta(hours=1)).isoformat())
    reader = spawn(QUERY_CHILD, str(settings.lake_dir), str(stop), *query_range)
    writer = spawn(WRITE_CHILD, str(settings.data_dir), noon.isoformat(), "40")
    compactions = 0
    try:
        assert reader.stdout is not None
        assert writer.stdout is not None
        assert reader.stdout.readline().strip() == "ready", reader.stderr.read() if reader.stderr else ""
        deadline = time.monotonic() + 30
        while writer.poll() is None and time.monotonic() < deadline:
            compactions += len(compact(lake, wal_root=settings.wal_dir, validate=False))
        writer_out, writer_err = writer.communicate(timeout=30)
        assert writer.returncode == 0, writer_err
        compactions += len(compact(lake, wal_root=settings.wal_dir, validate=False))
        time.sleep(0.2)  # let the reader see the final state
        stop.touch()
        reader_out, reader_err = reader.communicate(timeout=30)
        assert reader.returncode == 0, reader_err
    finally:
        for proc in (reader, writer):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()

    written = initial + sum(int(line.split()[1]) for line in writer_out.splitlines() if line.startswith("ack "))
    assert written == initial + 10 * 120 + 30 * 20
    outcome = json.loads(reader_out.strip().splitlines()[-1])
    assert outcome["errors"] == []
    counts = outcome["counts"]
    assert len(counts) >= 5
    assert compactions >= 2
    # Each round queried the file list (raw), then the tag-filtered rows, then the view: in that order of time.
    in_time_order = [count for raw, _, viewed in counts for count in (raw, viewed)]
    assert all(b >= a for a, b in pairwise(in_time_order)), in_time_order  # never decreasing
    tagged = [row[1] for row in counts]
    assert all(b >= a for a, b in pairwise(tagged)), tagged
    assert max(in_time_order) <= written  # never double counted
    tagged_total = sum(1 for j in range(30) if j % 3 == 0) * 8 + sum(
        sum(1 for j in range(120 if i % 4 == 3 else 20) if j % 3 == 0) for i in range(40)
    )
    assert max(row[1] for row in counts) <= tagged_total
    final = MetricStore(settings, read_only=True).open()
    try:
        assert final.sql("SELECT count(*) AS n FROM samples").item() == written
        assert final.sql("SELECT count(*) AS n FROM (SELECT DISTINCT series_id, ts FROM samples)").item() == written
    finally:
        final.close()


# -- two compactions at once ------------------------------------------------------------------------------------


def test_two_compactions_of_the_same_day_never_double_count(
    store: MetricStore, make_frame: FrameFactory, noon: datetime
) -> None:
    ingest_in_small_files(store, [make_frame(hosts=1, points=5, end=noon - timedelta(minutes=i)) for i in range(4)])
    lake, day = store.lake, noon.date()
    total = read_day(lake, day).height
    partition = lake.partition_dir("samples", day)
    errors: list[BaseException] = []

    def compactor() -> None:
        try:
            compact_day(lake, day, wal_root=store.settings.wal_dir, validate=False)
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=compactor) for _ in range(2)]
    with lake.exclusive():  # hold every swap back until both compactors have done their reading
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 3
        while time.monotonic() < deadline and len(list(partition.glob("*.parquet.tmp"))) < 2:
            time.sleep(0.01)
    for thread in threads:
        thread.join(timeout=30)
    assert errors == []
    assert read_day(lake, day).height == total


# -- the sql() views close what they open ----------------------------------------------------------------------


def test_sql_closes_its_directory_iterators(store: MetricStore, make_frame: FrameFactory, noon: datetime) -> None:
    ingest_in_small_files(store, [make_frame(hosts=1, points=3, end=noon)])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert store.sql("SELECT count(*) AS n FROM samples").item() == 6
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


# -- the lake round trip, property-based ------------------------------------------------------------------------

METRICS = ["a", "b.c", "cpu.usage_percent", "x_1:y", "Z"]
TAG_KEYS = ["host", "dc", "k-1", "_z", "a.b"]
TYPES = ["gauge", "counter", "histogram", "summary"]
DAY_US = 86_400_000_000

sample_rows = st.lists(
    st.tuples(
        st.sampled_from(METRICS),
        st.dictionaries(st.sampled_from(TAG_KEYS), st.text(max_size=6), max_size=3),
        st.integers(0, DAY_US - 60_000_000),  # microseconds into the last day
        st.floats(allow_nan=False, allow_infinity=False),
        st.sampled_from(TYPES),
    ),
    min_size=1,
    max_size=40,
)


def value_bits(value: float) -> int:
    return struct.unpack("<q", struct.pack("<d", value))[0]


@pytest.mark.slow
@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=sample_rows)
def test_ingest_flush_compact_query_gives_back_the_same_samples(rows: list[tuple[str, dict, int, float, str]]) -> None:
    now = datetime.now(UTC)
    oldest = now - timedelta(days=1)
    points = [
        {
            "metric_id": metric,
            "value": value,
            "metric_type": kind,
            "timestamp": oldest + timedelta(microseconds=offset),
            "tags": tags,
        }
        for metric, tags, offset, value, kind in rows
    ]
    expected = sorted(
        (metric, canonical_tags(tags), oldest + timedelta(microseconds=offset), value_bits(value), kind)
        for metric, tags, offset, value, kind in rows
    )
    with tempfile.TemporaryDirectory() as folder:
        settings = Settings(data_dir=Path(folder) / "data", batch_size=10_000, flush_seconds=60)
        store = MetricStore(settings).open(background_flush=False)
        try:
            half = len(points) // 2
            for part in (points[:half], points[half:]):
                if part:
                    result = store.ingest_points(part)
                    assert result.rejected == []
                    store.flush()
            store.compact(validate=False)
            got = store.query_metrics("*", now - timedelta(days=2), now + timedelta(hours=1))
        finally:
            store.close()
    actual = sorted(
        (m, t, ts, value_bits(v), kind)
        for m, t, ts, v, kind in got.select("metric", "tags", "ts", "value", "type").iter_rows()
    )
    assert actual == expected


def test_compaction_finishes_a_swap_a_dead_compaction_left_before_merging(
    store: MetricStore, make_frame: FrameFactory, noon: datetime
) -> None:
    ingest_in_small_files(store, [make_frame(hosts=1, points=5, end=noon - timedelta(minutes=i)) for i in range(3)])
    lake, day = store.lake, noon.date()
    total = read_day(lake, day).height
    inputs = [f.path for f in lake.files("samples", day, day)]
    merged = read_day(lake, day)
    # A compaction staged its file, wrote its journal and renamed the new file, then died before deleting inputs.
    staged = lake.stage("samples", day, decimal_values(merged.select(SAMPLE_COLUMNS)).to_arrow(), "c-dead.parquet")
    lake._write_journal([staged], inputs)
    staged.rename(staged.with_name("c-dead.parquet"))
    compact_day(lake, day, wal_root=store.settings.wal_dir, validate=False, force=True)
    assert read_day(lake, day).height == total


def test_compaction_leaves_files_of_an_unfinished_bulk_write_alone(
    store: MetricStore, make_frame: FrameFactory, noon: datetime
) -> None:
    from storage.wal import intent_name

    ingest_in_small_files(store, [make_frame(hosts=1, points=5, end=noon)])
    lake, day = store.lake, noon.date()
    [item] = lake.files("samples", day, day)
    writer_id, seq = parse_sample_file_name(item.name)  # type: ignore[misc]
    folder = store.settings.wal_dir / writer_id
    folder.mkdir(parents=True, exist_ok=True)
    (folder / intent_name(seq)).touch()  # as if its bulk write were still running
    result = compact_day(lake, day, wal_root=store.settings.wal_dir, validate=False)
    assert result is None or result.skipped_files == 1
    assert [f.name for f in lake.files("samples", day, day)] == [item.name]

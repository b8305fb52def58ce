"""Tests of storage.writer: WAL-backed buffering, flushing, direct bulk writes, the series catalog and crash recovery.

Real files in tmp_path and real processes (kill -9), no mocks.
"""

from __future__ import annotations

import inspect
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from metrics.errors import StorageError
from metrics.model import SORT_KEY, SampleBatch, prepare_frame
from metrics.settings import Settings
from storage.compaction import compact
from storage.encoding import decode_values
from storage.lake import SERIES_TABLE, Lake
from storage.store import MetricStore
from storage.wal import LOCK_NAME, read_segment, segment_name, segments
from storage.writer import Writer, parse_sample_file_name, sample_file_name

FrameFactory = Any


def validated(frame: pl.DataFrame) -> SampleBatch:
    batch = prepare_frame(frame, now=datetime.now(UTC), retention_days=90)
    assert batch.rejected == []
    return batch


@pytest.fixture
def writer(settings: Settings) -> Iterator[Writer]:
    opened = Writer(settings, writer_id="tw")
    opened.open(background_flush=False)
    try:
        yield opened
    finally:
        opened.close()


def lake_rows(settings: Settings) -> pl.DataFrame:
    files = sorted((settings.lake_dir / "samples").glob("*/*.parquet"))
    if not files:
        return pl.DataFrame()
    return decode_values(pl.read_parquet([str(f) for f in files]))


def sample_file_names(settings: Settings) -> list[str]:
    return sorted(p.name for p in (settings.lake_dir / "samples").glob("*/*.parquet"))


def same_rows(actual: pl.DataFrame, expected: pl.DataFrame) -> bool:
    columns = ["metric", "series_id", "ts", "value", "type", "tags"]
    a = actual.select(columns).with_columns(pl.col("metric", "type", "tags").cast(pl.String)).sort(columns)
    e = expected.select(columns).with_columns(pl.col("metric", "type", "tags").cast(pl.String)).sort(columns)
    return a.equals(e)


# -- buffering and flushing ------------------------------------------------------------------------


def test_small_batches_go_to_the_wal_until_flush(
    writer: Writer, settings: Settings, make_frame: FrameFactory, noon: datetime
) -> None:
    first = validated(make_frame(hosts=1, points=5, end=noon))
    second = validated(make_frame(hosts=2, points=3, end=noon - timedelta(minutes=5), seed=2))

    assert writer.write(first) == 10
    assert writer.write(second) == 12

    assert writer.buffered_rows == 22
    assert sample_file_names(settings) == []  # nothing in the lake yet
    [segment] = segments(writer.wal.folder)
    assert segment.name == segment_name(1)
    assert writer.wal_bytes() == segment.stat().st_size > 0
    replayed = read_segment(segment, writer.wal.schema)
    assert replayed.error is None
    assert replayed.batches == 2
    assert replayed.table is not None
    assert replayed.table.num_rows == 22

    assert writer.flush() == 22

    assert writer.buffered_rows == 0
    assert segments(writer.wal.folder) == []
    assert sample_file_names(settings) == [sample_file_name("tw", 1)]
    assert (settings.lake_dir / "samples" / f"date={noon.date()}" / sample_file_name("tw", 1)).is_file()
    assert same_rows(lake_rows(settings), pl.concat([first.frame, second.frame]))
    assert writer.flush() == 0  # nothing buffered
    assert writer.stats.rows_written == 22
    assert writer.stats.files_written == 1
    assert writer.stats.flushes == 1


def test_the_background_flusher_flushes_by_time(settings: Settings, make_frame: FrameFactory, noon: datetime) -> None:
    assert settings.flush_seconds == 0.2
    timed = Writer(settings, writer_id="timed")
    timed.open(background_flush=True)
    try:
        batch = validated(make_frame(hosts=1, points=4, end=noon))
        timed.write(batch)
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and (timed.buffered_rows or segments(timed.wal.folder)):
            time.sleep(0.02)
        assert timed.buffered_rows == 0
        assert segments(timed.wal.folder) == []
        assert sample_file_names(settings) == [sample_file_name("timed", 1)]
        assert same_rows(lake_rows(settings), batch.frame)
    finally:
        timed.close()


def test_reaching_batch_size_flushes(settings: Settings, make_frame: FrameFactory, noon: datetime) -> None:
    small = Writer(replace(settings, batch_size=50), writer_id="bs")
    small.open(background_flush=False)
    try:
        batches = [validated(make_frame(hosts=2, points=5, end=noon - timedelta(minutes=i), seed=i)) for i in range(3)]
        assert [b.stored for b in batches] == [20, 20, 20]
        small.write(batches[0])
        small.write(batches[1])
        assert small.buffered_rows == 40
        assert sample_file_names(settings) == []
        small.write(batches[2])  # 60 >= 50
        assert small.buffered_rows == 0
        assert segments(small.wal.folder) == []
        assert sample_file_names(settings) == [sample_file_name("bs", 1)]
        assert same_rows(lake_rows(settings), pl.concat([b.frame for b in batches]))
        small.write(batches[0])  # the next segment gets the next number
        assert [p.name for p in segments(small.wal.folder)] == [segment_name(2)]
    finally:
        small.close()


def test_a_bulk_frame_is_written_directly(settings: Settings, make_frame: FrameFactory, noon: datetime) -> None:
    bulk_writer = Writer(replace(settings, batch_size=50), writer_id="bulk")
    bulk_writer.open(background_flush=False)
    try:
        small = validated(make_frame(hosts=1, points=3, end=noon - timedelta(hours=1)))
        bulk = validated(make_frame(hosts=5, points=6, end=noon))
        assert bulk.stored == 60

        bulk_writer.write(small)  # opens segment 1
        assert bulk_writer.write(bulk) == 60

        assert [p.name for p in segments(bulk_writer.wal.folder)] == [segment_name(1)]  # only the small batch
        assert bulk_writer.buffered_rows == 6
        assert sample_file_names(settings) == [sample_file_name("bulk", 2)]
        assert same_rows(lake_rows(settings), bulk.frame)

        bulk_writer.flush()
        assert sample_file_names(settings) == [sample_file_name("bulk", 1), sample_file_name("bulk", 2)]
        assert same_rows(lake_rows(settings), pl.concat([small.frame, bulk.frame]))
    finally:
        bulk_writer.close()
    assert not (settings.wal_dir / "bulk").exists()  # a clean close removes the empty WAL folder


def test_a_bulk_frame_alone_leaves_no_wal_segment(settings: Settings, make_frame: FrameFactory, noon: datetime) -> None:
    bulk_writer = Writer(replace(settings, batch_size=10), writer_id="only_bulk")
    bulk_writer.open(background_flush=False)
    try:
        bulk_writer.write(validated(make_frame(hosts=2, points=10, end=noon)))
        assert segments(bulk_writer.wal.folder) == []
        assert sorted(p.name for p in bulk_writer.wal.folder.iterdir()) == [LOCK_NAME]
        assert len(sample_file_names(settings)) == 1
    finally:
        bulk_writer.close()


def is_lake_sorted(frame: pl.DataFrame) -> bool:
    return frame.equals(frame.sort(list(SORT_KEY), maintain_order=True))


@pytest.mark.parametrize("batch_size", [10_000, 30], ids=["wal-flush", "direct"])
def test_files_are_sorted_by_metric_series_and_time(
    settings: Settings, make_frame: FrameFactory, noon: datetime, batch_size: int
) -> None:
    sorted_writer = Writer(replace(settings, batch_size=batch_size), writer_id="sorted")
    sorted_writer.open(background_flush=False)
    try:
        # Batches arrive out of order: later times first, metric names not in order.
        for i, metrics in enumerate([("z.last", "b.mid"), ("a.first", "z.last"), ("b.mid", "a.first")]):
            frame = make_frame(metrics=metrics, hosts=3, points=6, end=noon - timedelta(minutes=10 * i), seed=i)
            sorted_writer.write(validated(frame.reverse()))
        sorted_writer.flush()
        files = sorted((settings.lake_dir / "samples").glob("*/*.parquet"))
        assert len(files) == (1 if batch_size == 10_000 else 3)
        for path in files:
            content = pl.read_parquet(path)
            assert content.height > 0
            assert is_lake_sorted(content), path.name
    finally:
        sorted_writer.close()


def test_a_flush_spanning_two_days_writes_one_file_per_day(writer: Writer, settings: Settings) -> None:
    midnight = (datetime.now(UTC) - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    frame = pl.DataFrame(
        {
            "ts": [midnight + timedelta(seconds=s) for s in (-20, -10, 0, 10, -5)],
            "metric": ["d.m"] * 5,
            "value": [1.0, 2.0, 3.0, 4.0, 5.0],
            "host": ["a", "a", "a", "a", "b"],
        }
    )
    writer.write(validated(frame))
    writer.flush()
    before, after = f"date={(midnight - timedelta(days=1)).date()}", f"date={midnight.date()}"
    name = sample_file_name("tw", 1)
    day_before = pl.read_parquet(settings.lake_dir / "samples" / before / name)
    day_of = pl.read_parquet(settings.lake_dir / "samples" / after / name)
    assert sorted(day_before.get_column("value").to_list()) == [1.0, 2.0, 5.0]
    assert sorted(day_of.get_column("value").to_list()) == [3.0, 4.0]
    assert is_lake_sorted(day_before)
    assert is_lake_sorted(day_of)


def test_the_series_catalog_gets_each_series_once(settings: Settings, make_frame: FrameFactory, noon: datetime) -> None:
    catalog_writer = Writer(settings, writer_id="cat")
    catalog_writer.open(background_flush=False)
    expected: set[int] = set()
    try:
        for i, hosts in enumerate([2, 3, 3, 1]):  # later flushes repeat earlier series and add new ones
            batch = validated(make_frame(hosts=hosts, points=3, end=noon - timedelta(minutes=i), seed=i))
            expected |= set(batch.frame.get_column("series_id").to_list())
            catalog_writer.write(batch)
            catalog_writer.flush()
    finally:
        catalog_writer.close()
    restarted = Writer(settings, writer_id="cat2")  # a new process knows the catalog from the lake
    restarted.open(background_flush=False)
    try:
        batch = validated(make_frame(hosts=4, points=2, end=noon + timedelta(minutes=5)))
        expected |= set(batch.frame.get_column("series_id").to_list())
        restarted.write(batch)
        restarted.flush()
    finally:
        restarted.close()

    files = sorted((settings.lake_dir / SERIES_TABLE).glob("*.parquet"))
    catalog = pl.read_parquet([str(f) for f in files])
    ids = catalog.get_column("series_id").to_list()
    assert len(ids) == len(set(ids)) == len(expected) == 8  # 2 metrics x 4 hosts
    assert set(ids) == expected
    assert len(files) == 3  # flushes that saw new series: hosts 2, then 3, then 4
    assert catalog.filter(pl.col("metric") == "cpu.usage").get_column("tags").sort().to_list() == [
        f'{{"host":"host-{h}"}}' for h in range(4)
    ]


@pytest.mark.parametrize(
    ("name", "parsed"),
    [
        (sample_file_name("host_1_abc", 12), ("host_1_abc", 12)),
        ("w-a-b-000000000003.parquet", ("a-b", 3)),
        ("c-20240101T000000-abcd.parquet", None),
        ("w-000000000001.parquet", None),
        ("w-x-12a.parquet", None),
        ("w-x-1.parquet.tmp", None),
    ],
)
def test_parse_sample_file_name(name: str, parsed: tuple[str, int] | None) -> None:
    assert parse_sample_file_name(name) == parsed


@pytest.mark.parametrize("write_before_retry", [False, True], ids=["retry", "write-then-retry"])
def test_a_failed_flush_can_be_retried_without_duplicates(
    settings: Settings, noon: datetime, write_before_retry: bool
) -> None:
    def point(value: float) -> SampleBatch:
        return validated(
            pl.DataFrame({"ts": [noon + timedelta(seconds=value)], "metric": ["f.m"], "value": [value], "host": ["a"]})
        )

    failing = Writer(settings, writer_id="fail")
    failing.open(background_flush=False)
    blocker = settings.lake_dir / "samples" / f"date={noon.date()}"
    try:
        failing.write(point(1.0))
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("a file where the day's folder should be")  # the commit cannot create its folder
        with pytest.raises((OSError, StorageError)):
            failing.flush()
        assert failing.buffered_rows == 1  # kept for the next flush, and still in the WAL
        assert [p.name for p in segments(failing.wal.folder)] == [segment_name(1)]
        blocker.unlink()
        if write_before_retry:
            failing.write(point(2.0))  # goes to a new segment
            assert failing.flush() == 2
            # Rows of different segments never share a file: each segment has its own.
            assert sample_file_names(settings) == [sample_file_name("fail", 1), sample_file_name("fail", 2)]
        else:
            assert failing.flush() == 1
            failing.write(point(2.0))
            assert failing.flush() == 1
        assert segments(failing.wal.folder) == []
    finally:
        if blocker.is_file():
            blocker.unlink()
        failing.close()
    with open_store(settings) as restarted:
        counts = restarted.sql("SELECT value, count(*) AS n FROM samples GROUP BY value ORDER BY value")
    assert counts.rows() == [(1.0, 1), (2.0, 1)]


# -- recovery of dead writers (in process) -------------------------------------------------------


def dead_writer(settings: Settings, writer_id: str, batches: list[SampleBatch], flushed: int) -> list[int]:
    """A writer that flushed its first ``flushed`` batches, appended the rest to its WAL, then died.

    Returns the WAL file size after each unflushed append. The WAL lock is released as a dead process's would be.
    """
    doomed = Writer(settings, writer_id=writer_id)
    doomed.open(background_flush=False)
    for batch in batches[:flushed]:
        doomed.write(batch)
    doomed.flush()
    ends = []
    for batch in batches[flushed:]:
        doomed.write(batch)
        ends.append(doomed.wal_bytes())
    doomed.wal.close(remove_folder=False)  # what the kernel does for a killed process: the lock goes away
    return ends


@contextmanager
def open_store(settings: Settings) -> Iterator[MetricStore]:
    """A MetricStore opened like a restarted process would (recovery runs), background flusher off."""
    store = MetricStore(settings).open(background_flush=False)
    try:
        yield store
    finally:
        store.close()


def stored(store: MetricStore) -> pl.DataFrame:
    return store.sql("SELECT metric, series_id, ts, value, type, tags FROM samples")


def assert_no_duplicates(frame: pl.DataFrame) -> None:
    dup = frame.group_by("series_id", "ts").len().filter(pl.col("len") > 1)
    assert dup.height == 0, dup


def test_recovery_replays_a_dead_writers_wal(settings: Settings, make_frame: FrameFactory, noon: datetime) -> None:
    batches = [validated(make_frame(hosts=2, points=4, end=noon - timedelta(minutes=i), seed=i)) for i in range(4)]
    dead_writer(settings, "dead", batches, flushed=1)

    with open_store(settings) as store:
        assert store.recovery.folders == 1
        assert store.recovery.segments == 1
        assert store.recovery.rows == 48
        assert store.recovery.errors == []
        assert not (settings.wal_dir / "dead").exists()
        rows = stored(store)
        assert same_rows(rows, pl.concat([b.frame for b in batches]))
        assert_no_duplicates(rows)
    assert sample_file_names(settings) == [sample_file_name("dead", 1), sample_file_name("dead", 2)]


@pytest.mark.parametrize("compact_in_between", [False, True], ids=["twice", "twice-with-compaction"])
def test_a_replay_that_happens_twice_never_duplicates(
    settings: Settings, make_frame: FrameFactory, noon: datetime, tmp_path: Path, compact_in_between: bool
) -> None:
    batches = [validated(make_frame(hosts=3, points=5, end=noon - timedelta(minutes=i), seed=i)) for i in range(3)]
    expected = pl.concat([b.frame for b in batches])
    dead_writer(settings, "twice", batches, flushed=1)
    copy = tmp_path / "wal-copy"
    shutil.copytree(settings.wal_dir / "twice", copy)  # the WAL as it was before the first recovery

    with open_store(settings) as first:
        assert first.recovery.rows == 60
        assert same_rows(stored(first), expected)

    # The first recoverer "died before deleting the segments": the folder is back, its LOCK not held.
    shutil.copytree(copy, settings.wal_dir / "twice")
    if compact_in_between:
        # A compaction now must leave alone the file whose segment is back in the WAL.
        results = compact(Lake(settings.lake_dir), wal_root=settings.wal_dir, validate=False)
        assert [r.skipped_files for r in results] == [1]
        assert sample_file_names(settings)[-1] == sample_file_name("twice", 2)

    with open_store(settings) as second:
        assert second.recovery.rows == 60
        rows = stored(second)
        assert_no_duplicates(rows)
        assert same_rows(rows, expected)
        second.compact(validate=False)
        rows = stored(second)
        assert_no_duplicates(rows)
        assert same_rows(rows, expected)


def test_a_torn_wal_tail_keeps_whole_batches_and_reports(
    settings: Settings, make_frame: FrameFactory, noon: datetime
) -> None:
    batches = [validated(make_frame(hosts=2, points=3, end=noon - timedelta(minutes=i), seed=i)) for i in range(3)]
    ends = dead_writer(settings, "torn", batches, flushed=0)
    [segment] = segments(settings.wal_dir / "torn")
    with open(segment, "r+b") as handle:
        handle.truncate((ends[1] + ends[2]) // 2)  # the last append was cut short

    with open_store(settings) as store:
        report = store.recovery
        assert report.rows == 24
        assert report.segments == 1
        assert report.folders == 1
        [error] = report.errors
        assert error.startswith(f"torn/{segment.name}")
        assert "2 whole batches" in error
        rows = stored(store)
        assert same_rows(rows, pl.concat([b.frame for b in batches[:2]]))
    assert not (settings.wal_dir / "torn").exists()


def test_a_live_writers_wal_is_not_replayed(settings: Settings, make_frame: FrameFactory, noon: datetime) -> None:
    live = Writer(settings, writer_id="live")
    live.open(background_flush=False)
    try:
        live.write(validated(make_frame(hosts=1, points=2, end=noon)))
        with open_store(settings) as other:
            assert other.recovery.folders == 0
            assert segments(live.wal.folder) != []
            assert other.sql("SELECT count(*) AS n FROM samples").item() == 0
    finally:
        live.close()


# -- crash recovery with kill -9 -----------------------------------------------------------------------

CRASH_BATCH_SIZE = 40


def batch_rows(i: int, base: datetime) -> list[dict[str, object]]:
    """The rows of batch ``i`` (the same function runs in the writer process): unique (series, ts) and value."""
    size = 45 if i % 5 == 4 else 1 + i % 7  # every fifth batch is bulk (>= the batch size): written directly
    return [
        {
            "metric_id": f"crash.m{j % 3}",
            "value": i * 1000.0 + j + 0.25,
            "metric_type": "counter" if j % 3 == 0 else "gauge",
            "timestamp": base + timedelta(seconds=i, milliseconds=j),
            "tags": {"host": f"h{j % 4}"},
        }
        for j in range(size)
    ]


CHILD = (
    "import sys\n"
    "from datetime import datetime, timedelta\n"
    "from pathlib import Path\n"
    "import polars as pl\n"
    "from metrics.settings import Settings\n"
    "from storage.store import MetricStore\n\n"
    + inspect.getsource(batch_rows)
    + textwrap.dedent(
        f"""
        data_dir, base, total = Path(sys.argv[1]), datetime.fromisoformat(sys.argv[2]), int(sys.argv[3])
        settings = Settings(data_dir=data_dir, batch_size={CRASH_BATCH_SIZE}, flush_seconds=0.05)
        store = MetricStore(settings).open(background_flush=True)
        print("ready", flush=True)
        for i in range(total):
            rows = batch_rows(i, base)
            if len(rows) >= {CRASH_BATCH_SIZE}:
                frame = pl.DataFrame(
                    {{
                        "ts": [r["timestamp"] for r in rows],
                        "metric": [r["metric_id"] for r in rows],
                        "value": [r["value"] for r in rows],
                        "type": [r["metric_type"] for r in rows],
                        "host": [r["tags"]["host"] for r in rows],
                    }}
                )
                result = store.ingest_frame(frame)
            else:
                result = store.ingest_points(rows)
            assert result.stored == len(rows) and not result.rejected, result
            print("ack", i, flush=True)
        print("done", flush=True)
        """
    )
)


def expected_frame(batches: list[int], base: datetime) -> pl.DataFrame:
    rows = [
        {
            "batch": i,
            "metric": r["metric_id"],
            "value": r["value"],
            "type": r["metric_type"],
            "ts": r["timestamp"],
            "tags": '{"host":"' + r["tags"]["host"] + '"}',  # type: ignore[index]
        }
        for i in batches
        for r in batch_rows(i, base)
    ]
    return pl.DataFrame(rows, schema_overrides={"ts": pl.Datetime("us", "UTC")})


def run_until_killed(settings: Settings, base: datetime, acks_before_kill: int, log: Path) -> tuple[list[int], int]:
    """Start a writer process and SIGKILL it after ``acks_before_kill`` acknowledged batches; return the acked ones."""
    with open(log, "wb") as stderr:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, str(settings.data_dir), base.isoformat(), "5000"],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )
    guard = threading.Timer(60, proc.kill)  # never hang the suite
    guard.start()
    acked: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if line.startswith("ack "):
                acked.append(int(line.split()[1]))
                if len(acked) >= acks_before_kill:
                    os.kill(proc.pid, signal.SIGKILL)
                    break
        acked += [int(line.split()[1]) for line in proc.stdout.read().splitlines() if line.startswith("ack ")]
        returncode = proc.wait(timeout=30)
    finally:
        guard.cancel()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
    return acked, returncode


@pytest.mark.integration
@pytest.mark.parametrize("acks_before_kill", [1, 12, 70])
def test_every_acknowledged_sample_survives_kill_9(settings: Settings, tmp_path: Path, acks_before_kill: int) -> None:
    midnight = (datetime.now(UTC) - timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    base = midnight - timedelta(seconds=30)  # the batches cross midnight: multi-day flushes and direct writes
    acked, returncode = run_until_killed(settings, base, acks_before_kill, tmp_path / "child.err")
    assert returncode == -signal.SIGKILL, (tmp_path / "child.err").read_text()
    assert acked == list(range(len(acked)))
    assert len(acked) >= acks_before_kill
    in_flight = len(acked)  # the batch being written when the kill came: it may or may not be there

    with open_store(settings) as store:
        assert store.recovery.folders == 1
        rows = stored(store)
        assert_no_duplicates(rows)
        got = rows.select("metric", "tags", "ts", "value", "type")
        expected = expected_frame([*acked, in_flight], base)
        must = expected.filter(pl.col("batch") < in_flight).drop("batch")
        missing = must.join(got, on=list(must.columns), how="anti", nulls_equal=True)
        assert missing.height == 0, f"acknowledged rows lost after kill -9:\n{missing}"
        unexpected = got.join(expected.drop("batch"), on=list(must.columns), how="anti", nulls_equal=True)
        assert unexpected.height == 0, f"rows that were never written:\n{unexpected}"
        total = rows.height
        assert must.height <= total <= must.height + len(batch_rows(in_flight, base))

        store.compact(validate=False)  # what was recovered compacts without loss or duplicates
        after = stored(store)
        assert after.height == total
        assert_no_duplicates(after)
    assert [p.name for p in settings.wal_dir.iterdir()] == []  # the dead writer's folder is gone


# -- failures around acknowledgement (regressions from review) --------------------------------------------


class _FailingSink:
    """A file whose next write stores part of the frame and then fails like a full disk (ENOSPC).

    Disk exhaustion cannot be arranged portably in a test, so the failure is injected at the
    file object; everything else (fsync, truncate, replay) runs for real.
    """

    def __init__(self, real: Any) -> None:
        self._real = real
        self.armed = True

    def write(self, data: bytes) -> int:
        if self.armed:
            self.armed = False
            self._real.write(data[:100])
            self._real.flush()
            raise OSError(28, "No space left on device")
        return int(self._real.write(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def test_a_failed_wal_append_does_not_lose_later_acknowledged_batches(settings: Settings, noon: datetime) -> None:
    def point(value: float) -> SampleBatch:
        return validated(pl.DataFrame({"ts": [noon + timedelta(seconds=value)], "metric": ["w.m"], "value": [value]}))

    writer = Writer(settings, writer_id="enospc")
    writer.open(background_flush=False)
    writer.write(point(1.0))
    writer.wal._sink = _FailingSink(writer.wal._sink)  # type: ignore[assignment]
    with pytest.raises(StorageError, match="No space left"):
        writer.write(point(2.0))
    writer.write(point(3.0))  # acknowledged after the failure
    writer.write(point(4.0))
    writer.wal.close(remove_folder=False)  # the process dies: nothing flushed
    with open_store(settings) as restarted:
        values = restarted.sql("SELECT value FROM samples ORDER BY value").get_column("value").to_list()
        assert restarted.recovery.errors == []
    assert values == [1.0, 3.0, 4.0]


def test_reusing_a_writer_id_never_overwrites_its_predecessor(settings: Settings, noon: datetime) -> None:
    def point(value: float) -> SampleBatch:
        return validated(pl.DataFrame({"ts": [noon + timedelta(seconds=value)], "metric": ["r.m"], "value": [value]}))

    first = Writer(settings, writer_id="api")
    first.open(background_flush=False)
    first.write(point(1.0))
    first.flush()  # w-api-000000000001.parquet
    first.write(point(2.0))  # acknowledged, only in the WAL
    first.wal.close(remove_folder=False)  # dies
    with pytest.raises(StorageError, match="unreplayed segments"):
        Writer(settings, writer_id="api").open(background_flush=False)
    with open_store(settings) as store:  # another id replays the dead writer's WAL
        assert sorted(store.sql("SELECT value FROM samples").get_column("value").to_list()) == [1.0, 2.0]
    again = Writer(settings, writer_id="api")
    again.open(background_flush=False)
    again.write(point(3.0))
    again.close()
    assert sample_file_name("api", 1) in sample_file_names(settings)
    with open_store(settings) as store:
        assert sorted(store.sql("SELECT value FROM samples").get_column("value").to_list()) == [1.0, 2.0, 3.0]


def test_write_acknowledges_a_durable_batch_even_when_its_flush_fails(settings: Settings, noon: datetime) -> None:
    small = Writer(replace(settings, batch_size=2), writer_id="ackfail")
    small.open(background_flush=False)
    blocker = settings.lake_dir / "samples" / f"date={noon.date()}"
    try:
        small.write(validated(pl.DataFrame({"ts": [noon], "metric": ["a.m"], "value": [1.0]})))
        blocker.parent.mkdir(parents=True, exist_ok=True)
        blocker.write_text("not a folder")  # the size-triggered flush will fail
        second = validated(pl.DataFrame({"ts": [noon + timedelta(seconds=1)], "metric": ["a.m"], "value": [2.0]}))
        assert small.write(second) == 1  # durable in the WAL: acknowledged, no exception
        assert small.buffered_rows == 2
        blocker.unlink()
        assert small.flush() == 2
    finally:
        if blocker.is_file():
            blocker.unlink()
        small.close()
    with open_store(settings) as store:
        assert store.sql("SELECT value FROM samples ORDER BY value").get_column("value").to_list() == [1.0, 2.0]


def test_a_bulk_frame_spanning_days_is_all_or_nothing(settings: Settings, noon: datetime) -> None:
    bulk = Writer(replace(settings, batch_size=2), writer_id="bulkfail")
    bulk.open(background_flush=False)
    yesterday = noon - timedelta(days=1)
    frame = pl.DataFrame({"ts": [yesterday, noon], "metric": ["b.m", "b.m"], "value": [1.0, 2.0]})
    blocker = settings.lake_dir / "samples" / f"date={noon.date()}"
    blocker.parent.mkdir(parents=True, exist_ok=True)
    blocker.write_text("not a folder")  # yesterday's file commits, today's cannot
    try:
        with pytest.raises(StorageError):
            bulk.write(validated(frame))
        assert lake_rows(settings).height == 0  # yesterday's file was taken back: a retry cannot duplicate
    finally:
        blocker.unlink()
        bulk.close()


def test_a_restarted_id_continues_after_its_catalog_files_too(settings: Settings, noon: datetime) -> None:
    def point(host: str) -> SampleBatch:
        return validated(pl.DataFrame({"ts": [noon], "metric": ["c.m"], "value": [1.0], "host": [host]}))

    first = Writer(settings, writer_id="fixed")
    first.open(background_flush=False)
    first.write(point("a"))
    first.close()
    with open_store(settings) as store:
        store.compact(validate=False)  # samples merged away; the single catalog file keeps its w- name
    again = Writer(settings, writer_id="fixed")
    again.open(background_flush=False)
    again.write(point("b"))
    again.close()
    with open_store(settings) as store:
        hosts = sorted(store.engine.series("c.m").get_column("tags").to_list())
    assert hosts == ['{"host":"a"}', '{"host":"b"}']


def test_a_bulk_write_that_died_midway_is_taken_back(settings: Settings, noon: datetime) -> None:
    from storage.wal import write_intent

    dying = Writer(settings, writer_id="bulkdies")
    dying.open(background_flush=False)
    seq = dying.wal.next_seq()
    write_intent(dying.wal.folder, seq)
    frame = validated(pl.DataFrame({"ts": [noon], "metric": ["d.m"], "value": [1.0]})).frame
    dying._commit(frame, seq)  # one of its day files made it to the lake, then the process died
    dying.wal.close(remove_folder=False)
    assert lake_rows(settings).height == 1
    with open_store(settings) as store:
        store.compact(validate=False)
        assert store.sql("SELECT count(*) AS n FROM samples").item() == 0  # never acknowledged: gone
    assert not (settings.wal_dir / "bulkdies").exists()


def test_a_failing_view_refresh_never_fails_a_write(settings: Settings, noon: datetime) -> None:
    def broken() -> None:
        raise RuntimeError("view refresh failed")

    writer = Writer(replace(settings, batch_size=2), writer_id="views", on_commit=broken)
    writer.open(background_flush=False)
    try:
        for value in (1.0, 2.0, 3.0):
            batch = validated(
                pl.DataFrame({"ts": [noon + timedelta(seconds=value)], "metric": ["v.m"], "value": [value]})
            )
            assert writer.write(batch) == 1
        big = validated(
            pl.DataFrame({"ts": [noon, noon + timedelta(seconds=9)], "metric": ["v.n"] * 2, "value": [1.0, 2.0]})
        )
        assert writer.write(big) == 2  # the direct path too
    finally:
        writer.close()
    assert lake_rows(settings).height == 5

"""The writer: validated samples -> write-ahead log -> sorted Parquet files in the day partitions.

Small batches are appended to this process's WAL (fsync, then acknowledged)
and buffered; the buffer is flushed to one Parquet file per day when the
flush policy (``storage.batching``) says so -- every ``flush_seconds`` or
``batch_size`` rows, or, with ``intelligent_batching``, at a size that follows
the arrival rate -- after which the WAL segment is deleted. A bulk frame of at
least ``batch_size`` rows skips the WAL: it is written straight to fsynced
Parquet files before it is acknowledged, which is just as durable and half the
I/O.

Flushing never holds up acknowledgements: a flush takes the buffered batches
(their WAL segment sealed, so new appends go to a new one) and writes their
Parquet files outside the writer's lock, while new batches keep being appended
and fsynced; each segment is deleted once its files are in place. With the
background flusher running, a batch that makes the buffer big enough wakes it
instead of flushing in the request; only a buffer twice that size (a flusher
that cannot keep up) is flushed by the writing thread itself, which slows the
writers down to the lake's pace.

File names are ``w-<writer_id>-<seq>.parquet``, where ``seq`` is the WAL
segment number, so replaying a segment rewrites the same file names (an
idempotent overwrite, never a duplicate) and compaction can tell a file whose
segment still exists (and leave it alone until the segment is gone).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date

import polars as pl

from metrics.errors import MetricsError
from metrics.model import SAMPLE_SCHEMA, SORT_KEY, SampleBatch
from metrics.settings import Settings
from storage.batching import FlushPolicy
from storage.encoding import plain_values
from storage.lake import SERIES_TABLE, Lake, fsync_dir
from storage.series import catalog_table, read_catalog
from storage.wal import (
    INTENT_SUFFIX,
    WriteAheadLog,
    intents,
    orphaned_folders,
    read_segment,
    remove_folder,
    segments,
    write_intent,
)

log = logging.getLogger(__name__)


def new_writer_id() -> str:
    """A unique, readable id for one writer process."""
    host = socket.gethostname().split(".")[0].replace("-", "_")[:20] or "host"
    return f"{host}_{os.getpid()}_{uuid.uuid4().hex[:8]}"


def sample_file_name(writer_id: str, seq: int) -> str:
    """Name of the Parquet file(s) holding WAL segment ``seq`` of ``writer_id``."""
    return f"w-{writer_id}-{seq:012d}.parquet"


def parse_sample_file_name(name: str) -> tuple[str, int] | None:
    """(writer_id, seq) of a writer's file name, or None for other files."""
    if not name.startswith("w-") or not name.endswith(".parquet"):
        return None
    writer_id, _, seq = name[2:-8].rpartition("-")
    return (writer_id, int(seq)) if writer_id and seq.isdigit() else None


def sort_samples(frame: pl.DataFrame) -> pl.DataFrame:
    """Sort by (metric, series_id, ts), the lake's file order (metric by its text)."""
    return frame.with_columns(pl.col(c).cast(pl.String) for c in ("metric", "type", "tags")).sort(list(SORT_KEY))


@dataclass
class RecoveryReport:
    """What a starting writer found of its dead predecessors."""

    folders: int = 0
    segments: int = 0
    rows: int = 0
    errors: list[str] = field(default_factory=list)


@dataclass
class WriterStats:
    """Running counters, exported on ``/metrics`` by the API."""

    rows_written: int = 0
    files_written: int = 0
    bytes_written: int = 0
    flushes: int = 0
    last_flush_seconds: float = 0.0
    target_rows: int = 0  # the flush policy's current file size (buffered rows that make a flush)
    arrival_rate: float = 0.0  # rows/s, as the flush policy estimates it
    flush_deadline_seconds: float = 0.0  # age of the oldest buffered row that makes a flush


class Writer:
    """Durable sample writer of one process. Thread-safe."""

    def __init__(
        self,
        settings: Settings,
        lake: Lake | None = None,
        writer_id: str | None = None,
        on_commit: Callable[[], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings = settings
        self.lake = lake or Lake(
            settings.lake_dir, compression=settings.compression, compression_level=settings.compression_level
        )
        self.writer_id = writer_id or new_writer_id()
        self.wal = WriteAheadLog(settings.wal_dir, self.writer_id, SAMPLE_SCHEMA)
        self.policy = FlushPolicy.from_settings(settings)
        self._clock = clock  # the flush policy's time (monotonic seconds); a test may pass a fake one
        self.stats = WriterStats(target_rows=self.policy.target_rows, flush_deadline_seconds=self.policy.deadline)
        self._buffer: list[tuple[int, pl.DataFrame]] = []  # (WAL segment, rows appended to it)
        self._buffered_rows = 0
        self._buffer_since: float | None = None
        self._known_series: set[int] = set()
        self._lock = threading.RLock()  # the WAL and the buffer (short holds)
        self._flush_lock = threading.Lock()  # one flush at a time (held while Parquet files are written)
        self._stop = threading.Event()
        self._wake = threading.Event()  # the buffer reached its size: flush now
        self._flusher: threading.Thread | None = None
        self.recovery = RecoveryReport()
        self._on_commit = on_commit

    # -- life cycle --------------------------------------------------------
    def open(self, *, background_flush: bool = True) -> RecoveryReport:
        """Take this process's WAL, replay dead writers' WALs, start the timed flusher."""
        self.wal.open()
        # Only now, owning the folder, can no one else write files of this id: continue after them.
        self.wal.continue_after(self._highest_file_seq())
        self._known_series = set(read_catalog(self.lake).get_column("series_id").to_list())
        self.recovery = self.recover()
        if background_flush:
            self._flusher = threading.Thread(target=self._flush_loop, name=f"flush-{self.writer_id}", daemon=True)
            self._flusher.start()
        return self.recovery

    def close(self) -> None:
        """Flush what is buffered and release the WAL."""
        self._stop.set()
        self._wake.set()
        if self._flusher is not None:
            self._flusher.join(timeout=30)
        self.flush()
        with self._lock:
            self.wal.close()

    def _highest_file_seq(self) -> int:
        """Highest sequence number a writer of this id left in the lake (samples or catalog; 0 when none)."""
        highest = 0
        names = [f.name for f in self.lake.files("samples")] + [p.name for p in self.lake.flat_files(SERIES_TABLE)]
        for name in names:
            parsed = parse_sample_file_name(name)
            if parsed is not None and parsed[0] == self.writer_id:
                highest = max(highest, parsed[1])
        return highest

    def __enter__(self) -> Writer:
        self.open()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- writing -----------------------------------------------------------
    def write(self, batch: SampleBatch) -> int:
        """Store a validated batch durably; return how many rows. Returns once they are fsynced."""
        frame = batch.frame
        if frame.height == 0:
            return 0
        if frame.height >= self.settings.batch_size:
            return self._write_direct(frame)
        with self._lock:
            seq = self.wal.append(frame.to_arrow())
            now = self._clock()
            self._observe(frame.height, now)
            self._buffer.append((seq, frame))
            self._buffered_rows += frame.height
            if self._buffer_since is None:
                self._buffer_since = now
            target = self.policy.target_rows
            due = self._buffered_rows >= target
            behind = self._buffered_rows >= 2 * target  # the flusher cannot keep up: flush here, slowing writers
        if due and self._flusher is not None and not behind:
            self._wake.set()
        elif due:
            try:
                self.flush()
            except MetricsError:  # the batch is durable in the WAL: acknowledge it, flush later
                log.exception("flush failed; %d rows stay in the WAL for the next flush", self._buffered_rows)
        return frame.height

    def _observe(self, rows: int, now: float) -> None:
        """Tell the flush policy of an acknowledged write; export its figures."""
        self.policy.observe(rows, now)
        self.stats.target_rows = self.policy.target_rows
        self.stats.arrival_rate = self.policy.rate_
        self.stats.flush_deadline_seconds = self.policy.deadline

    def _write_direct(self, frame: pl.DataFrame) -> int:
        """Write a bulk frame straight to fsynced Parquet: all of its day files, or none of them.

        An intent marker in the WAL folder covers the write: compaction leaves the
        files alone meanwhile, and a crash midway is rolled back by recovery.
        """
        with self._lock:
            seq = self.wal.next_seq()
            intent = write_intent(self.wal.folder, seq)
        try:
            self._commit(frame, seq, presorted=True)  # a SampleBatch is in lake order
        except BaseException:
            self._delete_files(self.writer_id, seq)
            intent.unlink(missing_ok=True)
            raise
        intent.unlink()
        fsync_dir(intent.parent)
        self._notify()
        return frame.height

    def _delete_files(self, writer_id: str, seq: int) -> None:
        """Remove the sample files of an unacknowledged write (every day it touched)."""
        name = sample_file_name(writer_id, seq)
        for day in self.lake.partitions("samples"):
            path = self.lake.partition_dir("samples", day) / name
            if path.exists():
                path.unlink()
                fsync_dir(path.parent)

    def _notify(self) -> None:
        """Tell the owner that tables changed (views refresh); a failure there never fails a write."""
        if self._on_commit is None:
            return
        try:
            self._on_commit()
        except Exception:
            log.exception("refreshing the views after a commit failed; queries refresh them again later")

    def flush(self) -> int:
        """Write the buffer to the lake, one file set per WAL segment, dropping each segment after; return rows.

        Rows of different segments never share a file, so replaying any segment
        left behind by a crash rewrites exactly its own file (no duplicates). If
        a commit fails, the rows stay buffered (and in the WAL) for the next flush.
        """
        with self._flush_lock:
            with self._lock:
                if not self._buffer:
                    return 0
                self.wal.seal()  # appends from now on go to a new segment, which this flush leaves alone
                taken = list(self._buffer)
            flushed = 0
            for seq in sorted({s for s, _ in taken}):
                frames = [frame for s, frame in taken if s == seq]
                frame = pl.concat(frames, how="vertical_relaxed") if len(frames) > 1 else frames[0]
                self._commit(frame, seq)  # without the writer's lock: batches keep being acknowledged meanwhile
                with self._lock:
                    self.wal.remove(seq)
                    self._buffer = [(s, f) for s, f in self._buffer if s != seq]
                    self._buffered_rows -= frame.height
                flushed += frame.height
            with self._lock:  # batches that came in meanwhile are younger than now
                self._buffer_since = self._clock() if self._buffer else None
        self._notify()
        return flushed

    def flush_if_due(self) -> int:
        """Flush if the policy says the buffer is due (by its age, or its size after a failed flush); return rows."""
        with self._lock:
            since = self._buffer_since
            due = since is not None and self.policy.should_flush(self._buffered_rows, self._clock() - since)
        return self.flush() if due else 0  # (flush takes the lock again, and calls on_commit outside it)

    def _flush_loop(self) -> None:
        period = max(self.settings.flush_seconds / 4, 0.05)
        while not self._stop.is_set():
            self._wake.wait(period)
            self._wake.clear()
            if self._stop.is_set():
                return
            try:
                self.flush_if_due()
            except Exception:  # keep flushing later; the WAL still holds the rows
                log.exception("timed flush failed; rows stay in the WAL")

    def _commit(self, frame: pl.DataFrame, seq: int, writer_id: str | None = None, presorted: bool = False) -> None:
        """Write ``frame`` as the files of segment ``seq``: series catalog first, then samples."""
        started = time.perf_counter()
        name = sample_file_name(writer_id or self.writer_id, seq)
        self._record_series(frame, name)
        if not presorted:
            frame = sort_samples(frame)
        written = 0
        for day, part in _by_day(frame):
            path = self.lake.write("samples", day, plain_values(part).to_arrow(), name)
            written += path.stat().st_size
            self.stats.files_written += 1
        self.stats.rows_written += frame.height
        self.stats.bytes_written += written
        self.stats.flushes += 1
        self.stats.last_flush_seconds = time.perf_counter() - started

    # -- the series catalog ------------------------------------------------
    def _record_series(self, frame: pl.DataFrame, name: str) -> None:
        with self._lock:
            series = (
                frame.group_by("series_id")
                .agg(pl.col("metric").first(), pl.col("type").first(), pl.col("tags").first(), pl.col("ts").min())
                .rename({"ts": "first_seen"})
            )
            new = series.filter(~pl.col("series_id").is_in(list(self._known_series)))
            if new.height == 0:
                return
            self.lake.write(SERIES_TABLE, None, catalog_table(new), name)
            self._known_series.update(new.get_column("series_id").to_list())

    # -- recovery ----------------------------------------------------------
    def recover(self) -> RecoveryReport:
        """Replay the WAL folders of dead writers into the lake, then delete them."""
        report = RecoveryReport()
        for folder, lock in orphaned_folders(self.settings.wal_dir, own_id=self.writer_id):
            try:
                report.folders += 1
                for path in segments(folder):
                    replayed = read_segment(path, SAMPLE_SCHEMA)
                    if replayed.error:
                        report.errors.append(f"{folder.name}/{replayed.error}")
                        log.warning("WAL replay: %s", replayed.error)
                    if replayed.table is not None and replayed.table.num_rows:
                        frame = pl.from_arrow(replayed.table)
                        assert isinstance(frame, pl.DataFrame)
                        self._commit(frame, replayed.seq, writer_id=folder.name)
                        report.rows += frame.height
                    report.segments += 1
                    path.unlink()
                    fsync_dir(folder)
                for marker in intents(folder):  # a bulk write that never finished: take its files back
                    self._delete_files(folder.name, int(marker.name.removesuffix(INTENT_SUFFIX)))
                    marker.unlink()
                    fsync_dir(folder)
                unknown = remove_folder(folder)
                if unknown:
                    report.errors.append(f"{folder.name}: left in place, holds unknown files {unknown}")
            finally:
                lock.close()
        if report.rows:
            self._notify()
        if report.folders:
            log.info(
                "recovered %d rows from %d segments of %d dead writers", report.rows, report.segments, report.folders
            )
        return report

    @property
    def buffered_rows(self) -> int:
        """Rows acknowledged but not yet in Parquet (they are in the WAL)."""
        return self._buffered_rows

    def wal_bytes(self) -> int:
        """Bytes in this process's current WAL segment."""
        return self.wal.bytes_in_segment


def _by_day(frame: pl.DataFrame) -> list[tuple[date, pl.DataFrame]]:
    days = frame.get_column("ts").dt.date()
    first, last = days.min(), days.max()
    if first == last:
        assert isinstance(first, date)
        return [(first, frame)]
    parts = frame.with_columns(days.alias("_day")).partition_by("_day", as_dict=True, maintain_order=True)
    return [(key[0], part.drop("_day")) for key, part in sorted(parts.items(), key=lambda item: item[0])]

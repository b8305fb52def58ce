"""Per-process write-ahead log: Arrow IPC segments, fsynced before a batch is acknowledged.

Layout: ``<wal_root>/<writer_id>/LOCK`` plus segments ``<seq>.arrow``. The
owning process holds an exclusive ``flock`` on ``LOCK`` for its lifetime, so
a folder whose lock can be taken belongs to a dead process (kill -9 included)
and is replayed by the next writer that starts.

A segment is one Arrow IPC stream; each append is one record batch followed
by ``fsync``. A crash mid-append leaves a torn tail: replay reads every whole
batch and reports the torn remainder instead of failing.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from metrics.errors import StorageError
from storage.lake import fsync_dir

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".arrow"
LOCK_NAME = "LOCK"


def segment_name(seq: int) -> str:
    """File name of segment number ``seq``."""
    return f"{seq:012d}{SEGMENT_SUFFIX}"


@dataclass
class ReplayedSegment:
    """What could be read back from one segment."""

    path: Path
    seq: int
    table: pa.Table | None
    batches: int
    error: str | None = None


@dataclass
class WriteAheadLog:
    """The write-ahead log of one writer process."""

    root: Path
    writer_id: str
    schema: pa.Schema
    _seq: int = 0
    _segment: int | None = None
    _sink: BinaryIO | None = field(default=None, repr=False)
    _stream: pa.ipc.RecordBatchStreamWriter | None = field(default=None, repr=False)
    _lock: BinaryIO | None = field(default=None, repr=False)
    rows_in_segment: int = 0
    bytes_in_segment: int = 0

    @property
    def folder(self) -> Path:
        """This writer's WAL folder."""
        return self.root / self.writer_id

    def open(self) -> None:
        """Create the folder and take its lock for this process's lifetime."""
        self.folder.mkdir(parents=True, exist_ok=True)
        self._lock = open(self.folder / LOCK_NAME, "ab")
        try:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            self._lock.close()
            raise StorageError(f"WAL folder {self.folder} is locked by another process") from None
        fsync_dir(self.root)

    def next_seq(self) -> int:
        """Reserve a sequence number (segments and direct file writes share one counter)."""
        self._seq += 1
        return self._seq

    def append(self, table: pa.Table) -> int:
        """Append ``table`` to the current segment and fsync; return the segment number once durable."""
        if self._stream is None:
            self._segment = self.next_seq()
            path = self.folder / segment_name(self._segment)
            self._sink = open(path, "wb")
            self._stream = pa.ipc.new_stream(self._sink, self.schema)
            fsync_dir(self.folder)
        try:
            self._stream.write_table(table.cast(self.schema))
            assert self._sink is not None
            self._sink.flush()
            os.fsync(self._sink.fileno())
        except OSError as exc:
            raise StorageError(f"cannot append to WAL {self.folder}: {exc.strerror or exc}") from exc
        self.rows_in_segment += table.num_rows
        self.bytes_in_segment = self._sink.tell()
        assert self._segment is not None
        return self._segment

    def seal(self) -> int | None:
        """Close the current segment; return its sequence number (None when empty)."""
        if self._stream is None:
            return None
        self._stream.close()
        assert self._sink is not None
        self._sink.close()
        sealed, self._segment = self._segment, None
        self._stream = None
        self._sink = None
        self.rows_in_segment = 0
        self.bytes_in_segment = 0
        return sealed

    def remove(self, seq: int) -> None:
        """Delete a sealed segment once its rows are durable in the lake."""
        (self.folder / segment_name(seq)).unlink(missing_ok=True)
        fsync_dir(self.folder)

    def close(self, remove_folder: bool = True) -> None:
        """Release the lock; remove the folder when no segment is left."""
        self.seal()
        if remove_folder and not any(self.folder.glob(f"*{SEGMENT_SUFFIX}")):
            shutil.rmtree(self.folder, ignore_errors=True)
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def read_segment(path: Path, schema: pa.Schema) -> ReplayedSegment:
    """Read every whole record batch of a segment, reporting a torn or corrupt tail."""
    seq = int(path.name.removesuffix(SEGMENT_SUFFIX))
    batches: list[pa.RecordBatch] = []
    error: str | None = None
    try:
        with pa.OSFile(str(path), "rb") as source:
            reader = pa.ipc.open_stream(source)
            while True:
                try:
                    batches.append(reader.read_next_batch())
                except StopIteration:
                    break
    except (pa.ArrowInvalid, pa.ArrowIOError, OSError) as exc:
        error = f"{path.name}: torn or corrupt after {len(batches)} whole batches ({exc})"
    table = pa.Table.from_batches(batches, schema=schema) if batches else None
    return ReplayedSegment(path=path, seq=seq, table=table, batches=len(batches), error=error)


def orphaned_folders(root: Path, own_id: str | None = None) -> Iterator[tuple[Path, BinaryIO]]:
    """Yield WAL folders of dead writers, each with its lock now held by the caller."""
    if not root.is_dir():
        return
    for entry in sorted(os.scandir(root), key=lambda e: e.name):
        if not entry.is_dir() or entry.name == own_id:
            continue
        try:
            handle = open(Path(entry.path) / LOCK_NAME, "ab")
        except FileNotFoundError:
            continue  # removed by another recovering writer
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()  # its writer is alive
            continue
        if not Path(entry.path).is_dir():
            handle.close()
            continue
        yield Path(entry.path), handle


def segments(folder: Path) -> list[Path]:
    """Segments of a WAL folder, oldest first."""
    return sorted(folder.glob(f"*{SEGMENT_SUFFIX}"))

"""Per-process write-ahead log: checksummed segments, fsynced before a batch is acknowledged.

Layout: ``<wal_root>/<writer_id>/LOCK`` plus segments ``<seq>.wal``. The
owning process holds an exclusive ``flock`` on ``LOCK`` for its lifetime, so
a folder whose lock can be taken belongs to a dead process (kill -9 included)
and is replayed by the next writer that starts. A writer builds its folder
under a hidden temporary name, locks it, and only then renames it into place,
so a recovering writer never mistakes a folder being born for a dead one.

A segment starts with a magic line; each append is one frame: the payload's
length and CRC-32 (little-endian uint32 each), then the payload, a
self-contained Arrow IPC stream of the batch. Replay trusts only frames whose
checksum matches, so a torn tail (crash mid-append) or flipped bits end the
segment's good part with a reported error instead of garbage or a crash. A
failed append is cut off again (truncate, fsync) so later appends stay
readable.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import struct
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import pyarrow as pa

from metrics.errors import StorageError
from storage.lake import ensure_dir, fsync_dir

log = logging.getLogger(__name__)

SEGMENT_SUFFIX = ".wal"
INTENT_SUFFIX = ".intent"
LOCK_NAME = "LOCK"
MAGIC = b"METRICS-WAL 1\n"
_FRAME = struct.Struct("<II")  # payload length, CRC-32 of the payload
_STARTING_PREFIX = ".starting-"


def segment_name(seq: int) -> str:
    """File name of segment number ``seq``."""
    return f"{seq:012d}{SEGMENT_SUFFIX}"


def encode_frame(table: pa.Table) -> bytes:
    """One WAL frame holding ``table``."""
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as stream:
        stream.write_table(table)
    payload = sink.getvalue().to_pybytes()
    return _FRAME.pack(len(payload), zlib.crc32(payload)) + payload


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
    _lock: BinaryIO | None = field(default=None, repr=False)
    rows_in_segment: int = 0
    bytes_in_segment: int = 0

    @property
    def folder(self) -> Path:
        """This writer's WAL folder."""
        return self.root / self.writer_id

    def open(self) -> None:
        """Create and lock this writer's folder (call :meth:`continue_after` before the first append).

        Raises StorageError when a folder of this id is alive or still holds
        segments (they must be replayed by a writer with another id first).
        """
        try:
            ensure_dir(self.root)
            starting = self.root / f"{_STARTING_PREFIX}{self.writer_id}-{uuid.uuid4().hex[:8]}"
            starting.mkdir()
            # LOCK appears only once locked (rename of a locked file), so no one can mistake it for a dead one.
            lock = open(starting / (LOCK_NAME + ".new"), "ab")
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new inode: nobody else holds it
            os.rename(starting / (LOCK_NAME + ".new"), starting / LOCK_NAME)
        except OSError as exc:
            raise StorageError(f"cannot create a WAL folder under {self.root}: {exc.strerror or exc}") from exc
        try:
            self._take_place(starting)
            fsync_dir(self.root)
        except BaseException:
            lock.close()
            shutil.rmtree(starting, ignore_errors=True)
            raise
        self._lock = lock

    def continue_after(self, seq: int) -> None:
        """Make the next sequence number larger than ``seq`` (the highest this writer id ever used)."""
        self._seq = max(self._seq, seq)

    def _take_place(self, starting: Path) -> None:
        """Rename the locked starting folder into place, clearing a dead, empty predecessor of this id."""
        try:
            os.rename(starting, self.folder)
            return
        except OSError:
            pass
        previous = _open_existing_lock(self.folder)
        if previous is None:  # no LOCK: not a writer's folder (or one vanishing right now): never touch it
            raise StorageError(
                f"WAL folder {self.folder} exists and is not a dead writer's folder; start with another id"
            )
        try:
            try:
                fcntl.flock(previous.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StorageError(f"WAL folder {self.folder} is in use by another live writer") from None
            if segments(self.folder) or intents(self.folder):
                raise StorageError(
                    f"WAL folder {self.folder} holds unreplayed segments of an earlier writer with this id; "
                    "start the writer with another id so it replays them"
                )
            # Holding the dead folder's lock, move it aside first: a rename is atomic, an rmtree is not.
            aside = self.root / f"{_STARTING_PREFIX}dead-{uuid.uuid4().hex[:8]}"
            os.rename(self.folder, aside)
            os.rename(starting, self.folder)
            shutil.rmtree(aside, ignore_errors=True)
        except OSError as exc:
            raise StorageError(f"WAL folder {self.folder} is in use by another writer: {exc.strerror}") from exc
        finally:
            previous.close()

    def next_seq(self) -> int:
        """Reserve a sequence number (segments and direct file writes share one counter)."""
        self._seq += 1
        return self._seq

    def append(self, table: pa.Table) -> int:
        """Append ``table`` to the current segment and fsync; return the segment number once durable."""
        frame = encode_frame(table.cast(self.schema))
        if self._sink is None:
            self._segment = self.next_seq()
            path = self.folder / segment_name(self._segment)
            try:
                self._sink = open(path, "wb", buffering=0)  # unbuffered: a failed write can be cut back
                _write_all(self._sink, MAGIC)
                os.fsync(self._sink.fileno())
                fsync_dir(self.folder)
            except OSError as exc:
                self._abandon(0)
                raise StorageError(f"cannot create WAL segment {path}: {exc.strerror or exc}") from exc
        assert self._sink is not None
        assert self._segment is not None
        start = self._sink.tell()
        try:
            _write_all(self._sink, frame)
            os.fsync(self._sink.fileno())
        except OSError as exc:
            self._abandon(start)
            raise StorageError(f"cannot append to WAL {self.folder}: {exc.strerror or exc}") from exc
        self.rows_in_segment += table.num_rows
        self.bytes_in_segment = self._sink.tell()
        return self._segment

    def _abandon(self, keep_bytes: int) -> None:
        """After a failed write: cut the segment back to its last whole frame and start a new one next time."""
        sink, self._sink = self._sink, None
        if sink is None:
            return
        try:
            os.ftruncate(sink.fileno(), keep_bytes)
            os.fsync(sink.fileno())
        except OSError:
            log.exception("could not cut back WAL segment %s; replay will stop at the bad frame", sink.name)
        finally:
            with contextlib.suppress(OSError):
                sink.close()
        # The segment keeps its number: its rows stay buffered and are flushed under it.
        self.rows_in_segment = 0
        self.bytes_in_segment = 0

    def seal(self) -> int | None:
        """Close the current segment; return its sequence number (None when there is none)."""
        sealed, self._segment = self._segment, None
        if self._sink is not None:
            self._sink.close()
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
        if remove_folder and self.folder.is_dir() and not segments(self.folder) and not intents(self.folder):
            shutil.rmtree(self.folder, ignore_errors=True)
            fsync_dir(self.root)
        if self._lock is not None:
            fcntl.flock(self._lock.fileno(), fcntl.LOCK_UN)
            self._lock.close()
            self._lock = None


def _write_all(sink: BinaryIO, data: bytes) -> None:
    """Write every byte to an unbuffered file (a raw write may be partial)."""
    view = memoryview(data)
    while view:
        written = sink.write(view)
        if not written:
            raise OSError(5, "short write")
        view = view[written:]


def intent_name(seq: int) -> str:
    """File name of the intent marker of a bulk write with sequence number ``seq``."""
    return f"{seq:012d}{INTENT_SUFFIX}"


def write_intent(folder: Path, seq: int) -> Path:
    """Mark files of ``seq`` as being written outside the WAL (a bulk write), durably.

    While the marker exists, compaction leaves those files alone; if the writer
    dies, recovery deletes the files (they were never acknowledged) and the marker.
    """
    path = folder / intent_name(seq)
    with open(path, "wb", buffering=0) as handle:
        os.fsync(handle.fileno())
    fsync_dir(folder)
    return path


def intents(folder: Path) -> list[Path]:
    """Intent markers of unfinished bulk writes in a WAL folder."""
    return sorted(folder.glob(f"*{INTENT_SUFFIX}"))


def read_segment(path: Path, schema: pa.Schema) -> ReplayedSegment:
    """Read every whole, checksum-verified batch of a segment, reporting a torn or corrupt rest."""
    seq = int(path.name.removesuffix(SEGMENT_SUFFIX))
    tables: list[pa.Table] = []
    error: str | None = None
    try:
        data = path.read_bytes()
    except OSError as exc:
        return ReplayedSegment(path, seq, None, 0, f"{path.name}: unreadable ({exc.strerror or exc})")
    if data and not data.startswith(MAGIC):
        if not MAGIC.startswith(data):  # a prefix of the magic is a segment torn at birth
            error = f"{path.name}: not a WAL segment (bad header)"
        data = b""
    position = len(MAGIC) if data else 0
    while error is None and position < len(data):
        header = data[position : position + _FRAME.size]
        if len(header) < _FRAME.size:
            error = f"{path.name}: torn frame header after {len(tables)} whole batches"
            break
        length, crc = _FRAME.unpack(header)
        payload = data[position + _FRAME.size : position + _FRAME.size + length]
        if length == 0 or len(payload) < length:
            error = f"{path.name}: torn or zero-filled frame after {len(tables)} whole batches"
            break
        if zlib.crc32(payload) != crc:
            error = f"{path.name}: checksum mismatch after {len(tables)} whole batches (corrupt data)"
            break
        try:
            table = pa.ipc.open_stream(pa.py_buffer(payload)).read_all()
            table.validate(full=True)
            tables.append(table.cast(schema))
        except (pa.ArrowException, ValueError) as exc:
            error = f"{path.name}: undecodable batch after {len(tables)} whole batches ({exc})"
            break
        position += _FRAME.size + length
    table = pa.concat_tables(tables) if tables else None
    return ReplayedSegment(path=path, seq=seq, table=table, batches=len(tables), error=error)


def _open_existing_lock(folder: Path) -> BinaryIO | None:
    """Open a folder's LOCK without creating it (a folder without one is not a writer's)."""
    try:
        fd = os.open(folder / LOCK_NAME, os.O_RDWR)
    except (FileNotFoundError, NotADirectoryError):
        return None
    return os.fdopen(fd, "r+b")


def orphaned_folders(root: Path, own_id: str | None = None) -> Iterator[tuple[Path, BinaryIO]]:
    """Yield WAL folders of dead writers, each with its lock now held by the caller.

    Hidden folders of writers that died while starting are removed on the way.
    """
    if not root.is_dir():
        return
    with os.scandir(root) as entries:
        names = sorted(e.name for e in entries if e.is_dir())
    for name in names:
        folder = root / name
        if name == own_id:
            continue
        handle = _open_existing_lock(folder)
        if handle is None:
            continue
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()  # its writer is alive (or starting)
            continue
        if not folder.is_dir():
            handle.close()
            continue
        if name.startswith(_STARTING_PREFIX):  # died before it wrote anything
            shutil.rmtree(folder, ignore_errors=True)
            handle.close()
            continue
        yield folder, handle


def segments(folder: Path) -> list[Path]:
    """Segments of a WAL folder, oldest first."""
    return sorted(folder.glob(f"*{SEGMENT_SUFFIX}"))


def remove_folder(folder: Path) -> list[str]:
    """Delete a replayed WAL folder; files that are not the WAL's own are left (folder and all) and named."""
    unknown = [
        p.name for p in folder.iterdir() if p.name != LOCK_NAME and not p.name.endswith((SEGMENT_SUFFIX, INTENT_SUFFIX))
    ]
    if unknown:
        return unknown
    for item in folder.iterdir():
        item.unlink(missing_ok=True)
    folder.rmdir()
    fsync_dir(folder.parent)
    return []

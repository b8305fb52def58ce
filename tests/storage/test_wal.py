"""Tests of storage.wal: segments round trip, torn tails, dead-writer detection by flock (real files, no mocks)."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pyarrow as pa
import pytest

from metrics.errors import StorageError
from metrics.model import SAMPLE_SCHEMA
from storage.wal import (
    LOCK_NAME,
    MAGIC,
    WriteAheadLog,
    orphaned_folders,
    read_segment,
    segment_name,
    segments,
)

BASE = datetime(2024, 5, 17, 12, 0, tzinfo=UTC)

# A child that takes an exclusive flock on the file named in argv[1], says so, and holds it until stdin closes.
HOLD_LOCK = (
    "import fcntl, sys\n"
    "handle = open(sys.argv[1], 'ab')\n"
    "fcntl.flock(handle.fileno(), fcntl.LOCK_EX)\n"
    "print('locked', flush=True)\n"
    "sys.stdin.read()\n"
)


def sample_table(rows: int, offset: int = 0) -> pa.Table:
    """A table in the WAL schema with ``rows`` distinct samples, values ``offset`` .. ``offset + rows - 1``."""
    return pa.table(
        {
            "metric": [f"wal.m{i % 3}" for i in range(rows)],
            "series_id": [i % 5 for i in range(rows)],
            "ts": [BASE + timedelta(seconds=offset + i) for i in range(rows)],
            "value": [float(offset + i) + 0.5 for i in range(rows)],
            "type": ["gauge"] * rows,
            "tags": ['{"host":"h' + str(i % 2) + '"}' for i in range(rows)],
        },
        schema=SAMPLE_SCHEMA,
    )


@contextmanager
def lock_held_by_child(lock_file: Path) -> Iterator[subprocess.Popen[str]]:
    """Hold an exclusive flock on ``lock_file`` from another process for the duration of the block."""
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(lock_file)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        assert proc.stdout.readline().strip() == "locked"
        yield proc
    finally:
        if proc.poll() is None:
            assert proc.stdin is not None
            proc.stdin.close()
            proc.wait(timeout=10)
        else:
            if proc.stdin is not None:
                proc.stdin.close()
        if proc.stdout is not None:
            proc.stdout.close()


@pytest.fixture
def wal(tmp_path: Path) -> Iterator[WriteAheadLog]:
    log = WriteAheadLog(tmp_path / "wal", "writer_a", SAMPLE_SCHEMA)
    log.open()
    try:
        yield log
    finally:
        log.close(remove_folder=False)


def write_segment(wal: WriteAheadLog, sizes: list[int]) -> tuple[Path, list[pa.Table], list[int]]:
    """Append one batch per size; return the segment path, the tables and the file size after each append."""
    tables: list[pa.Table] = []
    ends: list[int] = []
    offset = 0
    for size in sizes:
        table = sample_table(size, offset)
        offset += size
        wal.append(table)
        tables.append(table)
        ends.append(wal.bytes_in_segment)
    [path] = segments(wal.folder)
    return path, tables, ends


# -- round trip -----------------------------------------------------------------


def test_append_and_read_segment_round_trip(wal: WriteAheadLog) -> None:
    path, tables, ends = write_segment(wal, [3, 1, 7])
    assert path.name == segment_name(1)
    assert wal.rows_in_segment == 11
    assert ends == sorted(ends)
    assert path.stat().st_size == ends[-1]

    unsealed = read_segment(path, SAMPLE_SCHEMA)  # a live (or crashed) writer's segment has no end marker
    assert unsealed.error is None
    assert unsealed.batches == 3
    assert unsealed.seq == 1
    assert unsealed.table is not None
    assert unsealed.table.equals(pa.concat_tables(tables))

    assert wal.seal() == 1
    sealed = read_segment(path, SAMPLE_SCHEMA)
    assert sealed.error is None
    assert sealed.batches == 3
    assert sealed.table is not None
    assert sealed.table.equals(pa.concat_tables(tables))


def test_sequence_numbers_are_shared_and_segments_listed_in_order(wal: WriteAheadLog) -> None:
    wal.append(sample_table(2))
    assert wal.seal() == 1
    assert wal.seal() is None  # nothing open
    assert wal.next_seq() == 2  # a direct write reserves a number
    wal.append(sample_table(1))
    assert wal.seal() == 3
    assert [p.name for p in segments(wal.folder)] == [segment_name(1), segment_name(3)]
    wal.remove(1)
    assert [p.name for p in segments(wal.folder)] == [segment_name(3)]


def test_append_casts_to_the_wal_schema(wal: WriteAheadLog) -> None:
    loose = sample_table(4).cast(
        pa.schema([pa.field(f.name, f.type, nullable=True) for f in SAMPLE_SCHEMA])  # what polars hands over
    )
    wal.append(loose)
    wal.seal()
    replayed = read_segment(segments(wal.folder)[0], SAMPLE_SCHEMA)
    assert replayed.table is not None
    assert replayed.table.schema.equals(SAMPLE_SCHEMA)
    assert replayed.table.num_rows == 4


def test_close_removes_an_empty_folder_and_keeps_one_with_segments(tmp_path: Path) -> None:
    empty = WriteAheadLog(tmp_path, "empty", SAMPLE_SCHEMA)
    empty.open()
    empty.close()
    assert not (tmp_path / "empty").exists()

    kept = WriteAheadLog(tmp_path, "kept", SAMPLE_SCHEMA)
    kept.open()
    kept.append(sample_table(2))
    kept.close()
    assert [p.name for p in segments(tmp_path / "kept")] == [segment_name(1)]
    assert read_segment(segments(tmp_path / "kept")[0], SAMPLE_SCHEMA).batches == 1


# -- torn tails -------------------------------------------------------------------

# Where to cut the last batch, as a function of (start of the last batch, end of it).
CUTS = {
    "1 byte in": lambda start, end: start + 1,
    "inside the continuation marker": lambda start, end: start + 3,
    "after the continuation marker": lambda start, end: start + 4,
    "inside the metadata length": lambda start, end: start + 6,
    "after the metadata length": lambda start, end: start + 8,
    "inside the metadata": lambda start, end: start + 40,
    "halfway": lambda start, end: (start + end) // 2,
    "1 byte short": lambda start, end: end - 1,
}


@pytest.mark.parametrize("cut", list(CUTS), ids=list(CUTS))
def test_torn_tail_keeps_whole_batches_and_names_the_file(wal: WriteAheadLog, cut: str) -> None:
    path, tables, ends = write_segment(wal, [5, 4, 6])
    offset = CUTS[cut](ends[1], ends[2])
    assert ends[1] < offset < ends[2]
    with open(path, "r+b") as handle:
        handle.truncate(offset)

    replayed = read_segment(path, SAMPLE_SCHEMA)

    assert replayed.batches == 2
    assert replayed.table is not None
    assert replayed.table.equals(pa.concat_tables(tables[:2]))
    assert replayed.error is not None
    assert path.name in replayed.error
    assert "2 whole batches" in replayed.error


def test_cut_exactly_between_batches_is_a_clean_end(wal: WriteAheadLog) -> None:
    path, tables, ends = write_segment(wal, [5, 4, 6])
    with open(path, "r+b") as handle:
        handle.truncate(ends[1])
    replayed = read_segment(path, SAMPLE_SCHEMA)
    assert replayed.error is None
    assert replayed.batches == 2
    assert replayed.table is not None
    assert replayed.table.equals(pa.concat_tables(tables[:2]))


@pytest.mark.parametrize("keep", [0, 1, 7], ids=["empty file", "1 byte", "inside the header"])
def test_segment_cut_inside_its_header_is_an_empty_segment(wal: WriteAheadLog, keep: int) -> None:
    # Nothing was acknowledged from a segment whose header is incomplete: no rows, nothing to report.
    path, _, _ = write_segment(wal, [3])
    with open(path, "r+b") as handle:
        handle.truncate(keep)
    replayed = read_segment(path, SAMPLE_SCHEMA)
    assert replayed.batches == 0
    assert replayed.table is None
    assert replayed.error is None


@pytest.mark.parametrize("extra", [1, 7, 20], ids=["1 byte", "inside the frame header", "inside the payload"])
def test_segment_torn_inside_its_first_frame_has_no_rows_and_an_error(wal: WriteAheadLog, extra: int) -> None:
    path, _, _ = write_segment(wal, [3])
    with open(path, "r+b") as handle:
        handle.truncate(len(MAGIC) + extra)
    replayed = read_segment(path, SAMPLE_SCHEMA)
    assert replayed.batches == 0
    assert replayed.table is None
    assert replayed.error is not None
    assert path.name in replayed.error


def test_a_segment_with_a_foreign_header_is_reported(wal: WriteAheadLog) -> None:
    path, _, _ = write_segment(wal, [3])
    path.write_bytes(b"PAR1 this is not a WAL segment at all")
    replayed = read_segment(path, SAMPLE_SCHEMA)
    assert replayed.table is None
    assert replayed.error is not None
    assert "not a WAL segment" in replayed.error


@pytest.mark.parametrize("seed", range(12))
def test_flipped_bits_never_crash_replay_and_keep_the_good_batches(wal: WriteAheadLog, seed: int) -> None:
    path, tables, ends = write_segment(wal, [4, 4, 4])
    data = bytearray(path.read_bytes())
    position = ends[1] + 1 + (seed * 37) % (ends[2] - ends[1] - 1)  # somewhere in the third frame
    data[position] ^= 1 << (seed % 8)
    path.write_bytes(bytes(data))
    replayed = read_segment(path, SAMPLE_SCHEMA)
    assert replayed.batches == 2
    assert replayed.table is not None
    assert replayed.table.equals(pa.concat_tables(tables[:2]))
    assert replayed.error is not None


GARBAGE = {
    "text": b"garbage!" * 5,
    "all ones": b"\xff" * 16,
    "a huge length": b"\xff\xff\xff\xff" + (2**30).to_bytes(4, "little") + b"x" * 12,
    "seeded noise": bytes((i * 151 + 17) % 256 for i in range(64)),
}


@pytest.mark.parametrize("garbage", list(GARBAGE), ids=list(GARBAGE))
def test_garbage_after_the_last_batch_keeps_every_batch_and_reports(wal: WriteAheadLog, garbage: str) -> None:
    path, tables, _ = write_segment(wal, [2, 3, 4])
    with open(path, "ab") as handle:
        handle.write(GARBAGE[garbage])
    replayed = read_segment(path, SAMPLE_SCHEMA)
    assert replayed.batches == 3
    assert replayed.table is not None
    assert replayed.table.equals(pa.concat_tables(tables))
    assert replayed.error is not None
    assert path.name in replayed.error
    assert "3 whole batches" in replayed.error


def test_zero_filled_tail_keeps_every_batch(wal: WriteAheadLog) -> None:
    # A file extended with zeros (what some file systems leave after a crash) reads as an end-of-stream marker:
    # every whole batch is kept (the zeros themselves are not reported).
    path, tables, _ = write_segment(wal, [2, 3])
    with open(path, "ab") as handle:
        handle.write(b"\x00" * 64)
    replayed = read_segment(path, SAMPLE_SCHEMA)
    assert replayed.batches == 2
    assert replayed.table is not None
    assert replayed.table.equals(pa.concat_tables(tables))


# -- locks and dead writers ---------------------------------------------------------


def make_dead_folder(root: Path, writer_id: str, rows: int = 2) -> Path:
    """A WAL folder whose writer is gone: segments on disk, LOCK present but not held."""
    log = WriteAheadLog(root, writer_id, SAMPLE_SCHEMA)
    log.open()
    log.append(sample_table(rows))
    log.close(remove_folder=False)
    assert (root / writer_id / LOCK_NAME).exists()
    return root / writer_id


def test_orphaned_folders_yields_only_folders_whose_lock_is_free(tmp_path: Path) -> None:
    root = tmp_path / "wal"
    dead = make_dead_folder(root, "dead_1")
    dead_without_lock_file = root / "dead_2"
    dead_without_lock_file.mkdir()
    (root / "not_a_folder").write_bytes(b"")
    live_here = WriteAheadLog(root, "live_here", SAMPLE_SCHEMA)  # a live writer in this process
    live_here.open()
    make_dead_folder(root, "own")  # unlocked, but it is the caller's own id
    make_dead_folder(root, "live_child")
    try:
        with lock_held_by_child(root / "live_child" / LOCK_NAME):
            found = list(orphaned_folders(root, own_id="own"))
            try:
                # A folder without a LOCK file is not a writer's (it may be one being born): left alone.
                assert [folder.name for folder, _ in found] == [dead.name]
                # The caller now holds each yielded folder's lock: a second recoverer is kept out.
                assert list(orphaned_folders(root, own_id="own")) == []
            finally:
                for _, handle in found:
                    handle.close()
    finally:
        live_here.close()
    # Once the lock holders are gone, their folders are orphans too (live_here removed its empty folder).
    found = list(orphaned_folders(root))
    try:
        assert [folder.name for folder, _ in found] == ["dead_1", "live_child", "own"]
        assert dead_without_lock_file.is_dir()
    finally:
        for _, handle in found:
            handle.close()


def test_own_folder_is_never_yielded(tmp_path: Path) -> None:
    root = tmp_path / "wal"
    make_dead_folder(root, "me")
    assert list(orphaned_folders(root, own_id="me")) == []
    assert list(orphaned_folders(tmp_path / "missing")) == []


def test_lock_held_through_a_second_descriptor_in_this_process_counts_as_live(tmp_path: Path) -> None:
    root = tmp_path / "wal"
    make_dead_folder(root, "w")
    with open(root / "w" / LOCK_NAME, "ab") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        assert list(orphaned_folders(root)) == []
        fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
        found = list(orphaned_folders(root))
        assert [f.name for f, _ in found] == ["w"]
        for _, held in found:
            held.close()


def test_a_writer_killed_with_sigkill_leaves_an_orphan(tmp_path: Path) -> None:
    root = tmp_path / "wal"
    make_dead_folder(root, "victim")
    with lock_held_by_child(root / "victim" / LOCK_NAME) as child:
        assert list(orphaned_folders(root)) == []
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=10)
        found = list(orphaned_folders(root))
        assert [f.name for f, _ in found] == ["victim"]
        for _, held in found:
            held.close()


def test_open_on_a_folder_locked_by_this_process_raises(tmp_path: Path) -> None:
    first = WriteAheadLog(tmp_path, "same", SAMPLE_SCHEMA)
    first.open()
    try:
        second = WriteAheadLog(tmp_path, "same", SAMPLE_SCHEMA)
        with pytest.raises(StorageError, match="in use") as caught:
            second.open()
        assert "same" in str(caught.value)
        assert second._lock is None or second._lock.closed
    finally:
        first.close()
    # Released: the id can be taken again.
    third = WriteAheadLog(tmp_path, "same", SAMPLE_SCHEMA)
    third.open()
    third.close()


def test_open_on_a_folder_locked_by_another_process_raises(tmp_path: Path) -> None:
    folder = make_dead_folder(tmp_path, "busy")
    with lock_held_by_child(folder / LOCK_NAME), pytest.raises(StorageError, match="in use"):
        WriteAheadLog(tmp_path, "busy", SAMPLE_SCHEMA).open()
    # Released, but its segments are not replayed yet: the id stays refused, nothing is overwritten.
    with pytest.raises(StorageError, match="unreplayed segments"):
        WriteAheadLog(tmp_path, "busy", SAMPLE_SCHEMA).open()
    assert segments(folder)
    for path in segments(folder):  # what recovery does once the rows are in the lake
        path.unlink()
    log = WriteAheadLog(tmp_path, "busy", SAMPLE_SCHEMA)
    log.open()
    log.close(remove_folder=False)


def test_a_folder_of_this_id_without_a_lock_file_is_never_removed(tmp_path: Path) -> None:
    foreign = tmp_path / "taken"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("not a WAL folder")
    with pytest.raises(StorageError, match="not a dead writer"):
        WriteAheadLog(tmp_path, "taken", SAMPLE_SCHEMA).open()
    assert (foreign / "notes.txt").is_file()

"""The lake: where tables live on disk, how files are committed, listed, swapped and dropped.

Every table is a folder of Parquet files, hive-partitioned by UTC day::

    <root>/<table>/date=YYYY-MM-DD/<name>.parquet

Files are written to ``<name>.parquet.tmp``, fsynced, renamed into place and
the folder fsynced, so a reader sees a whole file or none. New files may
appear at any time (writers never lock). Replacing files (compaction) and
deleting them (retention) take the lake's *exclusive* lock for the moment of
the swap; queries hold the *shared* lock while they list and read files. So a
query never sees both a compacted file and the small files it replaced (no
double count) and never loses a file it listed (no failure). The lock is an
``flock`` on ``<root>/.lock``; it works across processes and threads.

Everything about committing, compacting and listing files goes through this
module, so a table format (Delta Lake, DuckLake) can replace it on object
storage without touching callers.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import shutil
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from datetime import date
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from metrics.errors import StorageError

log = logging.getLogger(__name__)

TABLES = ("samples", "rollups_1m", "rollups_1h", "anomalies", "forecasts", "alert_events")
SERIES_TABLE = "series"
QUARANTINE = "quarantine"
TMP_SUFFIX = ".tmp"
COMPACTED_PREFIX = "c-"

# Column encodings: sorted timestamps and integer mantissas delta-encode to almost
# nothing; floats split by byte compress far better than plain; names, tags and
# ids are dictionary-coded (runs of one value cost a few bits).
_DICTIONARY_COLUMNS = ("metric", "series_id", "type", "tags")
_TIMESTAMP_COLUMNS = ("ts", "last_ts", "first_seen")
ROW_GROUP_SIZE = 128 * 1024

# What reading a damaged Parquet file raises (not transient I/O trouble such as EMFILE).
UNREADABLE_ERRORS: tuple[type[BaseException], ...] = (pa.ArrowInvalid, pl.exceptions.ComputeError)


@dataclass(frozen=True)
class LakeFile:
    """One committed Parquet file of a table partition."""

    table: str
    day: date
    path: Path

    @property
    def name(self) -> str:
        """The file name without folder."""
        return self.path.name

    @property
    def compacted(self) -> bool:
        """True for files written by compaction."""
        return self.path.name.startswith(COMPACTED_PREFIX)


def partition_name(day: date) -> str:
    """The hive folder name of a day."""
    return f"date={day.isoformat()}"


def parse_partition(name: str) -> date | None:
    """The day of a hive folder name, or None when it is not one."""
    if not name.startswith("date="):
        return None
    try:
        return date.fromisoformat(name[5:])
    except ValueError:
        return None


def ensure_dir(path: Path) -> None:
    """Create ``path`` and missing parents, making each new directory entry durable."""
    missing: list[Path] = []
    current = path
    while not current.is_dir():
        missing.append(current)
        current = current.parent
    for folder in reversed(missing):
        try:
            folder.mkdir()
        except FileExistsError:
            continue
        fsync_dir(folder.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename or unlink in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_parquet(
    table: pa.Table,
    path: Path,
    *,
    compression: str = "zstd",
    compression_level: int | None = 3,
    value_encoding: str | None = "BYTE_STREAM_SPLIT",
) -> int:
    """Write ``table`` atomically and durably to ``path``; return the file size in bytes."""
    tmp = path.with_name(path.name + TMP_SUFFIX)
    names = table.column_names
    # Integer mantissas (``*_int``) and sorted timestamps delta-encode; decimal scales (``*_scale``)
    # and names/ids are dictionary-coded; the sample value double is byte-stream-split.
    encodings = {c: "DELTA_BINARY_PACKED" for c in names if c.endswith("_int") or c in _TIMESTAMP_COLUMNS}
    if value_encoding and "value" in names and pa.types.is_floating(table.schema.field("value").type):
        encodings["value"] = value_encoding
    dictionary = [c for c in names if (c in _DICTIONARY_COLUMNS or c.endswith("_scale")) and c not in encodings]
    codec = None if compression == "none" else compression
    level = compression_level if codec in ("zstd", "gzip") else None
    try:
        ensure_dir(path.parent)
        with open(tmp, "wb") as handle:
            pq.write_table(
                table,
                handle,
                compression=codec,
                compression_level=level,
                use_dictionary=dictionary,
                column_encoding=encodings or None,
                row_group_size=ROW_GROUP_SIZE,
                write_statistics=True,
                store_schema=False,  # dictionary-typed columns read back as plain strings
            )
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise StorageError(f"cannot write {path}: {exc.strerror or exc}") from exc
    return path.stat().st_size


class Lake:
    """A folder of hive-partitioned Parquet tables with atomic commits and a swap lock."""

    def __init__(self, root: Path, *, compression: str = "zstd", compression_level: int = 3) -> None:
        self.root = Path(root).resolve()
        self.compression = compression
        self.compression_level = compression_level
        ensure_dir(self.root)
        self._lock_path = self.root / ".lock"
        self._lock_path.touch(exist_ok=True)
        self._maintenance_path = self.root / ".maintenance.lock"
        self._maintenance_path.touch(exist_ok=True)

    # -- locking -----------------------------------------------------------
    @contextmanager
    def _flock(self, mode: int, path: Path | None = None) -> Iterator[None]:
        handle = open(path or self._lock_path, "rb")
        try:
            fcntl.flock(handle.fileno(), mode)
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)
            handle.close()

    def shared(self) -> AbstractContextManager[None]:
        """Hold while listing and reading files: no swap happens meanwhile."""
        return self._flock(fcntl.LOCK_SH)

    def maintenance(self) -> AbstractContextManager[None]:
        """Held by compaction and retention: they run one at a time across processes."""
        return self._flock(fcntl.LOCK_EX, self._maintenance_path)

    def exclusive(self) -> AbstractContextManager[None]:
        """Hold while replacing or deleting files: waits for readers to finish."""
        return self._flock(fcntl.LOCK_EX)

    # -- paths and listing -------------------------------------------------
    def table_dir(self, table: str) -> Path:
        """Folder of a table."""
        return self.root / table

    def partition_dir(self, table: str, day: date) -> Path:
        """Folder of one day of a table."""
        return self.table_dir(table) / partition_name(day)

    def partitions(self, table: str) -> list[date]:
        """Days that have a folder in ``table``, oldest first."""
        folder = self.table_dir(table)
        if not folder.is_dir():
            return []
        days = [parse_partition(entry.name) for entry in os.scandir(folder) if entry.is_dir()]
        return sorted(d for d in days if d is not None)

    def files(self, table: str, start: date | None = None, end: date | None = None) -> list[LakeFile]:
        """Committed files of ``table`` whose day lies in [start, end] (inclusive)."""
        found: list[LakeFile] = []
        for day in self.partitions(table):
            if (start is not None and day < start) or (end is not None and day > end):
                continue
            folder = self.partition_dir(table, day)
            try:
                entries = sorted(os.scandir(folder), key=lambda e: e.name)
            except FileNotFoundError:
                continue
            found.extend(
                LakeFile(table, day, Path(e.path)) for e in entries if e.name.endswith(".parquet") and e.is_file()
            )
        return found

    def flat_files(self, table: str) -> list[Path]:
        """Files of an unpartitioned table (such as the series catalog)."""
        folder = self.table_dir(table)
        if not folder.is_dir():
            return []
        return sorted(Path(e.path) for e in os.scandir(folder) if e.name.endswith(".parquet") and e.is_file())

    def glob(self, table: str) -> str:
        """The DuckDB glob reading every file of a partitioned table."""
        return str(self.table_dir(table) / "*" / "*.parquet")

    # -- writing -----------------------------------------------------------
    def write(
        self,
        table: str,
        day: date | None,
        data: pa.Table,
        name: str | None = None,
        *,
        compression_level: int | None = None,
    ) -> Path:
        """Commit ``data`` as one new file of ``table`` (partition ``day``, or flat when None)."""
        folder = self.partition_dir(table, day) if day is not None else self.table_dir(table)
        path = folder / (name or f"{uuid.uuid4().hex}.parquet")
        write_parquet(
            data, path, compression=self.compression, compression_level=compression_level or self.compression_level
        )
        return path

    def replace(self, new: Sequence[Path], old: Sequence[Path]) -> None:
        """Atomically publish ``new`` files and remove ``old`` ones, for readers and across crashes.

        ``new`` files must already be written under a temporary (``.tmp``) name:
        each is renamed to its final name (the same path without ``.tmp``).
        Readers holding the shared lock see all of the swap or none of it. A
        journal written before the first rename lets :meth:`recover` finish an
        interrupted swap, so a crash never leaves both the new and old files.
        """
        with self.exclusive():
            self._recover_locked()  # a swap a dead process left half done comes first
            self._write_journal(new, old)
            self._apply(new, old)
            self._journal_path.unlink(missing_ok=True)
            fsync_dir(self.root)

    @property
    def _journal_path(self) -> Path:
        return self.root / ".swap-journal.json"

    def _write_journal(self, new: Sequence[Path], old: Sequence[Path]) -> None:
        tmp = self._journal_path.with_name(self._journal_path.name + TMP_SUFFIX)
        payload = {"new": [str(p) for p in new], "old": [str(p) for p in old]}
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(payload, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self._journal_path)
        fsync_dir(self.root)

    @staticmethod
    def _apply(new: Sequence[Path], old: Sequence[Path]) -> None:
        folders: set[Path] = set()
        for tmp in new:
            final = tmp.with_name(tmp.name.removesuffix(TMP_SUFFIX))
            if tmp.exists():
                os.replace(tmp, final)
            folders.add(final.parent)
        for path in old:
            path.unlink(missing_ok=True)
            folders.add(path.parent)
        for folder in folders:
            if folder.exists():
                fsync_dir(folder)

    def recover(self) -> bool:
        """Finish a swap interrupted by a crash; return True when there was one. Cheap when there was none."""
        if not self._journal_path.exists():
            return False
        with self.exclusive():
            return self._recover_locked()

    def _recover_locked(self) -> bool:
        """:meth:`recover` for a caller already holding the exclusive lock."""
        try:
            payload = json.loads(self._journal_path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return False
        except (OSError, json.JSONDecodeError):
            # The journal itself is torn: it was being written, so no rename had happened yet.
            self._journal_path.unlink(missing_ok=True)
            return False
        new = [Path(p) for p in payload.get("new", [])]
        old = [Path(p) for p in payload.get("old", [])]
        finals = [p.with_name(p.name.removesuffix(TMP_SUFFIX)) for p in new]
        if all(t.exists() or f.exists() for t, f in zip(new, finals, strict=True)):
            self._apply(new, old)  # every new file is whole: roll forward
        else:  # a new file is gone: keep the old files, drop the new ones
            for tmp, final in zip(new, finals, strict=True):
                tmp.unlink(missing_ok=True)
                final.unlink(missing_ok=True)
        self._journal_path.unlink(missing_ok=True)
        fsync_dir(self.root)
        return True

    def stage(
        self, table: str, day: date | None, data: pa.Table, name: str, *, compression_level: int | None = None
    ) -> Path:
        """Write a file under its temporary name, ready for :meth:`replace`."""
        folder = self.partition_dir(table, day) if day is not None else self.table_dir(table)
        tmp = folder / (name + TMP_SUFFIX)
        write_parquet(
            data, tmp, compression=self.compression, compression_level=compression_level or self.compression_level
        )
        return tmp

    def quarantine_file(self, path: Path, table: str, error: BaseException, day: date | None = None) -> Path:
        """Move an unreadable file out of its table into ``quarantine/`` with a note of why; return where."""
        folder = self.partition_dir(QUARANTINE, day) if day is not None else self.table_dir(QUARANTINE) / table
        ensure_dir(folder)
        target = folder / f"corrupt-{path.name}"
        # No swap lock: a reader that listed this file fails on it whether it is moved or not,
        # and the query path may call this while it holds the shared lock.
        try:
            os.replace(path, target)
        except FileNotFoundError:  # another reader quarantined it first
            return target
        fsync_dir(path.parent)
        note = target.with_name(target.name + ".reason.txt")
        note.write_text(f"{path}: {error}\n", encoding="utf-8")
        fsync_dir(folder)
        log.error("%s is unreadable (%s); moved to %s", path, str(error).splitlines()[0], target)
        return target

    def drop_partition(self, table: str, day: date, archive_to: Path | None = None) -> int:
        """Delete (or move under ``archive_to``) one day of a table; return bytes freed."""
        folder = self.partition_dir(table, day)
        with self.exclusive():
            if not folder.is_dir():
                return 0
            size = sum(f.stat().st_size for f in folder.iterdir() if f.is_file())
            if archive_to is not None:
                target = archive_to / table / folder.name
                ensure_dir(target.parent)
                if target.exists():
                    for item in folder.iterdir():
                        os.replace(item, target / item.name)
                    shutil.rmtree(folder)
                else:
                    shutil.move(str(folder), str(target))
            else:
                shutil.rmtree(folder)
            fsync_dir(folder.parent)
        return size

    def clean_temporary(self, min_age_seconds: float = 3600.0) -> int:
        """Remove leftovers of interrupted writes older than ``min_age_seconds``; return how many.

        Younger temporary files may belong to a write still in progress in
        another process, so they are left alone.
        """
        removed = 0
        cutoff = time.time() - min_age_seconds
        self.recover()  # an interrupted swap still needs its staged files
        for path in self.root.rglob(f"*{TMP_SUFFIX}"):
            try:
                if path.stat().st_mtime <= cutoff:
                    path.unlink()
                    removed += 1
            except FileNotFoundError:
                continue
        return removed

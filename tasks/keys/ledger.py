"""The SQLite state of key-event collection: one file, so one transaction covers a whole batch.

``data/state/key_inventory.sqlite`` holds

- ``files``: how far each log file has been read (:class:`~tasks.collect.key_events.FilePosition`);
- ``seen_events``: a 63-bit hash of every counted event id with its UTC day, so a
  re-delivered file or a re-read after a crash never counts an event twice
  (kept for the retention period: older events cannot be stored anyway);
- ``counters``: each counter series' running total and the last bucket written;
- ``outbox``: a batch of samples committed here but not yet confirmed in the lake;
- ``keys``, ``key_access`` and ``violations``: the key inventory
  (:mod:`tasks.keys.inventory`) and the policy findings (:mod:`tasks.keys.policy`).

Exactly once: a collection run reads new events, then in **one** transaction
marks them seen, moves the file positions, updates totals, inventory and
violations, and puts the samples they produce in the outbox. Only then are
the samples written to the lake, and the outbox row is deleted after the
write is durable. A crash before the commit leaves everything as it was (the
events are read again); a crash after it leaves the outbox row, which the next
run writes, skipping any sample the lake already holds.
"""

from __future__ import annotations

import hashlib
import io
import sqlite3
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from dataclasses import astuple, fields
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from storage.statedb import exclusive_lock, state_transaction
from tasks.collect.key_events import FilePosition

STATE_FILE = "key_inventory.sqlite"
LOCK_FILE = "key_inventory.lock"
US_PER_DAY = 86_400 * 1_000_000
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    source TEXT NOT NULL, identity TEXT NOT NULL, path TEXT NOT NULL, head TEXT NOT NULL,
    head_length INTEGER NOT NULL, "offset" INTEGER NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL,
    lines INTEGER NOT NULL, tail TEXT NOT NULL, updated_at TEXT NOT NULL, PRIMARY KEY (source, identity)
);
CREATE TABLE IF NOT EXISTS seen_events (id INTEGER PRIMARY KEY, day INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS counters (
    series TEXT PRIMARY KEY, total REAL NOT NULL, last_bucket INTEGER, held REAL NOT NULL, held_bucket INTEGER
);
CREATE TABLE IF NOT EXISTS outbox (
    id INTEGER PRIMARY KEY AUTOINCREMENT, created_at TEXT NOT NULL, rows INTEGER NOT NULL, samples BLOB NOT NULL,
    anomalies BLOB
);
CREATE TABLE IF NOT EXISTS keys (
    key_ref TEXT PRIMARY KEY, source TEXT NOT NULL, key_id TEXT NOT NULL, key_type TEXT, algorithm TEXT,
    region TEXT, account TEXT, mount TEXT, state TEXT NOT NULL, state_at INTEGER NOT NULL,
    created_at INTEGER, rotated_at INTEGER, last_used_at INTEGER, deletion_at INTEGER,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, rotation_enabled INTEGER, events INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS key_access (
    key_ref TEXT NOT NULL, dimension TEXT NOT NULL, value TEXT NOT NULL,
    first_seen INTEGER NOT NULL, last_seen INTEGER NOT NULL, count INTEGER NOT NULL,
    PRIMARY KEY (key_ref, dimension, value)
);
CREATE TABLE IF NOT EXISTS violations (
    key_ref TEXT NOT NULL, policy TEXT NOT NULL, subject TEXT NOT NULL, kind TEXT NOT NULL, detail TEXT NOT NULL,
    first_at INTEGER NOT NULL, last_at INTEGER NOT NULL, count INTEGER NOT NULL, open INTEGER NOT NULL,
    PRIMARY KEY (key_ref, policy, subject)
);
"""
_POSITION_FIELDS = tuple(f.name for f in fields(FilePosition))


def _ipc(frame: pl.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.write_ipc(buffer, compression="zstd")
    return buffer.getvalue()


def _under(path: Path, root: Path) -> bool:
    return path == root or path.is_relative_to(root)


def event_hash(source: str, event_id: str) -> int:
    """A stable 63-bit id of one event of one source (SQLite integers are signed 64-bit)."""
    digest = hashlib.blake2b(f"{source}\x1f{event_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


class KeyLedger:
    """The key-collection state in ``<state_dir>/key_inventory.sqlite``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def exclusive(self, timeout: float = 600.0) -> AbstractContextManager[None]:
        """Hold the collectors' lock: one collection (read, commit, deliver) at a time per data directory.

        The kernel releases it when the holder dies, so a killed run never blocks the next one,
        which then delivers what the killed run left in the outbox.
        """
        return exclusive_lock(self.path.with_name(LOCK_FILE), "key-event collection", timeout)

    def transaction(self, *, write: bool = True) -> AbstractContextManager[sqlite3.Connection]:
        """A connection inside one transaction (committed on success, rolled back on any error).

        ``write`` takes the write lock at once (collectors); readers (reports) take a snapshot.
        """
        return state_transaction(self.path, _SCHEMA, "key state", immediate=write)

    # -- file positions ---------------------------------------------------------------
    @staticmethod
    def positions(connection: sqlite3.Connection, source: str) -> dict[str, FilePosition]:
        """Every saved file position of ``source``, by identity."""
        columns = ", ".join(f'"{name}"' for name in _POSITION_FIELDS)
        rows = connection.execute(f"SELECT {columns} FROM files WHERE source = ?", (source,))
        return {row[0]: FilePosition(*row) for row in rows}

    @staticmethod
    def save_positions(connection: sqlite3.Connection, source: str, positions: Iterable[FilePosition]) -> None:
        """Insert or replace file positions."""
        now = datetime.now(UTC).isoformat()
        columns = ", ".join(f'"{name}"' for name in _POSITION_FIELDS)
        marks = ", ".join("?" for _ in _POSITION_FIELDS)
        connection.executemany(
            f"INSERT OR REPLACE INTO files (source, {columns}, updated_at) VALUES (?, {marks}, ?)",
            [(source, *astuple(position), now) for position in positions],
        )

    @staticmethod
    def forget_files(connection: sqlite3.Connection, source: str, roots: Sequence[Path], seen: set[str]) -> int:
        """Drop the positions of files gone from under ``roots`` (not in ``seen``); return how many.

        Positions of files elsewhere (another collection's paths) and under a root that is missing
        right now (an unmounted share) are kept.
        """
        present = [root for root in roots if root.exists()]
        gone = []
        for identity, path in connection.execute("SELECT identity, path FROM files WHERE source = ?", (source,)):
            if identity in seen or not any(_under(Path(path), root) for root in present):
                continue
            gone.append((source, identity))
        connection.executemany("DELETE FROM files WHERE source = ? AND identity = ?", gone)
        return len(gone)

    # -- exactly-once -------------------------------------------------------------------
    @staticmethod
    def claim(connection: sqlite3.Connection, ids: Sequence[int], day: int) -> list[bool]:
        """Mark event ``ids`` seen on ``day``; per id, True when it is new (the first of duplicates in ``ids`` too)."""
        unique = sorted(set(ids))  # sorted: B-tree inserts in key order are the cheap ones
        connection.execute("CREATE TEMP TABLE IF NOT EXISTS batch_ids (id INTEGER PRIMARY KEY)")
        connection.execute("DELETE FROM batch_ids")
        connection.executemany("INSERT INTO batch_ids (id) VALUES (?)", ((i,) for i in unique))
        known = {row[0] for row in connection.execute("SELECT id FROM batch_ids JOIN seen_events USING (id)")}
        connection.executemany(
            "INSERT INTO seen_events (id, day) VALUES (?, ?)", ((i, day) for i in unique if i not in known)
        )
        fresh: list[bool] = []
        for event_id in ids:
            fresh.append(event_id not in known)
            known.add(event_id)
        return fresh

    @staticmethod
    def prune_seen(connection: sqlite3.Connection, before_day: int) -> int:
        """Forget event ids collected before ``before_day`` (days since the epoch); return how many.

        A scan of the table (no index on the day: it would cost every insert), run once per collection.
        """
        return connection.execute("DELETE FROM seen_events WHERE day < ?", (before_day,)).rowcount

    # -- counters -----------------------------------------------------------------------
    @staticmethod
    def counters(
        connection: sqlite3.Connection, series: Iterable[str]
    ) -> dict[str, tuple[float, int | None, float, int | None]]:
        """(total, last bucket written, count held back, its bucket) of the given counter series that exist."""
        wanted = list(dict.fromkeys(series))
        found: dict[str, tuple[float, int | None, float, int | None]] = {}
        for start in range(0, len(wanted), 500):
            chunk = wanted[start : start + 500]
            marks = ", ".join("?" for _ in chunk)
            for name, total, last, held, held_bucket in connection.execute(
                f"SELECT series, total, last_bucket, held, held_bucket FROM counters WHERE series IN ({marks})", chunk
            ):
                found[name] = (total, last, held, held_bucket)
        return found

    @staticmethod
    def held(connection: sqlite3.Connection) -> list[str]:
        """Counter series with events held back for a bucket that had not begun when they were counted."""
        return [row[0] for row in connection.execute("SELECT series FROM counters WHERE held > 0 ORDER BY series")]

    @staticmethod
    def save_counters(
        connection: sqlite3.Connection, rows: Iterable[tuple[str, float, int | None, float, int | None]]
    ) -> None:
        """Insert or replace (series, total, last bucket, held, held bucket) rows."""
        connection.executemany(
            "INSERT OR REPLACE INTO counters (series, total, last_bucket, held, held_bucket) VALUES (?, ?, ?, ?, ?)",
            rows,
        )

    # -- outbox -------------------------------------------------------------------------
    @staticmethod
    def put_outbox(connection: sqlite3.Connection, samples: pl.DataFrame, anomalies: pl.DataFrame | None = None) -> int:
        """Keep ``samples`` (and key-access ``anomalies``) until :meth:`done` confirms them; return the row id."""
        cursor = connection.execute(
            "INSERT INTO outbox (created_at, rows, samples, anomalies) VALUES (?, ?, ?, ?)",
            (
                datetime.now(UTC).isoformat(),
                samples.height,
                _ipc(samples),
                _ipc(anomalies) if anomalies is not None and anomalies.height else None,
            ),
        )
        assert cursor.lastrowid is not None
        return cursor.lastrowid

    def pending(self) -> list[tuple[int, pl.DataFrame, pl.DataFrame | None]]:
        """Outbox batches not yet confirmed, oldest first: (id, samples, anomalies or None)."""
        with self.transaction() as connection:
            rows = connection.execute("SELECT id, samples, anomalies FROM outbox ORDER BY id").fetchall()
        return [
            (row_id, pl.read_ipc(io.BytesIO(samples)), pl.read_ipc(io.BytesIO(anomalies)) if anomalies else None)
            for row_id, samples, anomalies in rows
        ]

    def done(self, row_id: int) -> None:
        """The outbox batch ``row_id`` is durable in the lake: forget it."""
        with self.transaction() as connection:
            connection.execute("DELETE FROM outbox WHERE id = ?", (row_id,))

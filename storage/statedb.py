"""Transactions on the small SQLite files of mutable state under ``data/state/`` (never the lake).

Collector checkpoints, the key inventory and its exactly-once ledger, and the
registered health targets each live in one such file. Every access is one
transaction in SQLite's WAL journal with full fsync, so a crash leaves the
previous state intact and readers never block the writer.
"""

from __future__ import annotations

import fcntl
import sqlite3
import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from pathlib import Path

from metrics.errors import StorageError

BUSY_TIMEOUT_SECONDS = 60.0


@contextmanager
def state_transaction(path: Path, schema: str, what: str, *, immediate: bool = False) -> Iterator[sqlite3.Connection]:
    """A connection to ``path`` inside one transaction: committed on success, rolled back on any error.

    Args:
        path: the SQLite file (created, with its folder, on first use).
        schema: ``CREATE … IF NOT EXISTS`` statements run before the transaction.
        what: names the state in a :class:`StorageError` (``checkpoints``, ``key state`` …).
        immediate: take the write lock at once (a read-modify-write that must not interleave with another).
    """
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with closing(sqlite3.connect(path, timeout=BUSY_TIMEOUT_SECONDS, isolation_level=None)) as connection:
            connection.execute("PRAGMA journal_mode=WAL")
            connection.execute("PRAGMA synchronous=FULL")  # a commit survives a power cut
            connection.executescript(schema)
            connection.execute("BEGIN IMMEDIATE" if immediate else "BEGIN")
            try:
                yield connection
            except BaseException:
                connection.execute("ROLLBACK")
                raise
            connection.execute("COMMIT")
    except sqlite3.Error as exc:
        raise StorageError(f"{what} {path}: {exc}") from exc


LOCK_POLL_SECONDS = 0.1


@contextmanager
def exclusive_lock(path: Path, what: str, timeout: float = 600.0) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (one such job at a time per data directory).

    The kernel releases it when the holder dies, so a killed run never blocks the next one. Waits at most
    ``timeout`` seconds, then raises :class:`StorageError` naming ``what``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout
    with open(path, "a+b") as handle:
        while True:
            try:
                fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise StorageError(f"{path}: another {what} has held the lock for over {timeout:g} s") from None
                time.sleep(LOCK_POLL_SECONDS)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

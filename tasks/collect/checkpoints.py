"""Collector checkpoints: small JSON documents by name in SQLite under ``data/state/``.

Each scheduled run is a fresh process, so anything a collector must remember
between runs (the adaptive sampler's last stored values, the CPU counters of
the previous reading, later the position in an audit log) is saved here at the
end of a run and read at the start of the next. Writes are transactions
(SQLite's WAL journal), so a crash leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import sqlite3
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from storage.statedb import state_transaction

CHECKPOINTS_FILE = "checkpoints.sqlite"
_SCHEMA = """
CREATE TABLE IF NOT EXISTS checkpoints (
    name TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    updated_at TEXT NOT NULL
)
"""


class Checkpoints:
    """Named JSON checkpoints in ``<state_dir>/checkpoints.sqlite``."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / CHECKPOINTS_FILE

    def _connect(self) -> AbstractContextManager[sqlite3.Connection]:
        return state_transaction(self.path, _SCHEMA, "checkpoints")

    def load(self, name: str) -> dict[str, Any] | None:
        """The checkpoint saved under ``name``, or None when there is none (or it is unreadable JSON)."""
        with self._connect() as connection:
            row = connection.execute("SELECT value FROM checkpoints WHERE name = ?", (name,)).fetchone()
        if row is None:
            return None
        try:
            value = json.loads(row[0])
        except json.JSONDecodeError:
            return None
        return value if isinstance(value, dict) else None

    def save(self, name: str, value: dict[str, Any]) -> None:
        """Replace the checkpoint ``name`` with ``value`` (JSON-serialisable)."""
        text = json.dumps(value, separators=(",", ":"))
        with self._connect() as connection:
            connection.execute(
                "INSERT INTO checkpoints (name, value, updated_at) VALUES (?, ?, ?) "
                "ON CONFLICT (name) DO UPDATE SET value = excluded.value, updated_at = excluded.updated_at",
                (name, text, datetime.now(UTC).isoformat()),
            )

    def names(self) -> list[str]:
        """Every saved checkpoint's name."""
        with self._connect() as connection:
            return [row[0] for row in connection.execute("SELECT name FROM checkpoints ORDER BY name")]

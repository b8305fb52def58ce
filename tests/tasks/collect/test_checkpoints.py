"""Collector checkpoints survive the process and a torn value is ignored, never fatal."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from metrics.errors import StorageError
from tasks.collect.checkpoints import CHECKPOINTS_FILE, Checkpoints


def test_a_checkpoint_round_trips_and_is_replaced(tmp_path: Path) -> None:
    checkpoints = Checkpoints(tmp_path / "state")
    assert checkpoints.load("a") is None
    checkpoints.save("a", {"position": 1, "files": ["x"]})
    checkpoints.save("b", {})
    checkpoints.save("a", {"position": 2})
    assert checkpoints.load("a") == {"position": 2}
    assert checkpoints.names() == ["a", "b"]


def test_another_process_reads_what_was_saved(tmp_path: Path) -> None:
    Checkpoints(tmp_path).save("shared", {"n": 42})
    code = (
        "from pathlib import Path; from tasks.collect.checkpoints import Checkpoints; "
        f"print(Checkpoints(Path({str(tmp_path)!r})).load('shared'))"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "{'n': 42}"


@pytest.mark.parametrize("stored", ["not json", "[1, 2]", "3"])
def test_a_value_that_is_not_a_json_object_reads_as_none(tmp_path: Path, stored: str) -> None:
    checkpoints = Checkpoints(tmp_path)
    checkpoints.save("x", {"ok": True})
    with sqlite3.connect(tmp_path / CHECKPOINTS_FILE) as connection:
        connection.execute("UPDATE checkpoints SET value = ? WHERE name = 'x'", (stored,))
    assert checkpoints.load("x") is None


def test_an_unusable_database_raises_a_storage_error(tmp_path: Path) -> None:
    (tmp_path / CHECKPOINTS_FILE).write_bytes(b"this is not a sqlite database at all" * 100)
    with pytest.raises(StorageError, match="checkpoints"):
        Checkpoints(tmp_path).load("x")

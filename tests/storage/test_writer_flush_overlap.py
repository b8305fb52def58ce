"""A flush writes Parquet without holding up acknowledgements, and the size trigger wakes the background flusher."""

from __future__ import annotations

import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import polars as pl
import pytest

from metrics.model import SampleBatch, prepare_frame
from metrics.settings import Settings
from storage.lake import Lake
from storage.store import MetricStore
from storage.wal import segments
from storage.writer import Writer


def point(value: float) -> SampleBatch:
    moment = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1) + timedelta(seconds=value)
    batch = prepare_frame(
        pl.DataFrame({"ts": [moment], "metric": ["o.m"], "value": [value]}), now=datetime.now(UTC), retention_days=9
    )
    assert batch.rejected == []
    return batch


class GatedLake(Lake):
    """A real lake whose sample-file writes wait until the test opens the gate (a slow disk)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.entered = threading.Event()
        self.gate = threading.Event()

    def write(self, table: str, *args: Any, **kwargs: Any) -> Path:
        if table == "samples":
            self.entered.set()
            assert self.gate.wait(30), "the test never opened the gate"
        return super().write(table, *args, **kwargs)


def stored_values(settings: Settings) -> list[float]:
    store = MetricStore(settings).open(background_flush=False)
    try:
        return sorted(store.sql("SELECT value FROM samples").get_column("value").to_list())
    finally:
        store.close()


def test_batches_are_acknowledged_while_a_flush_writes_parquet(settings: Settings) -> None:
    lake = GatedLake(settings.lake_dir)
    writer = Writer(settings, lake=lake, writer_id="overlap")
    writer.open(background_flush=False)
    try:
        writer.write(point(1.0))
        flusher = threading.Thread(target=writer.flush)
        flusher.start()
        assert lake.entered.wait(30)  # the flush is writing its Parquet file now, and is held there
        started = time.monotonic()
        assert writer.write(point(2.0)) == 1  # acknowledged (fsynced to a new WAL segment) meanwhile
        assert time.monotonic() - started < 10
        assert writer.buffered_rows == 2
        assert len(segments(writer.wal.folder)) == 2  # the sealed one being flushed, and the new one
        lake.gate.set()
        flusher.join(30)
        assert not flusher.is_alive()
        assert writer.buffered_rows == 1  # the batch that came during the flush waits for the next one
        assert len(segments(writer.wal.folder)) == 1
        assert writer.flush() == 1
        assert segments(writer.wal.folder) == []
    finally:
        lake.gate.set()
        writer.close()
    assert stored_values(settings) == [1.0, 2.0]


def test_a_batch_written_during_a_flush_survives_a_crash(settings: Settings) -> None:
    lake = GatedLake(settings.lake_dir)
    writer = Writer(settings, lake=lake, writer_id="crashy")
    writer.open(background_flush=False)
    writer.write(point(1.0))
    flusher = threading.Thread(target=writer.flush)
    flusher.start()
    assert lake.entered.wait(30)
    writer.write(point(2.0))
    lake.gate.set()
    flusher.join(30)
    writer.wal.close(remove_folder=False)  # the process dies before the next flush: 2.0 is only in the WAL
    assert stored_values(settings) == [1.0, 2.0]  # recovery replays it, once


@pytest.mark.parametrize("background", [True, False], ids=["flusher-wakes", "inline"])
def test_reaching_the_size_flushes_in_the_background_or_inline(settings: Settings, background: bool) -> None:
    small = replace(settings, batch_size=3, flush_seconds=60.0)  # only the size can trigger a flush
    writer = Writer(small, writer_id="size")
    writer.open(background_flush=background)
    try:
        for value in (1.0, 2.0):
            writer.write(point(value))
        writer.write(point(3.0))  # the third row reaches batch_size
        if background:
            deadline = time.monotonic() + 10
            while writer.buffered_rows and time.monotonic() < deadline:
                time.sleep(0.01)
        assert writer.buffered_rows == 0
        assert segments(writer.wal.folder) == []
    finally:
        writer.close()
    assert stored_values(settings) == [1.0, 2.0, 3.0]

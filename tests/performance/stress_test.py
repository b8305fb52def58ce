"""Crash safety under load: SIGKILL the API server mid-ingest again and again; no acknowledged sample lost or doubled.

Writers post batches whose samples carry unique ids (the ``writer`` tag and the value, a
sequence number) and record each batch the server acknowledged (200, all rows stored).
The server -- master and workers, the whole process group -- is killed with SIGKILL
``KILLS`` times while they write and started again each time (a new process, which replays
the dead workers' write-ahead logs). After a last clean restart and graceful stop the lake
must hold every acknowledged sample exactly once; samples of batches that were never
acknowledged may be there or not, but never twice.

Run as a script for the figures alone: ``python tests/performance/stress_test.py``.
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from metrics.api.keys import create_key
from metrics.loadgen import INGEST_PATH, ApiServer
from metrics.settings import Settings
from storage.store import MetricStore

pytestmark = [pytest.mark.performance, pytest.mark.slow, pytest.mark.integration]

KILLS = 5
WRITERS = 4
BATCH = 250
SECONDS_BETWEEN_KILLS = 3.0
METRIC = "stress.seq"


@dataclass
class Writer:
    """One client thread: posts batches of fresh ids and remembers which were acknowledged."""

    name: str
    url: str
    token: str
    start: datetime
    next_id: int = 0
    acknowledged: list[range] = field(default_factory=list)
    unacknowledged: list[range] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)

    def body(self, ids: range) -> bytes:
        samples = [
            {
                "metric_id": METRIC,
                "value": float(i),
                "metric_type": "counter",
                "timestamp": (self.start + timedelta(milliseconds=i)).isoformat(),
                "tags": {"writer": self.name},
            }
            for i in ids
        ]
        return orjson.dumps({"metrics": samples})

    def run(self, stop: threading.Event, deadline: float) -> None:
        headers = {"authorization": f"Bearer {self.token}", "content-type": "application/json"}
        with httpx.Client(timeout=30.0) as client:
            while not stop.is_set() and time.monotonic() < deadline:
                ids = range(self.next_id, self.next_id + BATCH)
                self.next_id += BATCH  # never reused: a retry would be a new batch
                try:
                    response = client.post(self.url + INGEST_PATH, content=self.body(ids), headers=headers)
                except httpx.HTTPError as exc:
                    self.statuses[type(exc).__name__] += 1
                    self.unacknowledged.append(ids)
                    time.sleep(0.05)  # the server is down: try again shortly
                    continue
                self.statuses[str(response.status_code)] += 1
                if response.status_code == 200 and orjson.loads(response.content)["stored"] == BATCH:
                    self.acknowledged.append(ids)
                else:
                    self.unacknowledged.append(ids)


def stress(folder: Path, kills: int = KILLS) -> dict[str, Any]:
    """Run the writers, kill the server ``kills`` times, verify the lake; return the figures."""
    settings = Settings(data_dir=folder)
    _, token = create_key(settings, "stress", "writer")
    server = ApiServer(folder, workers=2, log_path=folder / "server.log").start()
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=2)
    writers = [Writer(f"w{i}", server.url, token, start) for i in range(WRITERS)]
    stop = threading.Event()
    deadline = time.monotonic() + 240  # a bound, whatever happens
    threads = [threading.Thread(target=w.run, args=(stop, deadline), daemon=True) for w in writers]
    for thread in threads:
        thread.start()
    restarts: list[float] = []
    try:
        for _ in range(kills):
            time.sleep(SECONDS_BETWEEN_KILLS)
            server.kill()  # SIGKILL to the master and every worker at once, mid-ingest
            began = time.monotonic()
            server = ApiServer(folder, workers=2, port=server.port, log_path=folder / "server.log").start()
            restarts.append(time.monotonic() - began)
        time.sleep(SECONDS_BETWEEN_KILLS)
    finally:
        stop.set()
        for thread in threads:
            thread.join(60)
        server.stop()
    # A final clean start (replays whatever a dead writer left) and a graceful stop.
    ApiServer(folder, workers=2, port=server.port, log_path=folder / "server.log").start().stop()
    store = MetricStore(settings).open(background_flush=False)
    try:
        rows = store.sql(
            "SELECT json_extract_string(tags, '$.writer') AS writer, value, count(*) AS n "
            f"FROM samples WHERE metric = '{METRIC}' GROUP BY ALL"
        ).rows()
    finally:
        store.close()
    found = {(writer, int(value)): n for writer, value, n in rows}
    acknowledged = {(w.name, i) for w in writers for ids in w.acknowledged for i in ids}
    unacknowledged = {(w.name, i) for w in writers for ids in w.unacknowledged for i in ids}
    statuses: Counter[str] = Counter()
    for w in writers:
        statuses.update(w.statuses)
    return {
        "kills": kills,
        "acknowledged": len(acknowledged),
        "lost": len(acknowledged - found.keys()),
        "duplicates": sum(n - 1 for n in found.values() if n > 1),
        "unacknowledged": len(unacknowledged),
        "unacknowledged_present": len(unacknowledged & found.keys()),
        "unknown_ids": len(found.keys() - acknowledged - unacknowledged),
        "restart_seconds_max": round(max(restarts), 2) if restarts else None,
        "statuses": dict(sorted(statuses.items())),
    }


@pytest.mark.timeout(600)
def test_no_acknowledged_sample_is_lost_or_doubled_across_sigkills(tmp_path: Path) -> None:
    figures = stress(tmp_path / "data")
    print(json.dumps(figures))
    assert figures["acknowledged"] > 0
    assert figures["lost"] == 0
    assert figures["duplicates"] == 0
    assert figures["unknown_ids"] == 0
    assert "500" not in figures["statuses"]  # refusals and dropped connections only, never an internal error


if __name__ == "__main__":
    import tempfile

    with tempfile.TemporaryDirectory(prefix="metrics-stress-") as scratch:
        print(json.dumps(stress(Path(scratch))))

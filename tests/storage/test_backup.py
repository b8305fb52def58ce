"""Backup and restore: round trips, consistency under concurrent ingest, refusal of damaged archives."""

from __future__ import annotations

import gzip
import subprocess
import sys
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from metrics.errors import StorageError
from metrics.settings import Settings
from storage.backup import create_backup, prune_backups, restore_backup, verify_backup
from storage.store import MetricStore
from tests.conftest import FrameFactory

QUERY = "SELECT metric, series_id, ts, value, type, tags FROM samples ORDER BY series_id, ts"


def fill(store: MetricStore, make_frame: FrameFactory) -> None:
    store.ingest_frame(make_frame(("cpu.usage", "mem.usage_percent"), hosts=3, points=40))
    store.compact(validate=False)
    store.ingest_points([{"metric_id": "crypto.key.ops", "value": 1.0, "tags": {"key_id": "k1"}}])  # stays in the WAL


def snapshot(settings: Settings) -> pl.DataFrame:
    with MetricStore(settings).open(background_flush=False) as store:
        return store.sql(QUERY)


def test_backup_wipe_restore_gives_identical_query_results(
    store: MetricStore, settings: Settings, make_frame: FrameFactory, tmp_path: Path
) -> None:
    fill(store, make_frame)
    before = store.sql(QUERY)
    archive = tmp_path / "backups" / "b.tar.gz"
    result = create_backup(settings, archive)
    assert result.files > 0
    assert archive.is_file()
    store.close()
    target = Settings(data_dir=tmp_path / "restored")
    restored = restore_backup(archive, target)
    assert restored.files == result.files
    assert_frame_equal(snapshot(target), before)
    aggregated = snapshot(target)
    assert aggregated.filter(pl.col("metric") == "crypto.key.ops").height == 1  # the WAL row came back too


def test_backup_is_consistent_while_ingestion_continues(
    settings: Settings, make_frame: FrameFactory, tmp_path: Path
) -> None:
    writer_store = MetricStore(settings).open(background_flush=True)
    acknowledged: list[float] = []
    stop = threading.Event()

    def ingest() -> None:
        value = 0.0
        while not stop.is_set() and value < 2_000:  # bounded
            value += 1
            moment = datetime.now(UTC) - timedelta(seconds=30)
            writer_store.ingest_points([{"metric_id": "live.m", "value": value, "timestamp": moment.isoformat()}])
            acknowledged.append(value)
            time.sleep(0.002)

    thread = threading.Thread(target=ingest)
    thread.start()
    try:
        time.sleep(0.5)
        create_backup(settings, tmp_path / "live.tar.gz")
        seen = len(acknowledged)
    finally:
        stop.set()
        thread.join(timeout=30)
        writer_store.close()
    target = Settings(data_dir=tmp_path / "restored")
    restore_backup(tmp_path / "live.tar.gz", target)
    values = snapshot(target).get_column("value").to_list()
    assert len(values) == len(set(values))  # nothing twice
    assert set(range(1, seen)) <= {int(v) for v in values}  # every sample acknowledged before the backup began


@pytest.mark.parametrize("damage", ["flip a byte", "truncate", "not gzip", "empty"])
def test_a_damaged_archive_is_refused_and_the_data_dir_is_untouched(
    store: MetricStore, settings: Settings, make_frame: FrameFactory, tmp_path: Path, damage: str
) -> None:
    fill(store, make_frame)
    archive = tmp_path / "b.tar.gz"
    create_backup(settings, archive)
    data = bytearray(archive.read_bytes())
    if damage == "flip a byte":
        data[len(data) // 2] ^= 0x40
    elif damage == "truncate":
        data = data[: len(data) * 2 // 3]
    elif damage == "not gzip":
        data = bytearray(b"hello, this is not a backup")
    else:
        data = bytearray()
    archive.write_bytes(bytes(data))
    target_dir = tmp_path / "target"
    (target_dir / "state").mkdir(parents=True)
    (target_dir / "state" / "keep.txt").write_text("untouched")
    with pytest.raises(StorageError, match="restore"):
        restore_backup(archive, Settings(data_dir=target_dir), force=True)
    assert (target_dir / "state" / "keep.txt").read_text() == "untouched"
    assert sorted(p.name for p in target_dir.iterdir()) == ["state"]


def test_a_tampered_member_fails_its_checksum(store: MetricStore, settings: Settings, tmp_path: Path) -> None:
    store.ingest_points([{"metric_id": "a.b", "value": 1.0}])
    store.flush()
    archive = tmp_path / "b.tar.gz"
    create_backup(settings, archive)
    import tarfile

    rebuilt = tmp_path / "tampered.tar.gz"
    with tarfile.open(archive, "r:gz") as source, tarfile.open(rebuilt, "w:gz") as sink:
        for member in source:
            stream = source.extractfile(member)
            assert stream is not None
            content = stream.read()
            if member.name.endswith(".parquet"):
                content = content[:-1] + bytes([content[-1] ^ 1])
            sink.addfile(member, __import__("io").BytesIO(content))
    with pytest.raises(StorageError, match="checksum mismatch"):
        verify_backup(rebuilt)


def test_restore_refuses_a_data_dir_with_data_unless_forced(
    store: MetricStore, settings: Settings, make_frame: FrameFactory, tmp_path: Path
) -> None:
    fill(store, make_frame)
    archive = tmp_path / "b.tar.gz"
    create_backup(settings, archive)
    store.close()
    with pytest.raises(StorageError, match="--force"):
        restore_backup(archive, settings)
    result = restore_backup(archive, settings, force=True)
    assert "lake" in result.replaced


@pytest.mark.parametrize("part", ["lake", "wal", "state", "models"])
def test_a_backup_inside_a_backed_up_folder_is_refused(settings: Settings, part: str) -> None:
    with pytest.raises(StorageError, match=f"inside .*{part}, which is backed up"):
        create_backup(settings, settings.data_dir / part / "b.tar.gz")


def test_a_backup_beside_the_backed_up_folders_is_allowed(store: MetricStore, make_frame: FrameFactory) -> None:
    store.ingest_frame(make_frame())
    store.flush()
    result = create_backup(store.settings, store.settings.backups_dir / "b.tar.gz")
    assert result.path.parent == store.settings.backups_dir.resolve()
    assert not any(entry["path"].startswith("backups/") for entry in verify_backup(result.path)["files"])


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    for i in range(5):
        path = tmp_path / f"b{i}.tar.gz"
        path.write_bytes(gzip.compress(b"x"))
        stamp = time.time() - 100 + i
        import os

        os.utime(path, (stamp, stamp))
    removed = prune_backups(tmp_path, keep=2)
    assert sorted(p.name for p in removed) == ["b0.tar.gz", "b1.tar.gz", "b2.tar.gz"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b3.tar.gz", "b4.tar.gz"]


@pytest.mark.integration
def test_python_m_backup_and_restore(store: MetricStore, settings: Settings, tmp_path: Path) -> None:
    store.ingest_points([{"metric_id": "a.b", "value": 1.0}])
    store.close()
    archive = tmp_path / "cli.tar.gz"
    env = {"PATH": "/usr/bin:/bin", "METRICS_DATA_DIR": str(settings.data_dir)}
    done = subprocess.run(
        [sys.executable, "-m", "metrics.backup", f"--output={archive}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().splitlines()[-1] == str(archive)
    env["METRICS_DATA_DIR"] = str(tmp_path / "fresh")
    done = subprocess.run(
        [sys.executable, "-m", "metrics.restore", f"--input={archive}"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    archive.write_bytes(b"broken")
    done = subprocess.run(
        [sys.executable, "-m", "metrics.restore", f"--input={archive}", "--force"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert done.returncode == 1
    assert done.stderr.strip().startswith("Error: restore:")
    assert "Traceback" not in done.stderr


def test_the_manifest_holds_no_secret_setting(store: MetricStore, settings: Settings, tmp_path: Path) -> None:
    secrets = {"smtp_password": "pw-1", "scrape_bearer_token": "tok-2", "prefect_database_url": "postgresql://u:pw-3@h"}
    archive = create_backup(replace(settings, **secrets), tmp_path / "b.tar.gz").path
    with gzip.open(archive) as raw:
        text = raw.read()
    for value in secrets.values():
        assert value.encode() not in text
    assert b'"retention_days"' in text  # the other settings are there

"""Every flow runs end to end against a real Prefect server and a temporary lake, and publishes its artifact."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import polars as pl
import pytest
from polars.testing import assert_frame_equal

from flows.backup import backup_lake
from flows.collect_system import collect_system_metrics
from flows.compact import compact_lake
from flows.deployments import JOBS, runner_deployments
from flows.retention import retention_cleanup
from metrics.errors import StorageError
from metrics.settings import Settings
from storage.backup import restore_backup, verify_backup
from storage.store import MetricStore
from tests.conftest import SPEC_SYSTEM_METRICS, FrameFactory
from tests.flows.conftest import RunFlow, dashboard_links


def ingest(settings: Settings, frame: pl.DataFrame) -> None:
    with MetricStore(settings).open(background_flush=False) as store:
        store.ingest_frame(frame)


def test_every_deployment_loads_with_its_schedule(prefect_server: None) -> None:
    settings = Settings(system_interval=7, compact_interval=600, retention_interval=3600, backup_interval=7200)
    deployments = runner_deployments(settings)
    assert [d.name for d in deployments] == [job.name for job in JOBS]
    for job, deployment in zip(JOBS, deployments, strict=True):
        assert deployment.entrypoint is not None
        assert deployment.entrypoint.endswith(job.function)
        (schedule,) = deployment.schedules or []
        assert schedule.schedule.interval == job.interval(settings)  # type: ignore[union-attr]
        assert "metrics" in (deployment.tags or [])


def test_collect_system_metrics_stores_the_spec_names(flow_settings: Settings, run_flow: RunFlow) -> None:
    summary, artifacts = run_flow(collect_system_metrics, window_seconds=0)
    assert summary["readings"] == 1
    assert summary["samples_stored"] == summary["samples_read"] > 40
    with MetricStore(flow_settings, read_only=True).open(background_flush=False) as store:
        names = set(store.latest("system.*").get_column("metric").to_list())
    assert names >= SPEC_SYSTEM_METRICS
    (artifact,) = artifacts
    assert artifact.key == "collect-system-metrics"
    assert artifact.type == "table"
    assert "rows written" in (artifact.description or "")
    assert dashboard_links(artifact) == {"system": {"range": "1h", "host": summary["host"]}}


def test_a_second_collection_skips_what_did_not_move(flow_settings: Settings, run_flow: RunFlow) -> None:
    first, _ = run_flow(collect_system_metrics, window_seconds=0)
    second, _ = run_flow(collect_system_metrics, window_seconds=0)
    # Counters that did not tick and flat gauges (disk usage, swap, load) are not stored again.
    assert second["samples_saved"] > 0
    assert second["samples_stored"] < first["samples_stored"]


def test_without_adaptive_sampling_every_reading_is_stored(
    flow_settings: Settings, run_flow: RunFlow, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("METRICS_ADAPTIVE_SAMPLING", "false")
    run_flow(collect_system_metrics, window_seconds=0)
    second, _ = run_flow(collect_system_metrics, window_seconds=0)
    assert second["samples_saved"] == 0
    assert second["next_interval"] is None


def test_compact_lake_merges_files_and_reports_bytes(
    flow_settings: Settings, run_flow: RunFlow, make_frame: FrameFactory, noon: datetime
) -> None:
    for seed in range(3):  # three files of one day (frames ending at real now could straddle midnight)
        ingest(flow_settings, make_frame(hosts=2, points=30, seed=seed, end=noon - timedelta(hours=seed)))
    totals, artifacts = run_flow(compact_lake)
    assert totals["partitions"] >= 1
    assert totals["rows"] == 3 * 2 * 2 * 30
    assert totals["files_removed"] >= 2
    assert totals["bytes_before"] > 0
    assert totals["bytes_after"] > 0
    (artifact,) = artifacts
    assert artifact.key == "compact-lake"
    assert "partitions compacted" in (artifact.description or "")
    assert dashboard_links(artifact) == {"performance": {}}
    again, _ = run_flow(compact_lake)
    assert again["partitions"] == 0  # nothing left to do


def test_retention_cleanup_drops_only_expired_days(
    flow_settings: Settings,
    run_flow: RunFlow,
    make_frame: FrameFactory,
    monkeypatch: pytest.MonkeyPatch,
    noon: datetime,
) -> None:
    now = datetime.now(UTC)
    ingest(flow_settings, make_frame(points=10, end=now))
    ingest(flow_settings, make_frame(points=10, end=noon - timedelta(days=2)))  # all on the day 3 days back
    monkeypatch.setenv("METRICS_RETENTION_DAYS", "2")
    preview, _ = run_flow(retention_cleanup, dry_run=True)
    assert preview["partitions"]
    assert preview["bytes_freed"] == 0
    result, artifacts = run_flow(retention_cleanup)
    assert result["partitions"] == preview["partitions"]
    assert all(str((noon - timedelta(days=2)).date()) in p for p in result["partitions"])
    assert result["bytes_freed"] > 0
    assert artifacts[0].key == "retention-cleanup"
    assert dashboard_links(artifacts[0]) == {"performance": {}}
    with MetricStore(Settings.from_env(), read_only=True).open(background_flush=False) as store:
        assert store.sql("SELECT min(ts) AS first FROM samples")["first"][0].date() >= (now - timedelta(days=1)).date()


def test_backup_keeps_the_newest_and_restores_identical_results(
    flow_settings: Settings, run_flow: RunFlow, make_frame: FrameFactory
) -> None:
    ingest(flow_settings, make_frame(hosts=4, points=120))
    query = "SELECT metric, tags, ts, value FROM samples ORDER BY ALL"
    with MetricStore(flow_settings, read_only=True).open(background_flush=False) as store:
        before = store.sql(query)
    paths = []
    for _ in range(3):  # METRICS_BACKUP_KEEP=2
        summary, artifacts = run_flow(backup_lake)
        paths.append(Path(summary["path"]))
        time.sleep(1.05)  # backup names have one-second resolution
    assert summary["pruned"] == [str(paths[0])]
    assert sorted(flow_settings.backups_dir.glob("metrics-*.tar.gz")) == sorted(paths[1:])
    assert len(summary["sha256"]) == 64
    assert summary["bytes_out"] > 0
    assert artifacts[0].key == "backup-lake"
    assert summary["sha256"][:16] in (artifacts[0].description or "")
    assert dashboard_links(artifacts[0]) == {"performance": {}}
    verify_backup(paths[-1])

    for part in ("lake", "wal", "state"):  # wipe
        target = flow_settings.data_dir / part
        if target.exists():
            import shutil

            shutil.rmtree(target)
    restore_backup(paths[-1], flow_settings)
    with MetricStore(flow_settings, read_only=True).open(background_flush=False) as store:
        assert_frame_equal(store.sql(query), before)


def test_a_corrupted_backup_is_refused_and_the_data_dir_untouched(
    flow_settings: Settings, run_flow: RunFlow, make_frame: FrameFactory
) -> None:
    ingest(flow_settings, make_frame(points=20))
    summary, _ = run_flow(backup_lake)
    archive = Path(summary["path"])
    data = bytearray(archive.read_bytes())
    data[len(data) // 2] ^= 0xFF
    archive.write_bytes(bytes(data))
    before = sorted(
        (p.relative_to(flow_settings.data_dir), p.stat().st_mtime_ns) for p in flow_settings.lake_dir.rglob("*")
    )
    with pytest.raises(StorageError, match=r"corrupt|verification"):
        restore_backup(archive, flow_settings, force=True)
    after = sorted(
        (p.relative_to(flow_settings.data_dir), p.stat().st_mtime_ns) for p in flow_settings.lake_dir.rglob("*")
    )
    assert after == before
